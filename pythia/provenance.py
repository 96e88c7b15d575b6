"""What a result was computed by: the package version and a digest of the code behind it.

The pipeline passes these to its rules as parameters, so that Snakemake reruns a run whose
code changed (its ``params`` rerun trigger), not only one whose input files changed: after an
upgrade of the package or an edit of the simulator or of a policy, old runs are not kept.

A digest covers the source text of the named parts of the package, so any edit (a comment
included) reruns what depends on it; compiled caches and files outside the package are left
out, and so are the simulator's data tables (``pythia/sim/data``: cluster presets, GPU, model
and efficiency tables), which the rules take as input files instead, so that editing one
preset reruns only the runs on it. It is computed from the files the interpreter imports,
the same ones the rules run.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import pythia

PACKAGE = Path(pythia.__file__).resolve().parent
# What a simulated or real run depends on: everything but the analysis (figures, tables).
RUN_PARTS = ("*.py", "policy", "profiler", "sim", "workflow", "bench", "serve")
# What the collected tables and figures depend on.
ANALYSIS_PARTS = ("analysis", "results.py", "inputs.py", "outputs.py", "errors.py")
SUFFIXES = (".py", ".yaml", ".yml", ".json")
DATA = PACKAGE / "sim" / "data"  # input files of the rules, not code


def package_version() -> str:
    """The installed package's version."""
    return pythia.__version__


def _files(part: str) -> list[Path]:
    if any(c in part for c in "*?["):
        return sorted(p for p in PACKAGE.glob(part) if p.is_file())
    path = PACKAGE / part
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"pythia has no part {part!r}")
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts
                  and not p.is_relative_to(DATA))


@lru_cache(maxsize=None)
def source_digest(parts: tuple[str, ...] = RUN_PARTS) -> str:
    """A short SHA-256 of the package version and the named parts' files (paths and bytes)."""
    h = hashlib.sha256(package_version().encode())
    for path in sorted({p for part in parts for p in _files(part)}):
        h.update(b"\0" + path.relative_to(PACKAGE).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def data_files(*names: str) -> list[str]:
    """Absolute paths of the simulator's data files (``gpus.yaml``, ``clusters/paper.yaml``)."""
    return [str(PACKAGE / "sim" / "data" / n) for n in names]
