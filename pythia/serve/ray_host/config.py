"""Typed, validated settings of one Ray Serve deployment of Pythia.

The pools come from the cluster YAML the simulator reads (``pythia run`` turns each
``PoolConfig`` into a :class:`PoolSpec`: the serving layer never imports the simulator);
the policies from a system file (``baselines/<name>.yaml``), with an optional router or
autoscaler override named on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pythia.errors import PythiaInputError
from pythia.policy import registry

BACKENDS = ("ray-vllm-cpu", "ray-vllm")
# The engine backend of pythia.serve.engines each Ray backend launches in its replicas.
ENGINE_BACKEND = {"ray-vllm-cpu": "vllm-cpu", "ray-vllm": "vllm"}
STATE_ACTOR = "pythia-workflow-state"
NAMESPACE = "pythia"
APP_NAME = "pythia"


@dataclass(frozen=True)
class PoolSpec:
    """One model pool as the Ray host deploys it (one Serve deployment).

    Attributes:
        name: the pool's name (the deployment is ``pool-<name>``).
        model: the local model folder its vLLM servers load.
        replicas: replicas started at deployment.
        min_replicas / max_replicas: the autoscaler's bounds.
        aliases: model names (as clients send them) that map to this pool.
        num_blocks: force each replica's KV pool to this many blocks (``--num-gpu-blocks-override``).
        where: the file and field the pool came from, for messages.
    """

    name: str
    model: str
    replicas: int = 1
    min_replicas: int = 1
    max_replicas: int = 1
    aliases: tuple[str, ...] = ()
    num_blocks: int | None = None
    where: str = ""

    def __post_init__(self) -> None:
        loc = self.where or f"pool {self.name}"
        if self.replicas < 1:
            raise PythiaInputError(
                f"{loc}: field pools.{self.name}.replicas={self.replicas} must be at least 1: "
                "a Ray Serve pool starts with a replica to serve its calls"
            )
        if not 1 <= self.min_replicas <= self.replicas <= self.max_replicas:
            raise PythiaInputError(
                f"{loc}: fields pools.{self.name}.min_replicas/replicas/max_replicas must satisfy "
                f"1 <= min <= replicas <= max (got {self.min_replicas}, {self.replicas}, {self.max_replicas})"
            )

    @property
    def deployment(self) -> str:
        """The Serve deployment's name."""
        return f"pool-{self.name}"


@dataclass(frozen=True)
class HostConfig:
    """Everything one Ray Serve deployment of Pythia needs.

    Attributes:
        backend: ``ray-vllm-cpu`` or ``ray-vllm``.
        pools: the model pools, in cluster-file order (the first is the default pool).
        system: the system name (``baselines/<name>.yaml``) or path; its predictor, router and
            autoscaler run in the workflow-state actor, its scheduler and cache in each engine.
        router / autoscaler: override the system's router or autoscaler (registry names).
        role_pools: ``(workflow_type, agent_role) -> pool`` (from the workload's models), used
            when a call's ``model`` field names no pool.
        engine_flags: the system's engine flags (``EngineFlags`` fields).
        plugin: load the Pythia scheduler plugin in every engine.
        max_model_len: the engines' context length.
        extra_engine_args: appended to every engine command.
        kv_cache_gib: KV space of a CPU engine.
        http_port: the ingress's loopback port.
        stats_period_s: how often replicas publish their routing stats (``record_routing_stats``).
        health_check_period_s: how often Serve checks a replica (a dead engine is found within it).
        start_timeout_s: deadline of an engine's start.
        retry_before_first_token: attempts for a call that failed before its first token.
        retry_deadline_s: how long a call may wait for a replica across those attempts.
        job_idle_timeout_s: a job with no call for this long is ended in the predictor.
        engine_argv: a replacement engine command (``{port}`` is substituted), for the load
            test's declared fake engine only; ``None`` runs vLLM.
        num_cpus: the logical CPUs given to a local Ray (``ray.init(num_cpus=...)``).
    """

    backend: str
    pools: tuple[PoolSpec, ...]
    system: str = "vllm"
    router: str | None = None
    autoscaler: str | None = None
    role_pools: dict[tuple[str, str], str] = field(default_factory=dict)
    engine_flags: dict[str, Any] = field(default_factory=dict)
    plugin: bool = True
    max_model_len: int | None = None
    extra_engine_args: tuple[str, ...] = ()
    kv_cache_gib: int = 1
    http_port: int = 8000
    stats_period_s: float = 0.5
    health_check_period_s: float = 2.0
    start_timeout_s: float = 300.0
    retry_before_first_token: int = 8
    retry_deadline_s: float = 180.0
    job_idle_timeout_s: float = 120.0
    engine_argv: tuple[str, ...] | None = None
    num_cpus: int = 4

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise PythiaInputError(f"option --backend={self.backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
        if not self.pools:
            raise PythiaInputError("the cluster has no pool to deploy")
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise PythiaInputError(f"pool names repeat: {', '.join(names)}")
        from pythia.policy.systems import known_systems

        systems = known_systems()
        for kind, name in (("router", self.router), ("autoscaler", self.autoscaler)):
            if name is not None and name not in registry.REGISTRY[kind] and name not in systems:
                raise PythiaInputError(
                    f"option --{kind}={name!r} is unknown; known: {', '.join(registry.known(kind))}, "
                    f"or a system's ({', '.join(systems)})"
                )
        for key, pool in self.role_pools.items():
            if pool not in names:
                raise PythiaInputError(f"role {key[1]!r} of {key[0]!r} maps to pool {pool!r}, which the cluster lacks")
        if not 0 < self.http_port < 65536:
            raise PythiaInputError(f"option http_port={self.http_port} is not a TCP port")
        for name in ("stats_period_s", "health_check_period_s", "start_timeout_s", "retry_deadline_s",
                     "job_idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise PythiaInputError(f"option {name}={getattr(self, name)} must be positive")
        if self.retry_before_first_token < 0 or self.num_cpus < 1:
            raise PythiaInputError("options retry_before_first_token must be >= 0 and num_cpus >= 1")

    @property
    def engine_backend(self) -> str:
        """The engine backend of :func:`pythia.serve.engines.build_launch` the replicas run."""
        return ENGINE_BACKEND[self.backend]

    def pool(self, name: str) -> PoolSpec:
        """The pool called ``name``."""
        return next(p for p in self.pools if p.name == name)
