"""Fast-forward and the extent-based KV pool give exactly what stepping with the block pool gives.

Workloads with long prompts (chunked prefill over several iterations), shared heads (prefix
hits, concurrent registration of the same content) and tight memory (preemption), run four
ways: fast-forward or stepping, extents or blocks. Every output table must match row for row.
"""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pythia.policy.systems import load_system, parse_system
from pythia.sim.config import SimOptions, parse_cluster
from pythia.sim.kvcache import KVCache
from pythia.sim.kvextents import ExtentKVCache
from pythia.sim.run import run_simulation
from pythia.workflow.trace import Call, Job, Trace, segments

from sim_helpers import chain_trace
from test_sim_run import SMALL, TIGHT, tight_vllm

ONE = parse_cluster({"name": "one", "gpu": "a100-80gb", "default_pool": "p", "pools": {
    "p": {"model": "qwen2.5-7b", "replicas": 1}}}, "test")


def chunked_vllm():
    """The vllm system with ``long_prefill_token_threshold`` 512: several calls prefill side by side."""
    obj = yaml.safe_load(load_system("vllm").path.read_text())
    obj["engine"]["long_prefill_token_threshold"] = 512
    return parse_system(obj, "test", "vllm-chunked")


def run(trace: Trace, cluster, system="vllm", **opts):
    return run_simulation(system, trace, cluster=cluster, options=SimOptions(**opts))


def assert_same(a, b) -> None:
    pd.testing.assert_frame_equal(a.calls, b.calls)
    pd.testing.assert_frame_equal(a.jobs, b.jobs)
    pd.testing.assert_frame_equal(a.timeseries, b.timeseries)
    for key in ("simulated_s", "kv_evictions", "iterations", "preemptions", "prefix_hit_rate"):
        assert a.summary[key] == b.summary[key], key


def four_ways(trace: Trace, cluster, system="vllm"):
    """The reference (stepping, block pool) and the three other combinations, all checked."""
    ref = run(trace, cluster, system, fast_forward=False, kv_index="blocks", check_invariants=True)
    for ff, kv in ((True, "auto"), (False, "auto"), (True, "blocks")):
        other = run(trace, cluster, system, fast_forward=ff, kv_index=kv, check_invariants=True)
        assert_same(ref, other)
    return run(trace, cluster, system)


def test_prefill_runs_are_fast_forwarded_exactly():
    # 9k-token prompts: four or five 2,048-token chunks each, next to running decodes.
    trace = chain_trace(12, concurrency=4, prompt=9000, output=200, shared=1024)
    res = four_ways(trace, ONE)
    assert res.summary["fast_forwarded_prefill_iterations"] > 0
    assert res.summary["prefix_hit_rate"] > 0
    assert res.summary["calls_completed"] == 36


def test_preemption_and_chunked_prefill_under_memory_pressure():
    trace = chain_trace(8, concurrency=8, model="x", prompt=5000, output=1500, shared=512, n_calls=2)
    res = four_ways(trace, TIGHT, tight_vllm())
    assert res.summary["preemptions"] > 0
    assert res.summary["fast_forwarded_prefill_iterations"] > 0


def test_identical_prompts_prefilling_together_share_blocks():
    # Fan-out of one long prompt: the copies register the same content while prefilling.
    calls = [Call(call_id=0, agent_role="lead", model="m", input_tokens=3000, output_tokens=50,
                  prompt=segments([(5, 0, 3000)]))]
    for c in range(1, 5):
        calls.append(Call(call_id=c, agent_role="worker", model="m", input_tokens=7000, output_tokens=80 + c,
                          deps=(0,), prompt=segments([(5, 0, 3000), (6, 0, 4000)])))
    jobs = [Job(job_id=f"j{i}", workflow_type="fan", workflow_id=f"w{i}", calls=calls, arrival_s=0.3 * i)
            for i in range(3)]
    trace = Trace(jobs=jobs, arrival={"process": "timestamps", "time_scale": 1.0})
    for system in ("vllm", chunked_vllm()):
        res = four_ways(trace, ONE, system)
        assert res.summary["calls_completed"] == 15 and res.summary["prefix_hit_rate"] > 0.3


