"""Every system in baselines/ side by side on the paper's setup, at the concurrency where vllm saturates.

Setup: the ``paper`` cluster (8x A100-80GB, Qwen2.5 3B/7B/14B pools), closed loop, the
coding-assistant and deep-research specs. Evaluation seeds (``EVAL_SEEDS``) are disjoint from
the development seeds Pythia's knobs were checked on (100-101) and from its warm-start
history seeds (1000-1001). Steps:

1. sweep ``vllm`` over concurrencies per workload; the saturation concurrency is the
   smallest whose output throughput is within 5% of the sweep's maximum;
2. at that concurrency run every system in ``baselines/`` (a system that fails to load or
   run is reported, not hidden);
3. optionally the Claude Code sessions on the ``long-context`` cluster in closed loop.

Writes ``results/bench/policies.json`` and ``results/bench/policies.md``.
Run: ``python benchmarks/bench_policies.py [--quick] [--no-traces]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVAL_SEEDS = (0,)
SWEEP = {"coding-assistant": (8, 16, 32), "deep-research": (16, 32, 64)}
TARGETS = {"mean_jct": 2.9, "p95_jct": 2.0, "throughput": 1.96, "oracle_gap": 1.15}
TRACE_CONCURRENCY = 4
TRACE_SESSIONS = 12


def run_one(args: tuple[str, str, str, int, int, int | None]) -> dict[str, Any]:
    """One simulation; returns its summary figures (or the error)."""
    from pythia.sim.run import run_simulation

    system, workload, cluster, conc, seed, jobs = args
    t0 = time.perf_counter()
    try:
        r = run_simulation(system, workload, cluster=cluster, concurrency=conc, seed=seed, jobs=jobs)
    except Exception as e:  # a baseline still being written must not stop the others
        return {"system": system, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)}
    s = r.summary
    per_type = {t: float(g["jct_s"].mean()) for t, g in r.jobs[r.jobs["completed"]].groupby("workflow_type")}
    return {
        "system": system, "workload": Path(workload).stem, "concurrency": conc, "seed": seed,
        "jobs": s["jobs_completed"], "jobs_submitted": s["jobs_submitted"],
        "mean_jct_s": s["mean_jct_s"], "p95_jct_s": s["p95_jct_s"], "throughput": s["output_tokens_per_s"],
        "prefix_hit_rate": s["prefix_hit_rate"], "preemptions": s["preemptions"],
        "calls_lost": s["calls_submitted"] - s["calls_completed"], "per_type_jct_s": per_type,
        "wall_s": time.perf_counter() - t0,
    }


def _child(args: tuple[Any, ...], conn: Any) -> None:
    conn.send(run_one(args))
    conn.close()


def run_many(tasks: list[tuple[Any, ...]], workers: int, timeout_s: float) -> list[dict[str, Any]]:
    """Run tasks in child processes, ``workers`` at a time; a run beyond ``timeout_s`` is stopped
    and reported as such (a slow baseline must not hold the whole benchmark)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    todo = list(range(len(tasks)))
    live: dict[int, tuple[Any, Any, float]] = {}
    while todo or live:
        while todo and len(live) < workers:
            i = todo.pop(0)
            rd, wr = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(tasks[i], wr))
            proc.start()
            live[i] = (proc, rd, time.perf_counter())
        time.sleep(0.2)
        for i, (proc, rd, t0) in list(live.items()):
            if rd.poll():
                results[i] = rd.recv()
                proc.join()
                del live[i]
            elif time.perf_counter() - t0 > timeout_s:
                proc.terminate()
                proc.join()
                results[i] = {"system": tasks[i][0], "error": f"stopped after {timeout_s:.0f} s wall (too slow for this benchmark)"}
                del live[i]
            elif not proc.is_alive() and not rd.poll():
                results[i] = {"system": tasks[i][0], "error": f"exited with code {proc.exitcode}"}
                del live[i]
    return [r for r in results if r is not None]


def systems() -> list[str]:
    return sorted(p.stem for p in (ROOT / "baselines").glob("*.yaml"))


