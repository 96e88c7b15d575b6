"""A vLLM server's ``/metrics`` read with prometheus_client's text parser.

What a replica publishes about its engine for routing and scaling: calls running and waiting,
KV usage and capacity (``vllm:cache_config_info`` carries ``num_gpu_blocks`` and
``block_size`` as labels), the size of a CPU KV tier where the Pythia plugin reports one,
and the counters a run's tables record. vLLM 0.32 names
(``vllm/v1/metrics/loggers.py``); counters carry the ``_total`` suffix on their samples.
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# field -> (sample name, how samples of several label sets combine)
GAUGES: dict[str, tuple[str, str]] = {
    "num_running": ("vllm:num_requests_running", "sum"),
    "num_waiting": ("vllm:num_requests_waiting", "sum"),
    "kv_usage": ("vllm:kv_cache_usage_perc", "max"),
    "prefix_cache_queries": ("vllm:prefix_cache_queries_total", "sum"),
    "prefix_cache_hits": ("vllm:prefix_cache_hits_total", "sum"),
    "preemptions": ("vllm:num_preemptions_total", "sum"),
    "requests_finished": ("vllm:request_success_total", "sum"),
    "prompt_tokens": ("vllm:prompt_tokens_total", "sum"),
    "generation_tokens": ("vllm:generation_tokens_total", "sum"),
    # The Pythia plugin's: the CPU KV tier behind the engine (absent without one).
    "host_capacity_blocks": ("pythia:host_tier_capacity_blocks", "max"),
}


def parse_engine_metrics(text: str) -> dict[str, Any]:
    """The engine's state from a Prometheus text exposition (missing metrics are absent, never guessed)."""
    samples: dict[str, list[float]] = {}
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not math.isfinite(s.value):
                continue
            samples.setdefault(s.name, []).append(float(s.value))
            if s.name == "vllm:cache_config_info" and "num_gpu_blocks" in s.labels:
                try:
                    out["total_blocks"] = int(float(s.labels["num_gpu_blocks"]))
                    out["block_size"] = int(float(s.labels.get("block_size", "16")))
                except ValueError:
                    pass
    for field, (name, how) in GAUGES.items():
        vals = samples.get(name)
        if vals:
            out[field] = max(vals) if how == "max" else sum(vals)
    return out
