"""Typed, validated configuration of a simulated cluster and of one simulation run.

Cluster presets are YAML files in ``pythia/sim/data/clusters/`` (``paper`` is the default);
``--cluster`` takes a preset name or a path to such a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pythia import inputs
from pythia.errors import PythiaInputError
from pythia.sim.costmodel import gpu_spec, model_shape

DEFAULT_CLUSTER = "paper"


@dataclass(frozen=True)
class PoolConfig:
    """One model pool: replicas of one model, each on ``tp`` GPUs.

    Attributes:
        name: pool name (trace model names map to it, see :meth:`ClusterConfig.pool_for`).
        model: a model of ``data/models.yaml``.
        tp: tensor-parallel GPUs per replica.
        replicas: replicas up at the start.
        min_replicas / max_replicas: bounds an autoscaler may move within.
        max_model_len: context served (default: the model's); longer calls are clamped.
        aliases: further trace model names that map to this pool.
        kv_cache_tokens: KV cache per replica in tokens, in place of what memory leaves after
            weights and activations (0: from memory). The knob that moves KV pressure without
            changing the workload; on a real vLLM engine it is ``--num-gpu-blocks-override``
            (this figure divided by the block size). Above what memory holds it models a device
            with more memory (the low end of a KV-pressure sweep); iteration costs do not change.
    """

    name: str
    model: str
    tp: int = 1
    replicas: int = 1
    min_replicas: int = 1
    max_replicas: int = 1
    max_model_len: int = 0
    aliases: tuple[str, ...] = ()
    kv_cache_tokens: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.replicas <= self.max_replicas or self.max_replicas < 1:
            raise PythiaInputError(
                f"pool {self.name}: need 0 <= min_replicas <= replicas <= max_replicas and max_replicas >= 1 "
                f"(got {self.min_replicas}, {self.replicas}, {self.max_replicas})"
            )


@dataclass(frozen=True)
class ClusterConfig:
    """A cluster: one GPU kind, model pools, cold-start delay and the model-name map."""

    name: str
    gpu: str
    pools: tuple[PoolConfig, ...]
    gpus: int = 0
    cold_start_s: float = 30.0
    default_pool: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        gpu_spec(self.gpu)
        if not self.pools:
            raise PythiaInputError(f"cluster {self.name}: needs at least one pool")
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise PythiaInputError(f"cluster {self.name}: pool names repeat")
        if self.default_pool is not None and self.default_pool not in names:
            raise PythiaInputError(
                f"cluster {self.name}: default_pool {self.default_pool!r} is not a pool; pools: {', '.join(names)}"
            )
        if self.cold_start_s < 0:
            raise PythiaInputError(f"cluster {self.name}: cold_start_s must be >= 0")
        for p in self.pools:
            shape = model_shape(p.model)
            if p.max_model_len > shape.max_model_len:
                raise PythiaInputError(
                    f"cluster {self.name}: pool {p.name} max_model_len {p.max_model_len} exceeds "
                    f"{p.model}'s context {shape.max_model_len}"
                )
        used = sum(p.replicas * p.tp for p in self.pools)
        if self.gpus and used > self.gpus:
            raise PythiaInputError(f"cluster {self.name}: pools start {used} GPUs but the cluster has {self.gpus}")

    def context_len(self, pool: PoolConfig) -> int:
        """The context length a pool serves."""
        return pool.max_model_len or model_shape(pool.model).max_model_len

    def pool_for(self, model: str) -> PoolConfig:
        """The pool serving trace model ``model`` (by pool name, model, alias, or the default pool)."""
        key = normalise_model_name(model)
        for p in self.pools:
            names = {normalise_model_name(n) for n in (p.name, p.model, *p.aliases)}
            names.add(normalise_model_name(model_shape(p.model).hf_name))
            if key in names:
                return p
        if self.default_pool is not None:
            return next(p for p in self.pools if p.name == self.default_pool)
        known = sorted({p.name for p in self.pools} | {p.model for p in self.pools})
        raise PythiaInputError(
            f"cluster {self.name}: no pool serves model {model!r}; known: {', '.join(known)} "
            "(or give the cluster a default_pool)"
        )


def normalise_model_name(name: str) -> str:
    """Lower case, without the organisation and an ``-instruct``/``-chat`` suffix."""
    n = name.strip().lower().rsplit("/", 1)[-1]
    return re.sub(r"-(instruct|chat|it)$", "", n)


def cluster_presets() -> list[str]:
    """Names of the shipped cluster presets."""
    d = resources.files("pythia.sim").joinpath("data/clusters")
    return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml"))


def parse_cluster(obj: Any, where: str, doc: inputs.YamlDocument | None = None) -> ClusterConfig:
    """Validate a cluster YAML object (``doc``, when given, puts line numbers in messages)."""
    if not isinstance(obj, dict):
        raise PythiaInputError(f"{where}: a cluster file must be a mapping with gpu and pools, not {type(obj).__name__}")
    if doc is not None:
        inputs.validate(doc, "cluster")
    else:
        inputs.validate_value(obj, where, "cluster")
    pools = []
    for pname, p in obj["pools"].items():
        replicas = int(p.get("replicas", 1))
        try:
            pools.append(PoolConfig(
                name=str(pname), model=str(p["model"]), tp=int(p.get("tp", 1)), replicas=replicas,
                min_replicas=int(p.get("min_replicas", min(1, replicas))),
                max_replicas=int(p.get("max_replicas", max(1, replicas))),
                max_model_len=int(p.get("max_model_len", 0)),
                aliases=tuple(str(a) for a in p.get("aliases", ())),
                kv_cache_tokens=int(p.get("kv_cache_tokens", 0)),
            ))
        except PythiaInputError as e:
            loc = where if doc is None else doc.where(("pools", pname)).rsplit(": ", 1)[0]
            raise PythiaInputError(f"{loc}: {e}") from None
    try:
        return ClusterConfig(
            name=str(obj.get("name", where)), gpu=str(obj.get("gpu", "a100-80gb")), pools=tuple(pools),
            gpus=int(obj.get("gpus", 0)), cold_start_s=float(obj.get("cold_start_s", 30.0)),
            default_pool=obj.get("default_pool"), description=str(obj.get("description", "")),
        )
    except PythiaInputError as e:
        raise PythiaInputError(f"{where}: {e}") from None


def load_cluster(name_or_path: str | Path | None = None) -> ClusterConfig:
    """A cluster preset by name, or a cluster YAML file by path (default: ``paper``)."""
    name = str(name_or_path or DEFAULT_CLUSTER)
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise PythiaInputError(f"{p}: no such cluster file")
        doc = inputs.load_yaml(p, "cluster file")
    else:
        if name not in cluster_presets():
            raise PythiaInputError(f"unknown cluster {name!r}; known: {', '.join(cluster_presets())} (or a path to a YAML file)")
        text = resources.files("pythia.sim").joinpath(f"data/clusters/{name}.yaml").read_text()
        doc = inputs.parse_yaml(text, f"cluster preset {name}")
    return parse_cluster(doc.value, doc.source, doc)


@dataclass(frozen=True)
class SimOptions:
    """Options of one simulation run.

    Attributes:
        seed: seeds one ``numpy.random.Generator`` per component (policies that draw).
        fast_forward: advance decode-only stretches in closed form (exactly as stepping).
        sample_interval_s: period of the per-replica time series.
        check_invariants: check KV conservation at every iteration (slow; tests).
        progress: show a progress bar on stderr (``None``: only for long runs on a terminal).
        max_sim_s: stop the clock here (``None``: run until every job ends).
        kv_index: ``auto`` keeps a pool whose cache policy takes no actions as extents of hash
            chains (``pythia.sim.kvextents``) and other pools block by block; ``blocks`` keeps
            every pool block by block (same results, slower; tests compare the two).
    """

    seed: int = 0
    fast_forward: bool = True
    sample_interval_s: float = 1.0
    check_invariants: bool = False
    progress: bool | None = None
    max_sim_s: float | None = None
    kv_index: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sample_interval_s <= 0:
            raise PythiaInputError(f"option sample_interval_s={self.sample_interval_s} must be > 0")
        if self.kv_index not in ("auto", "blocks"):
            raise PythiaInputError(f"option kv_index={self.kv_index!r} must be 'auto' or 'blocks'")
        if self.max_sim_s is not None and self.max_sim_s <= 0:
            raise PythiaInputError(f"option max_sim_s={self.max_sim_s} must be > 0")
