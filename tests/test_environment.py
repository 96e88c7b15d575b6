"""environment.yml carries what pyproject.toml declares (pyproject is the pip truth)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(spec: str) -> tuple[str, str]:
    """(name, bounds) of a requirement, spaces removed, name lower case with '-' for '_'."""
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", spec)
    assert m, spec
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def test_environment_mirrors_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    extras = project["optional-dependencies"]
    for extra in ("pipeline", "test", "gpu"):
        wanted += extras[extra]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    have: dict[str, str] = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for p in dep.get("pip", []):
                if not p.startswith("-"):
                    name, bounds = _norm(p)
                    have[name] = bounds
        else:
            name, bounds = _norm(dep)
            have[name] = bounds.lstrip("=") if name == "python" else bounds
    missing = []
    for spec in wanted:
        name, bounds = _norm(spec)
        if have.get(name) != bounds:
            missing.append(f"{name}{bounds} (environment.yml: {have.get(name, 'absent')})")
    assert not missing, "environment.yml lacks or differs on: " + ", ".join(missing)
    assert have["python"] == "3.11" and project["requires-python"] == ">=3.11"
