"""Serving on real CPU replicas: Pythia's router, round-robin and the Rust vllm-router, and the simulated twin.

One invocation, one machine, the same N tiny-model vLLM-CPU replicas (stock vLLM, ``--system
vllm``: the engines are the same in every run, only the routing differs), the same workload
(``workloads/shared-context.yaml``: every call of a job is led by the job's shared context)
and the same seed. The real runs, one at a time:

1. ``pythia run --backend ray-vllm-cpu --router round_robin`` (Pythia's Ray Serve host, one
   pool of N replicas, autoscaler ``none``);
2. the same with ``--router pythia``;
3. ``pythia run --backend vllm-router-cpu --workers N`` (the Rust router, ``cache_aware``
   with its default thresholds).

Per run: mean and P95 JCT, the engines' prefix-cache hit rate (each replica's
``vllm:prefix_cache_hits``/``queries`` counters over the replay), calls per replica and their
balance (max/mean), the routing policy's time per decision (the Ray host's counters; the Rust
router's is not visible from outside), and ratios to round_robin of the same invocation.

Then the simulated twin: ``pythia sim`` on the same one-pool cluster (N replicas, the
calibrated ``cpu-2core/tiny-llama`` profile of ``benchmarks/bench_fidelity.py``, the same KV
pool), the same workload and seed, for the pythia and round_robin routers (and
``prefix_aware`` as the simulator's nearest policy to cache_aware), with the relative error of
its mean JCT against each real run.

Last, the routing decision's cost at 200 calls in flight: the workflow-state service the Ray
host's actor wraps (:class:`pythia.serve.ray_host.state.WorkflowState`), with 200 live
calls registered and the N replicas' stats carrying them, timed over repeated ``route`` calls
(the actor's whole method: views, prefix lookups and the policy).

Writes ``serving.json`` and ``serving.md`` in ``--out`` (default ``results/bench/``). About
2.5 minutes on 2 cores with the defaults. ``--work DIR`` keeps the run folders and resumes
(finished runs are not repeated). ``--report-only`` re-renders ``serving.md`` from
``serving.json``.

    python benchmarks/bench_serving.py [--out DIR] [--replicas N] [--jobs J] [--concurrency C] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKLOAD = "workloads/shared-context.yaml"
SYSTEM = "vllm"  # stock vLLM engines in every run: only the routing differs
GPU, MODEL = "cpu-2core", "tiny-llama"
BLOCK_SIZE = 32  # the CPU engine's block size (docs/vllm.md)
MAX_MODEL_LEN = 4096
ENGINE_ARGS = ["--enforce-eager"]
RUNS = (  # (key, label) in the order they run
    ("ray_round_robin", "Ray host, round_robin"),
    ("ray_pythia", "Ray host, pythia router"),
    ("vllm_router", "Rust vllm-router, cache_aware"),
)
SIM_ROUTERS = (("sim_round_robin", "round_robin", "ray_round_robin"), ("sim_pythia", "pythia", "ray_pythia"),
               ("sim_prefix_aware", "prefix_aware", "vllm_router"))
INFLIGHT = 200


# --------------------------------------------------------------------------- set-up


def cluster_yaml(replicas: int, num_blocks: int) -> str:
    """One pool of ``replicas`` tiny-model replicas on the calibrated CPU profile: what every run and the twin use."""
    return "\n".join([
        f"name: bench-serving-{replicas}",
        f"description: one pool of {replicas} tiny-model vLLM-CPU replicas (benchmarks/bench_serving.py)",
        f"gpu: {GPU}",
        "cold_start_s: 30.0",
        "default_pool: tiny",
        "pools:",
        "  tiny:",
        f"    model: {MODEL}",
        "    tp: 1",
        f"    replicas: {replicas}",
        f"    min_replicas: {replicas}",
        f"    max_replicas: {replicas}",
        f"    kv_cache_tokens: {num_blocks * BLOCK_SIZE}",
        "",
    ])


def load_args(a: argparse.Namespace) -> list[str]:
    return ["--workload", str(ROOT / WORKLOAD), "--jobs", str(a.jobs), "--concurrency", str(a.concurrency),
            "--seed", str(a.seed)]


def run_command(key: str, a: argparse.Namespace, model: Path, cluster: Path, out: Path) -> list[str]:
    """The ``pythia run`` command of one real run."""
    common = ["--system", SYSTEM, "--model", str(model), "--out", str(out), "--max-model-len", str(MAX_MODEL_LEN),
              "--num-blocks", str(a.num_blocks), "--max-duration-s", str(a.max_duration_s),
              *[f"--engine-arg={e}" for e in ENGINE_ARGS], *load_args(a)]
    if key == "vllm_router":
        return [sys.executable, "-m", "pythia.cli", "run", "--backend", "vllm-router-cpu", "--workers",
                str(a.replicas), *common]
    router = key.removeprefix("ray_")
    return [sys.executable, "-m", "pythia.cli", "run", "--backend", "ray-vllm-cpu", "--cluster", str(cluster),
            "--router", router, "--autoscaler", "none", *common]


def real_run(key: str, cmd: list[str], out: Path) -> dict[str, Any]:
    """Run one ``pythia run`` (kept when ``out`` already holds a finished run); its figures or its error."""
    if (out / "summary.json").is_file():
        print(f"  {key}: kept from an earlier run", file=sys.stderr)
        return measure_run(key, out) | {"kept_from_earlier": True}
    t0 = time.perf_counter()
    print(f"  {key}: {' '.join(c if ' ' not in c else repr(c) for c in cmd[3:6])} ...", file=sys.stderr)
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not (out / "summary.json").is_file():
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        print(f"  {key}: FAILED after {wall:.0f} s\n{tail}", file=sys.stderr)
        return {"error": f"exit status {proc.returncode}", "stderr_tail": tail, "invocation_wall_s": wall}
    print(f"  {key}: {wall:.0f} s", file=sys.stderr)
    return measure_run(key, out) | {"invocation_wall_s": wall}


# --------------------------------------------------------------------------- figures of a run


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def counter_deltas(ts: Any, col: str) -> dict[str, float]:
    """Per replica: a counter column's rise over the replay (last value minus the last one before t = 0, else the first)."""
    out: dict[str, float] = {}
    if col not in ts.columns:
        return out
    rows = ts[ts[col].notna() & ts["replica"].notna()]
    for rid, g in rows.groupby("replica"):
        g = g.sort_values("t_s")
        before = g[g["t_s"] <= 0.0]
        base = float(before[col].iloc[-1]) if len(before) else float(g[col].iloc[0])
        out[str(int(rid))] = float(g[col].iloc[-1]) - base
    return out


