"""Regime axes on constructed runs: the KV working set, load imbalance, GPU-seconds, goodput."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pythia.regime import gpu_seconds, goodput, kv_working_set_ratio, replica_load_imbalance, working_set_timeline


def _calls(rows: list[tuple]) -> pd.DataFrame:
    cols = ["job_id", "agent_id", "pool", "replica", "issue_s", "finish_s", "prompt_tokens", "output_tokens", "computed_tokens"]
    return pd.DataFrame(rows, columns=cols)


# Agent a of job j: two calls with a tool gap (10..15) between them; agent b of job k: one long call.
CALLS = _calls([
    ("j", "a", "p", 0, 0.0, 10.0, 32, 16, 32),    # 2 blocks at issue, 3 at its end
    ("j", "a", "p", 0, 15.0, 20.0, 64, 16, 16),   # 4 blocks, then 5; the agent ends at 20
    ("k", "b", "p", 1, 5.0, 25.0, 160, 0, 160),   # 10 blocks from 5 to 25
])


def test_working_set_counts_idle_agents_and_releases_ended_ones() -> None:
    tl = working_set_timeline(CALLS, 16, end_s=30.0)["p"]
    at = lambda t: int(tl[tl["t_s"] <= t]["blocks"].iloc[-1])  # noqa: E731
    assert at(1) == 2 and at(6) == 12
    assert at(12) == 13  # agent a is in its tool gap and still holds its conversation
    assert at(16) == 14
    assert at(21) == 10 and at(26) == 0


def test_working_set_ratio_is_the_peak_over_capacity() -> None:
    assert kv_working_set_ratio(CALLS, {"p": 7}, 16, end_s=30.0) == {"p": pytest.approx(2.0)}
    assert math.isnan(kv_working_set_ratio(CALLS, {}, 16, end_s=30.0)["p"])


def test_an_unfinished_call_holds_its_blocks_to_the_end() -> None:
    calls = _calls([("j", "a", "p", 0, 0.0, float("nan"), 48, 10, 48)])
    tl = working_set_timeline(calls, 16, end_s=9.0)["p"]
    assert int(tl["blocks"].max()) == 3 and tl["t_s"].max() == 9.0


def test_load_imbalance() -> None:
    # replica 0: 32 + 16 + 16 + 16 = 80 tokens; replica 1: 160; the busiest over the mean
    assert replica_load_imbalance(CALLS) == pytest.approx(160 / 120)
    one = CALLS.assign(replica=0)
    assert replica_load_imbalance(one) == 1.0


def test_gpu_seconds_integrates_held_replicas() -> None:
    ts = pd.DataFrame({"t_s": [0.0, 0.0, 10.0, 20.0], "pool": ["p"] * 4, "replicas_up": [-1, 1, 2, 2],
                       "replicas_starting": [-1, 1, 0, 0]})  # a replica's own row carries -1
    gpu, start = gpu_seconds(ts, {"p": 2})
    assert gpu == pytest.approx((2 * 10 + 2 * 10) * 2) and start == pytest.approx(10.0)


def test_goodput_counts_jobs_within_twice_their_bound() -> None:
    jobs = pd.DataFrame({"completed": [True, True, False], "jct_s": [10.0, 30.0, float("nan")],
                         "lower_bound_jct_s": [6.0, 10.0, 5.0]})
    assert goodput(jobs, 100.0) == pytest.approx(0.01)
    assert math.isnan(goodput(jobs.drop(columns="lower_bound_jct_s"), 100.0))


def test_reuse_counters_split_missed_reuse_from_preemption_recompute() -> None:
    from pythia.regime import reuse_counters

    calls = pd.DataFrame({
        "job_id": ["j", "j", "k"], "call_id": [0, 1, 0], "status": ["finished"] * 3,
        "prompt_tokens": [100, 200, 100], "output_tokens": [10, 10, 1],
        # call j/1 could reuse 160 tokens and found 96; k/0 was preempted once and recomputed 40
        "cached_tokens": [0, 96, 0], "computed_tokens": [100 + 9, 104 + 9, 100 + 40],
    })
    got = reuse_counters(calls, {("j", 1): 160, ("k", 0): 0})
    assert got["cross_call_prefix_hit_rate"] == pytest.approx(96 / 160)
    assert got["missed_reusable_tokens"] == 64
    assert got["preemption_recomputed_tokens"] == 40
    assert got["recomputed_prefill_tokens"] == 104
