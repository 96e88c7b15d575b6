"""Continuum (Li et al., arXiv 2511.02230): KV time-to-live across tool calls, program-level FCFS.

Cache. When an LLM call of a multi-turn agent ends in a tool call, the engine would free
its KV and, under load, evict it before the tool returns, so the next turn recomputes (or
reloads) its whole context and queues again. Continuum pins the finished call's KV in GPU
memory for a time-to-live; the pin ends when the program's next call arrives (it reuses
the blocks) or when the TTL expires (the tool took too long: free the memory). The TTL
comes from the measured distribution of tool durations: Continuum weighs the reload and
queueing delay saved against the memory held; here it is the ``ttl_quantile`` of the tool
durations observed so far (``default_ttl_s`` until ``min_samples`` were seen), capped by
``max_ttl_s``. A call "ends in a tool call" when its program is still running after it,
which an engine sees in the response (a tool-call message). Pins never exceed
``pin_budget`` of a replica's blocks, and a replica with calls waiting and none running
drops its pins so that pinned memory cannot block it.

Scheduling. Program-level first come first served: waiting calls are ordered by the start
time of their program, so a program that started earlier keeps its turn across tool calls;
the victim under KV pressure is a call of the most recently started program.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pythia.policy.base import CacheAction, CachePolicy, SchedulingPolicy, WaitingQueue
from pythia.policy.baseline_common import KeyedQueue, check, positive
from pythia.policy.views import ReplicaView, RequestView
from pythia.policy.workflow import Predictor


def job_start(predictor: Predictor | None, req: RequestView) -> float:
    """Start time of the call's program (its arrival when the program is unknown)."""
    info = predictor.job(req.job_id) if predictor is not None else None
    return info.start_s if info is not None else req.arrival_s


class ProgramFCFS(SchedulingPolicy):
    """Order waiting calls by their program's start time, then by arrival."""

    name = "program_fcfs"
    dynamic = False  # a program's start time never changes

    def __init__(self) -> None:
        self.predictor: Predictor | None = None

    def bind(self, predictor: Predictor) -> None:
        """Program start times come from the run's workflow service."""
        self.predictor = predictor

    def new_queue(self) -> WaitingQueue:
        return KeyedQueue(lambda req, now: (job_start(self.predictor, req),))

    def victim(self, running: Sequence[RequestView], now: float) -> RequestView:
        return max(reversed(running), key=lambda r: (job_start(self.predictor, r), r.arrival_s))


@dataclass(slots=True)
class _Pin:
    replica_id: int
    hashes: np.ndarray
    finish_s: float
    expires_s: float
    calls_issued: int


class ContinuumTTL(CachePolicy):
    """Pin a finished call's KV for a TTL while its program waits on a tool.

    Args:
        default_ttl_s: TTL before enough tool durations were observed.
        ttl_quantile: quantile of the observed tool durations used as the TTL.
        max_ttl_s: upper bound of the TTL.
        min_samples: tool durations needed before the quantile replaces the default.
        pin_budget: largest share of a replica's KV blocks held by pins.
    """

    name = "continuum_ttl"

    def __init__(self, default_ttl_s: float = 10.0, ttl_quantile: float = 0.9, max_ttl_s: float = 60.0,
                 min_samples: int = 20, pin_budget: float = 0.5) -> None:
        self.default_ttl_s = positive(self.name, "default_ttl_s", default_ttl_s, allow_zero=True)
        self.ttl_quantile = float(ttl_quantile)
        check(0.0 < self.ttl_quantile <= 1.0, self.name, "ttl_quantile", f"{ttl_quantile!r} must be in (0, 1]")
        self.max_ttl_s = positive(self.name, "max_ttl_s", max_ttl_s, allow_zero=True)
        self.min_samples = positive(self.name, "min_samples", min_samples, integer=True)
        self.pin_budget = float(pin_budget)
        check(0.0 < self.pin_budget <= 1.0, self.name, "pin_budget", f"{pin_budget!r} must be in (0, 1]")
        self.predictor: Predictor | None = None
        self.pins: dict[str, _Pin] = {}
        self.pinned: dict[int, int] = {}  # replica id -> blocks pinned
        self.tool_s: list[float] = []

    def bind(self, predictor: Predictor) -> None:
        """Job liveness and call counts come from the run's workflow service."""
        self.predictor = predictor

    def ttl(self) -> float:
        """The current time-to-live (see the class docstring)."""
        if len(self.tool_s) < self.min_samples:
            return min(self.default_ttl_s, self.max_ttl_s)
        return min(float(np.quantile(self.tool_s[-1000:], self.ttl_quantile)), self.max_ttl_s)

    def _unpin(self, job_id: str) -> CacheAction:
        pin = self.pins.pop(job_id)
        self.pinned[pin.replica_id] -= len(pin.hashes)
        return CacheAction("unpin", pin.replica_id, pin.hashes)

    def on_finish(self, req: RequestView, replica: ReplicaView, now: float) -> list[CacheAction]:
        actions: list[CacheAction] = []
        info = self.predictor.job(req.job_id) if self.predictor is not None else None
        if req.job_id in self.pins:
            actions.append(self._unpin(req.job_id))  # the newer call's KV replaces it
        if info is None:
            return actions  # the program ended: no tool call follows
        ttl = self.ttl()
        kv = replica.kv
        n = min(len(req.block_hashes), (req.prompt_tokens + req.num_output_tokens) // kv.block_size)
        used = self.pinned.get(replica.replica_id, 0)
        if ttl <= 0 or n == 0 or used + n > self.pin_budget * kv.total_blocks:
            return actions
        hashes = req.block_hashes[:n]
        self.pins[req.job_id] = _Pin(replica.replica_id, hashes, now, now + ttl, info.calls_issued)
        self.pinned[replica.replica_id] = used + n
        actions.append(CacheAction("pin", replica.replica_id, hashes))
        return actions

    def on_tick(self, replicas: Sequence[ReplicaView], now: float) -> list[CacheAction]:
        if not self.pins:
            return []
        blocked = {r.replica_id for r in replicas if r.num_waiting and not r.num_running}
        actions = []
        for job_id, pin in list(self.pins.items()):
            info = self.predictor.job(job_id) if self.predictor is not None else None
            if info is not None and info.calls_issued > pin.calls_issued:
                self.tool_s.append(now - pin.finish_s)  # the next call arrived: the tool returned
                actions.append(self._unpin(job_id))
            elif info is None or now >= pin.expires_s or pin.replica_id in blocked:
                actions.append(self._unpin(job_id))
        return actions
