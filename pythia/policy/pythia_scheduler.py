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

from typing import Iterator, Sequence

from pythia.errors import PythiaInputError
from pythia.policy.base import SchedulingPolicy, WaitingQueue
from pythia.policy.pythia_predictor import PythiaPredictor, as_pythia
from pythia.policy.views import RequestView
from pythia.policy.workflow import Predictor


class PriorityQueue(WaitingQueue):
    """Waiting calls kept sorted by descending priority; re-sorted on :meth:`refresh`."""

    __slots__ = ("_pol", "_q", "_now", "_at")

    def __init__(self, policy: "PythiaScheduler") -> None:
        self._pol = policy
        self._q: list[RequestView] = []
        self._now = 0.0
        self._at = -1.0

    def _key(self, req: RequestView) -> tuple[float, float, int]:
        return (-self._pol.priority(req, self._now), req.arrival_s, req.request_id)

    def add(self, req: RequestView) -> None:
        self._now = max(self._now, req.arrival_s)
        self._q.append(req)
        self._at = -1.0  # re-sort lazily at the next peek

    def prepend(self, req: RequestView) -> None:
        self.add(req)

    def _sorted(self) -> None:
        if self._at != self._now:
            self._q.sort(key=self._key)
            self._at = self._now

    def peek(self) -> RequestView:
        self._sorted()
        return self._q[0]

    def pop(self) -> RequestView:
        self._sorted()
        return self._q.pop(0)

    def remove(self, req: RequestView) -> None:
        self._q.remove(req)

    def __len__(self) -> int:
        return len(self._q)

    def __iter__(self) -> Iterator[RequestView]:
        self._sorted()
        return iter(list(self._q))

    def refresh(self, now: float) -> None:
        # Priorities change with predictions and aging; recomputing them every engine step
        # would dominate the cost, so they are refreshed at most every refresh_s.
        if now - self._now >= self._pol.refresh_s or self._at < 0:
            self._now = now
            self._at = -1.0


class PythiaScheduler(SchedulingPolicy):
    """Admit in dynamic priority order; preempt the lowest priority running call.

    Args:
        w_distance: weight of ``1 / d(J)`` (close-to-done jobs first).
        w_unblock: weight of the unblocking term.
        w_aging: weight of the aging term (per ``aging_scale_s`` of waiting).
        aging_scale_s: waiting time that adds ``w_aging`` to the priority.
        refresh_s: how often queued priorities are recomputed (simulated seconds).
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
