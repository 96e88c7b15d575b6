"""The GPU check (``benchmarks/gpu_check.sh`` / ``gpu_check.py``) in its CPU dry-run mode.

The dry run is the GPU path with the tiny model's shape on the CPU: the same model code,
measurement, cost-model comparison, NVML handling (absent here: one line) and report. The
tests check the report's structure and arithmetic, never the times themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the GPU check needs PyTorch")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402

from pythia.sim.costmodel import FS_PER_S, CostModel  # noqa: E402


def run_script(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def test_dry_run_compares_the_cost_model_with_measured_iterations(tmp_path: Path) -> None:
    res = run_script(["--dry-run", "--out", str(tmp_path)])
    assert res.returncode == 0, res.stderr[-2000:]
    report: dict[str, Any] = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check: tiny-llama")
    assert report["settings"]["dry_run"] and report["device_info"]["device"] == "cpu"
    assert report["model_shape"]["name"] == "tiny-llama" and report["dtype"] == "float32"
    rows = report["rows"]
    assert [(r["kind"], r["batch"]) for r in rows] == [("prefill", 1), ("prefill", 2), ("decode", 1), ("decode", 4)]
    cm = CostModel("cpu-2core", "tiny-llama")
    for r in rows:
        assert r["measured_ms"] > 0 and r["iters"] == 3
        # The batch is counted as the simulator counts it, and priced by its cost model.
        if r["kind"] == "prefill":
            n = r["new_tokens"]
            assert r["tokens"] == r["batch"] * n and r["pairs"] == r["batch"] * n * (n + 1) // 2
        else:
            c = r["context_tokens"]
            assert r["tokens"] == r["batch"] and r["kv_read"] == r["batch"] * (c + 1)
        pred = cm.iteration_fs(r["tokens"], r["seqs"], r["sampled"], r["pairs"], r["kv_read"]) / FS_PER_S * 1e3
        assert r["predicted_ms"] == pytest.approx(pred)
        assert r["rel_error"] == pytest.approx((r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"])
        assert r["predicted_roofline_ms"] < r["predicted_ms"]
    per_kind = report["comparison"]["per_kind"]
    assert set(per_kind) == {"prefill", "decode"} and all(s["shapes"] == 2 for s in per_kind.values())
    # No GPU here: NVML's absence is one line, and no rows.
    assert not report["nvml"]["available"] and report["nvml"]["rows"] == []
    assert sum("no GPU metrics" in ln for ln in res.stderr.splitlines()) == 1


def test_cuda_asked_without_cuda_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert gpu_check.main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device=cuda: CUDA is not available here" in err[0]
    assert not (tmp_path / "gpu_check.json").exists()
    assert gpu_check.main(["--dry-run", "--decode", "4", "--out", str(tmp_path)]) == 2
    assert "write shapes as BxN" in capsys.readouterr().err


def test_without_the_cost_models_packages_measurements_are_kept_for_compare(tmp_path: Path) -> None:
    # A GPU host may lack jsonschema (the cost model validates its data with it): measure anyway,
    # then compare where the project is installed.
    script = ("import runpy, sys; sys.modules['jsonschema'] = None; "
              f"sys.argv = ['gpu_check.py', '--dry-run', '--out', {str(tmp_path)!r}]; "
              f"runpy.run_path({str(ROOT / 'benchmarks' / 'gpu_check.py')!r}, run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["comparison"] is None and "jsonschema" in report["comparison_unavailable"]
    assert len(report["rows"]) == 4 and "predicted_ms" not in report["rows"][0]
    assert gpu_check.main(["--compare", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report["comparison"]["per_kind"]) == {"prefill", "decode"} and "predicted_ms" in report["rows"][0]