@st.composite
def long_prompt_traces(draw):
    jobs = []
    for j in range(draw(st.integers(1, 4))):
        calls = []
        for c in range(draw(st.integers(1, 4))):
            deps = (c - 1,) if c and draw(st.booleans()) else ()
            p = draw(st.integers(1, 12_000))
            head = draw(st.sampled_from([0, 0, 1000, 4096, p]))
            head = min(head, p)
            segs = [(draw(st.sampled_from([71, 72])), 0, head)] if head else []
            if p - head:
                segs.append((3000 + j * 10 + c, 0, p - head))
            calls.append(Call(call_id=c, agent_role=f"r{c}", model="m", input_tokens=p,
                              output_tokens=draw(st.integers(0, 600)), deps=deps,
                              gap_s=draw(st.sampled_from([0.0, 0.1, 0.7])), prompt=segments(segs)))
        jobs.append(Job(job_id=f"j{j}", workflow_type="t", workflow_id=f"w{j}", calls=calls,
                        arrival_s=draw(st.sampled_from([0.0, 0.2, 1.5]))))
    return Trace(jobs=jobs, arrival={"process": "timestamps", "time_scale": 1.0})


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(long_prompt_traces(), st.sampled_from(["one", "one-chunked", "tight"]))
def test_random_long_prompt_workloads_four_ways(trace, which):
    if which == "one":
        four_ways(trace, ONE)
    elif which == "one-chunked":
        four_ways(trace, ONE, chunked_vllm())
    else:
        four_ways(trace, TIGHT, tight_vllm())


# --------------------------------------------------------------------------- the two pools, op by op


class Req:
    def __init__(self, hashes: list[int]) -> None:
        self.hlist = hashes
        self.kv_ref = 0
        self.kv_priv = 0
        self.kv_path: list = []


def admit(kv, req: Req, tokens: int) -> int | None:
    """Admission as the engine does it; returns the hit or None when it does not fit."""
    bs = kv.block_size
    limit = (tokens - 1) // bs
    k = kv.match(req.hlist, limit)
    need = -(-tokens // bs) - k
    if need + kv.idle_hits(req.hlist, k) > kv.available():
        return None
    kv.acquire(req, k)
    kv.take(req, need)
    kv.register(req, min(tokens // bs, len(req.hlist)))
    return k


def grow(kv, req: Req, tokens: int) -> bool:
    """A running call's allocation for ``tokens`` known tokens (more blocks, register the full ones)."""
    bs = kv.block_size
    need = -(-tokens // bs) - req.kv_ref - req.kv_priv
    if need > kv.available():
        return False
    kv.take(req, need)
    kv.register(req, min(tokens // bs, len(req.hlist)))
    return True


ops = st.lists(st.tuples(st.sampled_from(["admit", "admit", "grow", "free"]), st.integers(0, 7),
                         st.integers(1, 160)), max_size=80)


@settings(max_examples=200, deadline=None)
@given(ops, st.integers(4, 48))
def test_extent_pool_equals_block_pool(seq, total):
    blocks, extents = KVCache(total, 4), ExtentKVCache(total, 4)
    # Eight calls over three families: chains share heads of different lengths.
    chains = []
    for r in range(8):
        fam = r % 3
        split = [3, 9, 20][r % 3] if r >= 3 else 40
        chains.append([fam * 10_000 + i if i < split else (fam * 10_000 + r * 1000 + i) for i in range(40)])
    live: dict[int, tuple[Req, Req, int]] = {}
    for op, r, tokens in seq:
        if op == "admit" and r not in live:
            a, b = Req(chains[r]), Req(chains[r])
            ka, kb = admit(blocks, a, tokens), admit(extents, b, tokens)
            assert ka == kb
            if ka is not None:
                live[r] = (a, b, tokens)
        elif op == "grow" and r in live:
            a, b, t = live[r]
            t2 = min(t + tokens % 37, 160)
            assert grow(blocks, a, t2) == grow(extents, b, t2)
            live[r] = (a, b, t2)
        elif op == "free" and r in live:
            a, b, _ = live.pop(r)
            blocks.free(a)
            extents.free(b)
        blocks.check()
        extents.check()
        assert (blocks.free_blocks, blocks.cached_blocks, blocks.used_blocks, blocks.evictions) == (
            extents.free_blocks, extents.cached_blocks, extents.used_blocks, extents.evictions)
        for c in chains:
            assert blocks.cached_prefix_blocks(c) == extents.cached_prefix_blocks(c)
    for a, b, _ in live.values():
        blocks.free(a)
        extents.free(b)
    extents.check()
    assert extents.cached_blocks == blocks.cached_blocks


def test_bad_kv_index_option():
    from pythia.errors import PythiaInputError

    with pytest.raises(PythiaInputError, match="kv_index"):
        SimOptions(kv_index="dicts")


def test_small_cluster_runs_the_same_with_both_pools():
    trace = chain_trace(30, concurrency=10, output=250)
    assert_same(run(trace, SMALL), run(trace, SMALL, kv_index="blocks"))
