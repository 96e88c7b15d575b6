"""Round-robin routing, the vLLM production-stack router's ``roundrobin`` logic."""

from __future__ import annotations

from typing import Sequence

from pythia.policy.base import Router
from pythia.policy.views import ReplicaView, RequestView


class RoundRobin(Router):
    """Send calls to the replicas of a pool in turn, ordered by replica id.

    The production stack keeps one counter and indexes the sorted endpoint list with it;
    the counter here is kept per pool, since each pool has its own router.
    """

    name = "round_robin"

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def route(self, req: RequestView, replicas: Sequence[ReplicaView], now: float) -> int:
        pool = replicas[0].pool
        i = self._next.get(pool, 0)
        self._next[pool] = i + 1
        return i % len(replicas)
