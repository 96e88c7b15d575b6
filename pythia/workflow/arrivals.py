"""Arrival processes: when the jobs of a workload start.

- ``closed``: ``concurrency`` jobs in flight; a new job starts when one ends (the paper's
  setting). Jobs carry no arrival time; the runner (simulator, replay client) releases them.
- ``poisson``: open loop, exponential inter-arrival times at ``rate`` jobs/s.
- ``gamma``: open loop, gamma inter-arrival times at ``rate`` jobs/s with shape
  ``burstiness`` (1 is Poisson; below 1 burstier, above 1 more regular), as in vLLM's
  benchmark harness.
- ``waves``: open loop, a non-homogeneous Poisson process whose rate swings sinusoidally,
  ``rate * (1 + amplitude * sin(2 pi t / period_s))``, sampled by thinning: the load shape that
  autoscalers must anticipate.
- ``timestamps``: the jobs' own arrival times (a replayed trace), multiplied by ``time_scale``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pythia.errors import PythiaInputError

PROCESSES = ("closed", "poisson", "gamma", "waves", "timestamps")


def _num(spec: dict[str, Any], name: str, default: float | None, *, lo: float, lo_open: bool = True, hi: float | None = None) -> float:
    value = spec.get(name, default)
    if value is None:
        raise PythiaInputError(f"arrival process {spec.get('process')!r} needs the field {name}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PythiaInputError(f"arrival field {name}={value!r} must be a number")
    if value < lo or (lo_open and value == lo) or (hi is not None and value > hi):
        bound = f"> {lo}" if lo_open else f">= {lo}"
        if hi is not None:
            bound += f" and <= {hi}"
        raise PythiaInputError(f"arrival field {name}={value!r} must be {bound}")
    return float(value)


def normalise(spec: dict[str, Any]) -> dict[str, Any]:
    """Check an arrival description and fill its defaults; raise naming the bad field."""
    if not isinstance(spec, dict) or "process" not in spec:
        raise PythiaInputError("an arrival process needs a field process, one of " + ", ".join(PROCESSES))
    process = spec["process"]
    if process not in PROCESSES:
        raise PythiaInputError(f"arrival field process={process!r} is unknown; known: {', '.join(PROCESSES)}")
    if process == "closed":
        n = spec.get("concurrency")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PythiaInputError(f"arrival field concurrency={n!r} must be a positive integer")
        return {"process": "closed", "concurrency": n}
    if process == "timestamps":
        return {"process": "timestamps", "time_scale": _num(spec, "time_scale", 1.0, lo=0.0)}
    out: dict[str, Any] = {"process": process, "rate": _num(spec, "rate", None, lo=0.0)}
    if process == "gamma":
        out["burstiness"] = _num(spec, "burstiness", 1.0, lo=0.0)
    if process == "waves":
        out["period_s"] = _num(spec, "period_s", 600.0, lo=0.0)
        out["amplitude"] = _num(spec, "amplitude", 0.8, lo=0.0, lo_open=False, hi=1.0)
    return out


def arrival_times(spec: dict[str, Any], n: int, rng: np.random.Generator) -> np.ndarray | None:
    """Arrival times (seconds, non-decreasing, first at 0) of ``n`` jobs; ``None`` for closed loop.

    ``timestamps`` has no times of its own: the caller keeps the jobs' arrival times.
    """
    spec = normalise(spec)
    process = spec["process"]
    if process in ("closed", "timestamps") or n == 0:
        return None
    rate = spec["rate"]
    if process == "poisson":
        gaps = rng.exponential(1.0 / rate, size=n)
    elif process == "gamma":
        k = spec["burstiness"]
        gaps = rng.gamma(shape=k, scale=1.0 / (rate * k), size=n)
    else:  # waves: thinning of a homogeneous process at the peak rate
        peak = rate * (1.0 + spec["amplitude"])
        times: list[float] = []
        t = 0.0
        omega = 2.0 * math.pi / spec["period_s"]
        while len(times) < n:
            t += rng.exponential(1.0 / peak)
            if rng.random() * peak <= rate * (1.0 + spec["amplitude"] * math.sin(omega * t)):
                times.append(t)
        arr = np.asarray(times)
        return arr - arr[0]
    gaps[0] = 0.0  # the first job opens the trace
    return np.cumsum(gaps)
