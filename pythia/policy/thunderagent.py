"""ThunderAgent (Kang et al., arXiv 2602.13692): a program-aware global queue and shortest-first eviction.

ThunderAgent schedules *programs* (an agent's whole LLM-call/tool-call loop), not requests:

- Scheduling: one global, program-aware waiting queue. Programs keep their place across
  tool calls (the queue orders calls by their program's admission, first come first served)
  and a program's calls go to the node that holds its KV unless that node's memory is
  overcommitted, in which case the global queue hands the program to the node with the
  most free KV memory (ThunderAgent's answer to cross-node memory imbalance).
- Eviction: when the KV cache thrashes, ThunderAgent pauses programs *shortest first*: the
  recompute cost of a context grows with its square, so short contexts are the cheapest
  to give up. The victim of a KV shortage is the running call with the fewest computed
  tokens, and evictable cached blocks are ranked by the context length of the program
  that owns them, shortest first (blocks of ended programs before any live one).

The cached-block ranking is a comparator that only the simulator honours
(``reorders_eviction``); vLLM's block pool evicts in LRU order.
"""

from __future__ import annotations

from typing import Sequence

from pythia.policy.base import CacheAction, CachePolicy, Router
from pythia.policy.baseline_common import ProgramHomes, check, kv_used_share
from pythia.policy.continuum import ProgramFCFS
from pythia.policy.views import BlockView, ReplicaView, RequestView
from pythia.policy.workflow import Predictor

INF = float("inf")


class ThunderScheduler(ProgramFCFS):
    """Program-ordered waiting queue (Continuum's order); shortest-context victim under KV pressure."""

    name = "thunderagent"

    def victim(self, running: Sequence[RequestView], now: float) -> RequestView:
        # Shortest first: the cheapest context to recompute; the latest admitted among equals.
        return min(reversed(running), key=lambda r: r.num_computed_tokens)


class ThunderRouter(Router):
    """Program affinity with memory rebalancing through the global queue.

    Args:
        memory_threshold: KV share in use above which a program's node counts as
            overcommitted and its next call goes to the node with the most free KV.
    """

    name = "thunderagent_global"

    def __init__(self, memory_threshold: float = 0.9) -> None:
        self.memory_threshold = float(memory_threshold)
        check(0.0 < self.memory_threshold <= 1.0, self.name, "memory_threshold",
              f"{memory_threshold!r} must be in (0, 1]")
        self.homes = ProgramHomes()
        self.predictor: Predictor | None = None

    def bind(self, predictor: Predictor) -> None:
        """Used to forget the placements of ended programs."""
        self.predictor = predictor

    def route(self, req: RequestView, replicas: Sequence[ReplicaView], now: float) -> int:
        key = self.homes.key(req, replicas, self.predictor)
        j = self.homes.index(key, replicas)
        if j is not None and kv_used_share(replicas[j]) < self.memory_threshold:
            return j
        i = min(range(len(replicas)), key=lambda j: (kv_used_share(replicas[j]), replicas[j].num_waiting,
                                                     replicas[j].replica_id))
        self.homes.home[key] = replicas[i].replica_id
        return i


class ShortestFirstEviction(CachePolicy):
    """Evict cached blocks of the shortest program contexts first (simulator-only comparator)."""

    name = "shortest_first"
    reorders_eviction = True

    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.owner: dict[int, str] = {}  # block hash -> the longest-context program that used it
        self.context: dict[str, int] = {}  # program -> longest context (tokens) of its calls
        self.blocks: dict[str, list[int]] = {}

    def bind(self, predictor: Predictor) -> None:
        """Program liveness comes from the run's workflow service."""
        self.predictor = predictor

    def on_finish(self, req: RequestView, replica: ReplicaView, now: float) -> list[CacheAction]:
        job = req.job_id
        ctx = req.prompt_tokens + req.num_output_tokens
        self.context[job] = max(self.context.get(job, 0), ctx)
        mine = self.blocks.setdefault(job, [])
        owner, context = self.owner, self.context
        chain = req.block_hashes[: ctx // replica.kv.block_size].tolist()
        mine_ctx = context[job]
        # Unowned blocks, and shared ones: a shared block is worth the longest context that reuses it.
        take = [h for h, cur in zip(chain, map(owner.get, chain))
                if cur is None or (cur != job and context.get(cur, 0) < mine_ctx)]
        owner.update(dict.fromkeys(take, job))
        mine.extend(take)
        return []

    def on_tick(self, replicas: Sequence[ReplicaView], now: float) -> list[CacheAction]:
        p = self.predictor
        if p is None:
            return []
        for job in [j for j in self.blocks if p.job(j) is None]:
            for h in self.blocks.pop(job):
                if self.owner.get(h) == job:
                    del self.owner[h]
            self.context.pop(job, None)
        return []

    def eviction_keys(self, hashes: Sequence[int], last_used: Sequence[float], now: float) -> list[tuple[float, float]]:
        """Blocks of no live program first, then by their program's context, shortest first;
        least recently used among equals."""
        p = self.predictor
        jobs = p.jobs if p is not None else {}
        of = list(map(self.owner.get, hashes))
        # A size per distinct owner (few), then one C-level lookup per block.
        size = {j: (float(self.context.get(j, 0)) if j in jobs else -1.0) for j in set(of) if j is not None}
        size[None] = -1.0
        return list(zip(map(size.__getitem__, of), last_used))

    def eviction_key(self, block: BlockView, now: float) -> tuple[float, float]:
        return self.eviction_keys([block.block_hash], [block.last_used_s], now)[0]
