"""The Snakemake pipeline: lint, dry run, and the config check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _snakemake(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, check=False)


def test_lint_passes() -> None:
    proc = _snakemake("--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dry_run_lists_one_trace_per_spec() -> None:
    proc = _snakemake("-n", "--quiet", "rules", "--forceall")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    specs = len(list((ROOT / "workloads").glob("*.yaml")))
    out = proc.stdout + proc.stderr
    line = next((ln for ln in out.splitlines() if ln.strip().startswith("workload_trace")), "")
    assert line.split()[-1] == str(specs), out


def test_bad_config_value_stops_before_any_job(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: zero\nworkload_jobs: 10\ntraces_dir: nowhere\n")
    proc = _snakemake("-n", "--configfile", str(bad))
    assert proc.returncode != 0
    assert "seed" in proc.stdout + proc.stderr
