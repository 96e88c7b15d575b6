"""Regime axes and bottleneck counters of a run, computed from its tables alone.

The paper's gains live in one regime: load near saturation and a live KV working set above
the KV pool. These figures say where a run sits, so every comparison can state its regime:

- ``kv_working_set_ratio``: the peak over time of the summed KV blocks of the live agents of
  a pool (an agent is live from its first call's issue to its last call's end, including the
  tool gaps in between; between calls it holds the conversation so far, its last prompt plus
  output), over that pool's KV capacity (blocks per replica times the replicas it starts
  with). Shared prefixes are counted once per agent, so the ratio is the working set an
  engine without sharing would need; above 1 the cache cannot keep every idle agent. The
  run's figure is the largest over its pools.
- ``replica_load_imbalance``: per pool, the tokens processed (prefill computed plus output)
  by its busiest replica over the mean of its replicas that served calls; 1 is perfect. The
  run's figure is the largest over pools with more than one replica.
- ``gpu_seconds`` and ``cold_start_replica_s``: GPUs held (up or starting) and replicas
  starting, integrated over the run's time series.
- ``goodput_jobs_per_s``: jobs per second that finished within ``GOODPUT_STRETCH`` times their
  lower-bound JCT (as Autellix reports throughput at a latency target); needs the jobs
  table's ``lower_bound_jct_s``.

Only run tables are read, so simulated and real runs get the same figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

GOODPUT_STRETCH = 2.0


def working_set_timeline(calls: pd.DataFrame, block_size: int, end_s: float) -> dict[str, pd.DataFrame]:
    """Per pool, the summed KV blocks of live agents over time (``t_s``, ``blocks``)."""
    if not len(calls):
        return {}
    df = calls[["job_id", "agent_id", "pool", "issue_s", "finish_s", "prompt_tokens", "output_tokens"]].copy()
    df = df[np.isfinite(df["issue_s"].to_numpy(dtype=float))]
    df["finish_s"] = df["finish_s"].astype(float).fillna(end_s)
    bs = max(1, int(block_size))
    at_issue = -(-df["prompt_tokens"].astype(np.int64) // bs)
    at_finish = -(-(df["prompt_tokens"].astype(np.int64) + df["output_tokens"].astype(np.int64)) // bs)
    events = pd.concat([
        pd.DataFrame({"job_id": df["job_id"], "agent_id": df["agent_id"], "pool": df["pool"], "t": df["issue_s"],
                      "order": 0, "size": at_issue}),
        pd.DataFrame({"job_id": df["job_id"], "agent_id": df["agent_id"], "pool": df["pool"], "t": df["finish_s"],
                      "order": 1, "size": at_finish}),
    ], ignore_index=True)
    events = events.sort_values(["job_id", "agent_id", "t", "order"], kind="stable")
    key = ["job_id", "agent_id"]
    events["delta"] = events["size"] - events.groupby(key)["size"].shift(fill_value=0)
    last = events.groupby(key, sort=False).tail(1)
    # The agent's last call ended: its conversation leaves the working set.
    release = pd.DataFrame({"pool": last["pool"], "t": last["t"], "order": 2, "delta": -last["size"]})
    allev = pd.concat([events[["pool", "t", "order", "delta"]], release], ignore_index=True)
    out: dict[str, pd.DataFrame] = {}
    for pool, g in allev.groupby("pool", sort=True):
        # At equal times releases go first, so a hand-over is not counted as a peak.
        g = g.assign(neg=g["delta"] >= 0).sort_values(["t", "neg"], kind="stable")
        out[str(pool)] = pd.DataFrame({"t_s": g["t"].to_numpy(dtype=float), "blocks": np.cumsum(g["delta"].to_numpy())})
    return out


def kv_working_set_ratio(calls: pd.DataFrame, capacity_blocks: Mapping[str, int], block_size: int,
                         end_s: float) -> dict[str, float]:
    """Per pool, the peak summed KV blocks of live agents over the pool's KV capacity."""
    out: dict[str, float] = {}
    for pool, tl in working_set_timeline(calls, block_size, end_s).items():
        cap = capacity_blocks.get(pool, 0)
        peak = float(tl["blocks"].max()) if len(tl) else 0.0
        out[pool] = peak / cap if cap > 0 else float("nan")
    return out


def replica_load_imbalance(calls: pd.DataFrame) -> float:
    """Busiest replica's processed tokens over the mean of its pool (largest over pools)."""
    if not len(calls) or "replica" not in calls:
        return float("nan")
    done = calls[calls["replica"].notna()]
    if not len(done):
        return float("nan")
    work = done["computed_tokens"].fillna(0).astype(float) + done["output_tokens"].astype(float)
    per = work.groupby([done["pool"], done["replica"]]).sum()
    worst = float("nan")
    for _, g in per.groupby(level=0):
        if len(g) > 1 and g.mean() > 0:
            r = float(g.max() / g.mean())
            worst = r if math.isnan(worst) else max(worst, r)
    return worst if not math.isnan(worst) else 1.0


