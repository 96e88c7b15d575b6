"""Baseline policies: each mechanism on constructed cases, and every baseline system end to end."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from pythia.errors import PythiaInputError
from pythia.policy.autellix import AutellixRouter, AutellixScheduler, ThreadTracker
from pythia.policy.continuum import ContinuumTTL, ProgramFCFS
from pythia.policy.kvflow import INF, KVFlowCache, StepGraph
from pythia.policy.prefix_aware import PrefixAware
from pythia.policy.reactive_autoscaler import ReactiveAutoscaler
from pythia.policy.session_affinity import SessionAffinity
from pythia.policy.sglang_cache_aware import SGLangCacheAware
from pythia.policy.sglang_lpm import SGLangLPM
from pythia.policy.thunderagent import ShortestFirstEviction, ThunderRouter, ThunderScheduler
from pythia.policy.workflow import JobTracker

BS = 16
_ids = iter(range(10**6))


@dataclass(eq=False)
class Req:
    job_id: str = "j0"
    prompt_tokens: int = 64
    hashes: list[int] = field(default_factory=list)
    arrival_s: float = 0.0
    agent_role: str = "r"
    agent_id: str = "a"
    workflow_type: str = "wf"
    workflow_id: str = "w0"
    num_output_tokens: int = 0
    num_computed_tokens: int = 0
    request_id: int = field(default_factory=lambda: next(_ids))
    call_id: int = 0
    num_preemptions: int = 0
    annotations: dict[str, Any] = field(default_factory=dict)

    @property
    def block_hashes(self) -> np.ndarray:
        return np.asarray(self.hashes, dtype=np.int64)


class KV:
    def __init__(self, resident: set[int] = frozenset(), total: int = 1000, used: int = 0) -> None:
        self.resident, self.block_size, self.total_blocks, self.used_blocks = set(resident), BS, total, used
        self.free_blocks, self.cached_blocks, self.host_blocks = total - used, 0, 0

    def cached_prefix_blocks(self, hashes) -> int:
        n = 0
        for h in list(hashes):
            if h not in self.resident:
                break
            n += 1
        return n


@dataclass(eq=False)
class Rep:
    replica_id: int
    num_running: int = 0
    num_waiting: int = 0
    kv: KV = field(default_factory=KV)
    pool: str = "p"
    state: str = "up"
    pending_prefill_tokens: int = 0

    def running_calls(self):
        return ()


def chain(prefix: int, n: int) -> list[int]:
    return [prefix * 1000 + i for i in range(n)]


# --------------------------------------------------------------------------- vLLM production stack


def test_session_affinity_keeps_a_workflow_on_one_replica():
    router, reps = SessionAffinity(), [Rep(i) for i in range(4)]
    for w in range(20):
        picks = {router.route(Req(workflow_id=f"w{w}"), reps, 0.0) for _ in range(5)}
        assert len(picks) == 1
    spread = {router.route(Req(workflow_id=f"w{w}"), reps, 0.0) for w in range(64)}
    assert len(spread) == 4  # sessions spread over every replica
    # Consistent hashing: removing a replica moves only the sessions it held.
    before = {w: reps[router.route(Req(workflow_id=f"w{w}"), reps, 0.0)].replica_id for w in range(64)}
    after = {w: reps[1:][router.route(Req(workflow_id=f"w{w}"), reps[1:], 0.0)].replica_id for w in range(64)}
    assert all(after[w] == before[w] for w in range(64) if before[w] != 0)


def test_prefix_aware_follows_the_longest_routed_prefix():
    router, reps = PrefixAware(chunk_blocks=2, seed=1), [Rep(i) for i in range(3)]
    a = Req(prompt_tokens=8 * BS, hashes=chain(1, 8))
    first = router.route(a, reps, 0.0)
    b = Req(prompt_tokens=10 * BS, hashes=chain(1, 8) + [5, 6])  # extends a's prompt
    assert router.route(b, reps, 0.0) == first
    c = Req(prompt_tokens=8 * BS, hashes=chain(1, 4) + chain(7, 4))  # shares 4 blocks = 2 chunks
    assert router.route(c, reps, 0.0) == first


def test_reactive_autoscaler_hpa_rule_and_cooldown():
    @dataclass
    class Pool:
        replicas: list
        name: str = "p"
        model: str = "m"
        min_replicas: int = 1
        max_replicas: int = 8

        @property
        def num_up(self):
            return sum(r.state == "up" for r in self.replicas)

        @property
        def num_starting(self):
            return sum(r.state == "starting" for r in self.replicas)

    scaler = ReactiveAutoscaler(metric="queue", target=5, scale_down_window_s=300)
    busy = Pool([Rep(0, num_waiting=20), Rep(1, num_waiting=10)])
    assert scaler.target(busy, 0.0) == 6  # ceil(2 * 15 / 5)
    calm = Pool([Rep(i, num_waiting=0) for i in range(6)])
    assert scaler.target(calm, 100.0) == 6  # inside the 300 s window the earlier 6 holds
    assert scaler.target(calm, 400.0) == 1  # after the cooldown it scales down to the minimum
    within = Pool([Rep(0, num_waiting=5), Rep(1, num_waiting=5)])
    assert ReactiveAutoscaler(target=5).target(within, 0.0) == 2  # within tolerance: no change
    with pytest.raises(PythiaInputError, match="metric"):
        ReactiveAutoscaler(metric="qps")
    with pytest.raises(PythiaInputError, match="target"):
        ReactiveAutoscaler(metric="kv", target=2.0)


# --------------------------------------------------------------------------- SGLang


def test_lpm_orders_waiting_calls_by_cached_prefix():
    kv = KV(resident=set(chain(1, 6)) | set(chain(2, 2)))
    q = SGLangLPM().new_queue()
    q.attach(Rep(0, kv=kv))
    none = Req(prompt_tokens=8 * BS + 1, hashes=chain(3, 8))
    short = Req(prompt_tokens=8 * BS + 1, hashes=chain(2, 8))
    long_ = Req(prompt_tokens=8 * BS + 1, hashes=chain(1, 8))
    tie = Req(prompt_tokens=8 * BS + 1, hashes=chain(4, 8))
    for r in (none, short, long_, tie):
        q.add(r)
    q.refresh(1.0)
    assert list(q) == [long_, short, none, tie]  # longest match first, stable among equals
    big = SGLangLPM(max_sorted=2).new_queue()
    big.attach(Rep(0, kv=kv))
    for r in (none, short, long_):
        big.add(r)
    big.refresh(1.0)
    assert list(big) == [none, short, long_]  # above max_sorted SGLang keeps FCFS order
    unattached = SGLangLPM().new_queue()
    for r in (none, long_):
        unattached.add(r)
    unattached.refresh(1.0)
    assert list(unattached) == [none, long_]


def test_cache_aware_router_prefers_cache_and_balances_over_the_threshold():
    router = SGLangCacheAware(balance_abs_threshold=4, balance_rel_threshold=1.5)
    reps = [Rep(0), Rep(1)]
    a = Req(prompt_tokens=10 * BS, hashes=chain(1, 10))
    home = router.route(a, reps, 0.0)
    other = 1 - home
    again = Req(prompt_tokens=12 * BS, hashes=chain(1, 10) + [1, 2])
    assert router.route(again, reps, 1.0) == home  # match rate 10/12 > 0.5
    fresh = Req(prompt_tokens=10 * BS, hashes=chain(9, 10))
    assert router.route(fresh, reps, 2.0) == other  # low match: the smaller tree
    reps[home].num_waiting = 10  # imbalance: 10 - 0 > 4 and 10 > 0 * 1.5
    assert router.route(again, reps, 3.0) == other
    reps[home].num_waiting, reps[other].num_waiting = 2, 4  # 4 - 2 <= 4: balanced again, cache wins
    assert router.route(Req(prompt_tokens=11 * BS, hashes=chain(9, 10) + [7]), reps, 4.0) == other


# --------------------------------------------------------------------------- Autellix


def _tracker_with(jobs: dict[str, int]) -> ThreadTracker:
    t = ThreadTracker()
    for j, tokens in jobs.items():
        t.job_started(j, "wf", j, 0.0)
        if tokens:
            r = Req(job_id=j, prompt_tokens=tokens)
            t.call_issued(r, 0.0)
            t.call_finished(r, 0.0)
    return t


def test_plas_prioritises_the_program_with_least_attained_service():
    sched = AutellixScheduler(mode="plas", first_quantum_tokens=1000)
    sched.bind(_tracker_with({"big": 50_000, "small": 500, "mid": 5_000}))
    q = sched.new_queue()
    reqs = {j: Req(job_id=j, arrival_s=990.0 + i) for i, j in enumerate(("big", "mid", "small"))}
    for r in reqs.values():
        q.add(r)
    q.refresh(1000.0)
    assert [r.job_id for r in q] == ["small", "mid", "big"]
    assert sched.victim(list(reqs.values()), 10.0).job_id == "big"
    assert sched.queue_of(999) == 0 and sched.queue_of(1000) == 1 and sched.queue_of(4000) == 3
    assert sched.queue_of(10**12) == sched.num_queues - 1


def test_atlas_uses_the_critical_path_not_the_sum_of_parallel_threads():
    t = ThreadTracker()
    t.job_started("par", "wf", "par", 0.0)
    t.job_started("seq", "wf", "seq", 0.0)
    for k in range(4):  # four parallel threads of 1000 tokens each
        r = Req(job_id="par", agent_id=f"e{k}", prompt_tokens=1000)
        t.call_issued(r, 0.0)
    for k, rid in enumerate(sorted(t.cp_at_issue)):  # they finish
        t.call_finished(Req(job_id="par", agent_id=f"e{k}", prompt_tokens=1000, request_id=rid), 0.0)
    for k in range(2):  # two sequential calls of 1500 tokens
        r = Req(job_id="seq", agent_id="s", prompt_tokens=1500)
        t.call_issued(r, 0.0)
        t.call_finished(r, 0.0)
    join_par, join_seq = Req(job_id="par", agent_id="reviewer"), Req(job_id="seq", agent_id="reviewer")
    t.call_issued(join_par, 0.0)
    t.call_issued(join_seq, 0.0)
    assert t.call_cp(join_par.request_id) == 1000 and t.call_cp(join_seq.request_id) == 3000
    assert t.job("par").attained_tokens == 4000  # PLAS would rank the parallel program last
    atlas = AutellixScheduler(mode="atlas", first_quantum_tokens=500, starvation_ratio=1e9)
    atlas.bind(t)
    assert atlas.key(join_par, 1.0) < atlas.key(join_seq, 1.0)
    plas = AutellixScheduler(mode="plas", first_quantum_tokens=500, starvation_ratio=1e9)
    plas.bind(t)
    assert plas.key(join_par, 1.0) > plas.key(join_seq, 1.0)


def test_autellix_anti_starvation_promotes_a_waiting_call():
    sched = AutellixScheduler(mode="plas", first_quantum_tokens=1000, starvation_ratio=2.0)
    sched.bind(_tracker_with({"big": 10**6, "small": 0}))
    q = sched.new_queue()
    old = Req(job_id="big", arrival_s=100.0)
    new = Req(job_id="small", arrival_s=390.0)
    q.add(old)
    q.add(new)
    q.refresh(250.0)  # big waited 150 s against 100 s of other time: ratio 1.5, not starving
    assert q.peek() is new
    q.refresh(400.0)  # 300 s against 100 s: ratio 3 > 2, promoted to the top queue
    assert q.peek() is old


def test_autellix_router_keeps_long_calls_of_a_program_local():
    router, reps = AutellixRouter(short_prompt_tokens=2048), [Rep(0), Rep(1, num_running=3)]
    first = router.route(Req(job_id="p", prompt_tokens=4000), reps, 0.0)
    assert first == 0
    reps[0].num_running = 9
    assert router.route(Req(job_id="p", prompt_tokens=5000), reps, 1.0) == 0  # long: stays with its KV
    assert router.route(Req(job_id="p", prompt_tokens=100), reps, 1.0) == 1  # short: least loaded


# --------------------------------------------------------------------------- Continuum


def test_continuum_pins_until_the_next_call_or_the_ttl():
    tracker = JobTracker()
    tracker.job_started("p", "wf", "p", 0.0)
    cache = ContinuumTTL(default_ttl_s=5.0)
    cache.bind(tracker)
    rep = Rep(0)
    call = Req(job_id="p", prompt_tokens=4 * BS, hashes=chain(1, 5), num_output_tokens=BS)
    tracker.call_issued(call, 0.0)
    tracker.call_finished(call, 1.0)
    acts = cache.on_finish(call, rep, 1.0)
    assert [a.kind for a in acts] == ["pin"] and list(acts[0].hashes) == chain(1, 5)
    assert cache.on_tick([rep], 3.0) == []  # tool still running, TTL not expired
    expired = cache.on_tick([rep], 6.5)
    assert [a.kind for a in expired] == ["unpin"] and not cache.pins
    # The next call's arrival releases the pin before the TTL and records the tool time.
    cache.on_finish(call, rep, 10.0)
    tracker.call_issued(Req(job_id="p"), 11.0)
    assert [a.kind for a in cache.on_tick([rep], 12.0)] == ["unpin"] and cache.tool_s == [2.0]
    # A program that ended gets no pin; a pin never exceeds the budget.
    tracker.job_ended("p", 20.0)
    assert cache.on_finish(call, rep, 20.0) == []
    tracker.job_started("q", "wf", "q", 0.0)
    small = Rep(1, kv=KV(total=8))
    assert cache.on_finish(Req(job_id="q", prompt_tokens=5 * BS, hashes=chain(2, 5)), small, 1.0) == []


def test_program_fcfs_orders_by_program_start():
    tracker = JobTracker()
    tracker.job_started("late", "wf", "late", 5.0)
    tracker.job_started("early", "wf", "early", 1.0)
    sched = ProgramFCFS()
    sched.bind(tracker)
    q = sched.new_queue()
    a, b = Req(job_id="late", arrival_s=6.0), Req(job_id="early", arrival_s=7.0)
    q.add(a)
    q.add(b)
    assert list(q) == [b, a]
    assert sched.victim([b, a], 8.0) is a


# --------------------------------------------------------------------------- KVFlow


def _graph() -> StepGraph:
    # plan -> explore -> implement -> review -> (implement | end)
    roles = {"plan": "planner", "explore": "explorer", "implement": "engineer", "review": "reviewer"}
    edges = {"plan": ["explore"], "explore": ["implement"], "implement": ["review"], "review": ["implement"]}
    return StepGraph("planner", roles, edges)


def test_step_graph_steps_to_execution():
    g = _graph()
    assert g.steps(None, "planner") == 0 and g.steps(None, "explorer") == 1
    assert g.steps("explorer", "explorer") == 0  # the step keeps running
    assert g.steps("explorer", "engineer") == 1 and g.steps("explorer", "reviewer") == 2
    assert g.steps("reviewer", "engineer") == 1  # the retry loop
    assert g.steps("engineer", "planner") == INF  # never again


def test_kvflow_ranks_blocks_farthest_from_execution_first():
    tracker = JobTracker()
    cache = KVFlowCache(specs=[])
    cache.graphs = {"wf": _graph()}
    cache.bind(tracker)
    rep = Rep(0)
    tracker.job_started("j", "wf", "j", 0.0)
    planner = Req(job_id="j", agent_role="planner", prompt_tokens=2 * BS, hashes=chain(1, 2))
    explorer = Req(job_id="j", agent_role="explorer", prompt_tokens=2 * BS, hashes=chain(2, 2))
    reviewer = Req(job_id="j", agent_role="reviewer", prompt_tokens=2 * BS, hashes=chain(3, 2))
    for r in (planner, reviewer, explorer):  # explorer finishes last: the job is in its step
        tracker.call_issued(r, 0.0)
        tracker.call_finished(r, 0.0)
        cache.on_finish(r, rep, 0.0)

    @dataclass
    class Block:
        block_hash: int
        last_used_s: float

    blocks = [Block(chain(2, 2)[0], 9.0), Block(chain(1, 2)[0], 5.0), Block(chain(3, 2)[0], 1.0),
              Block(999, 7.0), Block(chain(1, 2)[1], 4.0)]
    order = cache.eviction_rank(blocks, 10.0)
    # Unknown (INF) and planner (INF, never again) first by LRU, then reviewer (2), explorer (0) last.
    assert order == [4, 1, 3, 2, 0]
    assert cache.block_steps([chain(3, 2)[0], chain(2, 2)[0]]) == [2, 0]


def test_kvflow_prefetches_the_next_steps_agent_prefix():
    tracker = JobTracker()
    cache = KVFlowCache(specs=[])
    cache.graphs = {"wf": _graph()}
    cache.bind(tracker)
    rep = Rep(3)
    for j in ("a", "b"):  # two jobs' engineers share the engineer prefix (chain 5)
        tracker.job_started(j, "wf", j, 0.0)
        eng = Req(job_id=j, agent_role="engineer", prompt_tokens=4 * BS, hashes=chain(5, 2) + chain(6 + ord(j), 2))
        tracker.call_issued(eng, 0.0)
        tracker.call_finished(eng, 0.0)
        cache.on_finish(eng, rep, 0.0)
    tracker.job_started("c", "wf", "c", 0.0)
    exp = Req(job_id="c", agent_role="explorer", prompt_tokens=2 * BS, hashes=chain(8, 2))
    tracker.call_issued(exp, 0.0)
    tracker.call_finished(exp, 0.0)
    cache.on_finish(exp, rep, 0.0)
    acts = [a for a in cache.on_tick([rep], 1.0) if a.replica_id == 3]
    fetched = {tuple(a.hashes) for a in acts}
    assert tuple(chain(5, 2)) in fetched  # job c's next step is the engineers
    assert cache.on_tick([rep], 2.0) == []  # once per step


def test_kvflow_loads_the_shipped_workflow_specs():
    cache = KVFlowCache()
    assert {"coding-assistant", "deep-research"} <= set(cache.graphs)
    with pytest.raises(PythiaInputError, match="specs"):
        KVFlowCache(specs=["no/such/spec.yaml"])


# --------------------------------------------------------------------------- ThunderAgent


def test_thunderagent_shortest_first_victim_and_eviction():
    sched = ThunderScheduler()
    a, b = Req(num_computed_tokens=9000), Req(num_computed_tokens=300)
    assert sched.victim([a, b], 0.0) is b
    tracker = JobTracker()
    cache = ShortestFirstEviction()
    cache.bind(tracker)
    rep = Rep(0)
    for j, n in (("long", 6), ("short", 2)):
        tracker.job_started(j, "wf", j, 0.0)
        cache.on_finish(Req(job_id=j, prompt_tokens=n * BS, hashes=chain(len(j), n)), rep, 0.0)

    @dataclass
    class Block:
        block_hash: int
        last_used_s: float

    blocks = [Block(chain(4, 6)[0], 1.0), Block(chain(5, 2)[0], 2.0), Block(12345, 3.0)]
    assert cache.eviction_rank(blocks, 5.0) == [2, 1, 0]  # unowned, short program, long program


def test_thunderagent_router_moves_a_program_off_an_overcommitted_replica():
    router = ThunderRouter(memory_threshold=0.9)
    reps = [Rep(0, kv=KV(used=100)), Rep(1, kv=KV(used=500))]
    assert router.route(Req(job_id="p"), reps, 0.0) == 0
    reps[0].kv.used_blocks = 600
    assert router.route(Req(job_id="p"), reps, 1.0) == 0  # below 90%: stays with its KV
    reps[0].kv.used_blocks = 950
    assert router.route(Req(job_id="p"), reps, 2.0) == 1


# --------------------------------------------------------------------------- end to end

SYSTEMS = ("vllm-session-affinity", "vllm-prefix-aware", "vllm-autoscale", "sglang", "autellix", "continuum",
           "kvflow", "thunderagent")


@pytest.mark.parametrize("system", SYSTEMS)
def test_baseline_runs_end_to_end_without_losing_calls(system, tmp_path):
    from pythia.cli import main

    out = tmp_path / system
    main(["sim", "--system", system, "--workload", "workloads/coding-assistant.yaml", "--jobs", "4", "--out", str(out)])
    s = json.loads((out / "summary.json").read_text())
    assert s["jobs_completed"] == s["jobs_submitted"] == 4
    assert s["calls_completed"] == s["calls_submitted"] > 0
    assert not s["stalled"] and not s["unfinished_calls"] and not s["rejected_calls"]
    assert s["system"] == system


@pytest.mark.parametrize("system", ["sglang", "continuum", "kvflow", "thunderagent", "autellix"])
def test_baseline_under_kv_pressure_loses_no_call(system):
    """Two replicas with about 18k tokens of KV each: evictions, preemptions and the comparators run."""
    import yaml

    from pythia.policy.systems import load_system, parse_system
    from pythia.sim.config import SimOptions, parse_cluster
    from pythia.sim.run import run_simulation
    from sim_helpers import chain_trace

    tight = parse_cluster({"name": "tight2", "gpu": "a100-80gb", "default_pool": "big", "pools": {
        "big": {"model": "qwen2.5-32b", "replicas": 2, "max_replicas": 2}}}, "test")
    obj = yaml.safe_load(load_system(system).path.read_text())
    obj["engine"]["gpu_memory_utilization"] = 0.85
    res = run_simulation(parse_system(obj, "test", system), chain_trace(24, concurrency=12, prompt=3000, output=300),
                         cluster=tight, options=SimOptions(check_invariants=True))
    s = res.summary
    assert s["calls_completed"] == s["calls_submitted"] == 72 and not s["stalled"]
    assert s["kv_evictions"] > 0
