"""A replica's paged KV cache with vLLM's block-hash prefix caching, pins and a host tier.

Blocks are counted, not named: the simulator needs which *content* is resident and how
many blocks each holder has, not physical block ids. State:

- ``blank``: free blocks holding nothing (vLLM puts them at the front of its free queue);
- ``ref``: resident blocks with a registered hash -> number of holders (requests, pins);
- ``lru``: resident blocks no one holds (``ref == 0``), oldest first: the evictable cache.
  ``front`` holds demoted blocks, evicted before ``lru``;
- ``private``: blocks requests hold without a registered hash (a partial tail block).

Conservation: ``blank + cached + used == total_blocks`` with ``cached = len(lru) + len(front)``
and ``used = private + #{h: ref[h] > 0}`` (:meth:`KVCache.check`).

Fidelity notes. As in vLLM, a request's full blocks are registered when scheduled, hits
stop at the first missing block of the chain and leave the last prompt token to compute,
freed blocks join the eviction order tail first. Unlike vLLM, two requests that compute the
same block at the same time end up sharing one block (the second adopts the first's block
and returns its own), which vLLM only does for the next request.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from itertools import compress, repeat, takewhile
from operator import eq, not_, sub
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np

from pythia.sim.chains import ROOT, ResidentChains
from pythia.sim.lru import EvictionQueue


class Holder(Protocol):
    """What the cache keeps on a request: its hash chain and its block counts."""

    hlist: list[int]
    kv_ref: int
    kv_priv: int


class BlankAllocation:
    """Allocation of new private blocks, shared by both pool representations.

    A pool provides ``blank`` (blocks holding nothing), ``private`` (blocks held by one call
    and not yet registered) and ``_evict(n)`` (turn ``n`` evictable blocks blank).
    """

    __slots__ = ()
    blank: int
    private: int

    def _evict(self, n: int) -> None:
        raise NotImplementedError

    def make_blank(self, n: int) -> None:
        """Evict until at least ``n`` blocks are blank (as ``take`` would, all at once)."""
        if self.blank < n:
            self._evict(n - self.blank)

    def take(self, req: Any, n: int) -> None:
        """Give ``req`` ``n`` new private blocks (evicting cached ones if needed)."""
        if n <= 0:
            return
        if self.blank < n:
            self._evict(n - self.blank)
        self.blank -= n
        self.private += n
        req.kv_priv += n


class KVCache(BlankAllocation):
    """Block accounting of one replica (see the module docstring)."""

    __slots__ = (
        "total_blocks", "block_size", "caching", "blank", "ref", "lru", "front", "private",
        "pins", "host", "host_cap", "evictions", "host_offloads", "ranker", "now_s",
        "rank_interval_s", "_ranked_at", "chains",
    )

    def __init__(self, total_blocks: int, block_size: int, *, caching: bool = True, host_blocks: int = 0) -> None:
        self.total_blocks = total_blocks
        self.block_size = block_size
        self.caching = caching
        self.blank = total_blocks
        self.ref: dict[int, int] = {}
        self.chains = ResidentChains()  # which resident blocks have their whole prefix resident
        self.lru = EvictionQueue()
        self.front: OrderedDict[int, float] = OrderedDict()
        self.private = 0
        self.pins: dict[int, int] = {}
        self.host: OrderedDict[int, None] = OrderedDict()
        self.host_cap = host_blocks
        self.evictions = 0
        self.host_offloads = 0
        # Optional simulator-only eviction order: f(hashes, last_used) -> one sort key per
        # block (smaller evicted first), the cache policy's eviction_keys.
        self.ranker: Callable[[list[int], list[float]], list[Any]] | None = None
        # A full re-rank sorts every evictable block; doing it on every eviction made
        # comparator policies quadratic. The order is refreshed at most once per interval of
        # simulated time; blocks freed in between join the back of the last order (LRU).
        self.rank_interval_s = 5.0
        self._ranked_at = float("-inf")
        self.now_s = 0.0

    # ------------------------------------------------------------------ counts (KVView)

    @property
    def free_blocks(self) -> int:
        """Blocks holding nothing."""
        return self.blank

    @property
    def cached_blocks(self) -> int:
        """Evictable blocks whose content is kept for reuse."""
        return len(self.lru) + len(self.front)

    @property
    def used_blocks(self) -> int:
        """Blocks held by requests or pins."""
        return self.total_blocks - self.blank - len(self.lru) - len(self.front)

    @property
    def host_blocks(self) -> int:
        """Blocks resident in the host-DRAM tier."""
        return len(self.host)

    def available(self) -> int:
        """Blocks an allocation can take: blank plus evictable."""
        return self.blank + len(self.lru) + len(self.front)

    def cached_prefix_blocks(self, hashes: np.ndarray | list[int]) -> int:
        """Leading blocks of the chain ``hashes`` resident on the GPU."""
        return self.match(hashes, len(hashes))

    # ------------------------------------------------------------------ lookups

    def match(self, hl: Sequence[int], limit: int) -> int:
        """Number of leading hashes of ``hl`` (at most ``limit``) resident on the GPU.

        The hit stops at the first missing block, found by bisection (see
        :mod:`pythia.sim.chains`): a few dictionary probes whatever the hit length.
        """
        if not self.caching or limit <= 0:
            return 0
        return self.chains.match(hl, len(hl) if len(hl) < limit else limit, self.ref)

    def host_match(self, hl: list[int], start: int, limit: int) -> int:
        """Blocks ``hl[start:limit]`` resident on the host, counted until the first miss."""
        if not self.host or start >= limit:
            return 0
        return len(list(takewhile(self.host.__contains__, hl[start:limit])))

    def any_resident(self, req: Holder, upto: int) -> bool:
        """Whether any of ``req``'s blocks ``[kv_ref, upto)`` is resident (registering it would share)."""
        lo = req.kv_ref
        if upto <= lo or not self.caching:
            return False
        return any(map(self.ref.__contains__, req.hlist[lo:upto]))

    def idle_hits(self, hl: list[int], k: int) -> int:
        """How many of the first ``k`` (resident) blocks nobody holds: taking them uses free capacity."""
        if k <= 0:
            return 0
        ref = self.ref
        return list(map(ref.__getitem__, hl[:k])).count(0)

    # ------------------------------------------------------------------ allocation

    def _evict(self, n: int) -> None:
        """Turn ``n`` evictable blocks into blank ones (demoted first, then LRU order)."""
        if self.ranker is not None and n > len(self.front) and self.now_s - self._ranked_at >= self.rank_interval_s:
            self._reorder()
            self._ranked_at = self.now_s
        if n == 1:  # one block for one (a decode step, a prefetched block): no list work
            h = self.front.popitem(False)[0] if self.front else self.lru.pop_one()
            if h is None:
                raise RuntimeError("KV cache asked to evict 1 block more than it has")
            del self.ref[h]
            self.chains.remove([h])
            self.blank += 1
            self.evictions += 1
            if self.host_cap > 0:
                self._write_back(h)
            return
        evicted: list[int] = []
        k = min(n, len(self.front))
        if k:
            pop = self.front.popitem
            evicted.extend([pop(False)[0] for _ in range(k)])
        if len(evicted) < n:
            evicted.extend(self.lru.pop_oldest(n - len(evicted)))
        if len(evicted) < n:
            raise RuntimeError(f"KV cache asked to evict {n - len(evicted)} blocks more than it has")
        deque(map(self.ref.__delitem__, evicted), maxlen=0)  # C-level loop
        self.chains.remove(evicted)
        self.blank += n
        self.evictions += n
        if self.host_cap > 0:  # write-back to host DRAM on eviction
            for h in evicted:
                self._write_back(h)

    def _write_back(self, h: int) -> None:
        """An evicted block's copy in the host tier (LRU, bounded)."""
        host = self.host
        if h in host:
            host.move_to_end(h)
        else:
            host[h] = None
            self.host_offloads += 1
            if len(host) > self.host_cap:
                host.popitem(last=False)

    def _reorder(self) -> None:
        hashes, times = self.lru.live()
        keys = self.ranker(hashes, times)  # type: ignore[misc]
        # One stable sort by the policy's per-block keys: ties keep the current order.
        order = sorted(range(len(hashes)), key=keys.__getitem__)
        self.lru.replace_order([hashes[i] for i in order], [times[i] for i in order])

    def acquire(self, req: Holder, k: int) -> None:
        """Take a reference on the first ``k`` hashes of ``req``'s chain (its prefix-cache hit)."""
        ref, lru, front = self.ref, self.lru, self.front
        hits = req.hlist[req.kv_ref:k]
        refs = list(map(ref.__getitem__, hits))
        if 0 not in refs:  # every hit block is already held by someone: bump the counts in C
            ref.update(zip(hits, [r + 1 for r in refs]))
        else:
            for h, r in zip(hits, refs):
                if r == 0:
                    if not lru.discard(h):
                        front.pop(h)
                ref[h] = r + 1
        req.kv_ref = max(req.kv_ref, k)

    def register(self, req: Holder, upto: int) -> None:
        """Register ``req``'s full blocks up to chain index ``upto`` (turning private blocks into cached content)."""
        lo = req.kv_ref
        if upto <= lo or not self.caching:
            return
        new = req.hlist[lo:upto]
        ref = self.ref
        n = len(new)
        hl = req.hlist
        if ref.keys().isdisjoint(new):
            ref.update(dict.fromkeys(new, 1))
            self.chains.insert_run(new, hl[lo - 1] if lo else ROOT, ref)
        else:
            for i, h in enumerate(new, lo):
                r = ref.get(h)
                if r is None:
                    ref[h] = 1
                    self.chains.insert(h, hl[i - 1] if i else ROOT, ref)
                    continue
                # Someone registered this content meanwhile: share theirs, return ours.
                if r == 0:
                    if not self.lru.discard(h):
                        self.front.pop(h)
                ref[h] = r + 1
                self.private -= 1
                req.kv_priv -= 1
                self.blank += 1
                n -= 1
        self.private -= n
        req.kv_priv -= n
        req.kv_ref = upto

    def free(self, req: Holder) -> None:
        """Release all of ``req``'s blocks; hashed ones become evictable, tail first."""
        ref, lru = self.ref, self.lru
        now = self.now_s
        if req.kv_ref:
            held = req.hlist[req.kv_ref - 1::-1]  # tail first: evicted before the head
            refs = list(map(ref.__getitem__, held))
            if refs.count(1) == len(refs):  # nobody else holds them (the common case): all in C
                freed = held
            else:  # shared blocks stay held by the others; the rest become evictable in order
                last = list(map(eq, refs, repeat(1)))  # C loops throughout
                freed = list(compress(held, last))
                shared = list(map(not_, last))
                ref.update(zip(compress(held, shared), map(sub, compress(refs, shared), repeat(1))))
            ref.update(dict.fromkeys(freed, 0))
            lru.add_run(freed, now)
        self.blank += req.kv_priv
        self.private -= req.kv_priv
        req.kv_ref = 0
        req.kv_priv = 0

    # ------------------------------------------------------------------ policy actions

    def pin(self, hashes: Iterable[int]) -> int:
        """Hold resident blocks so they cannot be evicted; returns how many were pinned."""
        done = 0
        ref, pins, discard, front = self.ref, self.pins, self.lru.discard, self.front
        for h in hashes:
            r = ref.get(h)
            if r is None:
                continue
            if r == 0 and not discard(h):
                front.pop(h)
            ref[h] = r + 1
            pins[h] = pins.get(h, 0) + 1
            done += 1
        return done

    def unpin(self, hashes: Iterable[int]) -> int:
        """Release pins taken by :meth:`pin`; returns how many were released.

        Blocks nobody holds any more join the eviction order in the order given, as one
        run (the same order as one append each).
        """
        done = 0
        ref, pins = self.ref, self.pins
        freed: list[int] = []
        for h in hashes:
            p = pins.get(h)
            if not p:
                continue
            if p == 1:
                del pins[h]
            else:
                pins[h] = p - 1
            r = ref[h] - 1
            ref[h] = r
            if r == 0:
                freed.append(h)
            done += 1
        self.lru.add_run(freed, self.now_s)
        return done

    def release_pins(self) -> int:
        """Drop every pin (a call that cannot be admitted otherwise takes their blocks).

        Returns the number of pins released. Blocks nobody else holds become evictable at
        the tail of the eviction order, as after :meth:`unpin`.
        """
        return self.unpin([h for h, c in list(self.pins.items()) for _ in range(c)])

    def demote(self, hashes: Iterable[int]) -> int:
        """Move evictable blocks to the front of the eviction order (release early)."""
        done = 0
        for h in hashes:
            if self.lru.discard(h):
                self.front[h] = self.now_s
                done += 1
        return done

    def offload(self, hashes: Iterable[int]) -> int:
        """Copy resident blocks to the host tier (prefetch to host); returns blocks copied."""
        if self.host_cap <= 0:
            return 0
        done = 0
        for h in hashes:
            if h in self.ref and h not in self.host:
                self.host[h] = None
                done += 1
                if len(self.host) > self.host_cap:
                    self.host.popitem(last=False)
        return done

    def prefetch(self, hashes: list[int]) -> int:
        """Load host blocks into the GPU cache as evictable content; returns blocks loaded.

        Stops at the first block neither resident nor on the host, so a loaded block's
        whole prefix is resident (a block is useful only after its prefix).
        """
        loaded = 0
        prev = ROOT  # the chain starts at its first block
        for h in hashes:
            if h in self.ref:
                prev = h
                continue
            if h not in self.host or self.available() < 1:
                break
            if self.blank < 1:
                self._evict(1)
            self.blank -= 1
            self.ref[h] = 0
            self.chains.insert(h, prev, self.ref)
            self.lru.add(h, self.now_s)
            loaded += 1
            prev = h
        return loaded

    # ------------------------------------------------------------------ checks

    def check(self) -> None:
        """Assert the conservation invariant and the index consistency (tests call this)."""
        held = sum(1 for r in self.ref.values() if r > 0)
        idle = [h for h, r in self.ref.items() if r == 0]
        assert len(idle) == len(self.lru) + len(self.front), "evictable index out of sync"
        assert all(h in self.lru or h in self.front for h in idle)
        assert self.blank >= 0 and self.private >= 0
        assert self.blank + len(self.lru) + len(self.front) + self.private + held == self.total_blocks, (
            self.blank, len(self.lru), len(self.front), self.private, held, self.total_blocks)
        self.chains.check(self.ref)

    def snapshot(self) -> dict[str, Any]:
        """Counts for the time series."""
        return {"kv_free": self.blank, "kv_cached": self.cached_blocks, "kv_used": self.used_blocks}
