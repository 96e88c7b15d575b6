"""Run one simulation: a system on a cluster under a workload, and write its outputs."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pythia.errors import PythiaInputError
from pythia.policy.base import Policies
from pythia.policy.systems import System, load_system
from pythia.regime import regime_summary, reuse_counters
from pythia.results import CALL_COLUMNS, JOB_COLUMNS, TIMESERIES_COLUMNS, frame, summarise, write_json, write_parquet
from pythia.sim.bounds import cached_prefix_blocks, lower_bounds
from pythia.sim.cluster import Cluster
from pythia.sim.config import ClusterConfig, SimOptions, load_cluster
from pythia.sim.costmodel import FS_PER_S, gpu_spec
from pythia.sim.events import FRONT, ISSUE, JOB, READY, STEP, TICK, EventQueue
from pythia.sim.runtime import Runtime
from pythia.workflow.trace import Trace

TICK_SAMPLE, TICK_SCALE, TICK_CACHE = 0, 1, 2
PROGRESS_MIN_JOBS = 500


@dataclass
class SimResult:
    """Tables and summary of one run."""

    calls: pd.DataFrame
    jobs: pd.DataFrame
    timeseries: pd.DataFrame
    summary: dict[str, Any]
    replicas: list[dict[str, Any]] = field(default_factory=list)


class Simulation:
    """Assembles cluster, policies and runtime for one trace and runs the event loop."""

    def __init__(self, system: System, cluster_config: ClusterConfig, trace: Trace, options: SimOptions,
                 policies: Policies | None = None) -> None:
        self.system, self.trace, self.options = system, trace, options
        self.policies = policies if policies is not None else system.build()
        for i, p in enumerate((self.policies.scheduler, self.policies.cache, self.policies.router, self.policies.autoscaler)):
            p.set_rng(np.random.default_rng([options.seed, 0x5137, i]))  # one seeded generator per component
        self.events = EventQueue()
        flags = system.engine
        multiple = int(gpu_spec(cluster_config.gpu).get("kv_block_multiple", 1))
        if flags.block_size % multiple:
            # As the real launch does (pythia.serve.engines): the backend's attention on this
            # hardware only takes block sizes that are multiples of ``multiple``.
            flags = dataclasses.replace(flags, block_size=-(-flags.block_size // multiple) * multiple)
        self.cluster = Cluster(cluster_config, flags, self.policies, self.events,
                               fast_forward=options.fast_forward, check_invariants=options.check_invariants,
                               kv_index=options.kv_index)
        for job in trace.jobs:  # unknown model names fail before the run, listing the known ones
            for c in job.calls:
                self.cluster.pool_for(c.model)
        self.runtime = Runtime(trace, self.cluster, self.events)
        self.cluster.connect(self.runtime)
        self.ts_rows: list[tuple[Any, ...]] = []
        self.stalled = False

    def _sample(self, now: int) -> None:
        t = now / FS_PER_S
        for pool in self.cluster.pools.values():
            for r in pool.replicas_all:
                if r.state == "stopped":
                    continue
                batch, queue, used, cached, free = r.peek_counts(now)
                self.ts_rows.append((t, pool.name, r.replica_id, r.state, batch, queue, used, cached, free, -1, -1))
            self.ts_rows.append((t, pool.name, -1, "pool", -1, len(pool.pending), -1, -1, -1, pool.num_up, pool.num_starting))

    def run(self) -> SimResult:
        """Run to the end of the workload (or ``max_sim_s``) and build the tables."""
        opts = self.options
        ev, cluster, runtime = self.events, self.cluster, self.runtime
        n_jobs = len(self.trace.jobs)
        # Before the timed run, while little else is in memory: the bound needs only the
        # trace, the engine flags and the cost models, never the schedule.
        # One bound for every system: each prompt block a lookup can reach counts as cached,
        # which no schedule can beat, not even one that precomputes the true next prompt.
        precompute = True
        costs = {name: pool.cost for name, pool in cluster.pools.items()}
        bound = dict(zip((j.job_id for j in self.trace.jobs),
                         lower_bounds(self.trace, cluster.config, cluster.flags, costs, precompute=precompute)))
        # What each call could reuse from other calls (the bound's "reusable" prefix), for the
        # cross-call hit rate and the recomputed prefill tokens.
        reusable_blocks = cached_prefix_blocks(self.trace, cluster.config, cluster.flags, precompute=False)[1]
        reusable = {(job.job_id, i): n * cluster.flags.block_size
                    for job, blocks in zip(self.trace.jobs, reusable_blocks) for i, n in enumerate(blocks)}
        wall0 = time.perf_counter()
        runtime.start()
        sample_fs = round(opts.sample_interval_s * FS_PER_S)
        ev.push(0, TICK, TICK_SAMPLE)
        scaler = self.policies.autoscaler
        if scaler.enabled:
            ev.push(0, TICK, TICK_SCALE)
        if cluster.cache_acts:
            ev.push(0, TICK, TICK_CACHE)
        max_fs = round(opts.max_sim_s * FS_PER_S) if opts.max_sim_s else None
        show = opts.progress if opts.progress is not None else (n_jobs >= PROGRESS_MIN_JOBS and sys.stderr.isatty())
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=n_jobs, unit="job", desc=f"sim {self.system.name}", file=sys.stderr, leave=False)
        last_ended = 0
        now = 0
        on_step, on_issue, on_job = cluster.on_step, runtime.on_issue, runtime.on_job_event
        while ev and runtime.jobs_ended < n_jobs:
            t, kind, a, b, _, payload = ev.pop()
            if max_fs is not None and t > max_fs:
                break
            now = t
            cluster.now = t
            if kind == STEP:
                on_step(t, a, payload)
            elif kind == ISSUE:
                on_issue(t, a, b)
            elif kind == JOB:
                on_job(t, a)
            elif kind == FRONT:
                runtime.on_front(t, payload)
            elif kind == READY:
                cluster.on_ready(t, a)
            elif a == TICK_SAMPLE:
                self._sample(t)
                if bar is not None and runtime.jobs_ended != last_ended:
                    bar.update(runtime.jobs_ended - last_ended)
                    last_ended = runtime.jobs_ended
                if not ev.pending_work():
                    self.stalled = True  # nothing can happen any more: calls stuck in queues
                    break
                ev.push(t + sample_fs, TICK, TICK_SAMPLE)
            elif a == TICK_SCALE:
                cluster.autoscale(t)
                ev.push(t + round(scaler.interval_s * FS_PER_S), TICK, TICK_SCALE)
            else:
                cluster.cache_tick(t)
                ev.push(t + sample_fs, TICK, TICK_CACHE)
        if bar is not None:
            bar.update(runtime.jobs_ended - last_ended)
            bar.close()
        self._sample(now)
        unfinished = runtime.unfinished(now)
        for st in list(runtime.states.values()):
            runtime.job_rows.append((st.job.job_id, st.job.workflow_type, st.job.workflow_id, st.start_fs / FS_PER_S,
                                     float("nan"), float("nan"), len(st.job.calls), st.done, False, 0, 0.0))
        wall = time.perf_counter() - wall0
        job_rows = [row + (bound[row[0]],) for row in runtime.job_rows]
        calls = frame(runtime.call_rows, CALL_COLUMNS).sort_values(["job_id", "call_id"], kind="stable").reset_index(drop=True)
        jobs = frame(job_rows, JOB_COLUMNS).sort_values("job_id", kind="stable").reset_index(drop=True)
        ts = frame(self.ts_rows, TIMESERIES_COLUMNS)
        simulated = now / FS_PER_S
        summary = summarise(calls, jobs, jobs_submitted=runtime.next_job, simulated_s=simulated, wall_s=wall)
        summary.update(reuse_counters(calls, reusable))
        bs = cluster.flags.block_size
        summary.update(regime_summary(
            calls, jobs, ts, block_size=bs, simulated_s=simulated,
            capacity_blocks={name: pool.cost.kv_blocks(bs) * pool.config.replicas for name, pool in cluster.pools.items()},
            tp_by_pool={name: pool.config.tp for name, pool in cluster.pools.items()},
        ))
        counters = cluster.counters()
        summary.update({
            "system": self.system.name,
            "cluster": cluster.config.name,
            "jobs_in_workload": n_jobs,
            "seed": opts.seed,
            "fast_forward": opts.fast_forward,
            "iterations": sum(c["iterations"] for c in counters),
            "fast_forwarded_iterations": sum(c["fast_forwarded_iterations"] for c in counters),
            "fast_forwarded_prefill_iterations": sum(c["fast_forwarded_prefill_iterations"] for c in counters),
            "kv_evictions": sum(c["evictions"] for c in counters),
            "pins_yielded": sum(c["pins_yielded"] for c in counters),
            "precompute_yielded": sum(c["precompute_yielded"] for c in counters),
            "clamped_calls": runtime.clamped,
            "rejected_calls": runtime.rejected,
            "unfinished_calls": unfinished,
            "stalled": self.stalled,
            # What the lower bound takes as cached (docs/simulator.md, Lower bound).
            "lower_bound_cache": "precompute" if precompute else "reusable",
            "stopped_at_max_sim_s": max_fs is not None and runtime.jobs_ended < n_jobs and not self.stalled,
        })
        return SimResult(calls, jobs, ts, summary, counters)


def write_outputs(result: SimResult, out: str | Path) -> Path:
    """Write the four output files into ``out`` (created if needed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(result.calls, out / "calls.parquet")
    write_parquet(result.jobs, out / "jobs.parquet")
    write_parquet(result.timeseries, out / "timeseries.parquet")
    write_json(result.summary, out / "summary.json")
    return out


def run_simulation(
    system: str | System,
    workload: str | Path | Trace,
    *,
    cluster: str | Path | ClusterConfig | None = None,
    arrival: dict[str, Any] | None = None,
    concurrency: int | None = None,
    rate: float | None = None,
    seed: int = 0,
    jobs: int | None = None,
    max_gap_s: float | None = 60.0,
    gap_scale: float = 1.0,
    out: str | Path | None = None,
    options: SimOptions | None = None,
) -> SimResult:
    """Simulate ``system`` serving ``workload`` on ``cluster``; write outputs to ``out`` if given.

    ``concurrency`` (closed loop) or ``rate`` (open-loop Poisson) or a full ``arrival``
    description replace the workload's own arrival process; ``gap_scale`` multiplies every
    call's think/tool gap.
    """
    from pythia.workflow.load import LoadOptions, apply_arrival, load_workload, scale_gaps

    if sum(x is not None for x in (arrival, concurrency, rate)) > 1:
        raise PythiaInputError("give at most one of arrival, concurrency and rate")
    if concurrency is not None:
        arrival = {"process": "closed", "concurrency": concurrency}
    elif rate is not None:
        arrival = {"process": "poisson", "rate": rate}
    sys_ = system if isinstance(system, System) else load_system(system)
    cfg = cluster if isinstance(cluster, ClusterConfig) else load_cluster(cluster)
    if isinstance(workload, Trace):
        trace = workload
        if jobs is not None:
            trace = Trace(jobs=trace.jobs[:jobs], arrival=trace.arrival, meta=trace.meta)
        if arrival is not None:
            trace = apply_arrival(trace, arrival, seed)
        if gap_scale != 1.0:
            trace = scale_gaps(trace, gap_scale)
    else:
        trace = load_workload(workload, LoadOptions(seed=seed, jobs=jobs, arrival=arrival, max_gap_s=max_gap_s,
                                                    gap_scale=gap_scale))
    opts = options or SimOptions(seed=seed)
    if options is not None and options.seed != seed:
        opts = SimOptions(**{**options.__dict__, "seed": seed})
    result = Simulation(sys_, cfg, trace, opts).run()
    result.summary["gap_scale"] = gap_scale
    if out is not None:
        write_outputs(result, out)
    return result
