"""Cache actions carried out on vLLM's block pool: pin, unpin, demote, within a pin budget.

vLLM's KV pool keeps freed blocks that carry a hash in an LRU free queue, where they stay
reusable by prefix until a new allocation evicts them. The pool offers what Pythia's cache
decisions need (see ``vllm/v1/core/block_pool.py`` in vLLM 0.32):

- pin: ``get_cached_block(hash, group_ids)`` finds the resident block(s) of a hash and
  ``touch(blocks)`` takes a reference, which takes them off the free queue, so no allocation
  can evict them;
- unpin: ``free_blocks(blocks)`` drops that reference; a block nobody else holds goes back to
  the tail of the free queue (the most recently used end, evicted last);
- demote (release early): an evictable block is moved to the head of the free queue, so it is
  the next one evicted.

Pins are bounded by a budget (a number of blocks) so that they can never take the pool from
admission: a pin past the budget is refused and counted. The host also releases every pin
when the engine had to preempt, since preemption is the sign that memory is short, and when
a request waits that the pool cannot take while nothing runs (no block would ever be freed).

Nothing here imports vLLM; the pool is used through the methods named above.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from pythia.serve.adapter import block_hash_id


@dataclass
class PinStats:
    """Counters of cache actions (reported in the plugin's stats)."""

    pins_requested: int = 0
    pins_applied: int = 0
    pin_misses: int = 0  # the block was not resident
    pins_refused_budget: int = 0
    unpins: int = 0
    demotes: int = 0
    demote_misses: int = 0
    released_under_pressure: int = 0
    unsupported_actions: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)


class HashIndex:
    """Maps the 63-bit hash ids policies see back to the engine's block hashes.

    Bounded (least recently seen ids are dropped first): only blocks that can still be
    resident matter, and those are at most a few times the pool size.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(16, capacity)
        self._map: OrderedDict[int, Any] = OrderedDict()

    def add(self, hashes: Iterable[Any]) -> None:
        """Remember the engine hashes (bytes) of a request's blocks."""
        m = self._map
        for h in hashes:
            hid = block_hash_id(h)
            if hid in m:
                m.move_to_end(hid)
            else:
                m[hid] = h
        while len(m) > self.capacity:
            m.popitem(last=False)

    def add_pairs(self, pairs: Iterable[tuple[int, Any]]) -> None:
        """Remember ``(Pythia name, engine hash)`` pairs (segment-hash names, see the request view)."""
        m = self._map
        for hid, h in pairs:
            if hid in m:
                m.move_to_end(hid)
            m[hid] = h
        while len(m) > self.capacity:
            m.popitem(last=False)

    def get(self, hid: int) -> Any | None:
        """The engine hash of an id, if known."""
        return self._map.get(int(hid))

    def __len__(self) -> int:
        return len(self._map)


class BlockPinner:
    """Pins, unpins and demotes cached blocks of one vLLM ``BlockPool``.

    Args:
        block_pool: the engine's pool (``scheduler.kv_cache_manager.block_pool``).
        group_ids: the KV cache groups a hash is looked up in (``[0]`` for one attention type).
        budget_blocks: most blocks held by pins at any time.
    """

    def __init__(self, block_pool: Any, group_ids: Sequence[int], budget_blocks: int) -> None:
        self.pool = block_pool
        self.group_ids = list(group_ids)
        self.budget_blocks = max(0, int(budget_blocks))
        # engine hash -> the blocks pinned for it (one per group), oldest pin first
        self._pinned: OrderedDict[Any, list[Any]] = OrderedDict()
        # engine hash -> pins held on it (a block two jobs' predictions share is pinned twice and
        # stays pinned until both let it go); Pythia's name of each pinned hash, so that an unpin
        # finds its block even after the host's bounded hash index has forgotten the name
        self._refs: dict[Any, int] = {}
        self._names: dict[int, Any] = {}
        self._name_of: dict[Any, int] = {}
        self._pinned_blocks = 0
        self.stats = PinStats()
        self.max_pinned_blocks = 0

    @property
    def pinned_blocks(self) -> int:
        """Blocks currently held by pins."""
        return self._pinned_blocks

    def is_pinned(self, block_hash: Any) -> bool:
        """True when ``block_hash`` is pinned."""
        return block_hash in self._pinned

    def pinned_hashes(self) -> list[Any]:
        """The pinned engine hashes, oldest pin first."""
        return list(self._pinned)

    def pin(self, hashes: Iterable[Any], names: Sequence[int] | None = None) -> int:
        """Pin the resident blocks of ``hashes`` (engine hashes), in order; returns how many were pinned.

        A hash already pinned gains one more pin (it is released when every pin on it is); one
        not resident is a miss; a pin that would exceed the budget is refused (and so are the
        rest, since a prefix is pinned front to back). ``names`` are Pythia's names of the same
        hashes, remembered while they are pinned (:meth:`engine_hash`).
        """
        done = 0
        for i, h in enumerate(hashes):
            self.stats.pins_requested += 1
            if h in self._pinned:
                self._pinned.move_to_end(h)
                self._refs[h] += 1
                continue
            blocks = self.pool.get_cached_block(h, self.group_ids)
            if not blocks:
                self.stats.pin_misses += 1
                continue
            if self._pinned_blocks + len(blocks) > self.budget_blocks:
                self.stats.pins_refused_budget += 1
                break
            self.pool.touch(blocks)
            self._pinned[h] = list(blocks)
            self._refs[h] = 1
            if names is not None:
                name = int(names[i])
                self._names[name] = h
                self._name_of[h] = name
            self._pinned_blocks += len(blocks)
            self.stats.pins_applied += 1
            done += 1
        self.max_pinned_blocks = max(self.max_pinned_blocks, self._pinned_blocks)
        return done

    def engine_hash(self, name: int) -> Any | None:
        """The engine hash of a pinned block by Pythia's name (``None`` when no pin holds it)."""
        return self._names.get(int(name))

    def unpin(self, hashes: Iterable[Any]) -> int:
        """Drop one pin from each of ``hashes``; returns how many blocks that released."""
        done = 0
        for h in hashes:
            if h not in self._pinned:
                continue
            self._refs[h] -= 1
            if self._refs[h] > 0:
                continue
            self._release(h)
            self.stats.unpins += 1
            done += 1
        return done

    def _release(self, h: Any) -> None:
        blocks = self._pinned.pop(h)
        del self._refs[h]
        name = self._name_of.pop(h, None)
        if name is not None:
            self._names.pop(name, None)
        self.pool.free_blocks(blocks)
        self._pinned_blocks -= len(blocks)

    def release_all(self, under_pressure: bool = False) -> int:
        """Drop every pin, however many hold a block (memory pressure, a prefix-cache reset, shutdown)."""
        n = 0
        for h in list(self._pinned):
            self._release(h)
            self.stats.unpins += 1
            n += 1
        if under_pressure:
            self.stats.released_under_pressure += n
        return n

    def demote(self, hashes: Iterable[Any]) -> int:
        """Move evictable blocks of ``hashes`` to the eviction end of the free queue; returns how many."""
        done = 0
        queue = self.pool.free_block_queue
        for h in hashes:
            if h in self._pinned:
                continue  # a pinned block is not evictable; unpin first
            blocks = self.pool.get_cached_block(h, self.group_ids)
            if not blocks:
                self.stats.demote_misses += 1
                continue
            movable = [b for b in blocks if b.ref_cnt == 0 and not b.is_null]
            for b in movable:
                queue.remove(b)
            if movable:
                queue.prepend_n(movable)
                self.stats.demotes += 1
                done += 1
        return done


