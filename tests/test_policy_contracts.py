"""The policy contracts stated on the base classes."""

from __future__ import annotations

import numpy as np
import pytest

from pythia.policy import registry
from pythia.policy.base import CacheAction, CachePolicy


def test_cache_action_kind_is_one_of_the_declared_kinds() -> None:
    for kind in CacheAction.KINDS:
        CacheAction(kind, 0, np.empty(0, dtype=np.int64), segments=np.empty((0, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="not one of"):
        CacheAction("evict", 0)
    with pytest.raises(ValueError, match="segments"):
        CacheAction("precompute", 0)


def test_every_policy_takes_bind_and_set_rng_and_every_queue_attach() -> None:
    rng = np.random.default_rng(0)
    for kind in ("scheduler", "cache", "router", "autoscaler"):
        for name in registry.known(kind):
            policy = registry.create(kind, name)
            policy.bind(registry.create("predictor", "none"))
            policy.set_rng(rng)
            if kind == "scheduler":
                policy.new_queue().attach(None)  # a queue that reads no cache ignores it


def test_plain_lru_is_one_predicate() -> None:
    lru = registry.create("cache", "lru")
    assert lru.plain_lru and not lru.acts
    for name in ("pythia", "continuum_ttl", "kvflow", "shortest_first"):
        c: CachePolicy = registry.create("cache", name)
        assert not c.plain_lru
    assert registry.create("cache", "kvflow").reorders_eviction
