"""A reactive autoscaler: Kubernetes HPA arithmetic on an engine metric, as KEDA drives it.

The vLLM production stack scales engine replicas with KEDA reading a Prometheus metric of
the engines (for example ``vllm:num_requests_waiting``); KEDA feeds the Horizontal Pod
Autoscaler, which every sync period (15 s) computes

    desired = ceil(current_replicas * current_metric / target_metric)

leaves the count alone when the ratio is within the tolerance (0.1), scales up at once and
scales down only to the highest recommendation of the stabilisation window (300 s), the
cooldown that keeps it from flapping. It reacts to load that is already there: it knows
nothing about the calls a workflow is about to send.

Metrics: ``queue`` = calls waiting per up replica (``vllm:num_requests_waiting``);
``kv`` = share of KV blocks in use per up replica (``vllm:gpu_cache_usage_perc``).
"""

from __future__ import annotations

import math
from collections import deque

from pythia.policy.base import Autoscaler
from pythia.policy.baseline_common import check, kv_used_share, positive
from pythia.policy.views import PoolView

METRICS = ("queue", "kv")


class ReactiveAutoscaler(Autoscaler):
    """HPA-style target tracking of a per-replica engine metric with a scale-down cooldown.

    Args:
        metric: ``queue`` or ``kv`` (see the module docstring).
        target: the per-replica value the HPA tracks (waiting calls, or KV share in (0, 1]).
        interval_s: the HPA sync period.
        tolerance: no change while ``|metric / target - 1| <= tolerance``.
        scale_down_window_s: scale-down stabilisation window (the cooldown).
    """

    name = "reactive"
    enabled = True

    def __init__(self, metric: str = "queue", target: float = 5.0, interval_s: float = 15.0,
                 tolerance: float = 0.1, scale_down_window_s: float = 300.0) -> None:
        check(metric in METRICS, self.name, "metric", f"{metric!r} is unknown; known: {', '.join(METRICS)}")
        self.metric = metric
        self.target_value = positive(self.name, "target", target)
        check(metric != "kv" or self.target_value <= 1.0, self.name, "target", "a KV share must be in (0, 1]")
        self.interval_s = positive(self.name, "interval_s", interval_s)
        self.tolerance = positive(self.name, "tolerance", tolerance, allow_zero=True)
        self.scale_down_window_s = positive(self.name, "scale_down_window_s", scale_down_window_s, allow_zero=True)
        self._history: dict[str, deque[tuple[float, int]]] = {}

    def observe(self, pool: PoolView) -> float | None:
        """The metric averaged over the pool's up replicas (``None`` when none is up)."""
        ups = [r for r in pool.replicas if r.state == "up"]
        if not ups:
            return None
        if self.metric == "queue":
            return sum(r.num_waiting for r in ups) / len(ups)
        return sum(kv_used_share(r) for r in ups) / len(ups)

    def target(self, pool: PoolView, now: float) -> int:
        current = pool.num_up + pool.num_starting
        value = self.observe(pool)
        if value is None or current == 0:
            desired = max(current, pool.min_replicas, 1)
        else:
            ratio = value / self.target_value
            desired = current if abs(ratio - 1.0) <= self.tolerance else math.ceil(current * ratio)
        desired = max(pool.min_replicas, min(pool.max_replicas, desired))
        hist = self._history.setdefault(pool.name, deque())
        hist.append((now, desired))
        while hist and hist[0][0] < now - self.scale_down_window_s:
            hist.popleft()
        if desired >= current:
            return desired  # scale up (or hold) at once
        return min(current, max(d for _, d in hist))  # scale down only as far as the window allows