def balance(counts: dict[str, Any], replicas: int) -> float:
    """max/mean of calls per replica over all ``replicas`` (1.0 is even; ``replicas`` is the worst)."""
    vals = [int(v) for v in counts.values() if v is not None]
    vals += [0] * max(0, replicas - len(vals))
    total = sum(vals)
    return max(vals) / (total / len(vals)) if total else math.nan


def measure_run(key: str, out: Path) -> dict[str, Any]:
    """The comparison's figures from a run folder."""
    import pandas as pd

    s = json.loads((out / "summary.json").read_text())
    calls = pd.read_parquet(out / "calls.parquet")
    ts = pd.read_parquet(out / "timeseries.parquet")
    done = calls[calls["status"] == "finished"]
    hits, queries = counter_deltas(ts, "prefix_cache_hits"), counter_deltas(ts, "prefix_cache_queries")
    q = sum(queries.values())
    cached = done["cached_tokens"].dropna()
    if key == "vllm_router":
        per_replica = {k: v for k, v in (s.get("calls_per_worker") or {}).items()}
        source = "each worker's vllm:request_success_total over the replay"
    else:
        got = done["replica"].dropna().astype(int).value_counts().sort_index()
        per_replica = {str(k): int(v) for k, v in got.items()}
        source = "the calls table (the replica the workflow-state actor recorded for each call)"
    m: dict[str, Any] = {
        "run_folder": out.name,
        "backend": s.get("backend"), "router": s.get("router"), "system": s.get("system"),
        "jobs_completed": s.get("jobs_completed"), "calls_completed": s.get("calls_completed"),
        "calls_failed": s.get("calls_failed", 0), "lost_calls": s.get("lost_calls"),
        "mean_jct_s": _num(s.get("mean_jct_s")), "p95_jct_s": _num(s.get("p95_jct_s")),
        "mean_ttft_s": _num(s.get("mean_ttft_s")),
        "engine_prefix_hits": hits, "engine_prefix_queries": queries,
        "engine_prefix_hit_rate": sum(hits.values()) / q if q else math.nan,
        "calls_cached_token_rate": (float(cached.sum()) / float(done.loc[cached.index, "prompt_tokens"].sum())
                                    if len(cached) else math.nan),
        "calls_per_replica": per_replica, "calls_per_replica_source": source,
        "engine_healthy_after_s": _num(s.get("engine_healthy_after_s")), "run_wall_s": _num(s.get("run_wall_s")),
        "client_loop_lag_max_ms": _num(s.get("client_loop_lag_max_ms")),
    }
    if key == "vllm_router":
        m["router_prefix_decisions"] = s.get("router_prefix_decisions")
        m["router_calls_per_worker"] = s.get("router_calls_per_worker")
        m["routing_policy_us_mean"] = None  # inside the Rust process: not measurable from outside
    else:
        m["routing_decisions"] = s.get("routing_decisions")
        m["routing_policy_us_mean"] = _num(s.get("routing_policy_us_mean"))
        m["replicas_used"] = s.get("replicas_used")
    return m


