"""Every system across the regimes: load, KV pressure, bursts, and the paper's saturated cell.

The paper's claims (up to 2.9x lower mean JCT, 1.96x throughput, P95 1.15-2.02x "at peak
concurrency") live under saturation with the live KV working set above the KV pool. This
benchmark goes there and around it, on the simulated ``paper`` cluster (8x A100-80GB, Qwen2.5
3B/7B/14B pools) unless a cell says otherwise:

- ``load``: closed loop from light load to beyond the concurrency where vllm's throughput
  stops rising, jobs = 3 x concurrency (so a P95 rests on enough jobs);
- ``kv``: a KV-pressure sweep at a saturated load: each pool's ``kv_cache_tokens`` is set so
  that the KV working-set ratio of vllm's run at natural capacity becomes about 0.5 .. 3
  (the workload and the iteration costs do not change; see docs/simulator.md);
- ``headline``: the saturated, KV-oversubscribed cell per workload with three seeds, ratios
  to vllm paired per seed;
- ``trace``: the Claude Code sessions on ``long-context``, at natural capacity and with the KV
  pool pressed to a working-set ratio of 1.4;
- ``bursty``: open loop, gamma arrivals, where autoscaling matters (GPU-seconds beside JCT).

Every run reports its regime (working-set ratio, lower bound, stretch, goodput). Evaluation
seeds (0-2) are disjoint from the development seeds the knobs were chosen on (100-101) and
from Pythia's warm-start history seeds (1000-1001).

Writes ``results/bench/policies.json`` and ``results/bench/policies.md`` (and the figures
``results/bench/policies_*.png``). Run:
``python benchmarks/bench_policies.py [--quick] [--only load,kv,...] [--render]``.
Progress goes to stderr; finished runs are kept in ``results/bench/policies.partial.json``,
so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEST = ROOT / "results" / "bench"
PARTIAL = DEST / "policies.partial.json"
EVAL_SEEDS = (0, 1, 2)
TARGETS = {"mean_jct": 2.9, "p95_jct": 2.0, "throughput": 1.96, "vs_best": 1.15, "oracle_gap": 1.10}
MAIN = ("vllm", "sglang", "autellix", "continuum", "kvflow", "thunderagent", "pythia", "oracle")
ABLATIONS = ("pythia-no-cache", "pythia-no-routing", "pythia-no-priority", "pythia-no-scaling")
VARIANTS = ("vllm-session-affinity", "vllm-prefix-aware", "vllm-autoscale")
BASELINE_FAMILIES = {"sglang": "SGLang", "autellix": "Autellix", "continuum": "Continuum", "kvflow": "KVFlow",
                     "thunderagent": "ThunderAgent", "vllm-session-affinity": "vLLM routers",
                     "vllm-prefix-aware": "vLLM routers", "vllm-autoscale": "vLLM routers"}

# The cells. A cell: (kind, workload, cluster, load, jobs, seeds, systems, kv_target)
#   load: {"concurrency": C} or {"arrival": {...}}; kv_target: None (natural capacity) or the
#   working-set ratio to set with kv_cache_tokens.
CODING = "workloads/coding-assistant.yaml"
RESEARCH = "workloads/deep-research.yaml"


def cells(quick: bool) -> list[dict[str, Any]]:
    """The benchmark's cells, in run order (the KV sweep needs vllm's natural run first)."""
    out: list[dict[str, Any]] = []

    def add(kind: str, workload: str, load: dict[str, Any], jobs: int, seeds: tuple[int, ...], systems: tuple[str, ...],
            kv_target: float | None = None, cluster: str = "paper", name: str | None = None) -> None:
        out.append({"kind": kind, "workload": workload, "cluster": cluster, "load": load, "jobs": jobs,
                    "seeds": list(seeds), "systems": list(systems), "kv_target": kv_target,
                    "name": name or f"{Path(workload).stem}"})

    loads = {CODING: (4, 16, 64), RESEARCH: (16, 64)}
    if quick:
        loads = {CODING: (4, 16), RESEARCH: (16,)}
    for wl, cs in loads.items():
        for c in cs:
            add("load", wl, {"concurrency": c}, 3 * c, (0,), MAIN)
    # KV pressure at a saturated load: vllm's coding-assistant throughput plateaus from 16 in
    # flight; deep-research's KV is not pressed by load, so the knob supplies the pressure.
    kv_cells = {CODING: 16, RESEARCH: 64} if not quick else {CODING: 16}
    # deep-research gets one pressure point (its headline cell); the sweep is coding-assistant's.
    targets = {CODING: (0.5, 1.0, 2.0, 3.0), RESEARCH: (2.0,)} if not quick else {CODING: (1.0, 3.0)}
    for wl, c in kv_cells.items():
        for t in targets[wl]:
            add("kv", wl, {"concurrency": c}, 3 * c, (0,), ("vllm", "autellix", "kvflow", "pythia", "oracle"), kv_target=t)
    if not quick:
        # Headline: coding-assistant at 64 in flight (working-set ratio about 7 on the 14B
        # pool); deep-research at 64 in flight with its KV pool set to a working-set ratio of 2.
        for wl, c, kv in ((CODING, 64, None), (RESEARCH, 64, 2.0)):
            add("headline", wl, {"concurrency": c}, 3 * c, (0,), MAIN + ABLATIONS + VARIANTS, kv_target=kv)
            add("headline", wl, {"concurrency": c}, 3 * c, (1, 2), ("vllm", "kvflow", "pythia", "oracle"), kv_target=kv)
        # The Claude Code sessions at natural capacity, then with the KV pool set to a working-set
        # ratio of 1.4: about the most a pool can be pressed while one replica still holds a
        # call of the full 128k context (the 33 recorded sessions cannot press it by load).
        add("trace", "{traces}/claude-code", {"concurrency": 12}, 24, (0,), MAIN, cluster="long-context", name="claude-code")
        add("trace", "{traces}/claude-code", {"concurrency": 12}, 24, (0,), MAIN, cluster="long-context", name="claude-code",
            kv_target=1.4)
        # Bursty open loop: gamma arrivals of shape 0.25 at 0.03 jobs/s (bursts of several jobs,
        # then quiet), where scaling ahead of the wave matters.
        add("bursty", CODING, {"arrival": {"process": "gamma", "rate": 0.03, "burstiness": 0.25}}, 48, (0,),
            ("vllm", "vllm-autoscale", "pythia", "pythia-no-scaling", "oracle"))
    return out


# --------------------------------------------------------------------------- running


def kv_budget(cluster_name: str, natural_ratio: dict[str, float], target: float) -> dict[str, int]:
    """Per pool, the ``kv_cache_tokens`` that turn vllm's natural working-set ratio into ``target``.

    One scale applies to every pool (the bottleneck pool's ratio becomes the target), and
    every system of the cell gets the same budget, so they face the same pressure.
    """
    from pythia.policy.systems import load_system
    from pythia.sim.config import load_cluster
    from pythia.sim.costmodel import CostModel

    cfg = load_cluster(cluster_name)
    flags = load_system("vllm").engine
    top = max(v for v in natural_ratio.values() if not math.isnan(v))
    scale = top / target
    out = {}
    for p in cfg.pools:
        mem = CostModel(cfg.gpu, p.model, p.tp, gpu_memory_utilization=flags.gpu_memory_utilization).kv_memory_tokens
        out[p.name] = max(flags.block_size, int(mem * scale))
        if p.max_model_len and out[p.name] < p.max_model_len:
            raise ValueError(f"cluster {cluster_name}, pool {p.name}: a working-set ratio of {target:g} leaves "
                             f"{out[p.name]} KV tokens per replica, less than one call of max_model_len {p.max_model_len}")
    return out


def run_one(task: dict[str, Any]) -> dict[str, Any]:
    """One simulation; returns its summary figures (or the error)."""
    from pythia.paths import traces_dir
    from pythia.sim.config import load_cluster
    from pythia.sim.run import run_simulation

    t0 = time.perf_counter()
    system = task["system"]
    try:
        cfg = load_cluster(task["cluster"])
        if task.get("kv_tokens"):
            cfg = dataclasses.replace(cfg, pools=tuple(
                dataclasses.replace(p, kv_cache_tokens=task["kv_tokens"][p.name]) for p in cfg.pools))
        workload = task["workload"].replace("{traces}", str(traces_dir()))
        if not workload.startswith("/") and "{traces}" not in task["workload"]:
            workload = str(ROOT / workload)
        load = task["load"]
        r = run_simulation(system, workload, cluster=cfg, seed=task["seed"], jobs=task["jobs"],
                           concurrency=load.get("concurrency"), arrival=load.get("arrival"))
    except Exception as e:  # a baseline that fails must not stop the others
        return {**task, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)}
    s = r.summary
    keys = ("jobs_completed", "jobs_submitted", "mean_jct_s", "p95_jct_s", "output_tokens_per_s", "prefix_hit_rate",
            "preemptions", "mean_queue_s", "mean_lower_bound_jct_s", "jct_stretch", "kv_working_set_ratio",
            "kv_working_set_ratio_by_pool", "replica_load_imbalance", "gpu_seconds", "cold_start_replica_s",
            "goodput_jobs_per_s", "simulated_s", "calls_submitted", "calls_completed", "cross_call_prefix_hit_rate",
            "recomputed_prefill_tokens")
    out = {**task, **{k: s.get(k) for k in keys}}
    out["calls_lost"] = s["calls_submitted"] - s["calls_completed"]
    out["wall_s"] = time.perf_counter() - t0
    return out


def _child(task: dict[str, Any], conn: Any) -> None:
    conn.send(run_one(task))
    conn.close()


def run_many(tasks: list[dict[str, Any]], workers: int, timeout_s: float, done: dict[str, dict[str, Any]]) -> None:
    """Run tasks in child processes, ``workers`` at a time, saving each result as it comes.

    A run beyond ``timeout_s`` is stopped and reported (a slow baseline must not hold the
    benchmark); results already in ``done`` (a resumed benchmark) are not run again.
    """
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    todo = [t for t in tasks if t["key"] not in done]
    live: dict[str, tuple[Any, Any, float, dict[str, Any]]] = {}
    total, finished = len(todo), 0
    while todo or live:
        while todo and len(live) < workers:
            t = todo.pop(0)
            rd, wr = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(t, wr))
            proc.start()
            live[t["key"]] = (proc, rd, time.perf_counter(), t)
        time.sleep(0.2)
        for key, (proc, rd, t0, t) in list(live.items()):
            res = None
            if rd.poll():
                res = rd.recv()
                proc.join()
            elif time.perf_counter() - t0 > timeout_s:
                proc.terminate()
                proc.join()
                res = {**t, "error": f"stopped after {timeout_s:.0f} s wall (too slow for this benchmark)"}
            elif not proc.is_alive() and not rd.poll():
                res = {**t, "error": f"exited with code {proc.exitcode}"}
            if res is not None:
                del live[key]
                done[key] = res
                finished += 1
                _save_partial(done)
                what = "ERROR " + res["error"][:80] if "error" in res else f"{res['mean_jct_s']:.1f} s mean JCT"
                print(f"[{finished}/{total}] {key}: {what} ({res.get('wall_s', 0):.0f} s)", file=sys.stderr, flush=True)


def _save_partial(done: dict[str, dict[str, Any]]) -> None:
    DEST.mkdir(parents=True, exist_ok=True)
    tmp = PARTIAL.with_suffix(".tmp")
    tmp.write_text(json.dumps(done, default=float) + "\n")
    tmp.replace(PARTIAL)


def task_key(cell: dict[str, Any], system: str, seed: int) -> str:
    """The run's identity: the same run requested by two cells (a load point that is also the
    headline, a KV point that is also the probe) runs once."""
    load = cell["load"]
    lv = f"c{load['concurrency']}" if "concurrency" in load else f"r{load['arrival']['rate']}"
    kv = f"/kv{cell['kv_target']}" if cell["kv_target"] is not None else ""
    return f"{cell['name']}/{lv}/j{cell['jobs']}{kv}/{system}/seed{seed}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small subset (smoke)")
    ap.add_argument("--only", help="comma-separated kinds: load, kv, headline, trace, bursty")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900.0, help="wall seconds allowed per run")
    ap.add_argument("--render", action="store_true", help="only redraw policies.md and the figures from policies.json")
    ap.add_argument("--fresh", action="store_true", help="ignore results kept from an interrupted run")
    args = ap.parse_args()
    if args.render:
        out = json.loads((DEST / "policies.json").read_text())
        write_report(out)
        return
    t_start = time.perf_counter()
    done: dict[str, dict[str, Any]] = {} if args.fresh or not PARTIAL.is_file() else json.loads(PARTIAL.read_text())
    all_cells = cells(args.quick)
    if args.only:
        kinds = set(args.only.split(","))
        all_cells = [c for c in all_cells if c["kind"] in kinds]
    from pythia.paths import traces_dir

    if not (traces_dir() / "claude-code").is_dir():
        print("Claude Code sessions not found (set PYTHIA_TRACES): trace cells skipped", file=sys.stderr)
        all_cells = [c for c in all_cells if c["kind"] != "trace"]
    # Runs at natural capacity first: the KV sweep sizes its pools from vllm's natural ratio.
    plain = [c for c in all_cells if c["kv_target"] is None]
    tasks = [{"key": task_key(c, s, seed), "system": s, "seed": seed, **{k: c[k] for k in ("kind", "name", "workload", "cluster", "load", "jobs", "kv_target")}}
             for c in plain for seed in c["seeds"] for s in c["systems"]]
    probes = []
    for c in all_cells:
        if c["kv_target"] is not None:  # vllm at natural capacity on the same load and seed
            probe = {**c, "kind": "probe", "kv_target": None}
            for seed in c["seeds"]:
                key = task_key(probe, "vllm", seed)
                if key not in {t["key"] for t in tasks + probes}:
                    probes.append({"key": key, "system": "vllm", "seed": seed, **{k: probe[k] for k in ("kind", "name", "workload", "cluster", "load", "jobs", "kv_target")}})
    seen: set[str] = set()
    queue = [t for t in probes + tasks if not (t["key"] in seen or seen.add(t["key"]))]
    run_many(queue, args.workers, args.timeout, done)
    kv_tasks = []
    for c in all_cells:
        if c["kv_target"] is None:
            continue
        for seed in c["seeds"]:
            probe = done.get(task_key({**c, "kind": "probe", "kv_target": None}, "vllm", seed))
            if probe is None or "error" in probe:
                continue
            for s in c["systems"]:
                budget = kv_budget(c["cluster"], probe["kv_working_set_ratio_by_pool"], c["kv_target"])
                kv_tasks.append({"key": task_key(c, s, seed), "system": s, "seed": seed, "kv_tokens": budget,
                                 **{k: c[k] for k in ("kind", "name", "workload", "cluster", "load", "jobs", "kv_target")}})
    seen.clear()
    run_many([t for t in kv_tasks if not (t["key"] in seen or seen.add(t["key"]))], args.workers, args.timeout, done)
    # One row per cell that asked for a run (a shared run appears under each of its cells).
    rows = [{**done[task_key(c, sy, seed)], "kind": c["kind"]} for c in all_cells for seed in c["seeds"]
            for sy in c["systems"] if task_key(c, sy, seed) in done]
    out = {"eval_seeds": list(EVAL_SEEDS), "dev_seeds": [100, 101], "history_seeds": [1000, 1001], "targets": TARGETS,
           "cells": all_cells, "runs": rows, "wall_s": time.perf_counter() - t_start,
           "quick": args.quick}
    DEST.mkdir(parents=True, exist_ok=True)
    (DEST / "policies.json").write_text(json.dumps(out, indent=1, default=float) + "\n")
    write_report(out)
    if not args.quick and not args.only:
        PARTIAL.unlink(missing_ok=True)


# --------------------------------------------------------------------------- report

sys.path.insert(0, str(ROOT / "benchmarks"))


def write_report(out: dict[str, Any]) -> None:
    """policies.md and the figures, from the JSON alone."""
    from policies_report import figures, render

    (DEST / "policies.md").write_text(render(out))
    for path in figures(out, DEST):
        print(f"wrote {path}", file=sys.stderr)
    print((DEST / "policies.md").read_text())


if __name__ == "__main__":
    main()
