"""Build, deploy and tear down Pythia's Ray Serve application.

:class:`RayHost` starts Ray on this machine (``ray.init`` with an explicit ``num_cpus``, no
dashboard, on the loopback address) or joins the cluster ``RAY_ADDRESS`` names, creates the
workflow-state actor, starts Serve's HTTP proxy on 127.0.0.1, deploys one deployment per
pool (replicas of :class:`~pythia.serve.ray_host.replica.EngineReplica`, routed by
:class:`~pythia.serve.ray_host.router.PythiaRequestRouter`, scaled by
:class:`~pythia.serve.ray_host.autoscale.PythiaAutoscalingPolicy` unless the autoscaler is
``none``) and the ingress, and waits until every replica's engine is healthy.
:meth:`RayHost.stop` removes the application and every engine process it started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

from pythia.serve.ray_host.config import APP_NAME, NAMESPACE, STATE_ACTOR, HostConfig, PoolSpec
from pythia.serve.ray_host.ingress import PythiaIngress
from pythia.serve.ray_host.replica import EngineReplica
from pythia.serve.ray_host.router import PythiaRequestRouter
from pythia.serve.ray_host.state import WorkflowState

log = logging.getLogger("pythia.serve.ray")
AUTOSCALING_POLICY = "pythia.serve.ray_host.autoscale:PythiaAutoscalingPolicy"


def pool_deployment(config: HostConfig, pool: PoolSpec, log_dir: Path, autoscale_interval_s: float | None) -> Any:
    """The Serve deployment of one pool (bound, ready to pass to the ingress)."""
    seqs = int(config.engine_flags.get("max_num_seqs", 256))
    options: dict[str, Any] = dict(
        name=pool.deployment,
        max_ongoing_requests=max(16, 2 * seqs),
        max_queued_requests=-1,
        ray_actor_options={"num_cpus": 0, **({"num_gpus": 1} if config.backend == "ray-vllm" else {})},
        health_check_period_s=config.health_check_period_s,
        health_check_timeout_s=max(10.0, 3 * config.health_check_period_s),
        graceful_shutdown_timeout_s=10.0,
        request_router_config=RequestRouterConfig(
            request_router_class=PythiaRequestRouter,
            request_router_kwargs={"state_actor": STATE_ACTOR, "namespace": NAMESPACE},
            request_routing_stats_period_s=config.stats_period_s,
            request_routing_stats_timeout_s=5.0,
        ),
    )
    if autoscale_interval_s is not None and pool.max_replicas > pool.min_replicas:
        options["autoscaling_config"] = {
            "min_replicas": pool.min_replicas, "max_replicas": pool.max_replicas,
            "initial_replicas": pool.replicas, "upscale_delay_s": 0.0, "downscale_delay_s": 0.0,
            "policy": {"policy_function": AUTOSCALING_POLICY,
                       "policy_kwargs": {"pool": pool.name, "interval_s": autoscale_interval_s}},
        }
    else:
        options["num_replicas"] = pool.replicas
    return serve.deployment(EngineReplica).options(**options).bind(config, pool, str(log_dir))


def build_app(config: HostConfig, log_dir: Path, autoscale_interval_s: float | None) -> Any:
    """The application: the ingress bound to one deployment per pool."""
    pools = {p.name: pool_deployment(config, p, log_dir, autoscale_interval_s) for p in config.pools}
    ingress = serve.deployment(PythiaIngress).options(
        name="ingress", num_replicas=1, max_ongoing_requests=4096, max_queued_requests=-1,
        ray_actor_options={"num_cpus": 0},
    )
    return ingress.bind(config, pools)


class RayHost:
    """Pythia deployed on Ray Serve (a context manager: ``with RayHost(cfg, dir) as host: ...``).

    Args:
        config: the deployment's settings.
        log_dir: where engine logs and plugin files go (made absolute: replicas run elsewhere).
        address: a Ray cluster to join (default ``$RAY_ADDRESS``; local Ray when unset).
    """

    def __init__(self, config: HostConfig, log_dir: str | Path, address: str | None = None) -> None:
        self.config = config
        self.log_dir = Path(log_dir).resolve()
        self.address = address if address is not None else os.environ.get("RAY_ADDRESS") or None
        self.state: Any = None
        self.started_ray = False
        self.healthy_after_s: float | None = None
        self._engines: dict[int, dict[str, Any]] = {}

    @property
    def base_url(self) -> str:
        """The ingress, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.config.http_port}"

    def start(self) -> float:
        """Start Ray (or join it), deploy, wait for every replica; returns the seconds it took."""
        t0 = time.monotonic()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no report leaves the machine
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, namespace=NAMESPACE, log_to_driver=False)
            else:
                ray.init(num_cpus=self.config.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                         namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
                self.started_ray = True
        pools = {p.name: (p.min_replicas, p.max_replicas, p.model) for p in self.config.pools}
        actor = ray.remote(WorkflowState).options(name=STATE_ACTOR, namespace=NAMESPACE, num_cpus=0, max_restarts=0)
        self.state = actor.remote(self.config.system, pools, self.config.router, self.config.autoscaler,
                                  self.config.job_idle_timeout_s)
        enabled, interval = ray.get(self.state.scaling.remote())
        serve.start(http_options={"host": "127.0.0.1", "port": self.config.http_port})
        app = build_app(self.config, self.log_dir, interval if enabled else None)
        serve.run(app, name=APP_NAME, route_prefix="/")
        self._wait_ingress(deadline_s=60.0)
        self.healthy_after_s = time.monotonic() - t0
        self._engines = self.engines()
        return self.healthy_after_s

    def _wait_ingress(self, deadline_s: float) -> None:
        end = time.monotonic() + deadline_s
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/health", timeout=2.0).status_code == 200:
                    return
            if time.monotonic() > end:
                raise RuntimeError(f"the ingress at {self.base_url} did not answer within {deadline_s:.0f} s")
            time.sleep(0.25)

    # ------------------------------------------------------------------ reading and faults

    def snapshot(self) -> dict[str, Any]:
        """The workflow-state actor's counters and records."""
        return ray.get(self.state.snapshot.remote())

    def ingress_stats(self) -> dict[str, Any]:
        """The ingress's counters (``GET /pythia/stats``)."""
        return httpx.get(self.base_url + "/pythia/stats", timeout=10.0).json()

    def engines(self) -> dict[int, dict[str, Any]]:
        """Per replica id: pool, state, engine pid and URL, as last reported (remembered across calls)."""
        for rid, e in ray.get(self.state.replica_engines.remote()).items():
            self._engines[int(rid)] = e
        return dict(self._engines)

    def kill_engine(self, replica_id: int) -> None:
        """Kill one replica's engine process group (a crash, for fault tests): Serve's health check finds it."""
        pid = self.engines()[replica_id]["engine_pid"]
        os.killpg(int(pid), signal.SIGKILL)

    # ------------------------------------------------------------------ teardown

    def stop(self) -> None:
        """Delete the application (or shut Ray down if this host started it) and kill any engine left."""
        with contextlib.suppress(Exception):
            if self.state is not None:
                self.engines()
        with contextlib.suppress(Exception):
            if self.started_ray:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        with contextlib.suppress(Exception):
            if self.state is not None:
                ray.kill(self.state)
        # A replica killed without its __del__ leaves its engine behind: stop every one reported.
        for e in self._engines.values():
            pid = e.get("engine_pid")
            if pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(pid), signal.SIGKILL)
        if self.started_ray:
            with contextlib.suppress(Exception):
                ray.shutdown()
        self.state = None

    def __enter__(self) -> "RayHost":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def app_builder(args: dict[str, Any]) -> Any:
    """The application from a Serve config file's ``args`` (``serve deploy``/``serve run`` on a cluster).

    ``args``: ``backend`` (default ``ray-vllm``), ``system``, optional ``router`` and
    ``autoscaler``, ``pools`` (a list of :class:`PoolSpec` fields), optional ``role_pools``
    (a list of ``[workflow_type, agent_role, pool]``), ``max_model_len``, ``log_dir``. The
    workflow-state actor is created (detached, named) when the cluster lacks it.
    """
    from pythia.policy.systems import load_system
    from pythia.serve.engines import engine_flags

    system = str(args.get("system", "pythia"))
    pools = tuple(PoolSpec(**{k: (tuple(v) if k == "aliases" else v) for k, v in p.items()}) for p in args["pools"])
    cfg = HostConfig(
        backend=str(args.get("backend", "ray-vllm")), pools=pools, system=system, router=args.get("router"),
        autoscaler=args.get("autoscaler"), role_pools={(t, r): p for t, r, p in args.get("role_pools", [])},
        engine_flags=engine_flags(load_system(system)), plugin=bool(args.get("plugin", True)),
        max_model_len=args.get("max_model_len"),
    )
    try:
        state = ray.get_actor(STATE_ACTOR, namespace=NAMESPACE)
    except ValueError:
        spec = {p.name: (p.min_replicas, p.max_replicas, p.model) for p in pools}
        state = ray.remote(WorkflowState).options(name=STATE_ACTOR, namespace=NAMESPACE, lifetime="detached",
                                                  num_cpus=0).remote(system, spec, cfg.router, cfg.autoscaler)
    enabled, interval = ray.get(state.scaling.remote())
    return build_app(cfg, Path(str(args.get("log_dir", "/tmp/pythia-ray"))), interval if enabled else None)
