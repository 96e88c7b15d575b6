"""Pythia's graph-driven scheduling (registry name ``pythia``): dynamic priority with aging.

For a waiting (or running) call ``c`` of job ``J`` at time ``t``::

    priority(c) = W(type) * [ w_distance / d(J)
                              + w_unblock * sum_k p_k * idle(pool_k) / d(J) ]
                  + w_aging * (t - arrival(c)) / aging_scale_s

``d(J)`` is the job's expected remaining critical-path calls (close-to-done jobs first);
the sum runs over the job's predicted next calls ``k`` (probability ``p_k``) and
``idle(pool_k)`` is the share of the replicas of the pool that will serve them that are
about to go idle (a call that unblocks agents on idle replicas goes first); ``W(type)`` is
the per-workflow-type weight (a heavy type cannot starve a light one). The aging term grows
without bound, so every call is eventually admitted. While the predictor is cold the
bracket is 0 and the order is oldest first (FCFS). Under memory pressure the running call
of lowest priority is preempted.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Iterator, Sequence

from pythia.errors import PythiaInputError
from pythia.policy.base import SchedulingPolicy, WaitingQueue
from pythia.policy.pythia_predictor import PythiaPredictor, as_pythia
from pythia.policy.views import RequestView
from pythia.policy.workflow import Predictor


class PriorityQueue(WaitingQueue):
    """Waiting calls kept sorted by priority, as a time-invariant key.

    The aging term is linear in waiting time and the same weight for every call, so it
    raises every queued call's priority equally as time passes: the order at any ``now`` is
    the order of the static key ``w_aging * arrival / aging_scale_s - graph_priority``
    (ascending = highest priority first). A call is scored once when it is added and put in
    place by bisection; only the graph part changes with predictions, and it is recomputed
    for the whole queue at most every ``refresh_s`` (one sort), which keeps the per-step cost
    in an engine's scheduler small.
    """

    __slots__ = ("_pol", "_q", "_keys", "_at")

    def __init__(self, policy: "PythiaScheduler") -> None:
        self._pol = policy
        self._q: list[RequestView] = []
        self._keys: list[tuple[float, float, int]] = []
        self._at = float("-inf")  # when graph priorities were last recomputed

    def _key(self, req: RequestView) -> tuple[float, float, int]:
        pol = self._pol
        return (pol.w_aging * req.arrival_s / pol.aging_scale_s - pol.graph_priority(req), req.arrival_s, req.request_id)

    def add(self, req: RequestView) -> None:
        key = self._key(req)
        i = bisect_right(self._keys, key)
        self._keys.insert(i, key)
        self._q.insert(i, req)

    def prepend(self, req: RequestView) -> None:
        self.add(req)

    def peek(self) -> RequestView:
        return self._q[0]

    def pop(self) -> RequestView:
        self._keys.pop(0)
        return self._q.pop(0)

    def remove(self, req: RequestView) -> None:
        for i, r in enumerate(self._q):
            if r is req:
                del self._q[i]
                del self._keys[i]
                return
        raise ValueError("request not in queue")

    def __len__(self) -> int:
        return len(self._q)

    def __iter__(self) -> Iterator[RequestView]:
        return iter(list(self._q))

    def reorders_at(self, now: float) -> bool:
        return now - self._at >= self._pol.refresh_s  # refresh's own test

    def refresh(self, now: float) -> None:
        # Aging needs no work (see the class docstring); predictions change graph priorities,
        # which are recomputed at most every refresh_s.
        if now - self._at >= self._pol.refresh_s:
            self._at = now
            if self._q:
                pairs = sorted(zip(map(self._key, self._q), self._q), key=lambda kv: kv[0])
                self._keys = [k for k, _ in pairs]
                self._q = [r for _, r in pairs]


class PythiaScheduler(SchedulingPolicy):
    """Admit in dynamic priority order; preempt the lowest priority running call.

    Args:
        w_distance: weight of ``1 / d(J)`` (close-to-done jobs first).
        w_unblock: weight of the unblocking term.
        w_aging: weight of the aging term (per ``aging_scale_s`` of waiting).
        aging_scale_s: waiting time that adds ``w_aging`` to the priority.
        refresh_s: how often the graph part of queued priorities is recomputed (seconds of the
            host's clock: simulated in the simulator, wall clock in vLLM).
    """

    name = "pythia"
    dynamic = True

    def __init__(self, w_distance: float = 1.0, w_unblock: float = 0.5, w_aging: float = 1.0,
                 aging_scale_s: float = 60.0, refresh_s: float = 0.5) -> None:
        for field, v in (("w_distance", w_distance), ("w_unblock", w_unblock), ("w_aging", w_aging)):
            if not isinstance(v, (int, float)) or v < 0:
                raise PythiaInputError(f"scheduler param {field}={v!r} must be a number >= 0")
        for field, v in (("aging_scale_s", aging_scale_s), ("refresh_s", refresh_s)):
            if not isinstance(v, (int, float)) or v <= 0:
                raise PythiaInputError(f"scheduler param {field}={v!r} must be a number > 0")
        self.w_distance, self.w_unblock, self.w_aging = float(w_distance), float(w_unblock), float(w_aging)
        self.aging_scale_s, self.refresh_s = float(aging_scale_s), float(refresh_s)
        self.pred: PythiaPredictor = as_pythia(None)

    def bind(self, predictor: Predictor) -> None:
        """Receive the run's workflow service."""
        self.pred = as_pythia(predictor)

    def graph_priority(self, req: RequestView) -> float:
        """The prediction part of the priority (0 while cold)."""
        pred = self.pred
        d = pred.distance(req.job_id)
        if d is None:
            return 0.0
        score = self.w_distance / d
        if self.w_unblock > 0:
            up = pred.upcoming(req.job_id)
            if up:
                wt = req.workflow_type
                s = 0.0
                for u in up:
                    pool = pred.role_pool.get((wt, u.role))
                    if pool is not None:
                        s += u.probability * pred.pool_idle.get(pool, 0.0)
                score += self.w_unblock * s / d
        return pred.type_weight(req.workflow_type) * score

    def priority(self, req: RequestView, now: float) -> float:
        """The call's dynamic priority at ``now`` (higher first)."""
        aging = self.w_aging * max(0.0, now - req.arrival_s) / self.aging_scale_s
        return self.graph_priority(req) + aging

    def new_queue(self) -> WaitingQueue:
        return PriorityQueue(self)

    def victim(self, running: Sequence[RequestView], now: float) -> RequestView:
        # Lowest priority; among equals the latest admitted (as vLLM), hence the reversed scan.
        best, best_p = running[-1], float("inf")
        for req in reversed(running):
            p = self.priority(req, now)
            if p < best_p:
                best, best_p = req, p
        return best
