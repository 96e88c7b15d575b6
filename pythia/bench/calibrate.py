"""Fit the simulator's cost profile of one (accelerator, model) pair from a real run's own step times.

Input: a run folder written by ``pythia run --step-log`` (``engine-steps.jsonl`` from the
plugin, ``calls.parquet`` and ``summary.json`` from the replay client). Two fits:

1. **Engine steps.** Each step's period runs from its start (scheduler entry) to the next
   step's start while the engine stays busy; the last step before the engine falls idle
   lasts to the end of its ``update_from_output`` plus the loop's median gap.
   The cost model's step time (:mod:`pythia.sim.costmodel`) is ``overhead + per_seq * S +
   max(compute, memory)``; the fit takes the compute branch (``flops / (peak * mfu)``) and
   keeps the memory branch from binding unless ``mbu`` is given, so the period is linear in
   ``[1, S, flops]``. Ordinary least squares on the periods (so the fitted engine time of
   the run equals the measured one), with no coefficient allowed below zero.
2. **Front end.** The time from the client issuing a call to the engine receiving it
   (HTTP, request processing in the API server) and from the engine producing a token to the
   client reading it (output processing, streaming). The front end takes requests one at a
   time, so calls issued together reach the engine staggered: the issue-to-engine delays are
   fitted as a one-server queue with a per-request service time plus a fixed delay
   (``request_service_ms``, ``request_in_ms``); the output delay's mean is
   ``response_out_ms``. The simulator applies them per replica
   (:meth:`pythia.sim.engine.Replica.enqueue`) and per call (:class:`pythia.sim.runtime.Runtime`).

The result is a profile entry for ``pythia/sim/data/efficiency.yaml`` plus fit errors, so
the same procedure serves a GPU host: ``pythia run --backend vllm --step-log ...`` then
``pythia calibrate RUN --gpu h100-80gb --model llama-3.1-8b``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pythia import inputs
from pythia.errors import PythiaInputError

STEP_LOG = "engine-steps.jsonl"
# The files of a run folder that calibration reads.
RUN_INPUTS = (STEP_LOG, "calls.parquet", "summary.json")
CALL_INPUT_COLUMNS = ("job_id", "call_id", "status", "issue_s", "ttft_s", "finish_s")
# Steps closer than this are back to back (the engine loop did not wait for work).
BACK_TO_BACK_S = 0.002
# The memory branch is kept from binding when only compute is fitted (see the module docstring).
UNBOUND_MBU = 1000.0
# Pooled runs are placed this far apart on one time line (longer than any run).
RUN_SPACING_S = 1e7


@dataclass
class StepLog:
    """An engine's step log: per-request arrival times and one row per step."""

    adds: dict[str, float]
    steps: pd.DataFrame  # columns s, e, S, T, sampled, pairs, kv, new, first, done


def read_step_log(path: Path) -> StepLog:
    """Parse ``engine-steps.jsonl``; a malformed line names the file and line."""
    adds: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    for no, line in inputs.iter_lines(path, "step log"):
        if not line.strip():
            continue
        try:
            d = inputs.parse_json(line, f"{path}:{no}")
            if "add" in d:
                adds[str(d["add"])] = float(d["t"])
            else:
                rows.append({"s": float(d["s"]), "e": float(d["e"]), "S": int(d["S"]), "T": int(d["T"]),
                             "sampled": int(d["sampled"]), "pairs": int(d["pairs"]), "kv": int(d["kv"]),
                             "first": list(d.get("first", ())), "done": list(d.get("done", ()))})
        except (PythiaInputError, ValueError, KeyError, TypeError) as e:
            if no == 1 or not line.endswith("\n"):
                # The last line of a log cut by a crash may be partial: skip it.
                continue
            if isinstance(e, PythiaInputError):
                raise
            raise PythiaInputError(f"{path}:{no}: not a step-log record ({type(e).__name__}: {e})") from None
    steps = pd.DataFrame(rows, columns=["s", "e", "S", "T", "sampled", "pairs", "kv", "first", "done"])
    return StepLog(adds, steps)


