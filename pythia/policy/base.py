"""The four policy interfaces: scheduling, cache, routing, scaling.

Every decision is written once against these interfaces and the views in
:mod:`pythia.policy.views`, and runs unchanged in every host (simulator, vLLM plugin,
Ray Serve host). They follow vLLM V1's shape so vLLM can host them:

- :class:`SchedulingPolicy` makes the waiting queue (vLLM's ``RequestQueue``) and names the
  preemption victim when KV blocks run out;
- :class:`CachePolicy` expresses cache decisions as actions on an LRU block pool (pin,
  unpin, demote, offload to host, prefetch to GPU, precompute), which vLLM's block pool can
  carry out; a policy that needs an arbitrary eviction order sets ``reorders_eviction`` and
  ranks candidates, which only the simulator honours;
- :class:`Router` picks a replica of a pool for a call;
- :class:`Autoscaler` returns a target replica count for a pool at each tick.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from pythia.policy.views import BlockView, KVView, PoolView, ReplicaView, RequestView
from pythia.policy.workflow import JobTracker, Predictor


# --------------------------------------------------------------------------- scheduling


class WaitingQueue(ABC):
    """An engine's waiting queue (vLLM's ``RequestQueue``): the policy decides the order."""

    @abstractmethod
    def add(self, req: RequestView) -> None:
        """Enqueue a newly arrived call."""

    @abstractmethod
    def prepend(self, req: RequestView) -> None:
        """Put back a preempted call (vLLM puts it at the front under FCFS)."""

    @abstractmethod
    def peek(self) -> RequestView:
        """The call the engine should try to admit next."""

    @abstractmethod
    def pop(self) -> RequestView:
        """Remove and return :meth:`peek`'s call."""

    @abstractmethod
    def remove(self, req: RequestView) -> None:
        """Remove a call (cancelled, or moved elsewhere)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __iter__(self) -> Iterator[RequestView]: ...

    def attach(self, replica: ReplicaView) -> None:
        """Receive the replica whose queue this is (hosts call it once, right after
        ``new_queue``); queues ordered by the replica's cache state keep it."""

    def refresh(self, now: float) -> None:
        """Recompute time-dependent priorities (aging); called each step when the policy is dynamic."""

    def reorders_at(self, now: float) -> bool:
        """Whether :meth:`refresh` at ``now`` may change the order (dynamic policies only).

        ``False`` promises that the order stays as it is through ``now`` unless calls are
        added or removed, so a host may plan steps up to then at once (the simulator's
        fast-forward). The default, ``True``, promises nothing.
        """
        return True


class _PolicyBase:
    """What every policy kind receives from its host before a run (no-ops by default)."""

    def bind(self, predictor: Predictor) -> None:
        """Receive the run's workflow service (called once, when the system is built)."""

    def set_rng(self, rng: np.random.Generator) -> None:
        """Receive this component's seeded generator (policies that draw random numbers keep it)."""


class SchedulingPolicy(_PolicyBase, ABC):
    """Orders waiting calls and chooses preemption victims.

    ``dynamic`` says whether the order can change with time alone (aging): the simulator
    then refreshes the queue every iteration and does not fast-forward past a blocked queue.
    """

    name: str = "scheduling"
    dynamic: bool = False

    @abstractmethod
    def new_queue(self) -> WaitingQueue:
        """A fresh, empty waiting queue for one engine."""

    def victim(self, running: Sequence[RequestView], now: float) -> RequestView:
        """The running call to preempt when blocks run out (vLLM FCFS: the last admitted)."""
        return running[-1]


# --------------------------------------------------------------------------- cache


@dataclass(frozen=True, slots=True)
class CacheAction:
    """An action on a replica's KV pool, naming blocks by their chained hashes.

    kind:
        ``pin``: hold resident blocks so they cannot be evicted (a reference, as vLLM's
        ``touch``); ``unpin``: release such a hold; ``demote``: move evictable blocks to the
        front of the eviction order (release early); ``offload``: copy resident blocks to
        host DRAM (prefetch to host); ``prefetch``: load host blocks back to the GPU ahead of
        use; ``precompute``: compute the prefix ``segments`` in the background when idle.
    """

    kind: str
    replica_id: int
    hashes: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    segments: np.ndarray | None = None

    KINDS = ("pin", "unpin", "demote", "offload", "prefetch", "precompute")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"cache action kind {self.kind!r} is not one of {', '.join(self.KINDS)}")
        if self.kind == "precompute" and self.segments is None:
            raise ValueError("a precompute action needs the segments to compute")


