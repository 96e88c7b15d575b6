"""Which resident KV blocks have their whole prefix resident: prefix matches by bisection.

Block hashes are chained (a block's hash names its whole prefix), and a prefix-cache hit
stops at the first block of a chain that is not resident. Were every resident block's
prefix resident too, "block ``j`` is resident" would hold exactly for ``j`` below the hit
length, and the hit could be found by bisection in ``O(log n)`` dictionary probes instead
of one probe per matched block. A block pool that honours pins, early release or an
arbitrary eviction order can evict a block while blocks after it stay resident, so this
module keeps the exceptions: ``broken`` holds the resident blocks some ancestor of which
is missing. With it the test "resident and not broken" is monotone along any chain, and
its first failure is exactly the first missing block (every block before it has its
whole prefix resident, so none of them is broken).

Bookkeeping per block: its parent (the block before it in its chain, ``ROOT`` for a first
block) and its resident children (one per parent almost always; branches go to ``extra``).
Inserting a block whose parent is complete repairs the broken blocks below it; removing a
complete block that still has resident children marks what hangs below it broken. Under
plain LRU (a freed call's blocks queued tail first) neither happens, and the batched paths
are a few C-level dictionary operations per block.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Sequence

ROOT = -1  # parent of a chain's first block (hashes are 63-bit non-negative)


class ResidentChains:
    """Parent, children and the broken set of the resident blocks of one pool."""

    __slots__ = ("parent", "kids", "extra", "broken")

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.kids: dict[int, int] = {}  # parent -> one resident child
        # parent -> further resident children (branches; a shared system prompt may have
        # thousands, so a dict: removing one costs O(1))
        self.extra: dict[int, dict[int, None]] = {}
        self.broken: set[int] = set()

    # ------------------------------------------------------------------ queries

    def match(self, hl: Sequence[int], n: int, resident: dict[int, int]) -> int:
        """The first ``j < n`` with ``hl[j]`` not resident (``n`` if none), by bisection."""
        if n <= 0:
            return 0
        broken = self.broken
        if broken:
            last = hl[n - 1]
            if last in resident and last not in broken:
                return n
            first = hl[0]
            if first not in resident or first in broken:
                return 0
            lo, hi = 0, n - 1  # complete at lo, not at hi
            while hi - lo > 1:
                mid = (lo + hi) >> 1
                h = hl[mid]
                if h in resident and h not in broken:
                    lo = mid
                else:
                    hi = mid
            return hi
        if hl[n - 1] in resident:
            return n
        if hl[0] not in resident:
            return 0
        lo, hi = 0, n - 1
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if hl[mid] in resident:
                lo = mid
            else:
                hi = mid
        return hi

    def _children(self, h: int) -> list[int]:
        k = self.kids.get(h)
        if k is None:
            return []
        more = self.extra.get(h)
        return [k, *more] if more else [k]

    def _add_kid(self, p: int, h: int) -> None:
        kids = self.kids
        if p not in kids:
            kids[p] = h
        else:
            self.extra.setdefault(p, {})[h] = None

    def _drop_kid(self, p: int, h: int) -> None:
        kids, extra = self.kids, self.extra
        if kids.get(p) == h:
            more = extra.get(p)
            if more:
                kids[p] = more.popitem()[0]
                if not more:
                    del extra[p]
            else:
                del kids[p]
        else:
            more = extra[p]
            del more[h]
            if not more:
                del extra[p]

    def _complete(self, p: int, resident: dict[int, int]) -> bool:
        return p == ROOT or (p in resident and p not in self.broken)

    def _repair(self, h: int) -> None:
        """``h`` became complete: its broken resident descendants are complete again."""
        broken = self.broken
        stack = self._children(h)
        while stack:
            c = stack.pop()
            if c in broken:
                broken.discard(c)
                stack.extend(self._children(c))

    def _break(self, h: int) -> None:
        """``h`` (complete) left: every resident descendant is broken."""
        broken = self.broken
        stack = self._children(h)
        while stack:
            c = stack.pop()
            if c not in broken:
                broken.add(c)
                stack.extend(self._children(c))

    # ------------------------------------------------------------------ updates

    def insert_run(self, new: list[int], p0: int, resident: dict[int, int]) -> None:
        """Blocks ``new`` (consecutive in one chain, after parent ``p0``) became resident."""
        if not new:
            return
        if len(new) == 1:  # a decode step filled one block
            self.insert(new[0], p0, resident)
            return
        kids = self.kids
        # A block inserted again may still have resident children (broken): repaired below.
        had = [h for h in new if h in kids] if not kids.keys().isdisjoint(new) else []
        prevs = [p0, *new[:-1]]
        self.parent.update(zip(new, prevs))
        if p0 == ROOT:  # first blocks are nobody's children
            prevs, ch = new[:-1], new[1:]
        else:
            ch = new
        if kids.keys().isdisjoint(prevs):
            kids.update(zip(prevs, ch))
        else:
            for p, h in zip(prevs, ch):
                self._add_kid(p, h)
        if not self._complete(p0, resident):
            self.broken.update(new)
        elif had and self.broken:
            for h in had:
                self._repair(h)

    def insert(self, h: int, p: int, resident: dict[int, int]) -> None:
        """Block ``h`` (after parent ``p``) became resident."""
        had_kids = h in self.kids
        self.parent[h] = p
        if p != ROOT:
            self._add_kid(p, h)
        if not self._complete(p, resident):
            self.broken.add(h)
        elif had_kids and self.broken:
            self._repair(h)

    def remove(self, gone: list[int]) -> None:
        """Blocks ``gone`` (already dropped from the resident map) left the pool."""
        if not gone:
            return
        kids, extra = self.kids, self.extra
        if len(gone) == 1:  # one block made room for one
            h = gone[0]
            p = self.parent.pop(h)
            if p != ROOT:
                if kids.get(p) == h and p not in extra:
                    del kids[p]
                else:
                    self._drop_kid(p, h)
            if h in kids and h not in self.broken:
                self._break(h)
            self.broken.discard(h)
            return
        ps = list(map(self.parent.pop, gone))
        hs = gone
        if ROOT in ps:  # first blocks are nobody's children
            keep = [i for i, p in enumerate(ps) if p != ROOT]
            ps, hs = [ps[i] for i in keep], [gone[i] for i in keep]
        if list(map(kids.get, ps)) == hs and extra.keys().isdisjoint(ps):
            deque(map(kids.__delitem__, ps), maxlen=0)  # the usual case: each the only child
        else:
            for p, h in zip(ps, hs):
                self._drop_kid(p, h)
        broken = self.broken
        for h in filter(kids.__contains__, gone):  # removed blocks with children left
            if h not in broken:
                self._break(h)
        if broken:
            broken.difference_update(gone)

    # ------------------------------------------------------------------ checks

    def check(self, resident: Iterable[int]) -> None:
        """Assert parents, children and the broken set against their definitions (tests)."""
        res = set(resident)
        assert set(self.parent) == res, "parent map out of sync with the resident blocks"
        kids: dict[int, list[int]] = {}
        for h, p in self.parent.items():
            if p != ROOT:
                kids.setdefault(p, []).append(h)
        have = {p: sorted(self._children(p)) for p in set(self.kids) | set(self.extra)}
        assert have == {p: sorted(v) for p, v in kids.items()}, "children out of sync"
        complete: dict[int, bool] = {}

        def ok(h: int) -> bool:
            path = []
            while h not in complete:
                p = self.parent.get(h)
                if p is None:  # not resident
                    complete[h] = False
                    break
                if p == ROOT:
                    complete[h] = True
                    break
                path.append(h)
                h = p
            v = complete[h]
            for x in reversed(path):
                complete[x] = v
            return complete[path[0]] if path else v

        want = {h for h in res if not ok(h)}
        assert want == self.broken, (sorted(want - self.broken)[:5], sorted(self.broken - want)[:5])
