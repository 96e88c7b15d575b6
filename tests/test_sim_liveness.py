"""No call is lost to the engine model: a replica with work always makes progress.

Three ways a replica used to stop for good with calls on it, each built here on purpose:
pins that leave no room for the waiting head while nothing runs; a precompute stopped half
way (it runs only while no call waits) holding the blocks the head needs; a step that
preempts the call it was placing and schedules nothing, after which the replica went idle
with a running call. Each test also checks the counterfactual where it can (the old rule
stalls), so it cannot pass without the rule.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import pytest

from pythia.policy import registry
from pythia.policy.base import CacheAction, CachePolicy
from pythia.policy.systems import load_system
from pythia.sim.config import SimOptions, load_cluster
from pythia.sim.engine import Replica
from pythia.sim.request import SimRequest
from pythia.sim.run import Simulation, run_simulation
from pythia.workflow.trace import Call, Job, Trace, segments


class PinEverything(CachePolicy):
    """Pins every block of each finished call, forever: the worst retention a policy can ask."""

    name = "pin_everything"

    def on_finish(self, req: Any, replica: Any, now: float) -> list[CacheAction]:
        return [CacheAction("pin", replica.replica_id, np.asarray(req.block_hashes, dtype=np.int64))]

    def on_tick(self, replicas: Sequence[Any], now: float) -> list[CacheAction]:
        return []


def _cluster(kv_tokens: int):  # type: ignore[no-untyped-def]
    cfg = load_cluster("qwen7b-x1")
    return dataclasses.replace(cfg, pools=tuple(dataclasses.replace(p, kv_cache_tokens=kv_tokens) for p in cfg.pools))


def _jobs(n: int, prompt: int) -> Trace:
    """One call per job, each with its own content (no hits), one job at a time."""
    jobs = [Job(job_id=f"job{j}", workflow_type="solo", workflow_id=f"wf{j}",
                calls=[Call(call_id=0, agent_role="solo", model="qwen2.5-7b", input_tokens=prompt, output_tokens=8,
                            prompt=segments([(7000 + j, 0, prompt)]))])
            for j in range(n)]
    return Trace(jobs=jobs, arrival={"process": "closed", "concurrency": 1})


def test_pins_yield_to_a_call_that_cannot_be_admitted_beside_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.REGISTRY["cache"], "pin_everything", f"{__name__}:PinEverything")
    system = dataclasses.replace(load_system("vllm"), policies={**load_system("vllm").policies,
                                                                "cache": ("pin_everything", {})})
    # 256 blocks of 16 tokens; each call takes 157 blocks, so a pinned call leaves too few.
    r = run_simulation(system, _jobs(4, 2500), cluster=_cluster(4096), seed=0)
    s = r.summary
    assert not s["stalled"] and s["jobs_completed"] == 4 and s["calls_completed"] == s["calls_submitted"] == 4
    assert s["pins_yielded"] > 0
    # Without the rule the second call waits for ever behind the first call's pins.
    monkeypatch.setattr(Replica, "_yield_speculative", lambda self, running, now: False)
    s = run_simulation(system, _jobs(4, 2500), cluster=_cluster(4096), seed=0).summary
    assert s["stalled"] and s["jobs_completed"] == 1


def _sim(system_name: str, kv_tokens: int) -> Simulation:
    return Simulation(load_system(system_name), _cluster(kv_tokens), _jobs(1, 64), SimOptions(seed=0, progress=False))


def _request(rid: int, prompt: int, output: int, bs: int, key: int) -> SimRequest:
    return SimRequest(rid, job_id=f"j{rid}", workflow_type="t", workflow_id=f"w{rid}", agent_role="r", agent_id="r",
                      call_id=0, model="qwen2.5-7b", prompt_tokens=prompt, output_tokens=output,
                      block_hashes=np.arange(key, key + prompt // bs, dtype=np.int64), issue_fs=0)


def test_a_paused_precompute_gives_its_blocks_to_a_waiting_call() -> None:
    sim = _sim("pythia", 8192)  # 512 blocks
    rep = sim.cluster.replicas[0]
    bs = rep.kv_pool.block_size
    bg = sim.cluster.background_request(segments([(91, 0, 4000)]), rep, 0)
    assert bg is not None
    rep.background.append(bg)
    assert rep._schedule(0) is not None  # the idle replica starts the precompute: one 2048-token chunk
    rep._apply(1)
    held = bg.kv_ref + bg.kv_priv
    assert bg.num_computed_tokens == 2048 and held == 128
    call = _request(1, 7000, 4, bs, 10_000)  # 438 blocks: more than the 384 the precompute leaves
    rep.waiting.add(call)
    assert rep._schedule(2) is not None
    assert call in rep.running and call in rep.inflight
    assert bg.num_computed_tokens == 0 and bg.kv_ref == bg.kv_priv == 0 and rep.precompute_yielded == 1
    rep.kv_pool.check()


def test_a_step_that_preempts_the_call_it_places_is_followed_by_one_that_runs_the_rest() -> None:
    sim = _sim("thunderagent", 1024)  # 64 blocks; thunderagent preempts the shortest context
    rep = sim.cluster.replicas[0]
    bs = rep.kv_pool.block_size
    short = _request(1, 320, 50, bs, 100)  # its next token needs a 21st block
    long = _request(2, 700, 50, bs, 500)  # decoding inside its 44th block
    for req, prompt, slots in ((short, 320, 320), (long, 700, 701)):
        assert rep._alloc(req, slots)
        req.num_computed_tokens, req.num_output_tokens, req.admitted = prompt, 1, True
        rep.running.append(req)
    assert rep.kv_pool.available() == 0
    rep._boundary(0)
    assert list(rep.waiting) == [short] and rep.running == [long]
    assert rep.busy and rep.inflight == {long: 1}
    rep.kv_pool.check()
