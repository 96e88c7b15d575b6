"""The scheduler plugin's Prometheus metrics, on vLLM's own ``/metrics`` endpoint.

The plugin runs in vLLM's engine-core process; ``/metrics`` is served by the API server
(vLLM 0.32: ``vllm/entrypoints/serve/instrumentator/metrics.py`` mounts
``make_asgi_app(get_prometheus_registry())``). vLLM's own engine metrics cross that gap as
``SchedulerStats`` inside the engine's outputs, recorded by stat loggers in the API server
(``vllm/v1/metrics/loggers.py``); that message has no field for a plugin. So each metric
reaches the served registry by one of three routes, chosen once per engine process
(:func:`metrics_route`):

``relay``
    The engine core is a child process of the API server: always so behind vLLM's OpenAI
    server, whose ``AsyncLLM`` starts it with ``make_async_mp_client`` whatever
    ``VLLM_ENABLE_V1_MULTIPROCESSING`` says (that variable only moves the model into the
    engine-core process on the CPU, and runs the offline ``LLMEngine`` in one process). The
    engine writes a snapshot of its metrics to
    ``<tmp>/pythia-metrics-<uid>-<server pid>/engine-<pid>.json`` when it starts, at most every
    ``interval_s`` while it steps, and whenever it falls idle; the ``vllm.general_plugins``
    entry point (:mod:`pythia.serve.plugin`), which vLLM runs in the API server process too,
    puts a :class:`RelayCollector` on prometheus_client's default ``REGISTRY`` (the one vLLM
    serves) that yields the snapshots of live engine processes at each scrape.
``multiprocess-dir``
    ``PROMETHEUS_MULTIPROC_DIR`` is set (vLLM sets it itself for ``--api-server-count`` > 1).
    prometheus_client then keeps every process's values in files in that directory and vLLM
    serves a ``MultiProcessCollector`` over it, so the engine core's metrics appear exactly as
    vLLM's frontend metrics do, live. Gauges use ``multiprocess_mode="mostrecent"``, as vLLM's.
``in-process``
    The scheduler runs in a process of its own making (the offline ``LLMEngine`` with
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, tests): the metrics are yielded live by the same
    collector on ``REGISTRY``, for whoever serves it.

Every metric carries vLLM's labels ``model_name`` and ``engine`` (the data-parallel rank),
so they join vLLM's own series. Counters mirror the plugin's statistics (the JSON stats
file holds the same numbers): :meth:`PluginMetrics.step` adds what changed since the last
step, so the scheduler's hooks count once, in one place.

Nothing here imports vLLM.
"""

from __future__ import annotations

import atexit
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

logger = logging.getLogger("vllm.plugins.pythia")

PREFIX = "pythia:"
LABELS = ("model_name", "engine")
ROUTES = ("relay", "multiprocess-dir", "in-process")
# Seconds the plugin's own work takes per engine step: tens of microseconds to a second.
POLICY_STEP_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)


def metrics_route() -> str:
    """How this process's plugin metrics reach the API server's ``/metrics`` (see the module doc)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return "multiprocess-dir"
    if multiprocessing.parent_process() is None:
        return "in-process"
    return "relay"


def relay_dir(server_pid: int) -> Path:
    """The folder where engine processes of the API server ``server_pid`` leave their snapshots."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"pythia-metrics-{uid}-{server_pid}"


