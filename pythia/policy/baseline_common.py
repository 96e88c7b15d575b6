"""Small helpers shared by the baseline policies (vLLM routing logics, SGLang, Autellix,
Continuum, KVFlow, ThunderAgent): parameter checks, a stable string hash, replica load, and
a waiting queue ordered by a key.

Nothing here imports a host: the helpers see only the views of :mod:`pythia.policy.views`.
"""

from __future__ import annotations

import hashlib
from bisect import insort
from itertools import count
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from pythia.errors import PythiaInputError
from pythia.policy.base import WaitingQueue
from pythia.policy.views import ReplicaView, RequestView

if TYPE_CHECKING:
    from pythia.policy.workflow import Predictor


def check(ok: bool, policy: str, field: str, message: str) -> None:
    """Raise a :class:`PythiaInputError` naming the policy parameter ``field`` unless ``ok``."""
    if not ok:
        raise PythiaInputError(f"{policy} policy parameter {field}: {message}")


def positive(policy: str, field: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> Any:
    """``value`` checked to be a (non-negative when ``allow_zero``) number; returns it converted."""
    try:
        v = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise PythiaInputError(f"{policy} policy parameter {field}: {value!r} is not a number") from None
    if integer and v != value and not isinstance(value, (int, np.integer)):
        raise PythiaInputError(f"{policy} policy parameter {field}: {value!r} must be an integer")
    check(v > 0 or (allow_zero and v == 0), policy, field, f"{value!r} must be {'>= 0' if allow_zero else '> 0'}")
    return v


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def load(replica: ReplicaView) -> int:
    """Calls a router has sent to ``replica`` and that have not finished (running + waiting)."""
    return replica.num_running + replica.num_waiting


def least_loaded(replicas: Sequence[ReplicaView]) -> int:
    """Index of the replica with the fewest calls in flight (lowest replica id on ties)."""
    return min(range(len(replicas)), key=lambda i: (load(replicas[i]), replicas[i].replica_id))


def kv_used_share(replica: ReplicaView) -> float:
    """Share of the replica's KV blocks held by calls or pins."""
    kv = replica.kv
    return kv.used_blocks / kv.total_blocks if kv.total_blocks else 1.0


def prompt_hashes(req: RequestView, block_size: int) -> np.ndarray:
    """Hashes of the prompt's full blocks: what a router or scheduler can see before the output exists."""
    return req.block_hashes[: req.prompt_tokens // block_size]


class ProgramHomes:
    """Each program's home replica per pool (the routers that keep a program on one replica).

    Entries of programs the workflow service no longer tracks are dropped once the map holds
    more than four per live program (plus 64), so it never grows with the run.
    """

    __slots__ = ("home",)

    def __init__(self) -> None:
        self.home: dict[tuple[str, str], int] = {}  # (pool, job) -> replica id

    def key(self, req: RequestView, replicas: Sequence[ReplicaView], predictor: Predictor | None) -> tuple[str, str]:
        """The call's (pool, job) key, after forgetting ended programs when the map has grown."""
        if predictor is not None and len(self.home) > 4 * max(1, len(predictor.jobs)) + 64:
            self.home = {k: v for k, v in self.home.items() if k[1] in predictor.jobs}
        return (replicas[0].pool, req.job_id)

    def index(self, key: tuple[str, str], replicas: Sequence[ReplicaView]) -> int | None:
        """Position of the program's home among ``replicas`` (``None``: no home, or it is not up)."""
        rid = self.home.get(key)
        for j, r in enumerate(replicas):
            if r.replica_id == rid:
                return j
        return None


class KeyedQueue(WaitingQueue):
    """A waiting queue ordered by ``key(req, now)`` (smallest first), stable in arrival order.

    A preempted call put back with :meth:`prepend` goes before calls of the same key.
    :meth:`refresh` recomputes every key (for keys that change with time or with the
    workflow's progress); otherwise keys are computed once, when a call is queued.
    """

    __slots__ = ("_items", "_key", "_seq", "_now")

    def __init__(self, key: Callable[[RequestView, float], tuple]) -> None:
        self._items: list[tuple[tuple, int, RequestView]] = []
        self._key = key
        self._seq = count()
        self._now = 0.0

    def add(self, req: RequestView) -> None:
        self._now = max(self._now, float(req.arrival_s))
        insort(self._items, (self._key(req, self._now), next(self._seq), req), key=lambda t: t[:2])

    def prepend(self, req: RequestView) -> None:
        insort(self._items, (self._key(req, self._now), -next(self._seq), req), key=lambda t: t[:2])

    def peek(self) -> RequestView:
        return self._items[0][2]

    def pop(self) -> RequestView:
        return self._items.pop(0)[2]

    def remove(self, req: RequestView) -> None:
        for i, item in enumerate(self._items):
            if item[2] is req:
                del self._items[i]
                return
        raise ValueError("call not in the queue")

    def refresh(self, now: float) -> None:
        self._now = now
        key = self._key
        self._items = sorted(((key(r, now), s, r) for _, s, r in self._items), key=lambda t: t[:2])

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[RequestView]:
        return (r for _, _, r in self._items)
