"""The workflow-state service: one per deployment, shared by every router, replica and autoscaler.

It owns the policy objects a system names for the cluster level, built once by
:meth:`pythia.policy.systems.System.build`: the predictor (the workflow service), the router
and the autoscaler, exactly the objects the simulator hosts (one of each for all pools). The
ingress reports each call's life (issued, finished) to it, the request router of every
ingress replica asks it to route through :meth:`WorkflowState.route`, replicas report their
stats to it, and the autoscaling policy asks it for each pool's target. So routers on
different ingress replicas see the same jobs and share one router state, as in the
simulator. The scheduler and cache policies run inside each engine (the vLLM plugin).

Plain Python: :mod:`pythia.serve.ray_host.app` wraps it as a named Ray actor.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from typing import Any, Mapping, Sequence

import numpy as np

from pythia.policy.base import Policies
from pythia.policy.systems import System, load_system
from pythia.serve.ray_host.views import CallView, StatsPool, StatsReplica, cached_prefix

MAX_TIMESERIES = 200_000


def _override(kind: str, name: str) -> tuple[str, dict[str, Any]]:
    """The policy ``name`` of ``kind`` with its parameters: those of the system ``name`` when
    there is one (``--router pythia`` is Pythia's router as ``baselines/pythia.yaml`` sets it,
    ``--router sglang`` SGLang's), else the registry policy with its defaults."""
    from pythia.policy.systems import known_systems

    if name in known_systems():
        return load_system(name).policies[kind]
    return (name, {})


def build_policies(system: str | System, router: str | None = None, autoscaler: str | None = None) -> tuple[System, Policies]:
    """A system's policies, with the router or autoscaler replaced (see :func:`_override`)."""
    sys_ = load_system(system) if not isinstance(system, System) else system
    pol = dict(sys_.policies)
    if router is not None and router != pol["router"][0]:
        pol["router"] = _override("router", router)
    if autoscaler is not None and autoscaler != pol["autoscaler"][0]:
        pol["autoscaler"] = _override("autoscaler", autoscaler)
    sys_ = replace(sys_, policies=pol)
    return sys_, sys_.build()


class WorkflowState:
    """The run's predictor, router and autoscaler, and what the host reports to them.

    Args:
        system: a system name or path (``baselines/<name>.yaml``).
        pools: ``name -> (min_replicas, max_replicas, model)`` of every pool.
        router / autoscaler: registry names overriding the system's.
        job_idle_timeout_s: a job with no call in flight for this long is ended.
        seed: seed of the policies' generators.
        clock: the time source (seconds); wall clock by default, so ``now`` is comparable across processes.
    """

    def __init__(self, system: str | System, pools: Mapping[str, tuple[int, int, str]], router: str | None = None,
                 autoscaler: str | None = None, job_idle_timeout_s: float = 120.0, seed: int = 0,
                 clock: Any = time.time) -> None:
        self.system, self.policies = build_policies(system, router, autoscaler)
        for i, pol in enumerate((self.policies.router, self.policies.autoscaler)):
            pol.set_rng(np.random.default_rng([seed, 0x5A7E, i]))
        self.pools = {name: tuple(v) for name, v in pools.items()}
        self.clock = clock
        self.t0 = clock()
        self.job_idle_timeout_s = float(job_idle_timeout_s)
        self.replicas: dict[int, dict[str, Any]] = {}
        self.replica_ids: dict[str, int] = {}
        self.in_flight: dict[str, CallView] = {}
        self.job_live: Counter[str] = Counter()
        self.job_last: dict[str, float] = {}
        self.job_done: set[str] = set()
        self.replica_of: dict[str, int] = {}
        self.routed_to: dict[str, int] = {}  # in-flight calls by request id -> the replica chosen
        self._hash_sets: dict[int, tuple[Any, frozenset[int]]] = {}  # replica id -> (report key, its hashes)
        self.calls_per_replica: Counter[int] = Counter()
        self.counters: Counter[str] = Counter()
        self.replicas_started: dict[int, tuple[str, float]] = {}
        self.replica_failures: list[tuple[int, float, str]] = []
        self.timeseries: list[dict[str, Any]] = []
        self.targets: list[dict[str, Any]] = []

    def now(self) -> float:
        """Seconds since this service started."""
        return self.clock() - self.t0

    # ------------------------------------------------------------------ calls (from the ingress)

    def call_issued(self, rec: Mapping[str, Any]) -> None:
        """A call reached the ingress (before routing): a new job starts with its first call."""
        now = self.now()
        view = CallView(rec, arrival_s=now)
        pred = self.policies.predictor
        if view.job_id not in pred.jobs and view.job_id not in self.job_done:
            pred.job_started(view.job_id, view.workflow_type, view.workflow_id, now)
            self.counters["jobs_started"] += 1
        pred.call_issued(view, now)
        self.in_flight[view.key] = view
        self.job_live[view.job_id] += 1
        self.job_last[view.job_id] = now
        self.counters["calls_issued"] += 1
        self.counters["annotated" if rec.get("annotated") else "unannotated"] += 1
        self._sweep(now)

    def call_finished(self, request_id: str, output_tokens: int, ok: bool, replica_id: int | None = None,
                      last_call: bool = False, retries: int = 0) -> None:
        """A call ended at the ingress (``ok``: its whole answer reached the client)."""
        now = self.now()
        view = self.in_flight.pop(request_id, None)
        self.routed_to.pop(request_id, None)
        if view is None:
            return
        view.num_output_tokens = int(output_tokens)
        view.num_computed_tokens = view.prompt_tokens + view.num_output_tokens
        self.policies.predictor.call_finished(view, now)
        self.counters["calls_finished" if ok else "calls_failed"] += 1
        self.counters["calls_retried"] += int(retries > 0)
        if replica_id is not None:
            self.replica_of[request_id] = int(replica_id)
            self.calls_per_replica[int(replica_id)] += int(ok)
        self.job_live[view.job_id] -= 1
        self.job_last[view.job_id] = now
        if last_call and self.job_live[view.job_id] <= 0:
            self._end_job(view.job_id, now)

    def note_malformed(self) -> None:
        """A request's annotation was malformed (it is served unannotated)."""
        self.counters["malformed_annotations"] += 1

    def _end_job(self, job_id: str, now: float) -> None:
        self.policies.predictor.job_ended(job_id, now)
        self.job_live.pop(job_id, None)
        self.job_last.pop(job_id, None)
        self.job_done.add(job_id)
        self.counters["jobs_ended"] += 1

    def _sweep(self, now: float) -> None:
        idle = [j for j, t in self.job_last.items() if self.job_live[j] <= 0 and now - t > self.job_idle_timeout_s]
        for j in idle:
            self._end_job(j, now)

    # ------------------------------------------------------------------ replicas

    def allocate_replica(self, unique_id: str, pool: str) -> int:
        """A small integer id for the Serve replica ``unique_id`` (the policies' ``replica_id``)."""
        rid = self.replica_ids.get(unique_id)
        if rid is None:
            rid = self.replica_ids[unique_id] = len(self.replica_ids)
        return rid

    def replica_started(self, replica_id: int, pool: str) -> None:
        """A replica's engine became healthy."""
        self.replicas_started[int(replica_id)] = (pool, self.now())

    def replica_failed(self, replica_id: int, reason: str) -> None:
        """A replica's engine died (Serve then replaces the replica)."""
        self.replica_failures.append((int(replica_id), self.now(), reason))
        st = self.replicas.get(int(replica_id))
        if st is not None:
            st["state"] = "down"

    def report_replica(self, stats: Mapping[str, Any]) -> None:
        """A replica's latest stats (the same it publishes as routing stats)."""
        now = self.now()
        rid = int(stats["replica_id"])
        if self.replicas.get(rid, {}).get("state") == "down":
            return
        self.replicas[rid] = dict(stats)
        if len(self.timeseries) < MAX_TIMESERIES:
            self.timeseries.append({
                "t_s": now, "wall": self.clock(), "replica": rid, "pool": stats["pool"], "state": stats["state"],
                "num_running": stats["num_running"], "num_waiting": stats["num_waiting"],
                "kv_usage": stats["kv_usage"], "total_blocks": stats["total_blocks"],
                **{k: stats[k] for k in ("prefix_cache_queries", "prefix_cache_hits", "preemptions",
                                         "requests_finished", "prompt_tokens", "generation_tokens") if k in stats},
            })

    # ------------------------------------------------------------------ routing and scaling

    def route(self, rec: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]],
              routed: Mapping[int, Sequence[Mapping[str, Any]]] | None = None) -> int:
        """Index into ``candidates`` (replica stats) of the replica the router policy picks for the call ``rec``.

        ``routed``: per replica id, calls the asking router sent there since the stats were
        taken. Replicas reported down are left out while another remains.
        """
        now = self.now()
        live = [i for i, c in enumerate(candidates) if self.replicas.get(int(c["replica_id"]), {}).get("state") != "down"]
        idx = live or list(range(len(candidates)))
        if len(idx) == 1:
            self.counters["routed_single"] += 1
            self.routed_to[str(rec["request_id"])] = int(candidates[idx[0]]["replica_id"])
            return idx[0]
        view = self.in_flight.get(str(rec["request_id"])) or CallView(rec, arrival_s=now)
        cached, sets = {}, {}
        for i in idx:
            sets[i] = self._hash_set(candidates[i])
            cached[i] = cached_prefix(sets[i], view.block_hashes)
        replicas = [StatsReplica(candidates[i], (routed or {}).get(int(candidates[i]["replica_id"]), ()),
                                 prefix_for=(view.block_hashes, cached[i]), cached_set=sets[i]) for i in idx]
        t = time.perf_counter()
        j = self.policies.router.route(view, replicas, now)
        self.counters["route_ns"] += int((time.perf_counter() - t) * 1e9)
        self.counters["routed"] += 1
        if not 0 <= j < len(replicas):
            raise RuntimeError(f"router {self.policies.router.name} returned replica index {j} of {len(replicas)}")
        self.routed_to[str(rec["request_id"])] = int(candidates[idx[j]]["replica_id"])
        return idx[j]

    def _hash_set(self, stats: Mapping[str, Any]) -> frozenset[int]:
        """The replica's published prefix hashes as a set, built once per report (not per decision)."""
        h = stats.get("cached_hashes") or ()
        key = (stats.get("t"), len(h), h[0] if h else None, h[-1] if h else None)
        rid = int(stats["replica_id"])
        got = self._hash_sets.get(rid)
        if got is None or got[0] != key:
            got = self._hash_sets[rid] = (key, frozenset(int(x) for x in h))
        return got[1]

    def calls_in_flight_on(self, replica_id: int) -> int:
        """Calls routed to ``replica_id`` (last routing of each) that have not ended."""
        rid = int(replica_id)
        return sum(1 for k, r in self.routed_to.items() if r == rid and k in self.in_flight)

    def target(self, pool: str, running_replicas: Sequence[int], starting: int) -> int:
        """The autoscaler's target replica count of ``pool``, clamped to its bounds."""
        now = self.now()
        lo, hi, model = self.pools[pool]
        running = {int(r) for r in running_replicas}
        views = [StatsReplica(s) for rid, s in sorted(self.replicas.items())
                 if s["pool"] == pool and (not running or rid in running) and s["state"] != "down"]
        view = StatsPool(pool, model, lo, hi, views, starting=max(0, int(starting)))
        want = int(self.policies.autoscaler.target(view, now))
        got = max(lo, min(hi, want))
        self.targets.append({"t_s": now, "pool": pool, "target": got, "up": view.num_up, "starting": view.num_starting})
        return got

    def target_for(self, pool: str, running_unique_ids: Sequence[str], starting: int) -> int:
        """:meth:`target` with Serve's replica ids (the autoscaling policy's form)."""
        ids = [self.replica_ids[u] for u in running_unique_ids if u in self.replica_ids]
        return self.target(pool, ids, starting)

    def scaling(self) -> tuple[bool, float]:
        """(whether the system scales, seconds between its decisions)."""
        return self.autoscaler_enabled, self.autoscaler_interval_s

    @property
    def autoscaler_interval_s(self) -> float:
        """Seconds between the autoscaler's decisions."""
        return float(getattr(self.policies.autoscaler, "interval_s", 10.0))

    @property
    def autoscaler_enabled(self) -> bool:
        """Whether the system scales at all (``none`` does not)."""
        return self.policies.autoscaler.name != "none" and bool(getattr(self.policies.autoscaler, "enabled", True))

    # ------------------------------------------------------------------ reading back

    def replica_engines(self) -> dict[int, dict[str, Any]]:
        """Per replica: pool, state, engine pid and URL (from its latest report)."""
        return {rid: {k: s.get(k) for k in ("pool", "state", "engine_pid", "engine_url")} for rid, s in self.replicas.items()}

    def snapshot(self) -> dict[str, Any]:
        """Counters and records for a run's summary and tables."""
        return {
            "system": self.system.name,
            "router": self.policies.router.name,
            "autoscaler": self.policies.autoscaler.name,
            "predictor": self.policies.predictor.describe(),
            "counters": dict(self.counters),
            "in_flight": len(self.in_flight),
            "replicas_started": {str(k): v for k, v in self.replicas_started.items()},
            "replica_failures": [list(f) for f in self.replica_failures],
            "calls_per_replica": {str(k): v for k, v in sorted(self.calls_per_replica.items())},
            "replica_of": dict(self.replica_of),
            "timeseries": list(self.timeseries),
            "targets": list(self.targets),
        }
