"""Pythia's decisions on vLLM's CPU KV tier: the ``OffloadingConnector``'s eviction policy.

vLLM 0.32 offloads KV blocks to CPU memory through its ``OffloadingConnector``
(``--kv-offloading-size GiB --kv-offloading-backend native``, or ``--kv-transfer-config``
naming the connector). The connector stores every full block a request computes into its CPU
tier, and when a later request's prefix is no longer on the GPU but is in the CPU tier, it
loads those blocks back before the request runs (an external prefix hit). What stays in the
CPU tier is decided by a ``CachePolicy`` (``vllm/v1/kv_offload/cpu/policies``), LRU by
default, which the connector loads by name from ``kv_connector_extra_config``:
``"eviction_policy": "PythiaHostCachePolicy", "cache_policy_module_path": "pythia.serve.host_tier"``.

:class:`PythiaHostCachePolicy` is vLLM's own LRU policy with one difference: chunks whose
blocks Pythia's cache policy wants kept (its ``offload`` and ``prefetch`` actions: the
conversations it pinned on the GPU and the prefixes it predicts next) are evicted only when
the tier holds nothing else to evict. A store never fails where LRU's would succeed, and
the tier's bytes are never touched here: the connector and its worker move them. The plugin
(:mod:`pythia.serve.vllm_scheduler`) finds the policy in its own process, next to the
scheduler, through the connector (:func:`find_host_tier`), and tells it what to keep
(:meth:`PythiaHostCachePolicy.retain`) and when a job's blocks may go
(:meth:`PythiaHostCachePolicy.release_owner`).

Keys are vLLM's ``OffloadKey``: a block hash and the KV cache group index. With CPU chunks
larger than GPU blocks (``block_size`` in the connector's extra config), a chunk's key is the
hash of its last block, and a chunk is kept when that block is retained.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator

from vllm.v1.kv_offload.base import OffloadKey, make_offload_key
from vllm.v1.kv_offload.cpu.policies.base import ChunkStatus
from vllm.v1.kv_offload.cpu.policies.lru import LRUCachePolicy

from pythia.serve.engines import HOST_TIER_MODULE as MODULE_PATH
from pythia.serve.engines import HOST_TIER_POLICY as POLICY_NAME


@dataclass
class HostTierStats:
    """Counters of the retention (mirrored on ``/metrics`` as ``pythia:host_tier_*``)."""

    retain_requests: int = 0  # blocks Pythia asked to keep
    released: int = 0  # retained blocks released (job ended, bound reached or released by name)
    retained_evicted: int = 0  # retained chunks evicted because the tier had nothing else to evict
    evictions: int = 0  # chunks evicted in all

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)


class PythiaHostCachePolicy(LRUCachePolicy):
    """vLLM's LRU over the CPU tier, except that retained chunks are evicted last.

    Evictable chunks that are retained leave LRU's heap for a side table (``_held``), so
    eviction never scans them while anything else can go; when not enough else can, the
    oldest retained chunks (by LRU rank) go too. Retention is bounded by
    ``max_retained_fraction`` of the tier: past it, the oldest retained blocks are released.

    Args:
        cache_capacity: chunks of the tier (given by vLLM's manager).
    """

    def __init__(self, cache_capacity: int) -> None:
        super().__init__(cache_capacity)
        self.groups: tuple[int, ...] = (0,)
        self.max_retained = max(1, cache_capacity // 2)
        # retained key -> owner (a job id or None); oldest first
        self._retained: OrderedDict[OffloadKey, Any] = OrderedDict()
        self._owned: dict[Any, set[OffloadKey]] = {}
        # evictable chunks that are retained: out of LRU's heap
        self._held: dict[OffloadKey, None] = {}
        self.host_stats = HostTierStats()

    # ------------------------------------------------------------------ Pythia's side

    def configure(self, groups: Iterable[int], max_retained_fraction: float) -> None:
        """The KV cache groups whose keys a block hash stands for, and the retention bound."""
        self.groups = tuple(int(g) for g in groups) or (0,)
        self.max_retained = max(1, int(max_retained_fraction * self.cache_capacity))

    @property
    def retained(self) -> int:
        """Keys retained now (resident in the tier or not)."""
        return len(self._retained)

    @property
    def held(self) -> int:
        """Retained chunks resident in the tier and evictable."""
        return len(self._held)

    def is_retained(self, key: OffloadKey) -> bool:
        """Whether Pythia asked to keep this key."""
        return key in self._retained

    def _keys(self, block_hashes: Iterable[bytes]) -> Iterator[OffloadKey]:
        """The tier's keys of engine block hashes: one per KV cache group."""
        for h in block_hashes:
            for g in self.groups:
                yield make_offload_key(bytes(h), g)

    def retain(self, block_hashes: Iterable[bytes], owner: Any = None) -> int:
        """Keep the chunks of these engine block hashes (each KV group); returns how many keys were retained."""
        n = 0
        for key in self._keys(block_hashes):
            prev = self._retained.pop(key, _ABSENT)  # re-inserted: the newest retained
            if prev is not _ABSENT:
                self._disown(key, prev)
            self._retained[key] = owner
            self._owned.setdefault(owner, set()).add(key)
            if key in self._evictable:
                self._evictable.discard(key)  # its heap entry turns stale
                self._held[key] = None
            n += 1
        self.host_stats.retain_requests += n
        while len(self._retained) > self.max_retained:
            key, owner_ = self._retained.popitem(last=False)
            self._disown(key, owner_)
            self._unhold(key)
            self.host_stats.released += 1
        return n

    def release_owner(self, owner: Any) -> int:
        """Release every key retained for ``owner`` (a job that ended); returns how many."""
        keys = self._owned.pop(owner, set())
        for key in keys:
            if self._retained.pop(key, _ABSENT) is not _ABSENT:
                self._unhold(key)
        self.host_stats.released += len(keys)
        return len(keys)

    def release(self, block_hashes: Iterable[bytes]) -> int:
        """Release the keys of these block hashes, whoever retained them; returns how many."""
        n = 0
        for key in self._keys(block_hashes):
            owner = self._retained.pop(key, _ABSENT)
            if owner is _ABSENT:
                continue
            self._disown(key, owner)
            self._unhold(key)
            n += 1
        self.host_stats.released += n
        return n

    def _disown(self, key: OffloadKey, owner: Any) -> None:
        keys = self._owned.get(owner)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._owned[owner]

    def _unhold(self, key: OffloadKey) -> None:
        """A key no longer retained: an evictable resident chunk goes back to LRU's heap."""
        if self._held.pop(key, _ABSENT) is not _ABSENT:
            self._evictable.add(key)
            self._push_evictable(key)

    # ------------------------------------------------------------------ vLLM's CachePolicy

    def insert(self, key: OffloadKey, chunk: ChunkStatus) -> None:
        """Add a newly allocated chunk (kept out of the heap when retained and evictable)."""
        super().insert(key, chunk)
        if key in self._retained and key in self._evictable:
            self._evictable.discard(key)
            self._held[key] = None

    def remove(self, key: OffloadKey) -> None:
        """Remove a chunk (after a failed store)."""
        super().remove(key)
        self._held.pop(key, None)

    def mark_evictable(self, key: OffloadKey) -> None:
        """A chunk's references reached zero: evictable, through the heap or held."""
        if key in self._retained:
            self._held[key] = None
            return
        super().mark_evictable(key)

    def mark_non_evictable(self, key: OffloadKey) -> None:
        """A chunk is being read: not evictable."""
        if self._held.pop(key, _ABSENT) is not _ABSENT:
            return
        super().mark_non_evictable(key)

    def clear(self) -> None:
        """Drop every chunk (vLLM's cache reset); what Pythia retains stays asked for."""
        super().clear()
        self._held.clear()

    def evict(self, n: int, protected: set[OffloadKey]) -> list[tuple[OffloadKey, ChunkStatus]] | None:
        """Evict ``n`` chunks: LRU among the unretained, then the oldest retained; atomic, as vLLM requires."""
        out = super().evict(n, protected)
        if out is not None:
            self.host_stats.evictions += len(out)
            return out
        # Not enough unretained chunks: every unretained one that may go, then retained ones by age.
        free = sum(1 for k in self._evictable if k not in protected)
        need = n - free
        held = sorted((k for k in self._held if k not in protected), key=self._ranks.__getitem__)
        if len(held) < need:
            return None
        out = super().evict(free, protected) if free else []
        if out is None:  # cannot happen: ``free`` chunks were counted just above
            return None
        for key in held[:need]:
            del self._held[key]
            chunk = self.chunks.pop(key)
            del self._ranks[key]
            out.append((key, chunk))  # still retained: stored again, it is kept again
        self.host_stats.retained_evicted += need
        self.host_stats.evictions += len(out)
        return out


_ABSENT = object()


def find_host_tier(connector: Any) -> tuple[Any, Any]:
    """The CPU tier behind a scheduler's KV connector: ``(manager, policy)``; ``(None, None)`` without one.

    Looks through vLLM's ``MultiConnector`` for an ``OffloadingConnector`` whose scheduler-side
    manager has a CPU policy. ``policy`` is a :class:`PythiaHostCachePolicy` when the connector
    was configured with it, else vLLM's own (LRU or ARC).
    """
    if connector is None:
        return None, None
    for sub in getattr(connector, "_connectors", None) or ():
        found = find_host_tier(sub)
        if found[0] is not None:
            return found
    sched = getattr(connector, "connector_scheduler", None)
    manager = getattr(sched, "manager", None) if sched is not None else None
    policy = getattr(manager, "_policy", None)
    if manager is None or policy is None:
        return None, None
    return manager, policy
