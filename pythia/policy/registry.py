"""The one registry of policies: a name per policy kind, resolved lazily.

A new policy is one module plus one line here. Entries are ``"module:Class"`` strings so
that listing the known names imports nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

from pythia.errors import PythiaInputError

KINDS = ("predictor", "scheduler", "cache", "router", "autoscaler")

REGISTRY: dict[str, dict[str, str]] = {
    "predictor": {
        "none": "pythia.policy.workflow:JobTracker",
    },
    "scheduler": {
        "fcfs": "pythia.policy.fcfs:FCFS",
    },
    "cache": {
        "lru": "pythia.policy.lru:LRU",
    },
    "router": {
        "round_robin": "pythia.policy.round_robin:RoundRobin",
    },
    "autoscaler": {
        "none": "pythia.policy.no_scaling:NoScaling",
    },
}


def known(kind: str) -> list[str]:
    """The registered names of one policy kind."""
    return sorted(REGISTRY[kind])


def create(kind: str, name: str, params: dict[str, Any] | None = None, where: str = "") -> Any:
    """Instantiate the policy ``name`` of ``kind`` with keyword ``params``."""
    if kind not in REGISTRY:
        raise PythiaInputError(f"{where}unknown policy kind {kind!r}; known: {', '.join(KINDS)}")
    target = REGISTRY[kind].get(name)
    if target is None:
        raise PythiaInputError(f"{where}unknown {kind} policy {name!r}; known: {', '.join(known(kind))}")
    module, cls = target.split(":")
    factory = getattr(importlib.import_module(module), cls)
    try:
        return factory(**(params or {}))
    except TypeError as e:
        raise PythiaInputError(f"{where}{kind} policy {name!r}: bad parameters ({e})") from None
