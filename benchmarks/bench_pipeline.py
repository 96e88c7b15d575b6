"""Wall time of the default pipeline run and of a rerun with nothing changed.

Copies the pipeline's inputs to a scratch directory, runs `snakemake --profile
workflow/profiles/local` there (the README's main job, default config), then runs it again
unchanged, and writes both wall times to results/bench/pipeline.json. Targets (issue: the
Snakemake reproduction pipeline): default run <= 15 minutes, no-change rerun <= 5 seconds on
a 2-core machine.

    python benchmarks/bench_pipeline.py [--configfile config/smoke.yaml] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ("Snakefile", "environment.yml", "workflow", "config", "workloads", "baselines")


def _run(cwd: Path, extra: list[str]) -> tuple[float, int, str]:
    cmd = [sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/local", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    return time.perf_counter() - t0, proc.returncode, (proc.stdout + proc.stderr)[-4000:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", help="an overlay such as config/smoke.yaml (default: none)")
    ap.add_argument("--keep", type=Path, help="run in this directory and keep it")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "pipeline.json")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="pythia-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in INPUTS:
        src, dst = ROOT / name, work / name
        if dst.exists():
            continue
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
    extra = ["--configfile", args.configfile] if args.configfile else []
    env_traces = os.environ.get("PYTHIA_TRACES") or str(ROOT.parent / "shared" / "traces")
    os.environ["PYTHIA_TRACES"] = env_traces
    first, rc1, log1 = _run(work, extra)
    second, rc2, log2 = _run(work, extra)
    runs = len(list((work / "results" / "runs").rglob("summary.json")))
    result = {
        "config_overlay": args.configfile,
        "default_run_wall_s": round(first, 1),
        "default_run_status": rc1,
        "nochange_rerun_wall_s": round(second, 2),
        "nochange_rerun_status": rc2,
        "nothing_to_do": "Nothing to be done" in log2,
        "simulated_runs": runs,
        "targets": {"default_run_wall_s": 900, "nochange_rerun_wall_s": 5},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if rc1 != 0:
        print(log1, file=sys.stderr)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if rc1 == 0 and rc2 == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