def fmt(x: float, d: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def main() -> None:
    if "--render" in sys.argv:  # redraw policies.md from policies.json only
        dest = ROOT / "results" / "bench"
        (dest / "policies.md").write_text(render(json.loads((dest / "policies.json").read_text())))
        return
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sweep (smoke)")
    ap.add_argument("--no-traces", action="store_true", help="skip the Claude Code sessions")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=240.0, help="wall seconds allowed per run")
    ap.add_argument("--render", action="store_true", help="only redraw policies.md from policies.json")
    args = ap.parse_args()
    t_start = time.perf_counter()
    sweep = {k: v[:2] for k, v in SWEEP.items()} if args.quick else SWEEP
    ap_timeout = args.timeout
    out: dict[str, Any] = {"eval_seeds": list(EVAL_SEEDS), "dev_seeds": [100, 101], "history_seeds": [1000, 1001],
                           "cluster": "paper", "targets": TARGETS, "workloads": {}}
    for wl, concs in sweep.items():
        path = str(ROOT / "workloads" / f"{wl}.yaml")
        sw = run_many([("vllm", path, "paper", c, EVAL_SEEDS[0], 2 * c) for c in concs], args.workers, ap_timeout)
        best = max(r["throughput"] for r in sw)
        sat = min(r["concurrency"] for r in sw if r["throughput"] >= 0.95 * best)
        print(f"{wl}: vllm sweep {[(r['concurrency'], round(r['throughput'])) for r in sw]} -> saturation {sat}", flush=True)
        tasks = [(s, path, "paper", sat, seed, 2 * sat) for s in systems() for seed in EVAL_SEEDS]
        rows = run_many(tasks, args.workers, ap_timeout)
        for r in rows:
            print(f"  {r['system']}: {'ERROR ' + r['error'] if 'error' in r else fmt(r['mean_jct_s'])} ({fmt(r.get('wall_s', 0.0))} s)", flush=True)
        out["workloads"][wl] = {"sweep": sw, "saturation_concurrency": sat, "runs": rows}
    if not args.no_traces:
        from pythia.paths import traces_dir

        cc = traces_dir() / "claude-code"
        if cc.is_dir():
            tasks = [(s, str(cc), "long-context", TRACE_CONCURRENCY, EVAL_SEEDS[0], TRACE_SESSIONS) for s in systems()]
            rows = run_many(tasks, args.workers, ap_timeout)
            out["workloads"]["claude-code"] = {"sweep": [], "saturation_concurrency": TRACE_CONCURRENCY, "runs": rows,
                                               "note": f"first {TRACE_SESSIONS} sessions, closed loop at {TRACE_CONCURRENCY}"}
        else:
            print("Claude Code sessions not found (set PYTHIA_TRACES): skipped", flush=True)
    out["wall_s"] = time.perf_counter() - t_start
    dest = ROOT / "results" / "bench"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "policies.json").write_text(json.dumps(out, indent=1, default=float) + "\n")
    (dest / "policies.md").write_text(render(out))
    print(render(out))


