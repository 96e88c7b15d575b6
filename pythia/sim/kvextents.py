"""The KV block pool kept as extents of hash chains instead of one entry per block.

Same accounting and the same observable behaviour as :class:`pythia.sim.kvcache.KVCache`
(blank, cached and used counts, prefix hits, LRU eviction order), for pools whose cache
policy takes no actions (no pins, demotion, host tier or reordered eviction): the
simulator picks this class for them, and the dict-based pool otherwise.

Why it can work per request instead of per block. Block hashes are chained, so equal
hashes at position ``j`` mean equal content at every position ``<= j``: the resident
content forms a trie. Under plain LRU the resident set and the held set are both closed
under prefixes (a block is freed no earlier than its descendants, and freed blocks are
queued tail first, so descendants are evicted first). A run of consecutive blocks
registered by one call is therefore one *extent*: positions ``[a, res)`` of that call's
hash list, of which ``[a, held)`` are held by calls and ``[held, res)`` are cached
(evictable). A call holds a *path*: a few ``(extent, cover)`` pieces, each covering
``[extent.a, cover)``.

- Lookup walks the path of a hash list: ``index`` maps the first hash of each extent to it;
  inside an extent the common prefix is found by comparing the last hash of the range
  (chaining), with a binary search only where two chains diverge.
- The eviction order is a queue of *pieces* ``[extent, lo, hi]`` (blocks ``hi-1`` down to
  ``lo``), appended in the order a freeing call releases them (tail first). A prefix hit
  that takes cached blocks back clips the extent's queued pieces from below; eviction
  takes blocks from the top of the oldest live piece.

Every operation costs a few steps per extent instead of a dict update per block.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from pythia.sim.kvcache import BlankAllocation


def _agree_upto(ch: list[int], hl: list[int], start: int, end: int) -> int:
    """The largest ``q`` in ``(start, end]`` with ``ch[q - 1] == hl[q - 1]``, given that the
    chains agree on block ``start`` (a chain's hash names its whole prefix, so agreement is a
    prefix property: one comparison at ``end``, else a binary search where they diverge)."""
    if ch is hl or ch[end - 1] == hl[end - 1]:
        return end
    lo, hi = start + 1, end - 1
    while lo < hi:
        mid = (lo + hi + 1) >> 1
        if ch[mid - 1] == hl[mid - 1]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class PathHolder(Protocol):
    """What the pool needs of a request: its chain, its path and its block counts."""

    hlist: list[int]
    kv_ref: int
    kv_priv: int
    kv_path: list[list[Any]]


class Extent:
    """Consecutive blocks ``[a, res)`` of ``chain`` registered together; ``[a, held)`` are held."""

    __slots__ = ("chain", "a", "res", "held", "covers", "pieces")

    def __init__(self, chain: list[int], a: int, end: int) -> None:
        self.chain = chain
        self.a = a
        self.res = end
        self.held = end
        self.covers: dict[int, int] = {}  # cover -> number of calls holding [a, cover)
        self.pieces: list[list[Any]] = []  # live queued pieces, oldest (highest) first

    def add_cover(self, c: int) -> None:
        """One more holder of ``[a, c)``."""
        covers = self.covers
        covers[c] = covers.get(c, 0) + 1

    def drop_cover(self, c: int) -> None:
        """One holder of ``[a, c)`` fewer."""
        covers = self.covers
        n = covers[c]
        if n == 1:
            del covers[c]
        else:
            covers[c] = n - 1


class ExtentKVCache(BlankAllocation):
    """Block accounting of one replica by extents (see the module docstring)."""

    __slots__ = (
        "total_blocks", "block_size", "caching", "blank", "cached", "private", "index", "queue",
        "evictions", "host_offloads", "now_s", "_path", "_path_hl", "_dead",
    )

    host_cap = 0
    ranker = None

    def __init__(self, total_blocks: int, block_size: int, *, caching: bool = True) -> None:
        self.total_blocks = total_blocks
        self.block_size = block_size
        self.caching = caching
        self.blank = total_blocks
        self.cached = 0  # evictable blocks
        self.private = 0  # blocks held by calls but not (yet) registered
        self.index: dict[int, Extent] = {}  # first hash of each extent with resident blocks
        self.queue: deque[list[Any]] = deque()  # eviction order of pieces [extent, lo, hi]
        self.evictions = 0
        self.host_offloads = 0
        self.now_s = 0.0
        self._path: list[tuple[Extent, int]] = []
        self._path_hl: list[int] | None = None
        self._dead = 0  # queued pieces clipped empty (dropped when they pile up)

    # ------------------------------------------------------------------ counts (KVView)

    @property
    def free_blocks(self) -> int:
        """Blocks holding nothing."""
        return self.blank

    @property
    def cached_blocks(self) -> int:
        """Evictable blocks whose content is kept for reuse."""
        return self.cached

    @property
    def used_blocks(self) -> int:
        """Blocks held by requests."""
        return self.total_blocks - self.blank - self.cached

    @property
    def host_blocks(self) -> int:
        """No host tier in this pool."""
        return 0

    def available(self) -> int:
        """Blocks an allocation can take: blank plus evictable."""
        return self.blank + self.cached

    def cached_prefix_blocks(self, hashes: Any) -> int:
        """Leading blocks of the chain ``hashes`` resident on the GPU."""
        # The walk reads a few elements per extent: index the array as it is (a list copy
        # of a long chain would cost more than the walk).
        n, _ = self._walk(hashes, len(hashes))
        return n

    # ------------------------------------------------------------------ lookups

    def _walk(self, hl: list[int], limit: int) -> tuple[int, list[tuple[Extent, int]]]:
        """Resident leading blocks of ``hl`` (at most ``limit``) and the path covering them."""
        path: list[tuple[Extent, int]] = []
        p = 0
        index = self.index
        while p < limit:
            e = index.get(hl[p])
            if e is None or e.a != p:
                break
            end = e.res if e.res < limit else limit
            q = _agree_upto(e.chain, hl, p, end)
            path.append((e, q))
            p = q
        return p, path

    def match(self, hl: list[int], limit: int) -> int:
        """Number of leading hashes of ``hl`` (at most ``limit``) resident on the GPU."""
        if not self.caching or limit <= 0:
            self._path, self._path_hl = [], hl
            return 0
        n, self._path = self._walk(hl, limit)
        self._path_hl = hl
        return n

    def host_match(self, hl: list[int], start: int, limit: int) -> int:
        """No host tier: nothing beyond the GPU hit."""
        return 0

    def _path_to(self, hl: list[int], k: int) -> list[tuple[Extent, int]]:
        if self._path_hl is not hl:
            _, self._path = self._walk(hl, k)
            self._path_hl = hl
        out = []
        for e, q in self._path:
            if e.a >= k:
                break
            out.append((e, q if q < k else k))
        return out

    def idle_hits(self, hl: list[int], k: int) -> int:
        """How many of the first ``k`` (resident) blocks nobody holds: taking them uses free capacity."""
        if k <= 0:
            return 0
        n = 0
        for e, q in self._path_to(hl, k):
            if q > e.held:
                n += q - e.held
        return n

    def any_resident(self, req: PathHolder, upto: int) -> bool:
        """Whether any of ``req``'s blocks ``[kv_ref, upto)`` is resident (then only the first can tell)."""
        lo = req.kv_ref
        if upto <= lo or not self.caching:
            return False
        hl = req.hlist
        if req.kv_path:
            e = req.kv_path[-1][0]
            if e.res > lo and e.chain[lo] == hl[lo]:
                return True
        e = self.index.get(hl[lo])
        return e is not None and e.a == lo

    # ------------------------------------------------------------------ allocation

    def _take_back(self, e: Extent, q: int) -> None:
        """Blocks ``[e.held, q)`` go from cached to held: clip the queued pieces below ``q``."""
        self.cached -= q - e.held
        e.held = q
        keep = []
        for pc in e.pieces:
            if pc[1] < q:
                pc[1] = q if q < pc[2] else pc[2]
            if pc[1] < pc[2]:
                keep.append(pc)
            else:
                self._dead += 1
        e.pieces = keep

    def _evict(self, n: int) -> None:
        """Turn ``n`` evictable blocks into blank ones, oldest queued piece first, top down."""
        if n > self.cached:
            raise RuntimeError(f"KV cache asked to evict {n - self.cached} blocks more than it has")
        queue, index = self.queue, self.index
        left = n
        while left:
            pc = queue[0]
            e, lo, hi = pc
            if lo >= hi:
                queue.popleft()
                self._dead -= 1
                continue
            t = hi - lo if hi - lo < left else left
            pc[2] = hi - t
            e.res = hi - t
            left -= t
            if pc[2] <= lo:
                queue.popleft()
                e.pieces.remove(pc)
            if e.res <= e.a:
                del index[e.chain[e.a]]
        self.cached -= n
        self.blank += n
        self.evictions += n

    def acquire(self, req: PathHolder, k: int) -> None:
        """Take a reference on the first ``k`` blocks of ``req``'s chain (its prefix-cache hit)."""
        if k <= req.kv_ref:
            return
        if req.kv_ref:
            raise RuntimeError("acquire on a call that already holds blocks")
        path = req.kv_path
        for e, q in self._path_to(req.hlist, k):
            e.add_cover(q)
            if q > e.held:
                self._take_back(e, q)
            path.append([e, q])
        req.kv_ref = k

    def register(self, req: PathHolder, upto: int) -> None:
        """Register ``req``'s full blocks up to chain index ``upto`` (turning private blocks into cached content)."""
        lo = req.kv_ref
        if upto <= lo or not self.caching:
            return
        hl, path, index = req.hlist, req.kv_path, self.index
        while lo < upto:
            last = path[-1] if path else None
            e = last[0] if last is not None else None
            if e is not None and e.res > lo and e.chain[lo] == hl[lo]:
                pass  # the content continues in the extent this call is in
            else:
                f = index.get(hl[lo])
                if f is not None and f.a == lo:
                    last = [f, lo]
                    path.append(last)
                    e = f
                    f.add_cover(lo)
                elif e is not None and e.chain is hl and e.res == lo:
                    # Nothing resident from here on (prefix closure): extend this call's own extent.
                    e.drop_cover(lo)
                    e.add_cover(upto)
                    e.res = e.held = upto
                    last[1] = upto  # type: ignore[index]
                    self.private -= upto - lo
                    req.kv_priv -= upto - lo
                    break
                else:
                    f = Extent(hl, lo, upto)
                    f.add_cover(upto)
                    index[hl[lo]] = f
                    path.append([f, upto])
                    self.private -= upto - lo
                    req.kv_priv -= upto - lo
                    break
            # Someone registered this content meanwhile: share theirs, return ours.
            end = e.res if e.res < upto else upto
            m = _agree_upto(e.chain, hl, lo, end)
            e.drop_cover(last[1])  # type: ignore[index]
            e.add_cover(m)
            last[1] = m  # type: ignore[index]
            if m > e.held:
                self._take_back(e, m)
            self.private -= m - lo
            req.kv_priv -= m - lo
            self.blank += m - lo
            lo = m
        req.kv_ref = upto

    def free(self, req: PathHolder) -> None:
        """Release all of ``req``'s blocks; hashed ones become evictable, tail first."""
        path = req.kv_path
        if path:
            queue = self.queue
            for e, q in reversed(path):
                e.drop_cover(q)
                if q == e.held and q not in e.covers:
                    h = max(e.covers) if e.covers else e.a
                    pc = [e, h, q]
                    e.pieces.append(pc)
                    queue.append(pc)
                    self.cached += q - h
                    e.held = h
            req.kv_path = []
            if self._dead > len(queue) // 2 + 4096:
                self.queue = deque(pc for pc in queue if pc[1] < pc[2])
                self._dead = 0
        self.blank += req.kv_priv
        self.private -= req.kv_priv
        req.kv_ref = 0
        req.kv_priv = 0

    # ------------------------------------------------------------------ checks

    def check(self) -> None:
        """Assert the conservation invariant and the consistency of extents and queue (tests call this)."""
        held = cached = 0
        for h, e in self.index.items():
            assert e.chain[e.a] == h and e.a < e.res and e.a <= e.held <= e.res, (e.a, e.held, e.res)
            assert (max(e.covers) if e.covers else e.a) == e.held
            held += e.held - e.a
            cached += e.res - e.held
            # Queued pieces partition [held, res), oldest (highest) first.
            top = e.res
            for pc in e.pieces:
                assert pc[0] is e and pc[2] == top and pc[1] < pc[2], (pc[1], pc[2], top)
                top = pc[1]
            assert top == e.held
        live = sum(pc[2] - pc[1] for pc in self.queue if pc[1] < pc[2])
        assert cached == self.cached == live, (cached, self.cached, live)
        assert self.blank >= 0 and self.private >= 0
        assert self.blank + self.cached + self.private + held == self.total_blocks, (
            self.blank, self.cached, self.private, held, self.total_blocks)

    def snapshot(self) -> dict[str, Any]:
        """Counts for the time series."""
        return {"kv_free": self.blank, "kv_cached": self.cached, "kv_used": self.used_blocks}