class _Families:
    """The metric families of this process, made once in a private registry."""

    def __init__(self) -> None:
        reg = self.registry = CollectorRegistry(auto_describe=False)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(PREFIX + name, doc, LABELS, registry=reg, multiprocess_mode="mostrecent")

        self.pinned_blocks = gauge("pinned_blocks", "KV blocks the plugin holds pinned.")
        self.pin_budget_blocks = gauge("pin_budget_blocks", "Most KV blocks pins may hold (pin_budget_fraction of the pool).")
        self.pin_budget_usage = gauge("pin_budget_usage_perc", "Pinned blocks over the pin budget (1 = budget full).")
        self.pinned_block_hits = Counter(
            PREFIX + "pinned_block_hits", "Prefix-cache hits of newly admitted requests on blocks that were pinned (blocks).",
            LABELS, registry=reg)
        self.requests = Counter(
            PREFIX + "requests", "Requests the plugin received, by annotation: annotated, unannotated or malformed "
            "(a malformed or oversized annotation is served as unannotated).", (*LABELS, "annotation"), registry=reg)
        self.malformed_hints = Counter(
            PREFIX + "malformed_hints", "Requests with a pythia_hint of the wrong shape (the hint was dropped).",
            LABELS, registry=reg)
        self.hook_errors = Counter(
            PREFIX + "hook_errors", "Policy calls that raised (the stock decision was used).", LABELS, registry=reg)
        self.cache_actions = Counter(
            PREFIX + "cache_actions", "Cache actions of the hosted policy, by outcome: pin, pin_missed (block not "
            "resident), pin_refused (over the budget), unpin, demote, unsupported.", (*LABELS, "action"), registry=reg)
        self.pins_released_under_pressure = Counter(
            PREFIX + "pins_released_under_pressure", "Pins dropped because the engine preempted, or because a waiting request could not "
            "be admitted while nothing ran.", LABELS, registry=reg)
        self.jobs_started = Counter(
            PREFIX + "jobs_started", "Jobs (workflow ids) whose first call reached the engine.", LABELS, registry=reg)
        self.jobs_ended = Counter(
            PREFIX + "jobs_ended", "Jobs reported ended to the workflow service, by reason: last_call or idle.",
            (*LABELS, "reason"), registry=reg)
        self.learned_calls = Counter(
            PREFIX + "learned_calls", "Finished calls without prompt hints that the workflow service learned from by "
            "their block hashes (role instructions, conversations, continuations).", LABELS, registry=reg)
        self.learned_roles = gauge(
            "learned_role_instructions", "Roles (workflow type, role) whose shared leading blocks were learned from block hashes.")
        self.learned_instruction_blocks = gauge(
            "learned_instruction_blocks", "KV blocks of the learned role instructions, summed over roles.")
        self.learned_conversations = gauge(
            "learned_conversations", "Agent conversations of live jobs followed by block hashes.")
        self.host_tier_capacity = gauge(
            "host_tier_capacity_blocks", "Size of vLLM's CPU KV tier behind this engine (OffloadingConnector), in KV "
            "blocks; absent without one. Routers read it as the replica's host tier.")
        self.host_tier_retained = gauge(
            "host_tier_retained_blocks", "Blocks Pythia retains in vLLM's CPU KV tier (PythiaHostCachePolicy).")
        self.host_tier_held = gauge(
            "host_tier_held_chunks", "Retained chunks resident in vLLM's CPU KV tier and evictable (evicted last).")
        self.host_tier_blocks = Counter(
            PREFIX + "host_tier_blocks", "Retention in vLLM's CPU KV tier, by action: retain (blocks Pythia's offload "
            "and prefetch actions asked to keep), release (job ended or bound reached), retained_evicted (retained "
            "chunks evicted because nothing else could go).", (*LABELS, "action"), registry=reg)
        self.policy_step = Histogram(
            PREFIX + "policy_step_seconds", "Time per engine step spent in the plugin outside vLLM's own schedule(): "
            "queue refresh, victim choice, cache hooks and their actions, workflow-service checks.",
            LABELS, buckets=POLICY_STEP_BUCKETS, registry=reg)


_FAMILIES: _Families | None = None
_FAMILIES_LOCK = threading.Lock()


def _families() -> _Families:
    global _FAMILIES
    with _FAMILIES_LOCK:
        if _FAMILIES is None:
            _FAMILIES = _Families()
        return _FAMILIES


