"""The oracle is a clairvoyant reference: on fixed cells, prediction cannot beat it.

The oracle runs Pythia's mechanisms with the same parameters on the true future (true output
lengths, true remaining path, true next prompts). On each cell below its mean JCT must be at
most 1% above pythia's. A cell where that cannot hold for a documented reason belongs in
docs/policies-pythia.md (section Oracle), not here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pythia.paths import traces_dir
from pythia.sim.run import run_simulation

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1.01
CELLS = [
    # (workload, cluster, concurrency, jobs): a light, a fan-out and a long-context cell
    ("workloads/coding-assistant.yaml", "paper", 8, 16),
    ("workloads/deep-research.yaml", "paper", 16, 32),
    ("claude-code", "long-context", 4, 6),
]


@pytest.mark.parametrize("workload, cluster, concurrency, jobs", CELLS, ids=[Path(c[0]).stem for c in CELLS])
def test_oracle_is_at_least_as_good_as_pythia(workload: str, cluster: str, concurrency: int, jobs: int) -> None:
    path = traces_dir() / workload if workload == "claude-code" else ROOT / workload
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    mean = {
        s: run_simulation(s, str(path), cluster=cluster, concurrency=concurrency, seed=0, jobs=jobs).summary["mean_jct_s"]
        for s in ("pythia", "oracle")
    }
    assert mean["oracle"] <= TOLERANCE * mean["pythia"], mean