def gpu_seconds(ts: pd.DataFrame, tp_by_pool: Mapping[str, int]) -> tuple[float, float]:
    """GPU-seconds held (replicas up or starting, times their TP) and replica-seconds starting."""
    if not len(ts) or "replicas_up" not in ts:
        return float("nan"), float("nan")
    # Replica rows carry -1 here; the pool's own row per sample carries the counts.
    per_pool = ts[ts["replicas_up"] >= 0].drop_duplicates(["t_s", "pool"])[["t_s", "pool", "replicas_up", "replicas_starting"]]
    gpu = start = 0.0
    for pool, g in per_pool.groupby("pool"):
        g = g.sort_values("t_s")
        t = g["t_s"].to_numpy(dtype=float)
        if len(t) < 2:
            continue
        dt = np.diff(t)
        held = (g["replicas_up"].to_numpy(dtype=float) + g["replicas_starting"].to_numpy(dtype=float))[:-1]
        gpu += float((held * dt).sum()) * tp_by_pool.get(str(pool), 1)
        start += float((g["replicas_starting"].to_numpy(dtype=float)[:-1] * dt).sum())
    return gpu, start


def goodput(jobs: pd.DataFrame, simulated_s: float, stretch: float = GOODPUT_STRETCH) -> float:
    """Jobs per second that finished within ``stretch`` times their lower-bound JCT."""
    if "lower_bound_jct_s" not in jobs or simulated_s <= 0 or not len(jobs):
        return float("nan")
    ok = jobs["completed"].astype(bool) & (jobs["jct_s"] <= stretch * jobs["lower_bound_jct_s"] * (1 + 1e-9))
    return float(ok.sum()) / simulated_s


def regime_summary(calls: pd.DataFrame, jobs: pd.DataFrame, ts: pd.DataFrame, *, capacity_blocks: Mapping[str, int],
                   block_size: int, tp_by_pool: Mapping[str, int], simulated_s: float) -> dict[str, Any]:
    """The regime axes and bottleneck counters of one run (see the module docstring)."""
    ratios = kv_working_set_ratio(calls, capacity_blocks, block_size, simulated_s)
    finite = [v for v in ratios.values() if not math.isnan(v)]
    gpu_s, cold_s = gpu_seconds(ts, tp_by_pool)
    return {
        "kv_working_set_ratio": max(finite) if finite else float("nan"),
        "kv_working_set_ratio_by_pool": ratios,
        "replica_load_imbalance": replica_load_imbalance(calls),
        "gpu_seconds": gpu_s,
        "cold_start_replica_s": cold_s,
        "goodput_jobs_per_s": goodput(jobs, simulated_s),
        "goodput_stretch": GOODPUT_STRETCH,
    }


def reuse_counters(calls: pd.DataFrame, reusable_tokens: Mapping[tuple[str, int], int]) -> dict[str, Any]:
    """Cross-call prefix reuse of the finished calls, against what each call could reuse.

    ``reusable_tokens`` maps ``(job_id, call_id)`` to the prompt tokens another call had
    computed before it (the lower bound's reusable prefix, ``pythia.sim.bounds``):

    - ``cross_call_prefix_hit_rate``: the share of those tokens found cached at admission;
    - ``missed_reusable_tokens``: reusable tokens computed again (evicted or on another replica);
    - ``preemption_recomputed_tokens``: prefill computed again after a preemption;
    - ``recomputed_prefill_tokens``: the two together.
    """
    done = calls[calls["status"] == "finished"] if len(calls) else calls
    if not len(done):
        return {"cross_call_prefix_hit_rate": float("nan"), "missed_reusable_tokens": 0,
                "preemption_recomputed_tokens": 0, "recomputed_prefill_tokens": 0}
    keys = list(zip(done["job_id"], done["call_id"].astype(int)))
    reuse = np.array([reusable_tokens.get(k, 0) for k in keys], dtype=float)
    cached = done["cached_tokens"].to_numpy(dtype=float)
    hit = np.minimum(cached, reuse).sum()
    missed = float(np.maximum(reuse - cached, 0).sum())
    # computed_tokens counts every token the engine computed for the call: its uncached
    # prompt, then one per decode step after the first token, plus any recomputation.
    first_pass = done["prompt_tokens"].to_numpy(dtype=float) - cached + np.maximum(done["output_tokens"].to_numpy(dtype=float) - 1, 0)
    again = float(np.maximum(done["computed_tokens"].to_numpy(dtype=float) - first_pass, 0).sum())
    return {
        "cross_call_prefix_hit_rate": float(hit / reuse.sum()) if reuse.sum() > 0 else float("nan"),
        "missed_reusable_tokens": int(missed),
        "preemption_recomputed_tokens": int(again),
        "recomputed_prefill_tokens": int(missed + again),
    }
