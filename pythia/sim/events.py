"""The discrete-event core: a heap of events with a stable, mode-independent order.

An event is ``(time_fs, kind, a, b, seq, payload)``. Times are integer femtoseconds, so
sums of costs are exact. At equal times events run by ``kind`` (iteration ends before
readiness, readiness before front-end hand-overs (a call reaching its engine, a finished
call reaching its client), those before call issues, issues before job arrivals, ticks last), then by
the stable ids ``a, b`` (replica id, job index, call id), and only then by insertion order:
the order never depends on how many events a fast-forward skipped.
"""

from __future__ import annotations

import heapq
from typing import Any

STEP, READY, FRONT, ISSUE, JOB, TICK = 0, 1, 2, 3, 4, 5


class EventQueue:
    """A min-heap of events."""

    __slots__ = ("_heap", "_seq", "_work")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int, int, int, Any]] = []
        self._seq = 0
        self._work = 0  # pending events other than ticks

    def push(self, t: int, kind: int, a: int = 0, b: int = 0, payload: Any = None) -> None:
        """Schedule an event at integer time ``t`` (femtoseconds)."""
        self._seq += 1
        if kind != TICK:
            self._work += 1
        heapq.heappush(self._heap, (t, kind, a, b, self._seq, payload))

    def pop(self) -> tuple[int, int, int, int, int, Any]:
        """The earliest event."""
        e = heapq.heappop(self._heap)
        if e[1] != TICK:
            self._work -= 1
        return e

    def pending_work(self) -> int:
        """Pending events that are not ticks (iteration ends, issues, arrivals, readiness)."""
        return self._work

    def peek_time(self) -> int | None:
        """Time of the earliest event, or ``None`` when empty."""
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
