"""Model pools of replicas, with a router and an autoscaler per pool (policy hooks).

A call issued by the workflow runtime goes to the pool its model maps to; the pool's router
picks one of the replicas that are ``up``; the replica queues it. Autoscalers run at their
own interval: a new replica is ``starting`` for the cluster's cold-start delay (model load),
a replica scaled down is ``draining`` (no new calls; it stops when its calls end).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from pythia.errors import PythiaInputError
from pythia.policy.base import CacheAction, Policies
from pythia.policy.systems import EngineFlags
from pythia.sim.config import ClusterConfig, PoolConfig
from pythia.sim.costmodel import FS_PER_S, CostModel
from pythia.sim.engine import Replica
from pythia.sim.kvcache import KVCache
from pythia.sim.events import FRONT, READY, STEP, EventQueue
from pythia.sim.request import SimRequest
from pythia.workflow.blocks import sequence_hashes
from pythia.workflow.trace import segments



class CallListener(Protocol):
    """Who hears of finished calls (the workflow runtime, wired by the simulation)."""

    def on_call_finished(self, req: SimRequest, now: int) -> None:
        """``req`` produced its last token at ``now``."""


@dataclass
class Pool:
    """One model pool (implements ``PoolView``)."""

    config: PoolConfig
    cost: CostModel
    context_len: int
    replicas_all: list[Replica] = field(default_factory=list)
    pending: list[SimRequest] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def min_replicas(self) -> int:
        return self.config.min_replicas

    @property
    def max_replicas(self) -> int:
        return self.config.max_replicas

    @property
    def replicas(self) -> Sequence[Replica]:
        return [r for r in self.replicas_all if r.state != "stopped"]

    @property
    def num_up(self) -> int:
        return sum(1 for r in self.replicas_all if r.state == "up")

    @property
    def num_starting(self) -> int:
        return sum(1 for r in self.replicas_all if r.state == "starting")

    def up(self) -> list[Replica]:
        """Replicas that accept calls."""
        return [r for r in self.replicas_all if r.state == "up"]


class Cluster:
    """All pools and replicas; the bridge between the runtime, the policies and the engines."""

    def __init__(self, config: ClusterConfig, flags: EngineFlags, policies: Policies, events: EventQueue,
                 *, fast_forward: bool = True, check_invariants: bool = False, kv_index: str = "auto") -> None:
        self.config = config
        self.flags = flags
        self.policies = policies
        self.events = events
        self.fast_forward = fast_forward
        self.check_invariants = check_invariants
        self.kv_index = kv_index
        self.now = 0
        self.listener: CallListener | None = None
        self.pools: dict[str, Pool] = {}
        self.replicas: list[Replica] = []
        self._pool_of_model: dict[str, Pool] = {}
        self.cache_acts = policies.cache.acts  # else the cache hooks are never called
        for pc in config.pools:
            try:
                cost = CostModel(config.gpu, pc.model, pc.tp, gpu_memory_utilization=flags.gpu_memory_utilization,
                                 max_num_batched_tokens=flags.max_num_batched_tokens, kv_cache_tokens=pc.kv_cache_tokens)
            except PythiaInputError as e:
                raise PythiaInputError(f"cluster {config.name}: pool {pc.name}: {e}") from None
            pool = Pool(pc, cost, config.context_len(pc))
            if cost.kv_blocks(flags.block_size) < 1:
                raise PythiaInputError(
                    f"cluster {config.name}: pool {pc.name}: {pc.model} at TP {pc.tp} leaves no memory for KV on {config.gpu}"
                )
            self.pools[pc.name] = pool
            for _ in range(pc.replicas):
                self._new_replica(pool, "up")

    # ------------------------------------------------------------------ replicas

    def _new_replica(self, pool: Pool, state: str) -> Replica:
        r = Replica(len(self.replicas), pool.name, pool.cost, self.flags, self.policies, self,
                    fast_forward=self.fast_forward, state=state, kv_index=self.kv_index)
        r.check_invariants = self.check_invariants
        self.replicas.append(r)
        pool.replicas_all.append(r)
        return r

    def connect(self, listener: "CallListener") -> None:
        """The one that hears of every finished call (the workflow runtime)."""
        self.listener = listener

    # ------------------------------------------------------------------ ReplicaHost

    def schedule_step(self, replica: Replica, t: int, version: int) -> None:
        """Schedule the end of ``replica``'s in-flight iteration."""
        self.events.push(t, STEP, replica.replica_id, 0, version)

    def schedule_front(self, t: int, req: SimRequest, replica: Replica) -> None:
        """Schedule the front end's hand-over of ``req`` to ``replica``'s queue."""
        self.events.push(t, FRONT, replica.replica_id, req.call_id, (req, replica))

    def on_step(self, now: int, replica_id: int, version: int) -> None:
        """An iteration-end event."""
        self.now = now
        self.replicas[replica_id].on_step_event(now, version)

    def on_ready(self, now: int, replica_id: int) -> None:
        """A starting replica finished loading its model."""
        self.now = now
        r = self.replicas[replica_id]
        if r.state != "starting":
            return
        r.state = "up"
        pool = self.pools[r.pool]
        pending, pool.pending = pool.pending, []
        for req in pending:
            self._route(pool, req, now)

    # ------------------------------------------------------------------ calls

    def pool_for(self, model: str) -> Pool:
        """The pool serving trace model ``model`` (cached per name)."""
        pool = self._pool_of_model.get(model)
        if pool is None:
            pool = self.pools[self.config.pool_for(model).name]
            self._pool_of_model[model] = pool
        return pool

    def submit(self, req: SimRequest, pool: Pool, now: int) -> None:
        """Route a call issued at ``now`` to a replica of ``pool`` (or hold it until one is up)."""
        self.now = now
        self._route(pool, req, now)

    def _route(self, pool: Pool, req: SimRequest, now: int) -> None:
        ups = pool.up()
        if not ups:
            pool.pending.append(req)
            return
        i = self.policies.router.route(req, ups, now / FS_PER_S) if len(ups) > 1 else 0
        if not 0 <= i < len(ups):
            raise RuntimeError(f"router {self.policies.router.name} returned replica index {i} of {len(ups)}")
        ups[i].enqueue(req, now)

    def call_finished(self, replica: Replica, req: SimRequest, now: int) -> None:
        """A call finished on ``replica``: tell the runtime, run cache hooks, stop a drained replica."""
        if self.listener is None:
            raise RuntimeError("cluster not connected to a runtime (Cluster.connect)")
        self.listener.on_call_finished(req, now)
        if self.cache_acts:
            self.apply_actions(self.policies.cache.on_finish(req, replica, now / FS_PER_S), now)
        if replica.state == "draining" and not replica.running and not len(replica.waiting):
            replica.state = "stopped"

    # ------------------------------------------------------------------ policy actions and ticks

    def apply_actions(self, actions: list[CacheAction], now: int) -> None:
        """Carry out cache actions on their replicas."""
        for act in actions:
            if not 0 <= act.replica_id < len(self.replicas):
                continue
            r = self.replicas[act.replica_id]
            r.sync(now)
            kv = r.kv_pool
            if not isinstance(kv, KVCache):
                # The extent pool serves only policies without cache hooks (see Replica.__init__).
                raise RuntimeError(f"cache action {act.kind!r} on replica {r.replica_id}, whose pool takes no actions")
            hashes = np.asarray(act.hashes, dtype=np.int64).tolist()
            if act.kind == "pin":
                kv.pin(hashes)
            elif act.kind == "unpin":
                kv.unpin(hashes)
            elif act.kind == "demote":
                kv.demote(hashes)
            elif act.kind == "offload":
                kv.offload(hashes)
            elif act.kind == "prefetch":
                kv.prefetch(hashes)
            elif act.kind == "precompute" and act.segments is not None:
                bg = self.background_request(act.segments, r, now)
                if bg is not None:
                    r.add_background(bg, now)
            else:
                raise ValueError(f"unknown cache action {act.kind!r}")

    def background_request(self, segs: np.ndarray, replica: Replica, now: int) -> SimRequest | None:
        """A background prefill of ``segs`` (a precompute action), or ``None`` if it is too long."""
        bs = self.flags.block_size
        n = int(segs[:, 2].sum()) if len(segs) else 0
        if n < bs or -(-n // bs) > replica.kv_pool.total_blocks // 2:
            return None
        return SimRequest(-1, job_id="", workflow_type="", workflow_id="", agent_role="precompute", agent_id="",
                          call_id=-1, model="", prompt_tokens=n, output_tokens=0,
                          block_hashes=sequence_hashes(segs, segments([]), bs), issue_fs=now, background=True)

    def cache_tick(self, now: int) -> None:
        """Periodic cache-policy actions."""
        if self.cache_acts:
            live = [r for r in self.replicas if r.state in ("up", "draining")]
            self.apply_actions(self.policies.cache.on_tick(live, now / FS_PER_S), now)

    def autoscale(self, now: int) -> None:
        """Ask the autoscaler for each pool's target and start or drain replicas."""
        self.now = now
        scaler = self.policies.autoscaler
        for pool in self.pools.values():
            target = scaler.target(pool, now / FS_PER_S)
            target = max(pool.min_replicas, min(pool.max_replicas, int(target)))
            active = [r for r in pool.replicas_all if r.state in ("up", "starting")]
            if target > len(active):
                for _ in range(target - len(active)):
                    r = self._new_replica(pool, "starting")
                    self.events.push(now + round(self.config.cold_start_s * FS_PER_S), READY, r.replica_id)
            elif target < len(active):
                # Drain the least loaded replicas first (newest first on ties).
                order = sorted(active, key=lambda r: (r.state == "up", r.num_running + r.num_waiting, -r.replica_id))
                for r in order[: len(active) - target]:
                    if r.state == "starting":
                        r.state = "stopped"
                    else:
                        r.state = "draining"
                        if r.is_idle():
                            r.state = "stopped"

    def counters(self) -> list[dict[str, Any]]:
        """Per-replica counters for the summary."""
        return [r.describe() for r in self.replicas]