# (metric attribute, extra label value or None, "stats" | "pins", statistic) mirrored by counters
_MIRRORED: tuple[tuple[str, str | None, str, str], ...] = (
    ("requests", "annotated", "stats", "annotated"),
    ("requests", "unannotated", "stats", "unannotated"),
    ("requests", "malformed", "stats", "malformed_annotations"),
    ("malformed_hints", None, "stats", "malformed_hints"),
    ("hook_errors", None, "stats", "hook_errors"),
    ("pinned_block_hits", None, "stats", "pinned_block_hits"),
    ("jobs_started", None, "stats", "jobs_started"),
    ("jobs_ended", "last_call", "stats", "jobs_ended_last_call"),
    ("jobs_ended", "idle", "stats", "jobs_ended_idle"),
    ("cache_actions", "pin", "pins", "pins_applied"),
    ("cache_actions", "pin_missed", "pins", "pin_misses"),
    ("cache_actions", "pin_refused", "pins", "pins_refused_budget"),
    ("cache_actions", "unpin", "pins", "unpins"),
    ("cache_actions", "demote", "pins", "demotes"),
    ("cache_actions", "unsupported", "pins", "unsupported_actions"),
    ("pins_released_under_pressure", None, "pins", "released_under_pressure"),
    ("learned_calls", None, "learned", "observed_calls"),
)
# The same for the retention in vLLM's CPU tier: series only where the plugin steers one.
_MIRRORED_HOST: tuple[tuple[str, str | None, str, str], ...] = (
    ("host_tier_blocks", "retain", "host", "retain_requests"),
    ("host_tier_blocks", "release", "host", "released"),
    ("host_tier_blocks", "retained_evicted", "host", "retained_evicted"),
)


@dataclass
class _Mirror:
    child: Any
    source: str
    attr: str
    last: int = 0


