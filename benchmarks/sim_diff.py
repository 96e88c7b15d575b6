"""Differential check of the simulator: the tables of a fixed set of runs, digested.

    python benchmarks/sim_diff.py --check            # compare with results/bench/sim_diff.json
    python benchmarks/sim_diff.py --check --stepping # the same runs without fast-forward
    python benchmarks/sim_diff.py --write --stepping # record the reference digests
    python benchmarks/sim_diff.py --check --only coding-assistant-c4

A change that should keep outputs unchanged (a faster data structure, a refactor) must leave
every digest equal: the calls, jobs and timeseries tables (every column and value, in
order) and the summary without its wall-clock figures (and the reuse counters derived from
the calls table), for every system in ``baselines/`` on
coding-assistant and deep-research at two loads each and on the first Claude Code sessions.
Each run is a fresh process. ``--check`` exits 1 and names the runs and tables that differ.

The reference is recorded by stepping every iteration (``--stepping``, no fast-forward): the
ground truth that fast-forward must reproduce exactly, so one check covers both a change of
the engine and the exactness of fast-forward.
``tests/test_sim_differential.py`` checks a few of these runs on every test run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "bench" / "sim_diff.json"

# name -> (workload, jobs, concurrency, seed, cluster, needs traces)
CELLS: dict[str, tuple[str, int, int, int, str | None, bool]] = {
    "coding-assistant-c4": ("workloads/coding-assistant.yaml", 24, 4, 3, None, False),
    "coding-assistant-c24": ("workloads/coding-assistant.yaml", 24, 24, 3, None, False),
    "deep-research-c8": ("workloads/deep-research.yaml", 32, 8, 3, None, False),
    "deep-research-c32": ("workloads/deep-research.yaml", 32, 32, 3, None, False),
    "claude-code-c6": ("{traces}/claude-code", 6, 6, 0, "long-context", True),
}
# Summary keys that measure the machine or say how the result was computed, not the simulation.
WALL_KEYS = ("wall_s", "speedup", "fast_forward", "fast_forwarded_iterations", "fast_forwarded_prefill_iterations")
# Figures computed after the run from the calls table (digested above) and the trace alone;
# they joined the summary after the reference was recorded, and their inputs are pinned by
# the calls table's digest.
DERIVED_KEYS = ("cross_call_prefix_hit_rate", "missed_reusable_tokens", "preemption_recomputed_tokens",
                "recomputed_prefill_tokens")


def traces_dir() -> Path:
    env = os.environ.get("PYTHIA_TRACES")
    return Path(env) if env else ROOT.parent / "shared" / "traces"


def systems() -> list[str]:
    return sorted(p.stem for p in (ROOT / "baselines").glob("*.yaml"))


def digest_frame(df) -> str:  # type: ignore[no-untyped-def]
    """A digest of every column name, dtype and value, in order."""
    import pandas as pd

    h = hashlib.sha256()
    h.update(json.dumps([(c, str(t)) for c, t in df.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    return h.hexdigest()[:24]


def one(cell: str, system: str, stepping: bool = False) -> dict[str, str]:
    """Digests of one run in this process."""
    from pythia.sim.config import SimOptions
    from pythia.results import _clean
    from pythia.sim.run import run_simulation
    from pythia.workflow.load import LoadOptions, load_workload

    wl, jobs, conc, seed, cluster, _ = CELLS[cell]
    path = Path(wl.format(traces=traces_dir()))
    path = path if path.is_absolute() else ROOT / path
    trace = load_workload(path, LoadOptions(seed=seed, jobs=jobs, arrival={"process": "closed", "concurrency": conc}))
    res = run_simulation(system, trace, cluster=cluster, seed=seed, options=SimOptions(seed=seed, progress=False,
                                                                                   fast_forward=not stepping))
    summary = {k: v for k, v in res.summary.items() if k not in WALL_KEYS and k not in DERIVED_KEYS}
    return {
        "calls": digest_frame(res.calls), "jobs": digest_frame(res.jobs), "timeseries": digest_frame(res.timeseries),
        "summary": hashlib.sha256(json.dumps(_clean(summary), sort_keys=True).encode()).hexdigest()[:24],
    }


def run_all(only: list[str] | None, stepping: bool = False) -> dict[str, dict[str, str]]:
    out = {}
    have_traces = (traces_dir() / "claude-code").is_dir()
    for cell, spec in CELLS.items():
        if only and cell not in only:
            continue
        if spec[5] and not have_traces:
            print(f"sim_diff: {cell} skipped: no traces at {traces_dir()}", file=sys.stderr)
            continue
        for system in systems():
            cmd = [sys.executable, __file__, "--one", cell, system] + (["--stepping"] if stepping else [])
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            out[f"{cell}/{system}"] = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"  {cell}/{system}", file=sys.stderr, flush=True)
    return out


def compare(got: dict[str, dict[str, str]], want: dict[str, dict[str, str]]) -> list[str]:
    """Lines naming each run and table whose digest differs (or that is missing)."""
    bad = []
    for run, tables in got.items():
        ref = want.get(run)
        if ref is None:
            bad.append(f"{run}: no recorded digest")
            continue
        diff = [t for t in tables if tables[t] != ref.get(t)]
        if diff:
            bad.append(f"{run}: {', '.join(diff)} differ")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", nargs=2, metavar=("CELL", "SYSTEM"), help=argparse.SUPPRESS)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare with the recorded digests (default)")
    mode.add_argument("--write", action="store_true", help="record the current digests")
    ap.add_argument("--only", help="comma-separated cells (default: all)")
    ap.add_argument("--stepping", action="store_true", help="run without fast-forward")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, stepping=args.stepping)))
        return 0
    only = [c for c in args.only.split(",") if c] if args.only else None
    got = run_all(only, args.stepping)
    if args.write:
        old = json.loads(args.out.read_text())["runs"] if args.out.is_file() else {}
        old.update(got)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        doc = {"cells": {k: list(v) for k, v in CELLS.items()}, "stepping": args.stepping,
               "runs": dict(sorted(old.items()))}
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(args.out)
        print(f"sim_diff: wrote {len(got)} digests to {args.out}")
        return 0
    want = json.loads(args.out.read_text())["runs"]
    bad = compare(got, want)
    for line in bad:
        print(f"sim_diff: {line}")
    print(f"sim_diff: {len(got) - len(bad)} of {len(got)} runs identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
