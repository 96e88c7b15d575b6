"""The sglang-router's ``cache_aware`` policy: an approximate radix tree per worker, balanced against load.

For each request the router (``sgl-router``, ``CacheAwarePolicy``):

1. computes each worker's load (requests it sent there and that have not finished); when
   ``max_load - min_load > balance_abs_threshold`` and ``max_load > min_load *
   balance_rel_threshold`` the system is imbalanced and the request goes to the least
   loaded worker;
2. otherwise matches the request's text against an approximate radix tree of the prompts
   it routed to each worker: if the best match covers more than ``cache_threshold`` of the
   request, the request goes to that worker; if not, to the worker whose tree is smallest
   (the one with the most cache room);
3. inserts the request into the chosen worker's tree. Every ``eviction_interval_s`` each
   worker's tree is cut back to ``max_tree_size`` by least recent use.

Defaults are ``sglang_router.launch_router.RouterArgs``: cache_threshold 0.5,
balance_abs_threshold 32, balance_rel_threshold 1.0001, eviction_interval 60 s,
max_tree_size 2**24 characters. The router's tree is over characters; here it is over the
prompt's KV blocks (chained hashes), so ``max_tree_blocks`` = 2**24 characters / (4
characters per token x 16 tokens per block) = 262144.
"""

from __future__ import annotations

from itertools import takewhile
from typing import Sequence

from pythia.policy.base import Router
from pythia.policy.baseline_common import check, load, positive, prompt_hashes
from pythia.policy.views import ReplicaView, RequestView


class _Tree:
    """One pool's approximate trees: per replica id, block hash -> last use (the tree's size is its length).

    A replica's tree holds whole routed chains; its match is the first block of a chain it
    does not hold, a C-level scan per replica (a pool has a handful of replicas).
    """

    __slots__ = ("blocks", "last_evict")

    def __init__(self) -> None:
        self.blocks: dict[int, dict[int, float]] = {}
        self.last_evict = 0.0

    def size(self, rid: int) -> int:
        """Blocks in replica ``rid``'s tree."""
        d = self.blocks.get(rid)
        return len(d) if d else 0

    def match(self, chain: list[int], ids: Sequence[int]) -> dict[int, int]:
        """Matched leading blocks of ``chain`` per replica id."""
        out = {}
        for rid in ids:
            d = self.blocks.get(rid)
            out[rid] = len(list(takewhile(d.__contains__, chain))) if d else 0
        return out

    def insert(self, chain: list[int], rid: int, now: float) -> None:
        d = self.blocks.setdefault(rid, {})
        d.update(dict.fromkeys(chain, now))

    def evict(self, max_blocks: int) -> None:
        """Cut every replica's tree to ``max_blocks`` by least recent use (leaves go first: they are older)."""
        for d in self.blocks.values():
            if len(d) <= max_blocks:
                continue
            entries = sorted((t, h) for h, t in d.items())
            for _, h in entries[: len(d) - max_blocks]:
                del d[h]


class SGLangCacheAware(Router):
    """sglang-router's cache-aware load balancing (see the module docstring for the rule)."""

    name = "sglang_cache_aware"

    def __init__(self, cache_threshold: float = 0.5, balance_abs_threshold: int = 32,
                 balance_rel_threshold: float = 1.0001, eviction_interval_s: float = 60.0,
                 max_tree_blocks: int = 262144) -> None:
        self.cache_threshold = float(cache_threshold)
        check(0.0 <= self.cache_threshold <= 1.0, self.name, "cache_threshold", f"{cache_threshold!r} must be in [0, 1]")
        self.balance_abs_threshold = positive(self.name, "balance_abs_threshold", balance_abs_threshold,
                                              integer=True, allow_zero=True)
        self.balance_rel_threshold = positive(self.name, "balance_rel_threshold", balance_rel_threshold)
        self.eviction_interval_s = positive(self.name, "eviction_interval_s", eviction_interval_s)
        self.max_tree_blocks = positive(self.name, "max_tree_blocks", max_tree_blocks, integer=True)
        self._trees: dict[str, _Tree] = {}

    def imbalanced(self, loads: Sequence[int]) -> bool:
        """sglang-router's trigger for load balancing over cache affinity."""
        hi, lo = max(loads), min(loads)
        return hi - lo > self.balance_abs_threshold and hi > lo * self.balance_rel_threshold

    def route(self, req: RequestView, replicas: Sequence[ReplicaView], now: float) -> int:
        tree = self._trees.setdefault(replicas[0].pool, _Tree())
        if now - tree.last_evict >= self.eviction_interval_s:
            tree.evict(self.max_tree_blocks)
            tree.last_evict = now
        chain = prompt_hashes(req, replicas[0].kv.block_size).tolist()
        loads = [load(r) for r in replicas]
        ids = [r.replica_id for r in replicas]
        if self.imbalanced(loads):
            i = min(range(len(replicas)), key=lambda j: (loads[j], ids[j]))
        else:
            matched = tree.match(chain, ids)
            best = max(range(len(replicas)), key=lambda j: (matched[ids[j]], -loads[j], -ids[j]))
            rate = matched[ids[best]] / len(chain) if chain else 0.0
            if rate > self.cache_threshold:
                i = best
            else:
                i = min(range(len(replicas)), key=lambda j: (tree.size(ids[j]), loads[j], ids[j]))
        tree.insert(chain, ids[i], now)
        return i
