"""Layers import downwards only: workflow <- profiler <- policy <- sim | serve <- bench.

Every module under ``pythia/`` is parsed (never imported), and every import it makes, at
module level or inside a function, is checked against the layer it belongs to. Lazy imports
count: an import inside a function is still a dependency, only a later one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The packages each layer must not import (a prefix matches the package and its modules).
# pythia.results is the run tables' schema, shared by the simulator and the replay client, so
# it sits at the bottom with pythia.workflow. pythia.inputs and pythia.outputs (reading and
# checking files, writing them atomically) are below everything: they import only pythia.errors. pythia.analysis reads run folders only and is
# imported by nothing below it.
UPPER = ("pythia.analysis",)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "pythia.workflow": ("pythia.profiler", "pythia.policy", "pythia.sim", "pythia.serve", "pythia.bench") + UPPER,
    "pythia.outputs": ("pythia.workflow", "pythia.results", "pythia.profiler", "pythia.policy", "pythia.sim", "pythia.serve", "pythia.bench") + UPPER,
    "pythia.inputs": ("pythia.workflow", "pythia.results", "pythia.profiler", "pythia.policy", "pythia.sim", "pythia.serve", "pythia.bench") + UPPER,
    "pythia.regime": ("pythia.workflow", "pythia.profiler", "pythia.policy", "pythia.sim", "pythia.serve", "pythia.bench") + UPPER,
    "pythia.results": ("pythia.profiler", "pythia.policy", "pythia.sim", "pythia.serve", "pythia.bench") + UPPER,
    "pythia.profiler": ("pythia.policy", "pythia.sim", "pythia.serve", "pythia.bench") + UPPER,
    # Policies are engine-agnostic: no simulator, no vLLM, no serving code.
    "pythia.policy": ("pythia.sim", "pythia.serve", "pythia.bench", "vllm") + UPPER,
    # The simulator and the serving code are siblings: neither imports the other.
    "pythia.sim": ("pythia.serve", "pythia.bench") + UPPER,
    "pythia.serve": ("pythia.sim", "pythia.bench") + UPPER,
    "pythia.bench": UPPER,
}
# The one exception: the cost model's batch terms (pythia.sim.costmodel.BatchShape) are what
# the vLLM plugin's step log records, so the plugin counts a step with the simulator's helper.
ALLOWED: dict[str, tuple[str, ...]] = {"pythia.serve": ("pythia.sim.costmodel",)}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, imported module) of every import in ``path``, relative ones resolved."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out.append((node.lineno, base))
            if base.count(".") < 1:  # `from pythia import sim` imports pythia.sim: its names may be modules
                out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def _layer(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layering_violations(root: Path = ROOT) -> list[str]:
    """``file:line: module imports name`` for every import under ``root/pythia`` that goes up a layer."""
    bad: set[tuple[str, int, str]] = set()
    for path in sorted((root / "pythia").rglob("*.py")):
        module = _module_name(path, root)
        forbidden = FORBIDDEN.get(_layer(module), ())
        allowed = ALLOWED.get(_layer(module), ())
        for line, name in _imports(path, root):
            if any(_matches(name, f) for f in forbidden) and not any(_matches(name, a) for a in allowed):
                bad.add((path.relative_to(root).as_posix(), line, f"{module} imports {name}"))
    return [f"{file}:{line}: {what}" for file, line, what in sorted(bad)]


def test_imports_go_downwards_only():
    bad = layering_violations()
    rule = "workflow <- profiler <- policy <- sim | serve <- bench"
    assert not bad, f"imports against the layering ({rule}):\n" + "\n".join(bad)


def test_registry_entries_stay_in_the_policy_package():
    """Registry entries are imported by name at run time, so the AST check cannot see them."""
    from pythia.policy import registry

    outside = [f"{kind}.{name} -> {target}" for kind, names in registry.REGISTRY.items()
               for name, target in names.items() if not _matches(target.split(":")[0], "pythia.policy")]
    assert not outside, outside


def test_the_check_sees_every_kind_of_import(tmp_path):
    """The checker itself: plain, from, relative, lazy and import_module imports are all seen."""
    pkg = tmp_path / "pythia" / "policy"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text(
        "import pythia.sim.engine\n"
        "from pythia import serve\n"
        "from ..bench import run\n"
        "from . import registry\n"
        "def f():\n"
        "    from vllm.v1 import core\n"
        "    importlib.import_module('pythia.sim.run')\n"
    )
    assert layering_violations(tmp_path) == [
        "pythia/policy/x.py:1: pythia.policy.x imports pythia.sim.engine",
        "pythia/policy/x.py:2: pythia.policy.x imports pythia.serve",
        "pythia/policy/x.py:3: pythia.policy.x imports pythia.bench",
        "pythia/policy/x.py:6: pythia.policy.x imports vllm.v1",
        "pythia/policy/x.py:7: pythia.policy.x imports pythia.sim.run",
    ]