# --------------------------------------------------------------------------- the simulated twin


def sim_twin(router: str, a: argparse.Namespace, cluster: Path, out: Path) -> dict[str, Any]:
    """``pythia sim`` of one router on the benchmark's cluster (calibrated cpu-2core profile)."""
    import pandas as pd

    from pythia.serve.ray_host.state import build_policies
    from pythia.sim.run import SimOptions, run_simulation

    system, _ = build_policies(SYSTEM, router=router, autoscaler="none")
    run_simulation(system, ROOT / WORKLOAD, cluster=cluster, concurrency=a.concurrency, jobs=a.jobs, seed=a.seed,
                   out=out, options=SimOptions(seed=a.seed, progress=False))
    s = json.loads((out / "summary.json").read_text())
    calls = pd.read_parquet(out / "calls.parquet")
    got = calls["replica"].dropna().astype(int).value_counts().sort_index()
    per_replica = {str(k): int(v) for k, v in got.items()}
    return {"router": router, "mean_jct_s": _num(s.get("mean_jct_s")), "p95_jct_s": _num(s.get("p95_jct_s")),
            "prefix_hit_rate": _num(s.get("prefix_hit_rate")), "calls_per_replica": per_replica,
            "balance_max_over_mean": balance(per_replica, a.replicas), "jobs_completed": s.get("jobs_completed")}


# --------------------------------------------------------------------------- routing cost at 200 in flight


