"""Profiler benchmark: fit on development seeds, measure on held-out seeds.

For each of ``workloads/coding-assistant.yaml`` and ``workloads/deep-research.yaml``: fit a
profiler on seeds 0-1, replay seeds 2-3 (never fitted) with :func:`pythia.profiler.report`,
and time the queries a scheduler makes per iteration (``predict`` uncached and memoised,
``output_bound``, ``next_calls``). Writes ``results/bench/profiler.json``.

Target (issue 4): bound coverage >= 0.99 per role on the held-out seeds.

    python benchmarks/bench_profiler.py [--jobs 200] [--out results/bench/profiler.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from pythia.profiler import Profiler, ProfilerConfig
from pythia.profiler.report import evaluate
from pythia.workflow.load import LoadOptions, load_workload
from pythia.workflow.trace import Trace

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("coding-assistant", "deep-research")
TRAIN_SEEDS = (0, 1)
TEST_SEEDS = (2, 3)


def _load(name: str, seeds: tuple[int, ...], jobs: int) -> Trace:
    traces = [load_workload(ROOT / "workloads" / f"{name}.yaml", LoadOptions(seed=s, jobs=jobs)) for s in seeds]
    return Trace(jobs=[j for t in traces for j in t.jobs])


def _timings(prof: Profiler, test: Trace, n_jobs: int = 64) -> dict[str, float]:
    """Microseconds per query, with ``n_jobs`` jobs in flight half-way through."""
    live = []
    for job in test.jobs[:n_jobs]:
        rj = prof.begin_job(job.job_id + "/bench", job.workflow_type)
        for c in job.calls[: len(job.calls) // 2]:
            for d in c.deps:
                if not rj.calls[d].finished:
                    rj.finish_call(job.calls[d], job)
            rj.issue_call(c)
        live.append((job, rj))
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    for _, rj in live:
        rj.memo.clear()
        prof.predict(rj)
    out["predict_uncached_us"] = (time.perf_counter() - t0) / len(live) * 1e6
    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        for _, rj in live:
            prof.predict(rj)
    out["predict_memoised_us"] = (time.perf_counter() - t0) / (reps * len(live)) * 1e6
    roles = sorted({c.agent_role for j, _ in live for c in j.calls})
    t0 = time.perf_counter()
    for _ in range(reps):
        for job, _ in live:
            for r in roles:
                prof.bound_tokens(job.workflow_type, r)
    out["bound_us"] = (time.perf_counter() - t0) / (reps * len(live) * len(roles)) * 1e6
    t0 = time.perf_counter()
    for _, rj in live:
        rj.memo.clear()
        prof.next_calls(rj)
    out["next_calls_uncached_us"] = (time.perf_counter() - t0) / len(live) * 1e6
    return out


def run(jobs: int) -> dict[str, Any]:
    """Fit, evaluate and time each workload; the JSON-ready result."""
    result: dict[str, Any] = {
        "train_seeds": list(TRAIN_SEEDS),
        "test_seeds": list(TEST_SEEDS),
        "jobs_per_seed": jobs,
        "config": ProfilerConfig().__dict__,
        "python": platform.python_version(),
        "workloads": {},
    }
    for name in WORKLOADS:
        if not (ROOT / "workloads" / f"{name}.yaml").exists():
            result["workloads"][name] = {"skipped": "workload spec not found"}
            continue
        train, test = _load(name, TRAIN_SEEDS, jobs), _load(name, TEST_SEEDS, jobs)
        t0 = time.perf_counter()
        prof = Profiler().fit(train)
        fit_s = time.perf_counter() - t0
        rep = evaluate(prof, test)["types"]
        model = prof.model(name)
        entry: dict[str, Any] = {
            "fit_s": fit_s,
            "train_calls": sum(len(j.calls) for j in train.jobs),
            "test_calls": sum(len(j.calls) for j in test.jobs),
            "drift_events_while_fitting": len(prof.drift_events(name)),
            "model": None if model is None else model.to_dict(),
            "report": rep.get(name),
            "timings": _timings(prof, test),
        }
        r = rep.get(name) or {}
        covs = {k: v.get("coverage") for k, v in r.get("roles", {}).items() if "coverage" in v}
        entry["coverage_target_met"] = {k: (v is not None and v >= 0.99) for k, v in covs.items()}
        result["workloads"][name] = entry
    return result


def main() -> None:
    """Run the benchmark and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200, help="jobs per seed (default 200)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "profiler.json")
    args = ap.parse_args()
    res = run(args.jobs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, sort_keys=True, default=float) + "\n")
    for name, e in res["workloads"].items():
        r = e.get("report") or {}
        print(f"{name}: top1={r.get('next_role_top1')} coverage={r.get('bound_coverage')} "
              f"per-role={ {k: round(v['coverage'], 4) for k, v in r.get('roles', {}).items() if v.get('coverage') is not None} } "
              f"prefix_recall={r.get('prefix_recall')} timings={ {k: round(v, 1) for k, v in e.get('timings', {}).items()} }")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
