"""The one registry of policies: a name per policy kind, resolved lazily.

A new policy is one module plus one line here. Entries are ``"module:Class"`` strings so
that listing the known names imports nothing.
"""

from __future__ import annotations

import importlib
import inspect
import math
import types
import typing
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
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # an annotation that cannot be evaluated: the constructor checks its values
        hints = {}
    for key, value in params.items():
        want = hints.get(key)
        if want is not None and not _matches(value, want):
            raise PythiaInputError(
                f"{where}field policies.{kind}.params.{key}={value!r} must be {_describe(want)} "
                f"for {kind} policy {name!r}"
                + ("; write it without quotes" if isinstance(value, str) and want is not str else "")
            )


def _matches(value: Any, want: Any) -> bool:
    """Whether a YAML value has the type a constructor annotates (nothing is coerced)."""
    if want is Any:
        return True
    origin = typing.get_origin(want)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, w) for w in typing.get_args(want))
    if want is type(None):
        return value is None
    if want is bool:
        return isinstance(value, bool)
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if want is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if want is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or want in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(want) if a is not Ellipsis]
        return len(args) != 1 or all(_matches(v, args[0]) for v in value)
    if origin is dict or want is dict:
        return isinstance(value, dict)
    return True  # a type this check does not know: the constructor's to check


def _describe(want: Any) -> str:
    origin = typing.get_origin(want)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(w) for w in typing.get_args(want))
    names = {bool: "a boolean (true or false)", int: "an integer", float: "a finite number", str: "a string",
             type(None): "null"}
    if want in names:
        return names[want]
    if origin in (list, tuple, typing.Sequence) or want in (list, tuple):
        args = [a for a in typing.get_args(want) if a is not Ellipsis]
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if len(args) == 1 else "a list"
    if origin is dict or want is dict:
        return "a mapping"
    return str(want)
