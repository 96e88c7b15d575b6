"""The eviction order of free cached blocks: LRU kept as runs, with lazy deletion.

A freed request returns its blocks all at once, tail first, so the order is kept as a queue
of *runs* (one list per free) and an index ``hash -> run id`` of the live entries. Adding a
run, taking a block out (a prefix hit, a pin) and evicting the oldest ``n`` blocks are a few
C-level dict and list operations per block instead of one linked-list node each: removal
only drops the index entry, and eviction skips entries whose index no longer points to
their run. Dead entries are compacted away when they outnumber the live ones.
"""

from __future__ import annotations

from collections import deque
from itertools import compress, repeat
from operator import eq


class EvictionQueue:
    """Evictable blocks in eviction order (oldest first)."""

    __slots__ = ("idx", "runs", "next_id", "entries")

    def __init__(self) -> None:
        self.idx: dict[int, int] = {}
        # Each run: [run id, hashes in eviction order, cursor, time freed (s), per-block times
        # or None]. A run of freed blocks shares one time; a re-ranked order keeps each block's.
        self.runs: deque[list] = deque()
        self.next_id = 0
        self.entries = 0  # entries still stored in runs (live or dead)

    def __len__(self) -> int:
        return len(self.idx)

    def __contains__(self, h: int) -> bool:
        return h in self.idx

    def add_run(self, hashes: list[int], now: float) -> None:
        """Append blocks (already in eviction order) freed at ``now``."""
        if not hashes:
            return
        rid = self.next_id
        self.next_id += 1
        self.runs.append([rid, hashes, 0, now, None])
        self.idx.update(dict.fromkeys(hashes, rid))
        self.entries += len(hashes)
        if self.entries > 4 * len(self.idx) + 4096:
            self._compact()

    def add(self, h: int, now: float) -> None:
        """Append one block."""
        self.add_run([h], now)

    def discard(self, h: int) -> bool:
        """Take a block out of the order (it is held again); returns whether it was there."""
        return self.idx.pop(h, None) is not None

    def pop_oldest(self, n: int) -> list[int]:
        """Remove and return the ``n`` oldest blocks (fewer if there are fewer)."""
        out: list[int] = []
        idx, runs = self.idx, self.runs
        while len(out) < n and runs:
            run = runs[0]
            rid, hashes, cur = run[0], run[1], run[2]
            need = n - len(out)
            cand = hashes[cur:cur + need]
            run[2] = cur + len(cand)
            self.entries -= len(cand)
            owners = list(map(idx.get, cand))
            if owners.count(rid) == len(cand):
                out.extend(cand)
            else:
                out.extend([h for h, o in zip(cand, owners) if o == rid])
            if run[2] >= len(hashes):
                runs.popleft()
        deque(map(idx.__delitem__, out), maxlen=0)  # C-level loop
        return out

    def pop_one(self) -> int | None:
        """Remove and return the oldest block (``None`` if there is none): ``pop_oldest(1)``."""
        idx, runs = self.idx, self.runs
        while runs:
            run = runs[0]
            rid, hashes, cur = run[0], run[1], run[2]
            end = len(hashes)
            while cur < end:
                h = hashes[cur]
                cur += 1
                self.entries -= 1
                if idx.get(h) == rid:
                    run[2] = cur
                    if cur >= end:
                        runs.popleft()
                    del idx[h]
                    return h
            runs.popleft()
        return None

    def live(self) -> tuple[list[int], list[float]]:
        """Live blocks and their free times, oldest first."""
        idx = self.idx
        hs: list[int] = []
        ts: list[float] = []
        for rid, hashes, cur, t, times in self.runs:
            seg = hashes[cur:]
            mask = list(map(eq, map(idx.get, seg), repeat(rid)))  # C loops: still this run's
            hs.extend(compress(seg, mask))
            ts.extend(compress(times[cur:], mask) if times is not None else repeat(t, mask.count(True)))
        return hs, ts

    def replace_order(self, hashes: list[int], times: list[float]) -> None:
        """Rebuild with live ``hashes`` (first evicted first), each with its free time."""
        self.idx.clear()
        self.runs.clear()
        self.entries = 0
        if hashes:
            rid = self.next_id
            self.next_id += 1
            self.runs.append([rid, hashes, 0, 0.0, times])
            self.idx.update(dict.fromkeys(hashes, rid))
            self.entries = len(hashes)

    def _compact(self) -> None:
        idx = self.idx
        runs: deque[list] = deque()
        total = 0
        for run in self.runs:
            rid, hashes, cur, t, times = run
            seg = hashes[cur:]
            mask = list(map(eq, map(idx.get, seg), repeat(rid)))
            live = list(compress(seg, mask))
            if live:
                runs.append([rid, live, 0, t, list(compress(times[cur:], mask)) if times is not None else None])
                total += len(live)
        self.runs = runs
        self.entries = total