class PluginMetrics:
    """One engine's series: counters kept in step with the plugin's statistics, gauges, the step histogram.

    Args:
        model_name: vLLM's ``served_model_name`` (label ``model_name``).
        engine: the data-parallel rank (label ``engine``).
        interval_s: how often counters are mirrored (and snapshot on the ``relay`` route) while
            the engine steps; always when it falls idle.
        route: one of :data:`ROUTES` (default: :func:`metrics_route`).
    """

    def __init__(self, model_name: str, engine: int = 0, interval_s: float = 1.0, route: str | None = None) -> None:
        self.route = route or metrics_route()
        if self.route not in ROUTES:
            raise ValueError(f"metrics route {self.route!r} is unknown; choose one of {', '.join(ROUTES)}")
        fam = self.families = _families()
        labels = (str(model_name), str(engine))
        self._labels = labels
        self._mirrors = [
            _Mirror(getattr(fam, name).labels(*labels, *(() if extra is None else (extra,))), source, attr)
            for name, extra, source, attr in _MIRRORED
        ]
        self._pinned = fam.pinned_blocks.labels(*labels)
        self._budget = fam.pin_budget_blocks.labels(*labels)
        self._usage = fam.pin_budget_usage.labels(*labels)
        self._policy_step = fam.policy_step.labels(*labels)
        self._host_gauges: tuple[tuple[Any, str], ...] = ()
        self.host: Any = None  # a PythiaHostCachePolicy whose counters are mirrored (attach_host)
        self._learned_gauges = ((fam.learned_roles.labels(*labels), "roles_with_instructions"),
                                (fam.learned_instruction_blocks.labels(*labels), "instruction_blocks"),
                                (fam.learned_conversations.labels(*labels), "conversations"))
        self._gauges: tuple[int, int] = (-1, -1)
        self.interval_s = interval_s
        self._sync_due = 0.0
        self._path: Path | None = None
        if self.route == "in-process":
            install_relay(local=fam.registry)
        elif self.route == "relay":
            parent = multiprocessing.parent_process()
            self._path = relay_dir(parent.pid if parent is not None and parent.pid else os.getppid()) / f"engine-{os.getpid()}.json"
            self.snapshot()  # the series are on /metrics from the start, at zero

    def set_host_capacity(self, blocks: int) -> None:
        """Publish the size of the engine's CPU KV tier (blocks); only called where there is one."""
        self.families.host_tier_capacity.labels(*self._labels).set(int(blocks))

    def attach_host(self, host: Any) -> None:
        """Mirror the retention counters of ``host`` (a :class:`pythia.serve.host_tier.PythiaHostCachePolicy`)."""
        fam, labels = self.families, self._labels
        self.host = host
        self._host_gauges = ((fam.host_tier_retained.labels(*labels), "retained"), (fam.host_tier_held.labels(*labels), "held"))
        self._mirrors += [_Mirror(getattr(fam, name).labels(*labels, extra), source, attr)
                          for name, extra, source, attr in _MIRRORED_HOST]

    def describe(self) -> str:
        """One line: where the metrics appear."""
        if self.route == "relay":
            return f"relayed to the API server's /metrics through {self._path}"
        if self.route == "multiprocess-dir":
            return "in PROMETHEUS_MULTIPROC_DIR, served by vLLM's multiprocess collector on /metrics"
        return "on this process's Prometheus registry, served on /metrics"

    def step(self, policy_s: float, stats: Any, pins: Any, pinned_blocks: int, budget_blocks: int, now: float,
             learned: Callable[[], Mapping[str, int]] | None = None) -> None:
        """After an engine step: observe the plugin's time; every ``interval_s``, mirror the counters and snapshot.

        Mirroring costs about 10 us, observing 1 us; steps of a loaded engine take a millisecond
        or more, so the counters follow at most ``interval_s`` late under load and exactly at idle.
        """
        self._policy_step.observe(policy_s)
        if now >= self._sync_due:
            self._sync_due = now + self.interval_s
            self.sync(stats, pins, pinned_blocks, budget_blocks, learned)
            if self._path is not None:
                self.snapshot()

    def sync(self, stats: Any, pins: Any, pinned_blocks: int, budget_blocks: int,
             learned: Callable[[], Mapping[str, int]] | None = None) -> None:
        """Add to each counter what its statistic gained since the last call; set the gauges.

        ``learned`` returns the workflow service's counts of what it learned from block hashes
        (:meth:`pythia.policy.block_memory.BlockMemory.describe`), when it keeps them.
        """
        facts = learned() if learned is not None else {}
        host = self.host
        sources = {"stats": stats, "pins": pins, "host": host.host_stats if host is not None else None}
        for m in self._mirrors:
            if m.source == "learned":
                v = int(facts.get(m.attr, m.last))
                if v > m.last:
                    m.child.inc(v - m.last)
                m.last = v
                continue
            v = int(getattr(sources[m.source], m.attr))
            if v != m.last:
                if v > m.last:
                    m.child.inc(v - m.last)
                m.last = v
        if (pinned_blocks, budget_blocks) != self._gauges:
            self._gauges = (pinned_blocks, budget_blocks)
            self._pinned.set(pinned_blocks)
            self._budget.set(budget_blocks)
            self._usage.set(pinned_blocks / budget_blocks if budget_blocks else 0.0)
        for child, key in self._learned_gauges:
            if key in facts:
                child.set(facts[key])
        if host is not None:
            for child, attr in self._host_gauges:
                child.set(getattr(host, attr))

    def idle(self, stats: Any, pins: Any, pinned_blocks: int, budget_blocks: int,
             learned: Callable[[], Mapping[str, int]] | None = None) -> None:
        """When the engine falls idle: mirror the counters and snapshot now, so a scrape sees the final values."""
        self.sync(stats, pins, pinned_blocks, budget_blocks, learned)
        if self._path is not None:
            self.snapshot()

    def snapshot(self) -> None:
        """Write this process's series for the relay (``relay`` route only); a write that fails is logged once."""
        if self._path is None:
            return
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            payload = {"pid": os.getpid(), "time": time.time(), "families": _dump(self.families.registry.collect())}
            tmp = self._path.with_name(self._path.name + ".tmp")
            tmp.write_text(json.dumps(payload, separators=(",", ":")))
            os.replace(tmp, self._path)
        except OSError as e:
            logger.warning("Pythia: cannot write metrics for the API server to %s (%s); relay off", self._path, e)
            self._path = None

    def close(self) -> None:
        """Remove this process's snapshot (its series leave /metrics with the engine)."""
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None


