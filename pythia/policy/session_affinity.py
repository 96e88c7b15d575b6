"""Session affinity, the vLLM production-stack router's ``session`` routing logic.

The production stack hashes a session key (a request header such as ``x-user-id``) onto a
consistent-hash ring of the endpoints (``uhashring``) and sends every request of the session
to the same engine; a request without a session id goes to the endpoint with the lowest
QPS. Here the session is the workflow (``workflow_id``, the id Pythia receives with every
call), so all calls of one workflow run land on one replica while that replica is up.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Sequence

from pythia.policy.base import Router
from pythia.policy.baseline_common import least_loaded, positive, stable_hash
from pythia.policy.views import ReplicaView, RequestView


class SessionAffinity(Router):
    """Consistent hashing of ``workflow_id`` over the pool's up replicas.

    Args:
        vnodes: points per replica on the ring (``uhashring``'s default ketama ring places
            160 points per node: 40 vnodes x 4 replicas).
    """

    name = "session_affinity"

    def __init__(self, vnodes: int = 160) -> None:
        self.vnodes = positive(self.name, "vnodes", vnodes, integer=True)
        self._rings: dict[tuple[int, ...], tuple[list[int], list[int]]] = {}

    def _ring(self, ids: tuple[int, ...]) -> tuple[list[int], list[int]]:
        ring = self._rings.get(ids)
        if ring is None:
            points = sorted((stable_hash(f"replica-{rid}-{v}"), rid) for rid in ids for v in range(self.vnodes))
            ring = ([p for p, _ in points], [rid for _, rid in points])
            self._rings[ids] = ring
        return ring

    def route(self, req: RequestView, replicas: Sequence[ReplicaView], now: float) -> int:
        session = req.workflow_id
        if not session:
            return least_loaded(replicas)  # the stack's lowest-QPS fallback, with in-flight calls as the load
        ids = tuple(sorted(r.replica_id for r in replicas))
        keys, owners = self._ring(ids)
        i = bisect_right(keys, stable_hash(session)) % len(keys)
        chosen = owners[i]
        return next(j for j, r in enumerate(replicas) if r.replica_id == chosen)
