"""The request router: a ``ray.serve.request_router.RequestRouter`` that hosts a ``pythia.policy`` router.

Each pool deployment is routed by :class:`PythiaRequestRouter` (``request_router_config``).
For a call it builds the candidates' views from their ``record_routing_stats`` (KV usage and
capacity, running and waiting calls, the calls each replica serves, its cached prefix
hashes), adds the calls this router sent to each replica since its stats were taken, and
asks the workflow-state actor, which holds the system's router policy beside the predictor,
for the replica (:meth:`pythia.serve.ray_host.state.WorkflowState.route`). One policy object
thus serves every ingress replica's routers, as one router object serves all pools in the
simulator. The chosen replica is ranked first and the rest after it, so a replica that
refuses (at ``max_ongoing_requests``) hands the call to Serve's next choice instead of
blocking it.

When the policy cannot be asked (the actor is gone, or no candidate has published stats
yet), every candidate is returned in one rank and Serve picks by queue length; such calls are
counted (``fallbacks``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional

import ray
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from pythia.serve.ray_host.config import NAMESPACE, STATE_ACTOR

log = logging.getLogger("pythia.serve.ray")
# A call this router sent somewhere stops counting as "routed since the stats" after this long.
ROUTED_TTL_S = 30.0


def call_of(pending: Optional[PendingRequest]) -> Optional[dict[str, Any]]:
    """The call record a pending request carries (the first argument of ``EngineReplica.generate``)."""
    if pending is None or not pending.args:
        return None
    rec = pending.args[0]
    return rec if isinstance(rec, dict) and "request_id" in rec else None


class PythiaRequestRouter(RequestRouter):
    """Routes each call of a pool by the system's router policy (see the module docstring).

    ``request_router_kwargs``: ``state_actor`` and ``namespace`` (the workflow-state actor).
    """

    def initialize_state(self, state_actor: str = STATE_ACTOR, namespace: str = NAMESPACE, **_: Any) -> None:
        self._state_name, self._namespace = state_actor, namespace
        self._state: Any = None
        # replica unique id -> {request id: (light record, when routed)}
        self._routed: Dict[str, Dict[str, tuple[dict[str, Any], float]]] = {}
        self._internal: Dict[str, tuple[str, str]] = {}
        self.fallbacks = 0
        self.decisions = 0

    def _actor(self) -> Any:
        if self._state is None:
            self._state = ray.get_actor(self._state_name, namespace=self._namespace)
        return self._state

    def routed_since(self, replica: RunningReplica, stats_t: float) -> list[dict[str, Any]]:
        """Calls this router sent to ``replica`` after its stats were taken (and not completed)."""
        now = time.time()
        table = self._routed.get(replica.replica_id.unique_id, {})
        for rid in [r for r, (_, t) in table.items() if now - t > ROUTED_TTL_S]:
            table.pop(rid, None)
        return [rec for rec, t in table.values() if t > stats_t]

    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> List[List[RunningReplica]]:
        rec = call_of(pending_request)
        if rec is None or len(candidate_replicas) <= 1:
            return [candidate_replicas]
        with_stats = [r for r in candidate_replicas if (r.routing_stats or {}).get("replica_id") is not None]
        if not with_stats:
            self.fallbacks += 1
            return [candidate_replicas]
        stats = [r.routing_stats for r in with_stats]
        routed = {int(s["replica_id"]): self.routed_since(r, float(s.get("t", 0.0))) for r, s in zip(with_stats, stats)}
        try:
            i = int(await self._actor().route.remote(rec, stats, routed))
        except Exception as e:  # noqa: BLE001 - the policy's host is gone: Serve's own choice keeps calls moving
            self.fallbacks += 1
            self._state = None
            log.warning("routing by policy failed (%s: %s); using Serve's choice", type(e).__name__, e)
            return [candidate_replicas]
        self.decisions += 1
        chosen = with_stats[i]
        rest = [r for r in candidate_replicas if r.replica_id != chosen.replica_id]
        return [[chosen], rest]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        rec = call_of(pending_request)
        if rec is None:
            return
        light = {k: rec[k] for k in ("request_id", "seq", "job_id", "workflow_type", "workflow_id", "agent_role",
                                     "agent_id", "call_id", "prompt_tokens", "hints")}
        rid = str(rec["request_id"])
        self._routed.setdefault(replica_id.unique_id, {})[rid] = (light, time.time())
        self._internal[pending_request.metadata.internal_request_id] = (replica_id.unique_id, rid)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        where = self._internal.pop(internal_request_id, None)
        if where is not None:
            self._routed.get(where[0], {}).pop(where[1], None)