@dataclass(frozen=True, slots=True)
class _Block:
    """A :class:`BlockView` made from a hash and a time."""

    block_hash: int
    last_used_s: float


class CachePolicy(_PolicyBase, ABC):
    """Decides what stays in the KV cache beyond plain LRU, through :class:`CacheAction`s."""

    name: str = "cache"
    reorders_eviction: bool = False  # simulator only: rank evictable blocks by eviction_key

    @property
    def acts(self) -> bool:
        """Whether the policy can return actions (it overrides :meth:`on_finish` or
        :meth:`on_tick`); hosts skip the hooks of one that cannot."""
        t = type(self)
        return t.on_finish is not CachePolicy.on_finish or t.on_tick is not CachePolicy.on_tick

    @property
    def plain_lru(self) -> bool:
        """Plain vLLM behaviour: no actions and the pool's own LRU order (hosts skip all cache work)."""
        return not self.acts and not self.reorders_eviction

    def on_finish(self, req: RequestView, replica: ReplicaView, now: float) -> list[CacheAction]:
        """Actions after a call finishes on ``replica`` (its blocks just became evictable)."""
        return []

    def on_tick(self, replicas: Sequence[ReplicaView], now: float) -> list[CacheAction]:
        """Periodic actions (prefetch, precompute when idle)."""
        return []

    def eviction_key(self, block: BlockView, now: float) -> tuple[Any, ...]:
        """The sort key of an evictable block: smaller keys are evicted first, equal keys in
        the pool's current order (as SGLang's eviction strategies give a priority per node).
        LRU by default. Honoured by the simulator only (``reorders_eviction``)."""
        return (block.last_used_s,)

    def eviction_keys(self, hashes: Sequence[int], last_used: Sequence[float], now: float) -> list[tuple[Any, ...]]:
        """:meth:`eviction_key` of many blocks at once (a re-rank asks for every evictable
        block); override it where one pass over all of them is cheaper."""
        return [self.eviction_key(_Block(h, t), now) for h, t in zip(hashes, last_used)]

    def eviction_rank(self, blocks: Sequence[BlockView], now: float) -> list[int]:
        """Indices of ``blocks`` in eviction order (first evicted first), from their keys."""
        keys = self.eviction_keys([b.block_hash for b in blocks], [b.last_used_s for b in blocks], now)
        return sorted(range(len(blocks)), key=keys.__getitem__)


# --------------------------------------------------------------------------- routing and scaling


class Router(_PolicyBase, ABC):
    """Picks a replica of a pool for each call."""

    name: str = "router"

    @abstractmethod
    def route(self, req: RequestView, replicas: Sequence[ReplicaView], now: float) -> int:
        """Index into ``replicas`` (all of them ``up``; never empty) of the chosen replica."""


class Autoscaler(_PolicyBase, ABC):
    """Sets the target replica count of each pool."""

    name: str = "autoscaler"
    interval_s: float = 10.0
    enabled: bool = True

    @abstractmethod
    def target(self, pool: PoolView, now: float) -> int:
        """Target number of replicas (starting + up) of ``pool`` at ``now``."""


@dataclass(frozen=True)
class Policies:
    """The four policies of one system and the workflow service they share.

    Hosts report jobs and calls to ``predictor`` (see :mod:`pythia.policy.workflow`); every
    policy receives it through ``bind(predictor)`` when the system is built.
    """

    scheduler: SchedulingPolicy
    cache: CachePolicy
    router: Router
    autoscaler: Autoscaler
    predictor: Predictor = field(default_factory=JobTracker)
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for policy in (self.scheduler, self.cache, self.router, self.autoscaler):
            policy.bind(self.predictor)


__all__ = [
    "Autoscaler",
    "BlockView",
    "CacheAction",
    "CachePolicy",
    "KVView",
    "Policies",
    "PoolView",
    "Predictor",
    "ReplicaView",
    "RequestView",
    "Router",
    "SchedulingPolicy",
    "WaitingQueue",
]