def count_pinned_hits(is_pinned: Any, block_hashes: Sequence[Any], cached_tokens: int, block_size: int) -> int:
    """How many of a request's prefix-cache hit blocks (its first ``cached_tokens``) are pinned."""
    n = min(len(block_hashes), max(0, cached_tokens) // max(1, block_size))
    return sum(1 for i in range(n) if is_pinned(block_hashes[i]))


# --------------------------------------------------------------------------- the API server's side


def _dump(families: Iterable[Metric]) -> list[dict[str, Any]]:
    return [{"name": f.name, "documentation": f.documentation, "type": f.type, "unit": f.unit,
             "samples": [[s.name, s.labels, s.value] for s in f.samples]} for f in families]


def _merge(out: dict[str, Metric], name: str, documentation: str, typ: str, unit: str,
           samples: Iterable[tuple[str, dict[str, str], float]]) -> None:
    m = out.get(name)
    if m is None:
        m = out[name] = Metric(name, documentation, typ, unit)
    elif m.type != typ:
        return  # two engines disagree on a family's type (mixed plugin versions): keep the first
    for sname, labels, value in samples:
        m.add_sample(sname, dict(labels), float(value))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RelayCollector:
    """Yields the plugin's series at each scrape: this process's own, and live engine processes' snapshots.

    Put on ``REGISTRY`` once per process by :func:`install_relay`. A snapshot of an engine
    process that has exited is removed.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.local: CollectorRegistry | None = None

    def describe(self) -> list[Metric]:
        """Nothing up front: the families are known only at scrape time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The merged families (one per name, samples of every engine)."""
        out: dict[str, Metric] = {}
        if self.local is not None:
            for f in self.local.collect():
                _merge(out, f.name, f.documentation, f.type, f.unit, ((s.name, s.labels, s.value) for s in f.samples))
        for path in sorted(self.directory.glob("engine-*.json")) if self.directory.is_dir() else ():
            try:
                pid = int(path.stem.split("-", 1)[1])
            except ValueError:
                continue
            if not _alive(pid):
                path.unlink(missing_ok=True)
                continue
            try:
                payload = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # replaced while read: the next scrape has it
            for f in payload.get("families", ()):
                _merge(out, f["name"], f["documentation"], f["type"], f.get("unit", ""), f["samples"])
        yield from out.values()


_RELAY: RelayCollector | None = None
_RELAY_LOCK = threading.Lock()


def install_relay(local: CollectorRegistry | None = None) -> RelayCollector | None:
    """Put the :class:`RelayCollector` on prometheus_client's ``REGISTRY`` (once per process).

    Called by the ``vllm.general_plugins`` entry point in every top-level vLLM process, and by
    an in-process engine with its own registry (``local``). Skipped where
    ``PROMETHEUS_MULTIPROC_DIR`` is set: vLLM then serves the multiprocess directory instead
    of ``REGISTRY``. Returns the collector, or ``None`` when skipped.
    """
    global _RELAY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    with _RELAY_LOCK:
        if _RELAY is None:
            directory = relay_dir(os.getpid())
            _RELAY = RelayCollector(directory)
            REGISTRY.register(_RELAY)
            atexit.register(shutil.rmtree, directory, True)
        if local is not None:
            _RELAY.local = local
        return _RELAY
