"""A real run on Ray Serve: deploy Pythia's Ray host, replay a workload through its ingress, write tables.

``pythia run --backend ray-vllm-cpu|ray-vllm`` is a thin shell over :func:`ray_real_run`. It
turns the cluster YAML the simulator reads into the host's pools (one Serve deployment per
pool, its replicas vLLM servers with the Pythia plugin), maps each role of the workload to
its pool by the model its calls name (``ClusterConfig.pool_for``, as the simulator maps
them), starts Ray and deploys (:class:`pythia.serve.ray_host.app.RayHost`), replays with the
replay client of :mod:`pythia.bench.replay` against the ingress, tears everything down and
writes the simulator's tables. ``summary.json`` adds ``replicas_used``, ``replica_restarts``,
``lost_calls``, ``calls_per_replica`` and the ingress's and router's counters.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pythia.bench.replay import ReplayOptions, run_replay, warm_up
from pythia.bench.run import TS_COLUMNS, _system_uses_plugin
from pythia.bench.tokens import TokenSpace
from pythia.errors import PythiaInputError
from pythia.policy.systems import load_system
from pythia.regime import regime_summary
from pythia.results import RUN_TABLES, SUMMARY_FILE, write_run
from pythia.serve.engines import engine_flags
from pythia.serve.ray_host.config import HostConfig, PoolSpec
from pythia.serve.server import free_port
from pythia.sim.config import ClusterConfig, load_cluster
from pythia.workflow.trace import Trace

log = logging.getLogger("pythia.bench")
DEFAULT_CLUSTER = {"ray-vllm-cpu": "cpu-pools"}


@dataclass
class RayRunOptions:
    """One real run of a workload on Pythia's Ray Serve host.

    Attributes:
        backend: ``ray-vllm-cpu`` or ``ray-vllm``.
        model: the local model folder every pool serves, unless ``pool_models`` names one.
        out: the run folder (engine logs under ``engines/``).
        cluster: a cluster preset name or YAML path (``cpu-pools`` on ``ray-vllm-cpu``).
        system: the system name (``baselines/<name>.yaml``).
        router / autoscaler: registry names overriding the system's.
        pool_models: pool name -> model folder.
        plugin: load the Pythia scheduler plugin (default: when the system's scheduler or
            cache is not stock vLLM's, as ``pythia run`` decides).
        max_model_len / num_blocks / gap_scale / max_duration_s / max_calls / start_timeout_s:
            as for ``pythia run``.
        extra_engine_args: appended to every engine command.
        kill_replica_after_s: fault injection: this long into the replay, kill the engine of
            the busiest replica of the first pool with two or more (Serve must replace it).
        num_cpus: logical CPUs of a local Ray.
        warmup: a few warm-up calls through the ingress before the replay.
    """

    backend: str
    model: str
    out: Path
    cluster: str | None = None
    system: str = "vllm"
    router: str | None = None
    autoscaler: str | None = None
    pool_models: dict[str, str] = field(default_factory=dict)
    plugin: bool | None = None
    max_model_len: int | None = None
    num_blocks: int | None = None
    gap_scale: float = 1.0
    max_duration_s: float = 3600.0
    max_calls: int = 100_000
    start_timeout_s: float = 300.0
    extra_engine_args: list[str] = field(default_factory=list)
    kill_replica_after_s: float | None = None
    num_cpus: int = 4
    warmup: bool = True
    progress: bool = False


def cluster_for(opts: RayRunOptions) -> tuple[ClusterConfig, str]:
    """The cluster of a run and where it came from (for messages)."""
    name = opts.cluster or DEFAULT_CLUSTER.get(opts.backend)
    if name is None:
        raise PythiaInputError(f"option --cluster is required with --backend {opts.backend} (a preset or a YAML file)")
    cluster = load_cluster(name)
    where = str(name) if Path(str(name)).suffix in (".yaml", ".yml") else f"cluster preset {name}"
    return cluster, where


def host_config(trace: Trace, opts: RayRunOptions, http_port: int = 0) -> HostConfig:
    """The host's settings for a run; every user error is raised here, before anything starts."""
    cluster, where = cluster_for(opts)
    unknown = sorted(set(opts.pool_models) - {p.name for p in cluster.pools})
    if unknown:
        raise PythiaInputError(f"option --pool-model names pool(s) {', '.join(unknown)} that {where} lacks")
    pools = tuple(
        PoolSpec(name=p.name, model=opts.pool_models.get(p.name, opts.model), replicas=p.replicas,
                 min_replicas=max(1, p.min_replicas), max_replicas=p.max_replicas, aliases=p.aliases,
                 num_blocks=opts.num_blocks or (p.kv_cache_tokens // 16 or None), where=where)
        for p in cluster.pools
    )
    sysobj = load_system(opts.system)
    role_pools: dict[tuple[str, str], str] = {}
    for job in trace.jobs:
        for c in job.calls:
            key = (job.workflow_type, c.agent_role)
            if key not in role_pools:
                try:
                    role_pools[key] = cluster.pool_for(c.model).name
                except PythiaInputError as e:
                    raise PythiaInputError(f"{where}: {e}") from None
    plugin = opts.plugin if opts.plugin is not None else _system_uses_plugin(sysobj)
    return HostConfig(
        backend=opts.backend, pools=pools, system=opts.system, router=opts.router, autoscaler=opts.autoscaler,
        role_pools=role_pools, engine_flags=engine_flags(sysobj), plugin=plugin, max_model_len=opts.max_model_len,
        extra_engine_args=tuple(opts.extra_engine_args), http_port=http_port or free_port(),
        start_timeout_s=opts.start_timeout_s, num_cpus=opts.num_cpus,
    )


def _killer(host: Any, after_s: float, stop: threading.Event, out: dict[str, Any], wait_call_s: float = 30.0) -> None:
    """Fault injection: kill an engine of the first pool with two replicas or more.

    From ``after_s`` on, it waits (up to ``wait_call_s``) until a call routed to that replica
    is in flight, so the kill cuts a call (before its first token or mid-stream) rather than
    landing between calls; ``out["cut_call"]`` says whether one was in flight.
    """
    if stop.wait(after_s):
        return
    import ray  # the host is up, so Ray is importable

    engines = host.engines()
    pools: dict[str, list[int]] = {}
    for rid, e in engines.items():
        if e.get("state") == "up":
            pools.setdefault(e["pool"], []).append(rid)
    for p in host.config.pools:
        ids = pools.get(p.name, [])
        if len(ids) >= 2:
            victim = sorted(ids)[0]
            cut = False
            deadline = time.monotonic() + wait_call_s
            while not stop.is_set() and time.monotonic() < deadline:
                if ray.get(host.state.calls_in_flight_on.remote(victim)) > 0:
                    cut = True
                    break
                time.sleep(0.005)
            if stop.is_set():
                return
            host.kill_engine(victim)
            out.update(replica=victim, pool=p.name, at_s=after_s, cut_call=cut)
            log.warning("fault injection: killed the engine of replica %d (pool %s)", victim, p.name)
            return


def timeseries_frame(rows: list[dict[str, Any]], wall0: float) -> pd.DataFrame:
    """The replicas' reported stats as the simulator's timeseries (one row per replica and report)."""
    out = []
    for r in sorted(rows, key=lambda r: (r["wall"], r["replica"])):
        row = {c: math.nan for c in TS_COLUMNS}
        row.update({k: v for k, v in r.items() if k in row})
        row.update(t_s=r["wall"] - wall0, replica=r["replica"], pool=r["pool"], state=r["state"], source="engine",
                   batch_size=r["num_running"], queue_len=r["num_waiting"])
        if r.get("total_blocks"):
            row["kv_used_blocks"] = r["kv_usage"] * r["total_blocks"]
            row["kv_free_blocks"] = (1.0 - r["kv_usage"]) * r["total_blocks"]
        out.append(row)
    return pd.DataFrame.from_records(out, columns=list(TS_COLUMNS))


def restarts(snapshot: dict[str, Any]) -> int:
    """Replicas started to replace one whose engine died (a failure followed by a start in its pool)."""
    started = sorted((t, pool) for pool, t in snapshot["replicas_started"].values())
    pool_of = {int(k): v[0] for k, v in snapshot["replicas_started"].items()}
    n = 0
    used: set[int] = set()
    for rid, t_fail, _ in snapshot["replica_failures"]:
        pool = pool_of.get(int(rid))
        for i, (t, p) in enumerate(started):
            if p == pool and t > t_fail and i not in used:
                used.add(i)
                n += 1
                break
    return n


def ray_real_run(trace: Trace, opts: RayRunOptions) -> dict[str, Any]:
    """Deploy, wait for health, replay ``trace`` through the ingress, tear down, write the run folder."""
    from pythia.serve.ray_host.app import RayHost

    cfg = host_config(trace, opts)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / SUMMARY_FILE).unlink(missing_ok=True)
    space = TokenSpace.for_model(cfg.pools[0].model)
    wall_start = time.monotonic()
    fault: dict[str, Any] = {}
    with RayHost(cfg, opts.out / "engines") as host:
        healthy_s = host.healthy_after_s
        warm = warm_up(host.base_url, cfg.pools[0].model, space, opts.max_model_len) if opts.warmup else 0
        stop = threading.Event()
        killer = None
        if opts.kill_replica_after_s is not None:
            killer = threading.Thread(target=_killer, args=(host, opts.kill_replica_after_s, stop, fault), daemon=True)
            killer.start()
        wall0 = time.time()
        try:
            result = run_replay(trace, ReplayOptions(
                base_url=host.base_url, model=cfg.pools[0].model, tokens=space, gap_scale=opts.gap_scale,
                max_context=opts.max_model_len, max_duration_s=opts.max_duration_s, max_calls=opts.max_calls,
                pool="ray", progress=opts.progress,
            ))
        finally:
            stop.set()
            if killer is not None:
                killer.join(timeout=5.0)
        time.sleep(2 * cfg.stats_period_s)  # the last reports
        snap = host.snapshot()
        if fault:
            # Serve replaces the replica whose engine died; wait for its successor to be up.
            end = time.monotonic() + opts.start_timeout_s
            while restarts(snap) < 1 and time.monotonic() < end:
                time.sleep(2.0)
                snap = host.snapshot()
        ingress = host.ingress_stats()
    calls = result.calls
    replica_of = snap["replica_of"]
    for rid, (job_id, call_id) in result.request_ids.items():
        m = (calls["job_id"] == job_id) & (calls["call_id"] == call_id)
        if rid in replica_of:
            calls.loc[m, "replica"] = int(replica_of[rid])
    pool_of_role = {k[1]: v for k, v in cfg.role_pools.items()}
    calls["pool"] = [pool_of_role.get(r, cfg.pools[0].name) for r in calls["agent_role"]]
    ts = timeseries_frame(snap["timeseries"], wall0)
    summary = result.summary
    block = int(cfg.engine_flags.get("block_size", 16))
    summary.update(regime_summary(
        calls, result.jobs, ts, block_size=block, simulated_s=float(summary.get("duration_s", math.nan)),
        capacity_blocks={p.name: p.num_blocks for p in cfg.pools if p.num_blocks}, tp_by_pool={p.name: 1 for p in cfg.pools},
    ))
    counters = snap["counters"]
    unresolved = int(ingress.get("accepted", 0)) - int(ingress.get("finished", 0)) - int(ingress.get("failed_reported", 0))
    failed = int(summary.get("calls_failed", 0))
    summary.update({
        "system": snap["system"], "backend": opts.backend, "router": snap["router"], "autoscaler": snap["autoscaler"],
        "cluster": opts.cluster or DEFAULT_CLUSTER.get(opts.backend), "plugin": cfg.plugin,
        "engine_healthy_after_s": healthy_s, "warmup_requests": warm,
        "replicas_used": len(snap["replicas_started"]),
        "replica_restarts": restarts(snap),
        "replica_failures": len(snap["replica_failures"]),
        # A call is lost when the client got no whole answer and no failure was reported for it.
        "lost_calls": max(0, failed - int(ingress.get("failed_reported", 0))) + max(0, unresolved),
        "calls_per_replica": snap["calls_per_replica"],
        "ingress": ingress,
        "malformed_annotations": int(ingress.get("malformed_annotations", 0)),
        "routing_decisions": int(counters.get("routed", 0)),
        "routing_policy_us_mean": (counters.get("route_ns", 0) / 1e3 / counters["routed"]) if counters.get("routed") else math.nan,
        "fault": fault,
        "run_wall_s": time.monotonic() - wall_start,
    })
    write_run(opts.out, dict(zip(RUN_TABLES, (calls, result.jobs, ts))), summary)
    return summary


def parse_pool_models(values: list[str]) -> dict[str, str]:
    """``POOL=DIR`` options as a mapping (each folder must exist)."""
    out: dict[str, str] = {}
    for v in values:
        pool, sep, path = v.partition("=")
        if not sep or not pool or not path:
            raise PythiaInputError(f"option --pool-model={v!r} must be POOL=MODEL_FOLDER")
        if not Path(path).exists():
            raise PythiaInputError(f"option --pool-model={v!r}: no such folder {path}")
        out[pool] = str(Path(path).resolve())
    return out


__all__ = ["RayRunOptions", "cluster_for", "host_config", "parse_pool_models", "ray_real_run"]
