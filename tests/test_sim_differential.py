"""The simulator's outputs against recorded digests (``benchmarks/sim_diff.py``).

The reference digests were recorded by stepping every iteration (no fast-forward). A few runs
are checked here on every test run, with fast-forward on, so a change that alters what the
simulator computes, or a fast-forward that is not exact, fails here; the script checks all
75 runs (every system on five cells).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNS = ["coding-assistant-c24/vllm", "coding-assistant-c24/pythia", "coding-assistant-c24/kvflow",
        "deep-research-c32/thunderagent", "deep-research-c32/continuum", "deep-research-c8/sglang"]


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("sim_diff", ROOT / "benchmarks" / "sim_diff.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("run", RUNS)
def test_outputs_equal_the_recorded_stepping_digests(run: str) -> None:
    mod = _script()
    ref = json.loads((ROOT / "results" / "bench" / "sim_diff.json").read_text())
    assert ref["stepping"] is True
    cell, system = run.split("/")
    got = mod.one(cell, system)
    assert got == ref["runs"][run], mod.compare({run: got}, ref["runs"])
