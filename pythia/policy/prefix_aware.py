"""Prefix-aware routing, the vLLM production-stack router's ``prefixaware`` routing logic.

The production stack keeps a trie of hashed 128-character chunks of every prompt it routed,
each node remembering the endpoints that received a prompt through it. A request goes to a
random endpoint among those holding its longest matched prefix (a random one of all
available endpoints when nothing matches), and its prompt is then inserted for the chosen
endpoint. The trie is never pruned: the stack assumes no eviction in the engines.

Here a chunk is ``chunk_blocks`` KV blocks of the prompt (block hashes are chained, so a
chunk hash names its whole prefix, as a trie node does). With vLLM's 16-token blocks and
about 4 characters per token, the default of 2 blocks is about 128 characters.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pythia.policy.base import Router
from pythia.policy.baseline_common import positive, prompt_hashes
from pythia.policy.views import ReplicaView, RequestView


class PrefixAware(Router):
    """Longest prefix match over the chunks of routed prompts; random among equals (seeded).

    Args:
        chunk_blocks: KV blocks per trie chunk.
        seed: seed of the tie-breaking generator.
    """

    name = "prefix_aware"

    def __init__(self, chunk_blocks: int = 2, seed: int = 0) -> None:
        self.chunk_blocks = positive(self.name, "chunk_blocks", chunk_blocks, integer=True)
        self.rng = np.random.default_rng(int(seed))
        # One trie per pool: chunk hash -> replica ids that received a prompt through it.
        self._tries: dict[str, dict[int, set[int]]] = {}

    def chunks(self, req: RequestView, block_size: int) -> list[int]:
        """The chained hashes that end each full chunk of the prompt."""
        hashes = prompt_hashes(req, block_size)
        return hashes[self.chunk_blocks - 1:: self.chunk_blocks].tolist()

    def route(self, req: RequestView, replicas: Sequence[ReplicaView], now: float) -> int:
        trie = self._tries.setdefault(replicas[0].pool, {})
        chunks = self.chunks(req, replicas[0].kv.block_size)
        selected = {r.replica_id for r in replicas}
        for h in chunks:
            holders = trie.get(h)
            if not holders or not (holders & selected):
                break
            selected = holders & selected
        ids = sorted(selected)
        chosen = ids[int(self.rng.integers(len(ids)))] if len(ids) > 1 else ids[0]
        for h in chunks:
            trie.setdefault(h, set()).add(chosen)
        return next(j for j, r in enumerate(replicas) if r.replica_id == chosen)