class EngineKVView:
    """A :class:`pythia.policy.views.KVView` over one vLLM block pool (counts in blocks)."""

    def __init__(self, block_pool: Any, block_size: int, index: HashIndex, pinner: BlockPinner) -> None:
        self.pool = block_pool
        self.block_size = block_size
        self.total_blocks = int(block_pool.num_gpu_blocks) - 1  # the null block is never usable
        self.index = index
        self.pinner = pinner
        # The size of vLLM's CPU KV tier behind the pool in blocks (set by the plugin; 0: none).
        self.host_capacity_blocks = 0

    @property
    def free_blocks(self) -> int:
        """Blocks holding nothing reusable (empty blocks of the free queue)."""
        return max(0, self.pool.get_num_free_blocks() - self.cached_blocks)

    @property
    def cached_blocks(self) -> int:
        """Evictable blocks that still hold a prefix (a scan of the pool; call sparingly)."""
        return sum(1 for b in self.pool.blocks if b.ref_cnt == 0 and b.block_hash is not None and not b.is_null)

    @property
    def available_blocks(self) -> int:
        """Free plus evictable blocks (what an allocation can take), without scanning the pool."""
        return int(self.pool.get_num_free_blocks())

    @property
    def used_blocks(self) -> int:
        """Blocks held by requests or pins."""
        return self.total_blocks - self.pool.get_num_free_blocks()

    @property
    def pinned_blocks(self) -> int:
        """Blocks held by pins."""
        return self.pinner.pinned_blocks

    @property
    def host_blocks(self) -> int:
        """No host tier in this host."""
        return 0

    def cached_prefix_blocks(self, hashes: np.ndarray) -> int:
        """How many leading blocks of the chain ``hashes`` (63-bit ids) are resident."""
        n = 0
        for hid in hashes:
            h = self.index.get(int(hid))
            if h is None or not self.pool.get_cached_block(h, self.pinner.group_ids):
                break
            n += 1
        return n


class EngineReplicaView:
    """A :class:`pythia.policy.views.ReplicaView` of the one engine a plugin runs in."""

    def __init__(self, scheduler: Any, kv: EngineKVView, pool: str, views: dict[str, Any]) -> None:
        self._sched = scheduler
        self._views = views
        self.replica_id = 0
        self.pool = pool
        self.state = "up"
        self._kv = kv

    @property
    def num_running(self) -> int:
        """Calls in the batch."""
        return len(self._sched.running)

    @property
    def num_waiting(self) -> int:
        """Calls waiting for admission."""
        return len(self._sched.waiting) + len(self._sched.kv_holding_waiting)

    @property
    def kv(self) -> EngineKVView:
        """The engine's KV pool."""
        return self._kv

    @property
    def pending_prefill_tokens(self) -> int:
        """Prompt tokens admitted or waiting but not yet computed."""
        total = 0
        for r in list(self._sched.running) + list(self._sched.waiting):
            total += max(0, r.num_prompt_tokens - r.num_computed_tokens)
        return total

    def running(self) -> list[Any]:
        """Views of the calls in the batch."""
        return [self._views[r.request_id] for r in self._sched.running if r.request_id in self._views]