def routing_cost(router: str, replicas: int, total_blocks: int, inflight: int = INFLIGHT, repeats: int = 400,
                 jobs: int = 40) -> dict[str, Any]:
    """Time ``WorkflowState.route`` (what the host's actor runs per decision) with ``inflight`` live calls.

    The calls are annotated as the replay client annotates them (job, role, call id, prompt
    segments: a 1,200-token job context and 80 tokens of its own), spread over ``jobs`` jobs and
    registered with the service; each replica's stats carry its share of them as running
    calls and as many cached block hashes as its KV pool has blocks (``total_blocks``; a
    replica publishes at most 4,096). The decision timed is a further call of one of those jobs.
    """
    from pythia.serve.ray_host.state import WorkflowState
    from pythia.serve.ray_host.views import parse_call, replica_stats
    from pythia.workflow.hashing import stable_key

    st = WorkflowState(SYSTEM, {"tiny": (replicas, replicas, MODEL)}, router=router, autoscaler="none")

    def record(job: int, call: int) -> dict[str, Any]:
        segs = [stable_key("context", f"job-{job}"), 0, 1200, stable_key("fresh", f"job-{job}", call), 0, 80]
        body = {"prompt": [1 + (call + i) % 500 for i in range(1280)],
                "vllm_xargs": {"pythia.workflow_type": "shared-context", "pythia.workflow_id": f"job-{job}",
                               "pythia.agent_role": "analyst", "pythia_hint.call_id": call, "pythia_hint.prompt": segs}}
        return parse_call(body, {}, BLOCK_SIZE).record

    running: dict[int, list[dict[str, Any]]] = {r: [] for r in range(replicas)}
    hashes: dict[int, list[int]] = {r: [] for r in range(replicas)}
    cap = min(total_blocks, 4096)
    filler = iter(range(10**9, 2 * 10**9))
    for i in range(inflight):
        rec = record(i % jobs, i)
        st.call_issued(rec)
        r = (i % jobs) % replicas
        running[r].append({k: rec[k] for k in ("request_id", "seq", "job_id", "workflow_type", "workflow_id",
                                                "agent_role", "agent_id", "call_id", "prompt_tokens", "hints")}
                          | {"output_tokens": 10, "arrival_s": time.time()})
        hashes[r].extend(int(h) for h in rec["block_hashes"])
    cands = [replica_stats(replica_id=r, pool="tiny", state="up", num_running=len(running[r]), num_waiting=0,
                           kv_usage=0.5, total_blocks=total_blocks, block_size=BLOCK_SIZE,
                           cached_hashes=([next(filler) for _ in range(cap)] + hashes[r])[-cap:],
                           running=running[r]) for r in range(replicas)]
    for c in cands:
        st.report_replica(c)
    probe = [record(k % jobs, inflight + k) for k in range(repeats)]
    for rec in probe[:20]:  # warm
        st.route(rec, cands)
    ns0, n0 = st.counters["route_ns"], st.counters["routed"]
    times = []
    for rec in probe:
        t = time.perf_counter()
        st.route(rec, cands)
        times.append(time.perf_counter() - t)
    policy_us = (st.counters["route_ns"] - ns0) / 1e3 / max(1, st.counters["routed"] - n0)
    times.sort()
    return {"router": router, "replicas": replicas, "calls_in_flight": len(st.in_flight), "decisions": len(times),
            "total_blocks": total_blocks, "cached_hashes_per_replica": cap,
            "route_us_median": 1e6 * statistics.median(times), "route_us_p99": 1e6 * times[int(0.99 * (len(times) - 1))],
            "route_us_mean": 1e6 * statistics.fmean(times), "policy_us_mean": policy_us}


# --------------------------------------------------------------------------- report


def _f(x: Any, fmt: str = "{:.2f}", none: str = "n/a") -> str:
    v = _num(x)
    return none if math.isnan(v) else fmt.format(v)


def ratios(res: dict[str, Any]) -> None:
    """Each real run's figures relative to round_robin of the same invocation (in place)."""
    base = res["real"].get("ray_round_robin", {})
    for key, m in res["real"].items():
        if "error" in m or "error" in base:
            continue
        m["mean_jct_vs_round_robin"] = m["mean_jct_s"] / base["mean_jct_s"] if base.get("mean_jct_s") else math.nan
        m["p95_jct_vs_round_robin"] = m["p95_jct_s"] / base["p95_jct_s"] if base.get("p95_jct_s") else math.nan
        m["prefix_hit_rate_minus_round_robin"] = m["engine_prefix_hit_rate"] - base["engine_prefix_hit_rate"]
    for key, twin in res.get("sim", {}).items():
        real = res["real"].get(twin.get("twin_of", ""), {})
        if "error" not in real and real.get("mean_jct_s"):
            twin["mean_jct_rel_error"] = abs(twin["mean_jct_s"] - real["mean_jct_s"]) / real["mean_jct_s"]
            twin["prefix_hit_rate_minus_real"] = twin["prefix_hit_rate"] - real["engine_prefix_hit_rate"]


