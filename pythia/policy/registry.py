"""The one registry of policies: a name per policy kind, resolved lazily.

A new policy is one module plus one line here. Entries are ``"module:Class"`` strings so
that listing the known names imports nothing.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

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


def resolve(kind: str, name: str, where: str = "") -> Callable[..., Any]:
    """The class registered as policy ``name`` of ``kind`` (its module is imported now)."""
    if kind not in REGISTRY:
        raise PythiaInputError(f"{where}unknown policy kind {kind!r}; known: {', '.join(KINDS)}")
    target = REGISTRY[kind].get(name)
    if target is None:
        raise PythiaInputError(f"{where}unknown {kind} policy {name!r}; known: {', '.join(known(kind))}")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def create(kind: str, name: str, params: dict[str, Any] | None = None, where: str = "") -> Any:
    """Instantiate the policy ``name`` of ``kind`` with keyword ``params`` (names checked first)."""
    factory = resolve(kind, name, where)
    params = dict(params or {})
    check_params(factory, kind, name, params, where)
    # No ``except TypeError`` here: the names are checked, so a TypeError raised inside a
    # constructor is a bug of ours and keeps its traceback.
    return factory(**params)


def check_params(factory: Callable[..., Any], kind: str, name: str, params: dict[str, Any], where: str = "") -> None:
    """Refuse parameter names the constructor of policy ``name`` does not take, and required ones missing.

    Values are the constructor's to check: it raises :class:`PythiaInputError` for bad ones.
    """
    ps = list(inspect.signature(factory).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps):
        return  # takes any keyword: nothing to check by name
    accepted = [p.name for p in ps if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    unknown = sorted(str(k) for k in set(params) - set(accepted))
    if unknown:
        raise PythiaInputError(
            f"{where}field policies.{kind}.params has unknown parameter(s) {', '.join(unknown)} for {kind} policy "
            f"{name!r}; accepted: {', '.join(accepted) if accepted else '(none)'}"
        )
    missing = [p.name for p in ps if p.name in accepted and p.default is inspect.Parameter.empty and p.name not in params]
    if missing:
        raise PythiaInputError(
            f"{where}field policies.{kind}.params needs parameter(s) {', '.join(missing)} for {kind} policy {name!r}"
        )