def render(out: dict[str, Any]) -> str:
    """The markdown table of the benchmark."""
    lines = ["# Policies side by side", "",
             f"Cluster `paper` (8x A100-80GB, Qwen2.5 3B/7B/14B); closed loop at the concurrency where vllm "
             f"saturates; evaluation seeds {out['eval_seeds']} (knobs checked on {out['dev_seeds']}, warm-start "
             f"history from {out['history_seeds']}); jobs = 2 x concurrency. Wall time {out.get('wall_s', 0):.0f} s.", ""]
    for wl, w in out["workloads"].items():
        runs = [r for r in w["runs"] if "error" not in r]
        by = {r["system"]: r for r in runs}
        lines += [f"## {wl} (concurrency {w['saturation_concurrency']})", ""]
        if w["sweep"]:
            lines += ["vllm sweep (concurrency: output tok/s): " + ", ".join(f"{r['concurrency']}: {r['throughput']:.0f}" for r in w["sweep"]), ""]
            if w["saturation_concurrency"] == max(r["concurrency"] for r in w["sweep"]):
                lines += ["vllm's throughput still rises at the largest concurrency swept: saturation was not reached "
                          "within this benchmark's time budget; the largest concurrency is used.", ""]
        if "note" in w:
            lines += [w["note"], ""]
        v, o = by.get("vllm"), by.get("oracle")
        lines += ["| system | mean JCT s | P95 JCT s | out tok/s | prefix hit | preempt | lost calls | mean JCT vs vllm | P95 vs vllm | tput vs vllm | mean JCT vs oracle |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(runs, key=lambda r: r["mean_jct_s"]):
            rv = lambda k, inv=True: (v[k] / r[k] if inv else r[k] / v[k]) if v and r[k] else float("nan")  # noqa: E731
            lines.append(f"| {r['system']} | {fmt(r['mean_jct_s'])} | {fmt(r['p95_jct_s'])} | {fmt(r['throughput'])} | "
                         f"{fmt(r['prefix_hit_rate'], 3)} | {r['preemptions']} | {r['calls_lost']} | {fmt(rv('mean_jct_s'), 2)}x | "
                         f"{fmt(rv('p95_jct_s'), 2)}x | {fmt(rv('throughput', False), 2)}x | "
                         f"{fmt(r['mean_jct_s'] / o['mean_jct_s'] if o else float('nan'), 2)}x |")
        for r in w["runs"]:
            if "error" in r:
                lines.append(f"| {r['system']} | error: {r['error'][:120]} | | | | | | | | | |")
        p = by.get("pythia")
        if p and v:
            others = [r for r in runs if r["system"] not in ("vllm", "oracle") and not r["system"].startswith("pythia")]
            best = min(others, key=lambda r: r["mean_jct_s"]) if others else v
            checks = [
                ("mean JCT >= 2.9x lower than vllm", v["mean_jct_s"] / p["mean_jct_s"], TARGETS["mean_jct"], True),
                ("P95 JCT >= 2.0x lower than vllm", v["p95_jct_s"] / p["p95_jct_s"], TARGETS["p95_jct"], True),
                ("throughput >= 1.96x vllm", p["throughput"] / v["throughput"], TARGETS["throughput"], True),
                (f"mean JCT below the best other baseline ({best['system']})", best["mean_jct_s"] / p["mean_jct_s"], 1.0, True),
            ]
            if o:
                checks.append(("mean JCT within 1.15x of oracle", p["mean_jct_s"] / o["mean_jct_s"], TARGETS["oracle_gap"], False))
            lines += ["", "| target | measured | goal | met | margin |", "|---|---|---|---|---|"]
            for name, got, goal, higher in checks:
                ok = got >= goal if higher else got <= goal
                margin = got / goal if higher else goal / got
                lines.append(f"| {name} | {got:.2f}x | {goal}x | {'yes' if ok else 'no'} | {margin:.2f} of goal |")
        types = sorted({t for r in runs for t in r["per_type_jct_s"]})
        if types:
            lines += ["", "Per-type mean JCT (s): " + "; ".join(
                f"{r['system']}: " + ", ".join(f"{t} {r['per_type_jct_s'].get(t, float('nan')):.0f}" for t in types)
                for r in sorted(runs, key=lambda r: r["system"]) if r["system"] in ("vllm", "pythia", "oracle"))]
        abl = [r for r in runs if r["system"].startswith("pythia-no-")]
        if p and abl:
            lines += ["", "Ablations (mean JCT relative to pythia; > 1: the mechanism helps): " + ", ".join(
                f"{r['system']} {r['mean_jct_s'] / p['mean_jct_s']:.2f}" for r in abl)]
        lines.append("")
    lines += ["## Reading the targets", "", why(out), ""]
    return "\n".join(lines) + "\n"


def why(out: dict[str, Any]) -> str:
    """The reading of the measured table: the oracle's own margin bounds what prediction can add."""
    parts = []
    for wl, w in out["workloads"].items():
        by = {r["system"]: r for r in w["runs"] if "error" not in r}
        if "vllm" in by and "oracle" in by and "pythia" in by:
            o = by["vllm"]["mean_jct_s"] / by["oracle"]["mean_jct_s"]
            p = by["pythia"]["mean_jct_s"] / by["oracle"]["mean_jct_s"]
            parts.append(f"{wl}: the oracle is {o:.2f}x better than vllm, pythia within {p:.2f}x of the oracle")
    return (
        "The oracle runs Pythia's mechanisms on the true future, so its margin over vllm bounds what "
        "prediction can add on this setup (" + "; ".join(parts) + "). Where that margin is far below the "
        "paper's, the gap is in the mechanisms and the simulated setup, not in prediction; the ablation "
        "lines above name the mechanism that carries each workload's gain. Mechanisms that relieve KV "
        "pressure (retention, early release, lowest-priority preemption) matter only where the preemption "
        "column shows pressure. See docs/policies-pythia.md for the discussion."
    )


if __name__ == "__main__":
    main()
