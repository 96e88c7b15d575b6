"""The Snakemake pipeline: lint, dry run, and the config check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pythia.paths import traces_dir

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _snakemake(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, check=False)


def test_lint_passes() -> None:
    proc = _snakemake("--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _job_counts(*args: str) -> dict[str, int]:
    proc = _snakemake("-n", "--quiet", "rules", "--forceall", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = {}
    for ln in (proc.stdout + proc.stderr).splitlines():
        parts = ln.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def test_dry_run_lists_the_grid() -> None:
    specs = len(list((ROOT / "workloads").glob("*.yaml")))
    counts = _job_counts("--configfile", "config/smoke.yaml")
    traces = (traces_dir() / "claude-code").is_dir()
    # 5 systems x 2 experiments x 2 loads x 1 seed, plus 2 systems on the Claude Code sessions
    assert counts["sim_run"] == 20 + (2 if traces else 0)
    assert counts["workload_trace"] == specs
    assert counts["collect"] == counts["figures"] == 1
    default = _job_counts()
    assert default["sim_run"] >= 15 * 2 * 4 * 3  # every system, two workflows, four loads, three seeds


def test_bad_config_value_stops_before_any_job(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: zero\nworkload_jobs: 10\ntraces_dir: nowhere\n")
    proc = _snakemake("-n", "--configfile", str(bad))
    assert proc.returncode != 0
    assert "seed" in proc.stdout + proc.stderr


def _copy_project(dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("Snakefile", "environment.yml", "workflow", "config", "workloads", "baselines"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name)
        else:
            shutil.copy2(src, dst / name)
    return dst


@pytest.mark.slow
def test_smoke_run_end_to_end_then_nothing_to_do(tmp_path: Path) -> None:
    proj = _copy_project(tmp_path / "p")
    first = _snakemake("--cores", "2", "--configfile", "config/smoke.yaml", cwd=proj)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    index = (proj / "results" / "figures" / "index.md").read_text()
    assert "jct_vs_load.png" in index and "autoscale_timeline.png" in index
    assert (proj / "results" / "figures" / "jct_vs_load.pdf").stat().st_size > 0
    import pandas as pd

    summaries = pd.read_parquet(proj / "results" / "tables" / "summaries.parquet")
    assert set(summaries["workload"]) == {"coding-assistant", "deep-research"}
    assert (summaries["jobs_completed"] == summaries["jobs_submitted"]).all()
    again = _snakemake("--cores", "2", "--configfile", "config/smoke.yaml", cwd=proj)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
    report = _snakemake("--configfile", "config/smoke.yaml", "--report", "report.html", cwd=proj)
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    assert (proj / "report.html").stat().st_size > 10_000


def test_unknown_system_stops_before_any_job(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("systems: [vllm, vlm]\n")
    proc = _snakemake("-n", "--configfile", str(bad))
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "systems[1]" in out and "'vlm'" in out
