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
        "autellix": "pythia.policy.autellix:ThreadTracker",
        "profiler": "pythia.policy.pythia_predictor:ProfilerPredictor",
        "oracle": "pythia.policy.oracle:OraclePredictor",
    },
    "scheduler": {
        "fcfs": "pythia.policy.fcfs:FCFS",
        "sglang_lpm": "pythia.policy.sglang_lpm:SGLangLPM",
        "autellix": "pythia.policy.autellix:AutellixScheduler",
        "program_fcfs": "pythia.policy.continuum:ProgramFCFS",
        "thunderagent": "pythia.policy.thunderagent:ThunderScheduler",
        "pythia": "pythia.policy.pythia_scheduler:PythiaScheduler",
    },
    "cache": {
        "lru": "pythia.policy.lru:LRU",
        "continuum_ttl": "pythia.policy.continuum:ContinuumTTL",
        "kvflow": "pythia.policy.kvflow:KVFlowCache",
        "shortest_first": "pythia.policy.thunderagent:ShortestFirstEviction",
        "pythia": "pythia.policy.pythia_cache:PythiaCache",
    },
    "router": {
        "round_robin": "pythia.policy.round_robin:RoundRobin",
        "session_affinity": "pythia.policy.session_affinity:SessionAffinity",
        "prefix_aware": "pythia.policy.prefix_aware:PrefixAware",
        "sglang_cache_aware": "pythia.policy.sglang_cache_aware:SGLangCacheAware",
        "autellix_locality": "pythia.policy.autellix:AutellixRouter",
        "thunderagent_global": "pythia.policy.thunderagent:ThunderRouter",
        "pythia": "pythia.policy.pythia_router:PythiaRouter",
    },
    "autoscaler": {
        "none": "pythia.policy.no_scaling:NoScaling",
        "reactive": "pythia.policy.reactive_autoscaler:ReactiveAutoscaler",
        "pythia": "pythia.policy.pythia_scaler:PythiaAutoscaler",
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