def step_periods(steps: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """Steps that ran a batch, with their period: the time from their start to the next step's.

    A step followed at once by another (the engine stayed busy) lasts until the next one
    starts; this holds for synchronous scheduling (update, then the next schedule) and for
    asynchronous scheduling (the next step is scheduled before this one's update, so the
    gap is negative). A step after which the engine fell idle lasts its own duration plus the
    loop's median gap between busy steps.
    """
    steps = steps[steps["S"] > 0].sort_values("s").reset_index(drop=True)
    next_s = steps["s"].shift(-1)
    gap = next_s - steps["e"]
    busy_next = gap < BACK_TO_BACK_S
    back = gap[busy_next & (gap >= 0)]
    loop_gap = float(back.median()) if len(back) else 0.0
    busy = steps.copy()
    busy["period_s"] = np.where(busy_next, next_s - steps["s"], steps["e"] - steps["s"] + loop_gap)
    return busy, loop_gap


def _flops(busy: pd.DataFrame, model: str) -> np.ndarray:
    """The cost model's compute numerator of each step (see costmodel.py)."""
    from pythia.sim.costmodel import model_shape

    m = model_shape(model)
    return (2.0 * m.layer_params * busy["T"].to_numpy() + 2.0 * m.vocab * m.hidden * busy["sampled"].to_numpy()
            + 4.0 * m.heads * m.head_dim * m.layers * busy["pairs"].to_numpy())


def fit_steps(steps: pd.DataFrame, gpu: str, model: str) -> dict[str, Any]:
    """Least squares of step periods on ``[1, S, flops / peak]`` with non-negative coefficients."""
    from pythia.sim.costmodel import gpu_spec

    busy, loop_gap = step_periods(steps)
    if len(busy) < 10:
        raise PythiaInputError(f"the step log has {len(busy)} steps with work; the fit needs at least 10")
    peak = gpu_spec(gpu)["tflops"] * 1e12
    x = np.column_stack([np.ones(len(busy)), busy["S"].to_numpy(float), _flops(busy, model) / peak])
    y = busy["period_s"].to_numpy()
    # Plain least squares: the fitted engine time of the run equals the measured one.
    # Weighting steps by their sequences (so that the time calls spend in steps is kept
    # instead) predicted both workloads of benchmarks/bench_fidelity.py worse (docs/decisions.md).
    sw = np.sqrt(busy["S"].to_numpy(float))  # for the call-time diagnostic below
    keep = [0, 1, 2]
    coef = np.zeros(3)
    for _ in range(3):  # bounded: one column dropped per round
        c, *_ = np.linalg.lstsq(x[:, keep], y, rcond=None)
        if (c >= 0).all():
            coef[:] = 0.0
            coef[keep] = c
            break
        keep.pop(int(np.argmin(c)))
    if coef[2] <= 0:
        raise PythiaInputError("the step log does not determine a compute rate (no step grew with its tokens)")
    pred = x @ coef
    rel = np.abs(pred - y) / y
    kind = np.where(busy["T"].to_numpy() > busy["S"].to_numpy(), "prefill", "decode")
    by_kind = {}
    for k in ("decode", "prefill"):
        sel = kind == k
        if sel.any():
            by_kind[k] = {"steps": int(sel.sum()), "measured_s": float(y[sel].sum()), "fitted_s": float(pred[sel].sum()),
                          "median_rel_error": float(np.median(rel[sel]))}
    return {
        "overhead_ms": float(coef[0] * 1e3), "per_seq_us": float(coef[1] * 1e6), "mfu": float(1.0 / coef[2]),
        "loop_gap_ms": loop_gap * 1e3, "steps": int(len(busy)),
        "median_rel_error": float(np.median(rel)), "total_fitted_over_measured": float(pred.sum() / y.sum()),
        "call_time_fitted_over_measured": float((pred * sw**2).sum() / (y * sw**2).sum()),
        "by_kind": by_kind,
    }


def frontend_samples(log: StepLog, calls: pd.DataFrame, clock_origin_s: float) -> tuple[list[float], list[float], list[float]]:
    """Per finished call: issue time, issue -> engine arrival, and engine token -> client (first and last).

    Calls and engine requests are joined by request id (vLLM embeds the client's id in its own).
    """
    from pythia.bench.replay import client_request_id

    first: dict[str, float] = {}
    done: dict[str, float] = {}
    for row in log.steps.itertuples():
        for r in row.first:
            first.setdefault(r, row.e)
        for r in row.done:
            done.setdefault(r, row.e)
    by_client: dict[str, str] = {}
    pat = re.compile(r"pythia-[0-9a-f]+")
    for rid in log.adds:
        m = pat.search(rid)
        if m:
            by_client.setdefault(m.group(0), rid)
    issues: list[float] = []
    ins: list[float] = []
    outs: list[float] = []
    for c in calls.itertuples():
        rid = by_client.get(client_request_id(c.job_id, int(c.call_id)))
        if rid is None or c.status != "finished":
            continue
        issue = clock_origin_s + c.issue_s
        issues.append(issue)
        ins.append(log.adds[rid] - issue)
        if rid in first and not math.isnan(c.ttft_s):
            outs.append(issue + c.ttft_s - first[rid])
        if rid in done:
            outs.append(clock_origin_s + c.finish_s - done[rid])
    return issues, ins, outs


def fit_frontend(issues: Sequence[float], ins: Sequence[float], outs: Sequence[float]) -> dict[str, Any]:
    """The front end's request service time and delays from joined samples (see :func:`frontend_samples`)."""
    if not ins:
        raise PythiaInputError("no call of calls.parquet matches a request of the step log (request ids differ)")
    service, base, err = fit_fifo(np.asarray(issues), np.asarray(ins))
    # Means, not medians: the simulator adds one constant per call, and the mean keeps the
    # calls' summed latency (and so job times) right.
    return {
        "request_service_ms": service * 1e3, "request_in_ms": base * 1e3, "request_in_fit_mae_ms": err * 1e3,
        "response_out_ms": float(np.mean(outs) * 1e3) if outs else 0.0,
        "request_in_mean_ms": float(np.mean(ins) * 1e3),
        "request_in_median_ms": float(np.median(ins) * 1e3),
        "response_out_median_ms": float(np.median(outs) * 1e3) if outs else 0.0,
        "request_in_p90_ms": float(np.quantile(ins, 0.9) * 1e3),
        "response_out_p90_ms": float(np.quantile(outs, 0.9) * 1e3) if outs else 0.0,
        "calls_joined": len(ins),
    }


def fifo_delays(issue: np.ndarray, service: float) -> np.ndarray:
    """Waiting plus service of each request in a one-at-a-time front end (issue times sorted)."""
    free = -np.inf
    out = np.empty(len(issue))
    for i, t in enumerate(issue):
        free = max(free, t) + service
        out[i] = free - t
    return out


def fit_fifo(issue: np.ndarray, delay: np.ndarray, max_service_s: float = 0.05) -> tuple[float, float, float]:
    """The front end's per-request service time and fixed delay that best explain measured delays.

    Delays are modelled as ``fifo(service) + base``; for each service time on a 0.1 ms grid
    the base is the mean residual (never below 0), and the pair with the smallest mean
    absolute error wins. Returns ``(service_s, base_s, mae_s)``.
    """
    order = np.argsort(issue, kind="stable")
    issue, delay = issue[order], delay[order]
    best = (0.0, max(0.0, float(delay.mean())), float(np.abs(delay - max(0.0, delay.mean())).mean()))
    for service in np.arange(1e-4, max_service_s + 1e-9, 1e-4):
        q = fifo_delays(issue, float(service))
        base = max(0.0, float((delay - q).mean()))
        mae = float(np.abs(q + base - delay).mean())
        if mae < best[2]:
            best = (float(service), base, mae)
    return best


def calibrate_runs(runs: Sequence[Path], gpu: str, model: str) -> dict[str, Any]:
    """Both fits on one or more run folders (pooled); returns the profile entry and the fit report."""
    if not runs:
        raise PythiaInputError("calibration needs at least one run folder")
    steps_all: list[pd.DataFrame] = []
    issues: list[float] = []
    ins: list[float] = []
    outs: list[float] = []
    for k, run in enumerate(runs):
        path = run / STEP_LOG
        if not path.is_file():
            raise PythiaInputError(f"{path} does not exist; record it with `pythia run --step-log`")
        for name in ("calls.parquet", "summary.json"):
            if not (run / name).is_file():
                raise PythiaInputError(f"{run / name} does not exist; is {run} a finished `pythia run` folder?")
        log = read_step_log(path)
        calls = inputs.read_parquet(
            run / "calls.parquet", "calls table", required=CALL_INPUT_COLUMNS,
            numeric=("call_id", "issue_s", "ttft_s", "finish_s"),
        )
        summary = inputs.load_json(run / "summary.json", "run summary")
        if not isinstance(summary, dict):
            raise PythiaInputError(f"{run / 'summary.json'}: a run summary must be a JSON object")
        origin = summary.get("clock_origin_monotonic_s")
        if isinstance(origin, bool) or (origin is not None and not isinstance(origin, (int, float))):
            raise PythiaInputError(f"{run / 'summary.json'}: field clock_origin_monotonic_s must be a number, not {origin!r}")
        if origin is None:
            raise PythiaInputError(f"{run / 'summary.json'} has no clock_origin_monotonic_s; rerun with this version of `pythia run`")
        # Only the replay's steps: the warm-up before it ran a cold engine on purpose. Runs
        # are moved apart in time so that their steps and queues never meet in the fits.
        shift = RUN_SPACING_S * k - float(origin)
        st = log.steps[log.steps["s"] >= float(origin)].copy()
        st["s"] += shift
        st["e"] += shift
        steps_all.append(st)
        i, d, o = frontend_samples(log, calls, float(origin))
        issues += [t + shift for t in i]
        ins += d
        outs += o
    steps = fit_steps(pd.concat(steps_all, ignore_index=True), gpu, model)
    front = fit_frontend(issues, ins, outs)
    profile = {
        "mfu": steps["mfu"], "mbu": UNBOUND_MBU, "overhead_ms": steps["overhead_ms"], "per_seq_us": steps["per_seq_us"],
        "allreduce_us": 0.0, "activation_gib": 0.0,
        "request_service_ms": front["request_service_ms"], "request_in_ms": front["request_in_ms"],
        "response_out_ms": front["response_out_ms"],
    }
    return {"key": f"{gpu}/{model}", "profile": profile, "steps": steps, "frontend": front,
            "runs": [str(r) for r in runs]}


def calibrate_run(run: Path, gpu: str, model: str) -> dict[str, Any]:
    """:func:`calibrate_runs` on one run folder."""
    return calibrate_runs([run], gpu, model)


def profile_yaml(key: str, profile: dict[str, float], source: str) -> str:
    """One efficiency.yaml entry, with a comment naming how it was fitted."""
    lines = [f"{key}:", f"  # Fitted by `pythia calibrate` from {source}: the engine's own step times",
             "  # and the client/engine clock join; the memory branch is kept from binding (mbu)."]
    for k in ("mfu", "mbu", "overhead_ms", "per_seq_us", "allreduce_us", "activation_gib", "request_service_ms",
              "request_in_ms", "response_out_ms"):
        lines.append(f"  {k}: {profile[k]:.6g}")
    return "\n".join(lines) + "\n"


def write_profile(path: Path, key: str, profile: dict[str, float], source: str) -> None:
    """Replace (or append) entry ``key`` of an efficiency file; other entries are untouched."""
    from pythia.outputs import write_atomic

    if not path.parent.is_dir():
        raise PythiaInputError(f"{path}: its folder does not exist")
    try:
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
    except (OSError, UnicodeDecodeError) as e:
        raise PythiaInputError(f"{path}: cannot read the efficiency file ({e})") from None
    entry = profile_yaml(key, profile, source)
    pat = re.compile(rf"^{re.escape(key)}:\n(?:[ \t]+.*\n?)*", re.M)
    text = pat.sub(lambda _m: entry, text, count=1) if pat.search(text) else (text.rstrip("\n") + "\n" + entry)
    write_atomic(path, text)  # the other entries are never lost to a write cut short
