"""Metrics sampled during real runs: an engine's Prometheus ``/metrics`` and NVML GPU counters.

Both samplers are threads that take one sample per interval until stopped (or until their
sample cap), appending plain dict rows that :mod:`pythia.bench.replay` turns into the
``timeseries`` table.

Engine metric names are those of vLLM 0.32 (``vllm/v1/metrics/loggers.py``: counters are
exposed with a ``_total`` suffix) and SGLang 0.5.23 (``sglang/srt/observability/
metrics_collector.py``); :data:`ENGINE_METRICS` maps both to one set of columns.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from typing import Any, Callable

from pythia.serve.server import http_get

log = logging.getLogger("pythia.bench")

# column -> (metric names, how label sets combine); the first name present wins.
ENGINE_METRICS: dict[str, tuple[tuple[str, ...], str]] = {
    "num_running": (("vllm:num_requests_running", "sglang:num_running_reqs"), "sum"),
    "num_waiting": (("vllm:num_requests_waiting", "sglang:num_queue_reqs"), "sum"),
    "kv_usage": (("vllm:kv_cache_usage_perc", "sglang:token_usage"), "max"),
    "prefix_cache_queries": (("vllm:prefix_cache_queries_total",), "sum"),
    "prefix_cache_hits": (("vllm:prefix_cache_hits_total",), "sum"),
    "prefix_hit_rate": (("sglang:cache_hit_rate",), "max"),
    "preemptions": (("vllm:num_preemptions_total", "sglang:num_retracted_requests_total"), "sum"),
    "requests_finished": (("vllm:request_success_total",), "sum"),
    "prompt_tokens": (("vllm:prompt_tokens_total", "sglang:prompt_tokens_total"), "sum"),
    "cached_prompt_tokens": (("vllm:prompt_tokens_cached_total", "sglang:cached_tokens_total"), "sum"),
    "generation_tokens": (("vllm:generation_tokens_total", "sglang:generation_tokens_total"), "sum"),
}
ENGINE_COLUMNS = tuple(ENGINE_METRICS)
GPU_COLUMNS = ("gpu_util", "gpu_mem_used_mib", "gpu_mem_total_mib", "gpu_power_w", "gpu_sm_clock_mhz")

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_prometheus(text: str) -> dict[str, list[tuple[str, float]]]:
    """Samples of a Prometheus text exposition: name -> [(label string, value)]."""
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _LINE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.setdefault(m.group(1), []).append((m.group(2) or "", value))
    return out


def engine_row(samples: dict[str, list[tuple[str, float]]]) -> dict[str, float]:
    """The :data:`ENGINE_METRICS` columns of one scrape (NaN where the engine has no such metric)."""
    row: dict[str, float] = {}
    for col, (names, how) in ENGINE_METRICS.items():
        value = math.nan
        for name in names:
            vals = [v for _, v in samples.get(name, ())]
            if vals:
                value = sum(vals) if how == "sum" else max(vals)
                break
        row[col] = value
    return row


class _Sampler(threading.Thread):
    """A daemon thread calling ``sample()`` every ``interval_s`` until stopped or capped."""

    def __init__(self, interval_s: float, max_samples: int, t0: float | None, name: str) -> None:
        super().__init__(name=name, daemon=True)
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self.max_samples = max_samples
        self.t0 = time.monotonic() if t0 is None else t0
        self.rows: list[dict[str, Any]] = []
        self._stop_event = threading.Event()

    def sample(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def run(self) -> None:
        n = 0
        while not self._stop_event.is_set() and n < self.max_samples:
            self.sample()
            n += 1
            self._stop_event.wait(self.interval_s)

    def stop(self, final_sample: bool = True) -> list[dict[str, Any]]:
        """Stop the thread (taking one last sample) and return the rows."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=10.0)
        if final_sample:
            self.sample()
        return self.rows


