"""Systems: one YAML per compared system in ``baselines/``, naming its policies and engine flags.

A system file looks like::

    name: vllm
    source: [where each setting comes from]
    policies:
      scheduler: {name: fcfs}
      cache: {name: lru}
      router: {name: round_robin}
      autoscaler: {name: none}
    engine:                 # overrides of EngineFlags defaults
      max_num_batched_tokens: 2048

A variant of another system (an ablation, the oracle) says ``extends: <system>`` (a file stem
in ``baselines/``) and states only how it differs::

    name: pythia-no-routing
    extends: pythia
    source: [...]           # still required: the variant's own sources
    policies:
      router: {name: round_robin}   # replaces the parent's router, name and params

The parent is resolved first (recursively, so it may extend another system). Each policy kind
the variant names replaces the parent's ``{name, params}`` of that kind entirely (parameters
are not merged, so what a variant runs can be read off its own file); kinds it does not name
are the parent's. Its ``engine`` keys override the parent's engine flags one by one.
``name``, ``description``, ``source`` and ``extra`` are the variant's own, never inherited.
A system without ``extends`` takes the defaults below for every kind and flag it leaves out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pythia import inputs
from pythia.errors import PythiaInputError
from pythia.paths import project_root
from pythia.policy import registry
from pythia.policy.base import Policies


@dataclass(frozen=True)
class EngineFlags:
    """Engine settings a system chooses (vLLM V1 names and defaults where vLLM has them).

    Attributes:
        max_num_batched_tokens: token budget of one iteration (vLLM ``--max-num-batched-tokens``).
        max_num_seqs: cap on running sequences (vLLM ``--max-num-seqs``).
        block_size: tokens per KV block (vLLM ``--block-size``, 16).
        enable_prefix_caching: reuse cached blocks across calls (vLLM default on).
        enable_chunked_prefill: split long prompts over iterations (vLLM V1: always on).
        long_prefill_token_threshold: cap of one request's prefill chunk (0: none).
        gpu_memory_utilization: share of GPU memory the engine may use (vLLM 0.92).
        host_kv_gib: host-DRAM KV tier per replica in GiB (0 disables it).
        watermark: share of blocks kept free when admitting waiting calls (vLLM 0.0).
    """

    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    block_size: int = 16
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0
    gpu_memory_utilization: float = 0.92
    host_kv_gib: float = 0.0
    watermark: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_num_batched_tokens", "max_num_seqs", "block_size"):
            if int(getattr(self, name)) < 1:
                raise PythiaInputError(f"engine flag {name}={getattr(self, name)} must be a positive integer")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise PythiaInputError(
                f"engine flag max_num_batched_tokens={self.max_num_batched_tokens} must be >= "
                f"max_num_seqs={self.max_num_seqs} (as vLLM requires)"
            )
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise PythiaInputError(f"engine flag gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]")
        if not 0.0 <= self.watermark < 1.0:
            raise PythiaInputError(f"engine flag watermark={self.watermark} must be in [0, 1)")
        if self.host_kv_gib < 0 or self.long_prefill_token_threshold < 0:
            raise PythiaInputError("engine flags host_kv_gib and long_prefill_token_threshold must be >= 0")


FIELDS = ("name", "description", "source", "extends", "policies", "engine", "extra")
# What a system without ``extends`` runs for a policy kind it does not name (stock vLLM).
DEFAULT_POLICIES = {"predictor": "none", "scheduler": "fcfs", "cache": "lru", "router": "round_robin", "autoscaler": "none"}


@dataclass(frozen=True)
class System:
    """A compared system: its policies (names and parameters), engine flags and sources."""

    name: str
    policies: dict[str, tuple[str, dict[str, Any]]]
    engine: EngineFlags
    source: tuple[str, ...] = ()
    description: str = ""
    path: Path | None = None
    extends: str | None = None  # the parent system's name, if the file names one
    extra: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Policies:
        """Fresh policy objects for one run (policies keep state, so never share them)."""
        made = {
            kind: registry.create(kind, name, params, where=f"{self.path or self.name}: ")
            for kind, (name, params) in self.policies.items()
        }
        return Policies(**made)


def baselines_dir() -> Path:
    """Where system files live: ``baselines/`` at the project root."""
    return project_root() / "baselines"


def known_systems() -> list[str]:
    """The system names (file stems) in ``baselines/``."""
    d = baselines_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def parse_system(obj: Any, where: str, name: str) -> System:
    """Validate a system's YAML object (resolving its ``extends`` against ``baselines/``)."""
    return _parse(obj, where, name, ())


