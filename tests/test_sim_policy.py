"""Policy interfaces, registry and system files."""

from __future__ import annotations

import pytest

from pythia.errors import PythiaInputError
from pythia.policy import registry
from pythia.policy.systems import load_system, parse_system


def test_vllm_system_names_its_sources_and_builds():
    s = load_system("vllm")
    assert any("vLLM" in src for src in s.source) and any("production-stack" in src for src in s.source)
    pol = s.build()
    assert (pol.scheduler.name, pol.cache.name, pol.router.name, pol.autoscaler.name) == ("fcfs", "lru", "round_robin", "none")
    assert s.engine.max_num_batched_tokens == 2048 and s.engine.block_size == 16


def test_registry_and_system_validation():
    for kind in registry.KINDS:
        for name in registry.known(kind):
            registry.create(kind, name)
    with pytest.raises(PythiaInputError, match="known: .*fcfs"):
        registry.create("scheduler", "magic")
    with pytest.raises(PythiaInputError, match="source is required"):
        parse_system({"policies": {}}, "x.yaml", "x")
    with pytest.raises(PythiaInputError, match="unknown engine flag"):
        parse_system({"source": "s", "engine": {"max_tokens": 1}}, "x.yaml", "x")
    with pytest.raises(PythiaInputError, match="known: .*round_robin"):
        parse_system({"source": "s", "policies": {"router": "nearest"}}, "x.yaml", "x")


def test_fcfs_queue_order_and_round_robin():
    from pythia.policy.fcfs import FCFS
    from pythia.policy.round_robin import RoundRobin

    q = FCFS().new_queue()
    q.add("a")
    q.add("b")
    q.prepend("p")
    assert list(q) == ["p", "a", "b"] and q.pop() == "p" and q.peek() == "a"

    class R:
        def __init__(self, i: int) -> None:
            self.replica_id, self.pool = i, "p"

    rr = RoundRobin()
    reps = [R(0), R(1), R(2)]
    assert [rr.route(None, reps, 0.0) for _ in range(4)] == [0, 1, 2, 0]