class PrometheusScraper(_Sampler):
    """Scrapes an engine's ``/metrics`` (loopback only) into rows of :data:`ENGINE_COLUMNS`.

    Args:
        url: the metrics URL (``http://127.0.0.1:PORT/metrics``).
        interval_s: seconds between scrapes.
        replica: the replica id written in each row.
        max_samples: cap on scrapes (a run's bound, not a tuning knob).
        t0: the run's clock origin (``time.monotonic()``); rows carry ``t_s`` from it.
    """

    def __init__(self, url: str, interval_s: float = 1.0, replica: int = 0, max_samples: int = 100_000,
                 t0: float | None = None) -> None:
        super().__init__(interval_s, max_samples, t0, "prometheus-scraper")
        self.url = url
        self.replica = replica
        self.failures = 0

    def scrape(self) -> dict[str, float] | None:
        """One scrape, or ``None`` when the engine did not answer."""
        status, body = http_get(self.url, timeout_s=max(1.0, self.interval_s))
        if status != 200:
            self.failures += 1
            return None
        return engine_row(parse_prometheus(body.decode("utf-8", "replace")))

    def sample(self) -> None:
        row = self.scrape()
        if row is not None:
            self.rows.append({"t_s": time.monotonic() - self.t0, "source": "engine", "replica": self.replica,
                              "device": -1, **row})


class NvmlSampler(_Sampler):
    """GPU utilisation, memory, power and SM clock of every device, via NVML (``nvidia-ml-py``).

    Without a GPU (or without the NVML library) it says so in one log line and records no rows.
    """

    def __init__(self, interval_s: float = 1.0, max_samples: int = 100_000, t0: float | None = None,
                 nvml: Any = None, on_unavailable: Callable[[str], None] | None = None) -> None:
        super().__init__(interval_s, max_samples, t0, "nvml-sampler")
        self._nvml = nvml
        self._handles: list[Any] = []
        self.available = False
        self.reason: str | None = None
        self._on_unavailable = on_unavailable or (lambda msg: log.warning("%s", msg))
        self._init()

    def _init(self) -> None:
        try:
            if self._nvml is None:
                import pynvml  # nvidia-ml-py

                self._nvml = pynvml
            self._nvml.nvmlInit()
            n = self._nvml.nvmlDeviceGetCount()
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
            self.available = bool(self._handles)
            if not self.available:
                self.reason = "NVML found no GPU"
        except ImportError:
            self.reason = "nvidia-ml-py is not installed"
        except Exception as e:  # noqa: BLE001 - pynvml.NVMLError and its subclasses
            self.reason = f"NVML unavailable ({type(e).__name__}: {e})"
        if not self.available:
            self._on_unavailable(f"no GPU metrics: {self.reason}; the run records no GPU rows")

    def start(self) -> None:
        """Start sampling (nothing to do without a GPU)."""
        if self.available:
            super().start()

    def stop(self, final_sample: bool = True) -> list[dict[str, Any]]:
        """Stop, take a last sample, release NVML and return the rows."""
        rows = super().stop(final_sample=final_sample and self.available)
        if self.available:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            self.available = False
        return rows

    def sample(self) -> None:
        if not self.available:
            return
        nv = self._nvml
        t = time.monotonic() - self.t0
        for i, h in enumerate(self._handles):
            util = nv.nvmlDeviceGetUtilizationRates(h)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            try:
                power = nv.nvmlDeviceGetPowerUsage(h) / 1000.0  # mW
            except Exception:  # noqa: BLE001 - some boards do not report power
                power = math.nan
            clock = nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)
            self.rows.append({
                "t_s": t, "source": "gpu", "replica": -1, "device": i,
                "gpu_util": float(util.gpu), "gpu_mem_used_mib": mem.used / 2**20,
                "gpu_mem_total_mib": mem.total / 2**20, "gpu_power_w": power, "gpu_sm_clock_mhz": float(clock),
            })
