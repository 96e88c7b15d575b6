"""Pythia's mechanisms and the oracle: each one is correct (no test asserts that Pythia wins)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pythia.errors import PythiaInputError
from pythia.policy.oracle import OraclePredictor
from pythia.policy.pythia_cache import PythiaCache
from pythia.policy.pythia_predictor import ProfilerPredictor, PythiaPredictor, Upcoming
from pythia.policy.pythia_router import PythiaRouter
from pythia.policy.pythia_scaler import PythiaAutoscaler
from pythia.policy.pythia_scheduler import PythiaScheduler
from pythia.workflow.blocks import block_hashes
from pythia.workflow.trace import Call, Job, segments

# --------------------------------------------------------------------------- fakes (views)


@dataclass(eq=False)
class Req:
    request_id: int
    job_id: str = "j0"
    workflow_type: str = "t"
    workflow_id: str = "j0"
    agent_role: str = "a"
    agent_id: str = "a"
    call_id: int = 0
    prompt_tokens: int = 100
    num_computed_tokens: int = 0
    num_output_tokens: int = 0
    arrival_s: float = 0.0
    num_preemptions: int = 0
    block_hashes: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    annotations: dict[str, Any] = field(default_factory=dict)


@dataclass
class KV:
    total_blocks: int = 1000
    block_size: int = 16
    free_blocks: int = 1000
    cached_blocks: int = 0
    used_blocks: int = 0
    host_blocks: int = 0
    resident: set[int] = field(default_factory=set)
    host_capacity_blocks: int = 1000

    def cached_prefix_blocks(self, hashes: np.ndarray) -> int:
        n = 0
        for h in np.asarray(hashes).tolist():
            if h not in self.resident:
                break
            n += 1
        return n


@dataclass
class Rep:
    replica_id: int
    pool: str = "p"
    state: str = "up"
    running: list[Req] = field(default_factory=list)
    waiting: int = 0
    kv: KV = field(default_factory=KV)
    pending_prefill_tokens: int = 0

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return self.waiting

    def running_calls(self) -> list[Req]:
        return self.running


class FixedPredictor(PythiaPredictor):
    """Scripted predictions for unit tests."""

    def __init__(self, bounds: dict[int, tuple[int, float]] | None = None, dist: dict[str, float] | None = None,
                 up: dict[str, list[Upcoming]] | None = None, proj: dict[str, dict[str, float]] | None = None) -> None:
        super().__init__()
        self.bounds, self.dist, self.up, self.proj = bounds or {}, dist or {}, up or {}, proj or {}

    def warm(self, workflow_type: str) -> bool:
        return True

    def distance(self, job_id: str) -> float | None:
        return self.dist.get(job_id)

    def bound(self, req):  # type: ignore[no-untyped-def]
        return self.bounds.get(req.request_id, (50, 0.01))

    def expected_output(self, req):  # type: ignore[no-untyped-def]
        b = self.bound(req)
        return None if b is None else b[0] / 2

    def upcoming(self, job_id: str):  # type: ignore[no-untyped-def]
        return self.up.get(job_id)

    def projection(self, job_id: str, horizon: int):  # type: ignore[no-untyped-def]
        return self.proj.get(job_id)


# --------------------------------------------------------------------------- routing


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(10, 400), st.integers(50, 400)), min_size=2, max_size=5),
       st.integers(10, 300), st.integers(10, 300))
def test_router_never_picks_an_infeasible_replica_when_a_feasible_one_exists(states, prompt, bound):
    pred = FixedPredictor()
    router = PythiaRouter(epsilon=0.05, reserve=0.0)
    router.bind(pred)
    rid = 0
    replicas = []
    for i, (n, p, cap_blocks) in enumerate(states):
        running = []
        for _ in range(n):
            rid += 1
            running.append(Req(rid, prompt_tokens=p))
            pred.bounds[rid] = (bound, 0.01)
        replicas.append(Rep(i, running=running, kv=KV(total_blocks=cap_blocks, free_blocks=cap_blocks)))
    new = Req(10_000, prompt_tokens=prompt)
    pred.bounds[10_000] = (bound, 0.01)
    feasible = []
    for r in replicas:
        bounded, _, union = router.load(r, new)
        cap = r.kv.total_blocks * r.kv.block_size
        feasible.append(bounded <= cap and union <= 0.05)
    choice = router.route(new, replicas, 0.0)
    if any(feasible):
        assert feasible[choice]


def test_router_breaks_headroom_ties_by_cache_affinity_and_falls_back_when_cold():
    pred = FixedPredictor()
    router = PythiaRouter()
    router.bind(pred)
    h = np.arange(1, 11, dtype=np.int64)
    a, b = Rep(0), Rep(1, kv=KV(resident=set(h.tolist())))
    assert router.route(Req(1, block_hashes=h), [a, b], 0.0) == 1
    cold = PythiaRouter()  # no Pythia predictor bound: plain headroom
    busy = Rep(0, kv=KV(used_blocks=900, free_blocks=100))
    assert cold.route(Req(1), [busy, Rep(1)], 0.0) == 1


@pytest.mark.parametrize("cached, floor, expected", [
    (2, 0.0, 0),   # any cached prefix is affinity: the busy replica holding the shared head
    (2, 0.5, 1),   # a head under half the prompt is not: the emptier replica
    (6, 0.5, 0),   # the call's own conversation (over half the prompt) still draws it
])
def test_cold_calls_follow_only_a_cached_prefix_covering_cold_affinity_min(cached, floor, expected):
    router = PythiaRouter(tie_band=1.0, cold_affinity_min=floor)
    router.bind(PythiaPredictor())  # no history: every type is cold, no call has a bound
    h = np.arange(1, 11, dtype=np.int64)  # a 160-token prompt of 10 blocks
    holder = Rep(0, kv=KV(used_blocks=500, free_blocks=500, resident=set(h[:cached].tolist())))
    empty = Rep(1)
    assert router.route(Req(1, prompt_tokens=160, block_hashes=h), [holder, empty], 0.0) == expected


@pytest.mark.parametrize("sticky, shared, expected", [
    (True, 10, 0),   # the next prompt extends the last one, whose blocks left the GPU
    (True, 8, 0),    # it shares most of it (the tail was rewritten): still that replica
    (True, 2, 1),    # it shares only a short head (under cold_affinity_min): headroom decides
    (True, 0, 1),    # it starts anew: headroom decides
    (False, 10, 1),  # the rule off: headroom decides
])
def test_cold_calls_follow_the_replica_that_served_the_conversation(sticky, shared, expected):
    router = PythiaRouter(tie_band=1.0, cold_affinity_min=0.5, cold_sticky=sticky)
    router.bind(PythiaPredictor())  # cold: no bounds
    h = np.arange(1, 11, dtype=np.int64)
    first = [Rep(0), Rep(1, kv=KV(used_blocks=500, free_blocks=500))]
    assert router.route(Req(1, prompt_tokens=160, block_hashes=h), first, 0.0) == 0
    # Replica 0 has since evicted the conversation and is the busier one; the next prompt
    # keeps the first `shared` blocks of the last one and goes on (chained hashes: once two
    # chains differ they differ for good).
    nxt = np.concatenate([h[:shared], np.arange(50, 50 + 14 - shared, dtype=np.int64)])
    then = [Rep(0, kv=KV(used_blocks=400, free_blocks=600)), Rep(1)]
    assert router.route(Req(2, prompt_tokens=224, block_hashes=nxt), then, 0.0) == expected
    # Another agent of the same job has no history: headroom.
    other = Req(3, agent_id="b", prompt_tokens=224, block_hashes=nxt)
    assert router.route(other, then, 0.0) == 1


def test_a_replica_without_a_host_tier_gets_no_credit_for_blocks_its_gpu_lost():
    router = PythiaRouter(tie_band=1.0, cold_affinity_min=0.5, cold_sticky=True, warm_sticky=True)
    router.bind(PythiaPredictor())
    h = np.arange(1, 11, dtype=np.int64)
    assert router.route(Req(1, prompt_tokens=160, block_hashes=h), [Rep(0), Rep(1, kv=KV(used_blocks=500, free_blocks=500))], 0.0) == 0
    nxt = np.concatenate([h, np.arange(50, 54, dtype=np.int64)])
    no_tier = [Rep(0, kv=KV(used_blocks=400, free_blocks=600, host_capacity_blocks=0)), Rep(1)]
    assert router.route(Req(2, prompt_tokens=224, block_hashes=nxt), no_tier, 0.0) == 1


@pytest.mark.parametrize("warm_sticky, expected", [(True, 0), (False, 1)])
def test_warm_calls_follow_the_conversation_among_feasible_replicas_with_warm_sticky(warm_sticky, expected):
    router = PythiaRouter(tie_band=1.0, cold_sticky=True, warm_sticky=warm_sticky)
    router.bind(FixedPredictor())  # warm: every call bounded at 50 tokens
    h = np.arange(1, 11, dtype=np.int64)
    assert router.route(Req(1, prompt_tokens=160, block_hashes=h), [Rep(0), Rep(1, kv=KV(used_blocks=500, free_blocks=500))], 0.0) == 0
    nxt = np.concatenate([h, np.arange(50, 58, dtype=np.int64)])
    # Both replicas pass the capacity test; replica 0 has less headroom and its GPU no longer
    # holds the conversation (its host tier may).
    then = [Rep(0, running=[Req(9, prompt_tokens=4000)]), Rep(1)]
    assert router.route(Req(2, prompt_tokens=288, block_hashes=nxt), then, 0.0) == expected
    # A replica the capacity test refuses is never chosen for it.
    full = Rep(0, running=[Req(9, prompt_tokens=15_900)])
    assert router.route(Req(3, prompt_tokens=288, block_hashes=nxt), [full, Rep(1)], 0.0) == 1


def test_the_agent_table_stays_bounded():
    router = PythiaRouter(tie_band=1.0, cold_sticky=True)
    router.bind(PythiaPredictor())
    router.max_tracked_agents = 8
    h = np.arange(1, 4, dtype=np.int64)
    for i in range(50):
        router.route(Req(i, job_id=f"j{i}", block_hashes=h), [Rep(0), Rep(1)], 0.0)
    assert len(router._last) <= 8 and ("j49", "a") in router._last
    # ... and in the blocks it keeps: long prompts push the oldest agents out.
    router.max_tracked_blocks = 100
    for i in range(50):
        router.route(Req(i, job_id=f"k{i}", block_hashes=np.arange(1, 31, dtype=np.int64)), [Rep(0), Rep(1)], 0.0)
        assert router._tracked_blocks == sum(len(c) for _, c in router._last.values()) <= 100
    assert ("k49", "a") in router._last


def test_a_warm_type_keeps_affinity_on_any_cached_prefix():
    router = PythiaRouter(tie_band=1.0, cold_affinity_min=0.5)
    router.bind(FixedPredictor())
    h = np.arange(1, 11, dtype=np.int64)
    holder = Rep(0, kv=KV(used_blocks=500, free_blocks=500, resident=set(h[:2].tolist())))
    assert router.route(Req(1, prompt_tokens=160, block_hashes=h), [holder, Rep(1)], 0.0) == 0


# --------------------------------------------------------------------------- scheduling


def test_aging_ends_starvation_under_a_stream_of_high_priority_calls():
    pred = FixedPredictor(dist={"low": 50.0, "high": 1.0})
    sched = PythiaScheduler(w_distance=1.0, w_unblock=0.0, w_aging=1.0, aging_scale_s=10.0, refresh_s=0.1)
    sched.bind(pred)
    q = sched.new_queue()
    low = Req(0, job_id="low", arrival_s=0.0)
    q.add(low)
    admitted_at = None
    for step in range(1, 500):
        now = step * 0.5
        q.add(Req(step, job_id="high", arrival_s=now))  # a fresh close-to-done call every step
        q.refresh(now)
        got = q.pop()
        if got is low:
            admitted_at = now
            break
    assert admitted_at is not None and admitted_at < 100


def test_queue_orders_by_priority_and_victim_is_lowest_priority():
    pred = FixedPredictor(dist={"a": 10.0, "b": 1.0, "c": 3.0})
    sched = PythiaScheduler(w_aging=0.0)
    sched.bind(pred)
    q = sched.new_queue()
    reqs = [Req(i, job_id=j) for i, j in enumerate("abc")]
    for r in reqs:
        q.add(r)
    assert [r.job_id for r in q] == ["b", "c", "a"]
    assert sched.victim(reqs, 0.0).job_id == "a"
    with pytest.raises(PythiaInputError, match="w_aging"):
        PythiaScheduler(w_aging=-1)


def test_cold_scheduler_is_fcfs():
    sched = PythiaScheduler()
    q = sched.new_queue()
    for i in range(5):
        q.add(Req(i, arrival_s=float(i)))
    q.refresh(10.0)
    assert [r.request_id for r in q] == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- cache


def _prefix(key: int, tokens: int) -> np.ndarray:
    return segments([(key, 0, tokens)])


def test_pins_stay_within_budget_and_are_released():
    nxt = _prefix(7, 16 * 400)
    h = block_hashes(nxt, 16)
    pred = FixedPredictor(up={"j0": [Upcoming("b", None, 0.9, nxt)]})
    pred.job_started("j0", "t", "j0", 0.0)
    cache = PythiaCache(pin_budget=0.1, min_free=0.0)
    cache.bind(pred)
    rep = Rep(0, kv=KV(total_blocks=1000, free_blocks=1000, resident=set(h.tolist())))
    acts = cache.on_finish(Req(1, block_hashes=h[:5], annotations={"prompt": nxt}), rep, 0.0)  # a hinted call
    pinned = sum(len(a.hashes) for a in acts if a.kind == "pin")
    assert 0 < pinned <= 100 and cache.pin_count(0) == pinned
    pred.jobs.pop("j0")  # the job ended: its pins go
    acts = cache.on_tick([rep], 1.0)
    assert sum(len(a.hashes) for a in acts if a.kind == "unpin") == pinned and cache.pin_count(0) == 0


def test_pins_never_starve_admission_and_pressure_releases_them():
    nxt = _prefix(7, 16 * 200)
    h = block_hashes(nxt, 16)
    pred = FixedPredictor(up={"j0": [Upcoming("b", None, 0.9, nxt)]})
    pred.job_started("j0", "t", "j0", 0.0)
    cache = PythiaCache(pin_budget=1.0, min_free=0.5)
    cache.bind(pred)
    kv = KV(total_blocks=1000, free_blocks=400, cached_blocks=200, used_blocks=400, resident=set(h.tolist()))
    acts = cache.on_finish(Req(1, annotations={"prompt": nxt}), Rep(0, kv=kv), 0.0)
    assert sum(len(a.hashes) for a in acts if a.kind == "pin") <= 100  # 600 - 500 floor
    kv.free_blocks, kv.cached_blocks = 100, 0
    acts = cache.on_tick([Rep(0, kv=kv)], 1.0)
    assert any(a.kind == "unpin" for a in acts) and cache.pin_count(0) == 0


def test_early_release_demotes_only_blocks_without_predicted_reuse():
    shared, ctx, own = 11, 22, 33
    prompt = segments([(shared, 0, 64), (ctx, 0, 64), (own, 0, 64)])
    h = block_hashes(prompt, 16)
    nxt = segments([(shared, 0, 64), (ctx, 0, 64), (99, 0, 32)])
    pred = FixedPredictor(up={"j0": [Upcoming("b", None, 0.9, nxt)]})
    pred.shared_keys.add(shared)
    cache = PythiaCache(pin_min_prob=1.0)
    cache.bind(pred)
    req = Req(1, block_hashes=h, annotations={"prompt": prompt})
    acts = cache.on_finish(req, Rep(0), 0.0)
    demoted = set(np.concatenate([a.hashes for a in acts if a.kind == "demote"]).tolist())
    assert demoted == set(h[8:].tolist())  # the call's own blocks; not shared, not the job's context
    cold = PythiaCache()
    assert cold.on_finish(req, Rep(0), 0.0) == []  # cold: plain LRU


# --------------------------------------------------------------------------- autoscaling


def _pool(name: str, n: int, lo: int = 1, hi: int = 5) -> Any:
    @dataclass
    class Pool:
        name: str
        model: str
        min_replicas: int
        max_replicas: int
        replicas: list[Rep]

        @property
        def num_up(self) -> int:
            return len(self.replicas)

        @property
        def num_starting(self) -> int:
            return 0

    return Pool(name, name, lo, hi, [Rep(i, pool=name, kv=KV(total_blocks=1000)) for i in range(n)])


def test_autoscaler_scales_up_before_a_predicted_wave_and_drains_an_unreachable_pool():
    pred = FixedPredictor()
    scaler = PythiaAutoscaler(horizon=4, target_util=1.0, down_delay_s=0.0)
    scaler.bind(pred)
    big, small = _pool("big", 2), _pool("small", 2)
    pred.role_pool[("t", "eng")] = "big"
    pred.role_pool[("t", "exp")] = "small"
    pred._prompt_mean[("t", "eng")] = [16000.0, 1.0]
    for i in range(4):  # four jobs whose next generations are engineers: a wave on "big"
        pred.job_started(f"j{i}", "t", f"j{i}", 0.0)
        pred.proj[f"j{i}"] = {"eng": 1.0}
    for t in (0.0, 15.0):
        tb, ts = scaler.target(big, t), scaler.target(small, t)
    assert tb > 2 and ts == 1 and tb + ts <= 4  # wave: up; nothing reaches "small": drained; within the GPUs


# --------------------------------------------------------------------------- predictors


def _job() -> Job:
    calls = [
        Call(0, "plan", "m", 100, 40, prompt=segments([(1, 0, 100)])),
        Call(1, "work", "m", 120, 70, deps=(0,), prompt=segments([(1, 0, 100), (2, 0, 20)])),
        Call(2, "work", "m", 120, 90, deps=(0,), prompt=segments([(1, 0, 100), (3, 0, 20)]), agent_id="work/1"),
        Call(3, "end", "m", 50, 10, deps=(1, 2), prompt=segments([(4, 0, 50)])),
    ]
    return Job("job", "t", "job", calls)


def test_oracle_reads_the_truth_and_the_profiler_predictor_never_does():
    job = _job()
    oracle, prof = OraclePredictor(), ProfilerPredictor(history="none")
    for p in (oracle, prof):
        p.job_started("job", "t", "job", 0.0, truth=job)
    assert "job" in oracle.truth
    assert not any(v is job for v in vars(prof).values()) and prof.running["job"].calls == {}
    r0 = Req(0, job_id="job", workflow_id="job", agent_role="plan", call_id=0)
    oracle.call_issued(r0, 0.0)
    assert oracle.bound(r0) == (40, 0.0) and oracle.distance("job") == 3.0
    r0.num_output_tokens = 40
    oracle.call_finished(r0, 1.0)
    assert sorted(u.role for u in oracle.upcoming("job")) == ["work", "work"]
    assert oracle.projection("job", 2) == {"work": 2.0, "end": 1.0}
    assert prof.bound(r0) is None and prof.distance("job") is None  # cold, and it never read the truth


def test_profiler_predictor_warm_starts_from_development_seeds():
    p = ProfilerPredictor(history="spec", history_seeds=(1000,), history_jobs=25)
    p.job_started("x", "deep-research", "x", 0.0)
    assert p.warm("deep-research") and p.distance("x") is not None
    with pytest.raises(PythiaInputError, match="history_jobs"):
        ProfilerPredictor(history_jobs=0)


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("system", ["pythia", "pythia-no-cache", "pythia-no-routing", "pythia-no-priority",
                                    "pythia-no-scaling", "oracle"])
def test_every_pythia_system_runs_end_to_end_without_losing_a_call(system):
    from pythia.sim.run import run_simulation

    r = run_simulation(system, "workloads/deep-research.yaml", cluster="paper", concurrency=6, jobs=8, seed=100)
    s = r.summary
    assert s["jobs_completed"] == 8 and s["calls_completed"] == s["calls_submitted"]
    assert not s["unfinished_calls"] and not s["stalled"]
    assert (r.calls["status"] == "finished").all()
