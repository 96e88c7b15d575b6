"""First-come first-served scheduling, as vLLM V1's default ``fcfs`` policy."""

from __future__ import annotations

from collections import deque
from typing import Iterator

from pythia.policy.base import SchedulingPolicy, WaitingQueue
from pythia.policy.views import RequestView


class FCFSQueue(WaitingQueue):
    """vLLM's ``FCFSRequestQueue``: a deque, new calls at the back, preempted ones at the front."""

    __slots__ = ("_q",)

    def __init__(self) -> None:
        self._q: deque[RequestView] = deque()

    def add(self, req: RequestView) -> None:
        self._q.append(req)

    def prepend(self, req: RequestView) -> None:
        self._q.appendleft(req)

    def peek(self) -> RequestView:
        return self._q[0]

    def pop(self) -> RequestView:
        return self._q.popleft()

    def remove(self, req: RequestView) -> None:
        self._q.remove(req)

    def __len__(self) -> int:
        return len(self._q)

    def __iter__(self) -> Iterator[RequestView]:
        return iter(self._q)


class FCFS(SchedulingPolicy):
    """Admit in arrival order; preempt the most recently admitted running call."""

    name = "fcfs"
    dynamic = False

    def new_queue(self) -> WaitingQueue:
        return FCFSQueue()