def load_system(name: str | Path) -> System:
    """The system ``baselines/<name>.yaml``; a path to a YAML file also works."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        path = p
    else:
        path = baselines_dir() / f"{name}.yaml"
        if not path.is_file():
            known = known_systems()
            raise PythiaInputError(
                f"unknown system {str(name)!r}; known: {', '.join(known) if known else '(none in ' + str(baselines_dir()) + ')'}"
            )
    return _load(path, ())


def _load(path: Path, chain: tuple[Path, ...]) -> System:
    """Read and validate the system file ``path``; ``chain`` holds the files extending it, outermost first."""
    doc = inputs.load_yaml(path, "system file")
    if not isinstance(doc.value, dict):
        raise PythiaInputError(f"{path}: a system file must be a mapping with source and policies, not {type(doc.value).__name__}")
    inputs.validate(doc, "system")
    sys_ = _parse(doc.value, str(path), path.stem, chain + (path.resolve(),))
    return dataclasses.replace(sys_, path=path)


def _parent(value: Any, where: str, chain: tuple[Path, ...]) -> System:
    """The system a file's ``extends`` names, resolved; unknown names and cycles are user errors."""
    if not isinstance(value, str) or not value or Path(value).name != value:
        raise PythiaInputError(
            f"{where}: field extends={value!r} must be the name of a system in baselines/ (a file stem, e.g. pythia)"
        )
    path = baselines_dir() / f"{value}.yaml"
    if not path.is_file():
        known = known_systems()
        raise PythiaInputError(
            f"{where}: field extends={value!r} names no system in {baselines_dir()}; "
            f"known: {', '.join(known) if known else '(none)'}"
        )
    if path.resolve() in chain:
        loop = [p.stem for p in chain[chain.index(path.resolve()):]] + [value]
        raise PythiaInputError(
            f"{where}: field extends={value!r} makes a cycle ({' -> '.join(loop)}); "
            "a system can extend neither itself nor a system that extends it"
        )
    return _load(path, chain)


def _parse(obj: Any, where: str, name: str, chain: tuple[Path, ...]) -> System:
    """Validate a system's YAML object; ``chain`` is the files being resolved, for cycle checks."""
    if not isinstance(obj, dict):
        raise PythiaInputError(f"{where}: a system file must be a mapping")
    unknown = set(obj) - set(FIELDS)
    if unknown:
        raise PythiaInputError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    source = obj.get("source")
    if not source:
        raise PythiaInputError(f"{where}: field source is required: name where the system's settings come from")
    if isinstance(source, str):
        source = [source]
    parent = _parent(obj["extends"], where, chain) if "extends" in obj else None
    pol = obj.get("policies") or {}
    if not isinstance(pol, dict):
        raise PythiaInputError(f"{where}: field policies must be a mapping of kind to {{name, params}}")
    policies: dict[str, tuple[str, dict[str, Any]]] = {}
    for kind in registry.KINDS:
        if kind not in pol and parent is not None:
            pname, params = parent.policies[kind]
            policies[kind] = (pname, dict(params))
            continue
        spec = pol.get(kind, {"name": DEFAULT_POLICIES[kind]})
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict) or "name" not in spec:
            raise PythiaInputError(f"{where}: field policies.{kind} needs a name")
        pname = spec["name"]
        if pname not in registry.REGISTRY[kind]:
            raise PythiaInputError(
                f"{where}: field policies.{kind}.name={pname!r} is unknown; known: {', '.join(registry.known(kind))}"
            )
        params = spec.get("params") or {}
        if not isinstance(params, dict):
            raise PythiaInputError(f"{where}: field policies.{kind}.params must be a mapping of parameter name to value")
        # Names and types now, so a typo stops the run before any work; values at build().
        registry.check_params(registry.resolve(kind, pname, f"{where}: "), kind, pname, params, f"{where}: ")
        policies[kind] = (pname, dict(params))
    extra_kinds = set(pol) - set(registry.KINDS)
    if extra_kinds:
        raise PythiaInputError(f"{where}: unknown policy kind(s) {', '.join(sorted(extra_kinds))}")
    eng = obj.get("engine") or {}
    names = {f.name for f in fields(EngineFlags)}
    bad = set(eng) - names
    if bad:
        raise PythiaInputError(f"{where}: unknown engine flag(s) {', '.join(sorted(bad))}; known: {', '.join(sorted(names))}")
    try:
        engine = EngineFlags(**{**(asdict(parent.engine) if parent is not None else {}), **eng})
    except PythiaInputError as e:
        raise PythiaInputError(f"{where}: {e}") from None
    return System(
        name=str(obj.get("name", name)),
        policies=policies,
        engine=engine,
        source=tuple(str(s) for s in source),
        description=str(obj.get("description", "")),
        extra=dict(obj.get("extra") or {}),
        extends=str(obj["extends"]) if parent is not None else None,
    )
