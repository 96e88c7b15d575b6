"""Plain LRU prefix caching (vLLM's automatic prefix caching): no actions beyond the pool's own order."""

from __future__ import annotations

from pythia.policy.base import CachePolicy


class LRU(CachePolicy):
    """Evict the least recently freed cached block first; never pin, demote or prefetch."""

    name = "lru"