def render_md(res: dict[str, Any]) -> str:
    """``serving.md`` from the results."""
    cfg = res["config"]
    real, sim, cost = res["real"], res.get("sim", {}), res.get("routing_cost", {})
    n = cfg["replicas"]
    lines = [
        "# Serving on CPU replicas: Pythia's router, round-robin and the Rust vllm-router",
        "",
        f"Machine: {res['machine']['cpus']} CPUs (shared), load average {res['machine']['load_avg_1min_at_start']:.2f} "
        f"at start. {n} vLLM-CPU replicas of the tiny random Llama (stock vLLM, `--system {SYSTEM}`, "
        f"`--enforce-eager`, {cfg['num_blocks']} KV blocks of {BLOCK_SIZE} tokens each, context {MAX_MODEL_LEN}); "
        f"workload `{cfg['workload']}` ({cfg['jobs']} jobs, closed loop of {cfg['concurrency']}, seed {cfg['seed']}): "
        "a planner, 3-5 parallel analysts and a writer per job, every prompt led by the job's shared context "
        "(median 1,200 tokens). One run each, one at a time, in one invocation"
        + (" (quick mode)" if cfg.get("quick") else "") + ":",
        "",
        "```bash",
        res["command"],
        "```",
        "",
        "| | " + " | ".join(label for key, label in RUNS) + " |",
        "| --- |" + " --- |" * len(RUNS),
    ]

    def row(name: str, fn: Any) -> str:
        cells = []
        for key, _ in RUNS:
            m = real.get(key, {})
            cells.append("failed" if "error" in m else (fn(m) if m else "not run"))
        return f"| {name} | " + " | ".join(cells) + " |"

    lines += [
        row("jobs / calls completed", lambda m: f"{m['jobs_completed']} / {m['calls_completed']}"),
        row("mean JCT", lambda m: _f(m["mean_jct_s"], "{:.2f} s")),
        row("P95 JCT", lambda m: _f(m["p95_jct_s"], "{:.2f} s")),
        row("mean JCT / round_robin's", lambda m: _f(m.get("mean_jct_vs_round_robin"), "{:.3f}")),
        row("P95 JCT / round_robin's", lambda m: _f(m.get("p95_jct_vs_round_robin"), "{:.3f}")),
        row("engine prefix hit rate", lambda m: _f(m["engine_prefix_hit_rate"], "{:.3f}")),
        row("cached tokens / prompt tokens (calls table)", lambda m: _f(m["calls_cached_token_rate"], "{:.3f}")),
        row("calls per replica", lambda m: " / ".join(str(v) for _, v in sorted(m["calls_per_replica"].items()))),
        row("balance (max/mean calls)", lambda m: _f(m.get("balance_max_over_mean"), "{:.2f}")),
        row("routing policy time per decision", lambda m: (
            "not measurable (inside the Rust process)" if m.get("routing_policy_us_mean") is None
            else _f(m["routing_policy_us_mean"], "{:.0f} us"))),
        row("router's prefix decisions", lambda m: (
            ", ".join(f"{v} {k}" for k, v in sorted((m.get("router_prefix_decisions") or {}).items())) or "")),
        row("mean time to first token", lambda m: _f(m["mean_ttft_s"], "{:.3f} s")),
        row("client loop lag, max", lambda m: _f(m.get("client_loop_lag_max_ms"), "{:.0f} ms")),
        row("replicas healthy after / run start to teardown", lambda m: (
            f"{_f(m['engine_healthy_after_s'], '{:.0f} s')} / {_f(m['run_wall_s'], '{:.0f} s')}")),
        "",
    ]
    failed = [(label, real[key]) for key, label in RUNS if "error" in real.get(key, {})]
    for label, m in failed:
        lines += [f"**{label} failed** ({m['error']}):", "", "```", m.get("stderr_tail", ""), "```", ""]
    lines += [
        "Hit rates are token shares: the engines' `vllm:prefix_cache_hits` over `vllm:prefix_cache_queries`, summed "
        "over the replicas for the replay (warm-up excluded). Calls per replica come from the calls table on the Ray "
        "host (the replica the workflow-state actor recorded for each call) and from each worker's "
        "`vllm:request_success_total` behind the Rust router. The client loop lag is how late the replay client's "
        "event loop woke at worst: every client timestamp is late by up to that much, a sign of the CPU contention "
        "below.",
        "",
        "**Reading the JCT ratios across hosts.** The Ray host adds its own path to every call, which the Rust router "
        "does not: measured with a fake engine (`benchmarks/bench_ray_overhead.py`, `docs/ray-serve.md`) about 24 ms "
        "before the first token and about 2.4 ms per streamed chunk on this machine, where it shares the two cores "
        "with the engines and the client. So the Rust router's JCT against the Ray host's includes that overhead, and "
        "only the two Ray runs compare routing alone in JCT. The prefix-hit and balance figures do not depend on the "
        "host. One run each on a shared 2-core machine: run-to-run noise in JCT is ~10-20% here "
        "(the noise floor of `results/bench/fidelity.md`).",
        "",
        "## The simulated twin",
        "",
        f"`pythia sim` on the same cluster (one pool of {n} replicas, the calibrated `{GPU}/{MODEL}` profile of "
        f"`benchmarks/bench_fidelity.py`, KV pool of {cfg['num_blocks'] * BLOCK_SIZE} tokens per replica), the same "
        "workload, jobs and seed. `prefix_aware` is the simulator's nearest router to cache_aware, not a model of it.",
        "",
        "| router | sim mean JCT | real mean JCT | relative error | sim P95 JCT | sim prefix hit rate | real | sim calls per replica |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, router, twin_of in SIM_ROUTERS:
        t = sim.get(key)
        if not t:
            continue
        r = real.get(twin_of, {})
        label = dict(RUNS).get(twin_of, twin_of)
        lines.append(
            f"| {router} (against {label}) | {_f(t.get('mean_jct_s'), '{:.2f} s')} | "
            f"{_f(r.get('mean_jct_s'), '{:.2f} s')} | {_f(t.get('mean_jct_rel_error'), '{:.1%}')} | "
            f"{_f(t.get('p95_jct_s'), '{:.2f} s')} | {_f(t.get('prefix_hit_rate'), '{:.3f}')} | "
            f"{_f(r.get('engine_prefix_hit_rate'), '{:.3f}')} | "
            + " / ".join(str(v) for _, v in sorted(t.get("calls_per_replica", {}).items())) + " |")
    lines += [
        "",
        "The profile was fitted on runs of one engine alone with the client (`pythia run --backend vllm-cpu`), and the "
        "simulator gives each replica that profile as if it had the machine to itself. Here the replicas, the client "
        "and, on the Ray host, Serve's proxy, the ingress, the replica proxies and the workflow-state actor share the "
        "same two cores, which the simulator does not model. So the JCT error is mostly that contention (largest on "
        "the Ray host, whose Python processes handle every streamed chunk) and the host's own path; the prefix hit "
        "rates, which do not depend on speed, are where the twin can be compared with the real runs.",
        "",
        f"## Routing decision cost at {INFLIGHT} calls in flight",
        "",
        f"`WorkflowState.route` (what the host's workflow-state actor runs for every decision) with {INFLIGHT} live "
        f"annotated calls registered over {n} replicas whose stats carry them as running calls and as many cached "
        "block hashes as the KV pool has blocks (the replicas' estimate is bounded by the pool; they publish at most "
        "4,096); a further call of one of those jobs routed repeatedly. The benchmark's pool, and the largest "
        "published set:",
        "",
        "| router | cached hashes per replica | decisions | median | p99 | mean | the policy alone, mean |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in cost.values():
        lines.append(f"| {c['router']} | {c.get('cached_hashes_per_replica', '')} | {c['decisions']} | "
                     f"{_f(c['route_us_median'], '{:.0f} us')} | "
                     f"{_f(c['route_us_p99'], '{:.0f} us')} | {_f(c['route_us_mean'], '{:.0f} us')} | "
                     f"{_f(c['policy_us_mean'], '{:.0f} us')} |")
    if cost:
        verdict = "; ".join(
            f"{c['router']} with {c.get('cached_hashes_per_replica', '?')} hashes: mean {c['route_us_mean'] / 1e3:.2f} ms "
            f"({'met' if c['route_us_mean'] <= 1000 else 'not met'})" for c in cost.values())
        lines += ["", f"Target: at most 1 ms per decision at {INFLIGHT} calls in flight. {verdict}. The time outside the "
                      "policy grows with the running calls the stats carry; a replica's published hashes are made into a set "
                      "once per report, not per decision (`WorkflowState._hash_set`). This is the decision inside the actor; the Ray "
                      "actor call around it (one round trip per decision) is part of the host's per-call overhead "
                      "measured by `benchmarks/bench_ray_overhead.py`."]
    lines += ["", "## Not measured", "",
              "- One run per configuration: no repeat, so no noise floor of this comparison itself.",
              "- The Rust router's decision time (inside its process; its metrics have no timing of the policy).",
              "- The full Pythia system (its scheduler and cache in the engines' plugin): every run here uses stock "
              "vLLM engines, so that only the routing differs.",
              "- More replicas than the machine has cores for one thread each."]
    if res.get("not_done"):
        lines += [f"- {x}" for x in res["not_done"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def measure_routing(res: dict[str, Any], a: argparse.Namespace) -> None:
    """The routing decision's cost at 200 calls in flight, with this run's pool and with the most hashes published."""
    res["routing_cost"] = {}
    for blocks in (a.num_blocks, 4096):
        for router in ("round_robin", "pythia"):
            res["routing_cost"][f"{router}@{blocks}"] = routing_cost(router, a.replicas, blocks,
                                                                     repeats=100 if a.quick else 400)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench", help="folder of serving.json/.md")
    ap.add_argument("--replicas", type=int, default=2, help="replicas (workers) in every run (default 2)")
    ap.add_argument("--jobs", type=int, default=8, help="jobs of the workload (default 8)")
    ap.add_argument("--concurrency", type=int, default=4, help="jobs in flight, closed loop (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-blocks", type=int, default=256, help="KV blocks per replica (default 256)")
    ap.add_argument("--max-duration-s", type=float, default=600.0)
    ap.add_argument("--quick", action="store_true", help="3 jobs, 2 in flight, fewer routing-cost repeats")
    ap.add_argument("--work", type=Path, help="keep the run folders here and resume (default: a temporary folder)")
    ap.add_argument("--report-only", action="store_true", help="re-render serving.md from serving.json")
    ap.add_argument("--routing-only", action="store_true",
                    help="measure the routing cost again into serving.json (the runs are kept), then re-render")
    a = ap.parse_args()
    dest = a.out / "serving.json"
    if a.report_only or a.routing_only:
        res = json.loads(dest.read_text())
        if a.routing_only:
            measure_routing(res, a)
            dest.write_text(json.dumps(res, indent=1, default=str) + "\n")
        (a.out / "serving.md").write_text(render_md(res))
        return
    if a.quick:
        a.jobs, a.concurrency = min(a.jobs, 3), min(a.concurrency, 2)
    if not 1 <= a.replicas <= 4:
        raise SystemExit("option --replicas must be between 1 and 4 on this machine")
    from pythia.serve.tiny_model import default_cache_dir, make_tiny_model

    t0 = time.perf_counter()
    work = a.work or Path(tempfile.mkdtemp(prefix="pythia-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    model = make_tiny_model(default_cache_dir())
    cluster = work / "cluster.yaml"
    cluster.write_text(cluster_yaml(a.replicas, a.num_blocks))
    shown = ["python", "benchmarks/bench_serving.py", "--replicas", str(a.replicas), "--jobs", str(a.jobs),
             "--concurrency", str(a.concurrency)] + (["--quick"] if a.quick else [])
    res: dict[str, Any] = {
        "command": " ".join(shown),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_avg_1min_at_start": os.getloadavg()[0]},
        "config": {"replicas": a.replicas, "jobs": a.jobs, "concurrency": a.concurrency, "seed": a.seed,
                   "num_blocks": a.num_blocks, "block_size": BLOCK_SIZE, "max_model_len": MAX_MODEL_LEN,
                   "engine_args": ENGINE_ARGS, "system": SYSTEM, "workload": WORKLOAD, "quick": a.quick,
                   "cluster_yaml": cluster.read_text()},
        "commands": {}, "real": {}, "sim": {}, "routing_cost": {}, "not_done": [],
    }
    for key, _ in RUNS:
        out = work / key
        cmd = run_command(key, a, model, cluster, out)
        res["commands"][key] = " ".join(["pythia", *cmd[3:]]).replace(str(model), "TINY_MODEL").replace(
            str(cluster), "CLUSTER.yaml").replace(str(out), key).replace(str(ROOT) + "/", "")
        m = real_run(key, cmd, out)
        if "error" not in m:
            m["balance_max_over_mean"] = balance(m["calls_per_replica"], a.replicas)
        res["real"][key] = m
    for key, router, twin_of in SIM_ROUTERS:
        try:
            res["sim"][key] = sim_twin(router, a, cluster, work / key) | {"twin_of": twin_of}
        except Exception as e:  # noqa: BLE001 - recorded, the rest still runs
            res["not_done"].append(f"simulated twin with router {router}: {type(e).__name__}: {e}")
    measure_routing(res, a)
    ratios(res)
    for key, label in RUNS:
        if "error" in res["real"].get(key, {}):
            res["not_done"].append(f"{label}: the run failed ({res['real'][key]['error']}); see its stderr above")
    res["wall_s"] = time.perf_counter() - t0
    a.out.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(res, indent=1, default=str) + "\n")
    (a.out / "serving.md").write_text(render_md(res))
    print((a.out / "serving.md").read_text())


if __name__ == "__main__":
    main()
