"""End-to-end simulator runs: invariants, prefix caching, preemption, fast-forward, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pythia.errors import PythiaInputError
from pythia.policy.systems import known_systems, load_system, parse_system
from pythia.sim.config import SimOptions, load_cluster, parse_cluster
from pythia.sim.run import run_simulation
from pythia.workflow.trace import Call, Job, Trace, segments

from sim_helpers import chain_job, chain_trace

SMALL = parse_cluster({"name": "small", "gpu": "a100-80gb", "pools": {
    "qwen2.5-7b": {"model": "qwen2.5-7b", "replicas": 2, "max_replicas": 2},
}}, "test")
# Qwen2.5-32B on one A100 leaves about 1,300 KV blocks: memory pressure with a few long calls.
TIGHT = parse_cluster({"name": "tight", "gpu": "a100-80gb", "default_pool": "big", "pools": {
    "big": {"model": "qwen2.5-32b", "replicas": 1, "max_replicas": 1},
}}, "test")


def tight_vllm():
    """The vllm system at a lower memory share: about 18k tokens of KV for Qwen2.5-32B."""
    obj = yaml.safe_load(load_system("vllm").path.read_text())
    obj["engine"]["gpu_memory_utilization"] = 0.85
    return parse_system(obj, "test", "vllm-tight")


def run(trace: Trace, cluster=SMALL, system="vllm", **opts):
    return run_simulation(system, trace, cluster=cluster, options=SimOptions(**opts))


def check_dependencies(trace: Trace, calls: pd.DataFrame, jobs: pd.DataFrame) -> None:
    rows = {(r.job_id, r.call_id): r for r in calls.itertuples()}
    starts = dict(zip(jobs["job_id"], jobs["start_s"]))
    for job in trace.jobs:
        start = starts[job.job_id]
        for c in job.calls:
            r = rows[(job.job_id, c.call_id)]
            ready = max((rows[(job.job_id, d)].finish_s for d in c.deps), default=start)
            assert r.issue_s >= ready + c.gap_s - 1e-9
            assert r.arrival_s >= r.issue_s and r.finish_s > r.arrival_s


@st.composite
def dag_traces(draw):
    jobs = []
    for j in range(draw(st.integers(1, 5))):
        calls = []
        for c in range(draw(st.integers(1, 5))):
            deps = tuple(sorted(draw(st.sets(st.integers(0, c - 1), max_size=2)))) if c else ()
            p = draw(st.integers(1, 3000))
            shared = draw(st.integers(0, p))
            segs = [(77, 0, shared)] if shared else []
            if p - shared:
                segs.append((1000 + j * 10 + c, 0, p - shared))
            calls.append(Call(call_id=c, agent_role=f"r{c % 3}", model="qwen2.5-7b", input_tokens=p,
                              output_tokens=draw(st.integers(0, 400)), deps=deps,
                              gap_s=draw(st.sampled_from([0.0, 0.05, 1.0])), prompt=segments(segs)))
        jobs.append(Job(job_id=f"j{j}", workflow_type="t", workflow_id=f"w{j}", calls=calls,
                        arrival_s=draw(st.sampled_from([0.0, 0.5, 2.0]))))
    closed = draw(st.booleans())
    arrival = {"process": "closed", "concurrency": draw(st.integers(1, 3))} if closed else {"process": "timestamps", "time_scale": 1.0}
    return Trace(jobs=jobs, arrival=arrival)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag_traces(), st.sampled_from(["small", "tight"]))
def test_invariants_and_fast_forward_equals_stepping(trace, which):
    cluster = SMALL if which == "small" else TIGHT
    ff = run(trace, cluster, check_invariants=True)
    step = run(trace, cluster, check_invariants=True, fast_forward=False, kv_index="blocks")
    n_calls = sum(len(j.calls) for j in trace.jobs)
    # No call is lost: every call finished (these all fit).
    assert ff.summary["calls_completed"] == n_calls and ff.summary["jobs_completed"] == len(trace.jobs)
    assert not ff.summary["unfinished_calls"] and not ff.summary["rejected_calls"]
    check_dependencies(trace, ff.calls, ff.jobs)
    pd.testing.assert_frame_equal(ff.calls, step.calls)
    pd.testing.assert_frame_equal(ff.jobs, step.jobs)
    pd.testing.assert_frame_equal(ff.timeseries, step.timeseries)


def test_fast_forward_equals_stepping_under_load():
    trace = chain_trace(40, concurrency=16, output=300)
    ff, step = run(trace), run(trace, fast_forward=False)
    assert ff.summary["fast_forwarded_iterations"] > ff.summary["iterations"] // 2
    pd.testing.assert_frame_equal(ff.calls, step.calls)
    pd.testing.assert_frame_equal(ff.timeseries, step.timeseries)
    assert ff.summary["simulated_s"] == step.summary["simulated_s"]


def test_shared_prefix_hits_and_changed_early_block_misses():
    one = load_cluster("llama8b-x8")
    one = parse_cluster({"name": "one", "gpu": "a100-80gb", "default_pool": "p", "pools": {
        "p": {"model": "llama-3.1-8b", "replicas": 1}}}, "test")

    def job(j, head_key, arrival):
        segs = segments([(head_key, 0, 1024), (500 + j, 0, 512)])
        call = Call(call_id=0, agent_role="a", model="m", input_tokens=1536, output_tokens=10, prompt=segs)
        return Job(job_id=f"j{j}", workflow_type="t", workflow_id=f"w{j}", calls=[call], arrival_s=arrival)

    trace = Trace(jobs=[job(0, 1, 0.0), job(1, 1, 10.0), job(2, 2, 20.0)], arrival={"process": "timestamps", "time_scale": 1.0})
    calls = run(trace, one).calls.set_index("job_id")
    assert calls.loc["j0", "cached_tokens"] == 0
    assert calls.loc["j1", "cached_tokens"] == 1024  # the shared 1,024-token head, whole blocks
    assert calls.loc["j2", "cached_tokens"] == 0  # another head: the chain breaks at block 0
    # A change inside the head breaks the chain from its block on.
    segs = segments([(1, 0, 500), (9, 0, 1), (1, 501, 523), (600, 0, 512)])
    late = Job(job_id="j3", workflow_type="t", workflow_id="w3", arrival_s=30.0,
               calls=[Call(call_id=0, agent_role="a", model="m", input_tokens=1536, output_tokens=10, prompt=segs)])
    trace2 = Trace(jobs=[job(0, 1, 0.0), late], arrival={"process": "timestamps", "time_scale": 1.0})
    calls2 = run(trace2, one).calls.set_index("job_id")
    assert calls2.loc["j3", "cached_tokens"] == (500 // 16) * 16


def test_preemption_under_memory_pressure_finishes_everything():
    trace = chain_trace(6, concurrency=6, model="x", prompt=4000, output=3000, shared=0, n_calls=1)
    res = run(trace, TIGHT, tight_vllm(), check_invariants=True)
    assert res.summary["preemptions"] > 0
    assert res.summary["calls_completed"] == 6
    assert (res.calls["computed_tokens"] > res.calls["prompt_tokens"] + res.calls["output_tokens"] - 2).any()


def test_determinism_identical_bytes(tmp_path: Path):
    trace = chain_trace(20, concurrency=None)
    a = run_simulation("vllm", trace, cluster=SMALL, out=tmp_path / "a", seed=3)
    b = run_simulation("vllm", trace, cluster=SMALL, out=tmp_path / "b", seed=3)
    for name in ("calls.parquet", "jobs.parquet", "timeseries.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    for key in ("jobs_submitted", "jobs_completed", "calls_completed", "mean_jct_s", "p50_jct_s", "p95_jct_s",
                "output_tokens_per_s", "prefix_hit_rate", "preemptions", "simulated_s", "wall_s"):
        assert key in summary
    assert a.summary["mean_jct_s"] == b.summary["mean_jct_s"]
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]  # no temporary file left behind


def test_call_too_large_is_reported_not_a_crash():
    big = Job(job_id="big", workflow_type="t", workflow_id="w", arrival_s=0.0, calls=[
        Call(call_id=0, agent_role="planner", model="m", input_tokens=30_000, output_tokens=2000,
             prompt=segments([(1, 0, 30_000)])),
        Call(call_id=1, agent_role="coder", model="m", input_tokens=100, output_tokens=5, deps=(0,),
             prompt=segments([(2, 0, 100)]))])
    ok = chain_job(1, model="m")
    ok.arrival_s = 0.0
    res = run(Trace(jobs=[big, ok], arrival={"process": "timestamps", "time_scale": 1.0}), TIGHT, tight_vllm())
    rej = res.summary["rejected_calls"]
    assert [(r["job_id"], r["agent_role"]) for r in rej] == [("big", "planner")]
    assert res.summary["jobs_completed"] == 1 and res.summary["calls_completed"] == 3


def test_context_clamp_is_counted():
    j = Job(job_id="long", workflow_type="t", workflow_id="w", arrival_s=0.0, calls=[
        Call(call_id=0, agent_role="a", model="qwen2.5-7b", input_tokens=40_000, output_tokens=500,
             prompt=segments([(1, 0, 40_000)]))])
    res = run(Trace(jobs=[j], arrival={"process": "timestamps", "time_scale": 1.0}))
    assert res.summary["clamped_calls"] == 1
    row = res.calls.iloc[0]
    assert row.prompt_tokens + row.output_tokens <= 32768 and row.status == "finished"


def test_bad_names_list_the_known_ones():
    assert "vllm" in known_systems()
    with pytest.raises(PythiaInputError, match="known: .*vllm"):
        load_system("not-a-system")
    with pytest.raises(PythiaInputError, match="known: .*paper"):
        run_simulation("vllm", chain_trace(1), cluster="not-a-cluster")
    with pytest.raises(PythiaInputError, match="no pool serves model 'gpt-9'.*known"):
        run_simulation("vllm", chain_trace(1, model="gpt-9"))


def test_open_loop_rate_and_closed_loop_concurrency():
    trace = chain_trace(10, concurrency=None)
    closed = run_simulation("vllm", trace, cluster=SMALL, concurrency=2)
    starts = np.sort(closed.jobs["start_s"].to_numpy())
    assert starts[0] == starts[1] == 0.0 and starts[2] > 0.0
    rate = run_simulation("vllm", trace, cluster=SMALL, rate=0.5, seed=1)
    assert rate.summary["jobs_completed"] == 10


def test_cli_registers_the_sim_command(tmp_path: Path):
    import argparse

    from pythia.sim import cli

    trace_path = tmp_path / "t.jsonl"
    from pythia.workflow.trace import write_trace

    write_trace(chain_trace(3, concurrency=2), trace_path)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli.register(sub)
    args = parser.parse_args(["sim", "--system", "vllm", "--workload", str(trace_path), "--out", str(tmp_path / "o"),
                              "--no-progress", "--concurrency", "2"])
    assert args.func(args) == 0
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["jobs_completed"] == 3
