"""Figures of single runs: the autoscaling timeline, simulated against real, GPU telemetry."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pythia.analysis import tables
from pythia.analysis.figures_common import Figure, finish, load_text, shared_legend
from pythia.analysis.style import PANEL_WIDTH_IN, line_kwargs, ordered
from pythia.errors import PythiaInputError

REACTIVE = "vllm-autoscale"


def calls_in_flight(calls: pd.DataFrame, times: np.ndarray, pool: str) -> np.ndarray:
    """Calls of ``pool`` issued and not yet finished at each of ``times``."""
    sub = calls[calls["pool"] == pool]
    issue = np.sort(sub["issue_s"].to_numpy())
    finish_ = np.sort(sub["finish_s"].fillna(np.inf).to_numpy())
    return np.searchsorted(issue, times, side="right") - np.searchsorted(finish_, times, side="right")


def _summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def _identity(run_dir: Path, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The run's identity from its path, or what its summary says when the path is not a grid path."""
    try:
        return tables.run_identity(run_dir)
    except PythiaInputError:
        return {"workload": None, "system": str(summary.get("system", run_dir.name)), "load_kind": None,
                "load": None, "seed": summary.get("seed")}


def _gpus_held(pools: pd.DataFrame, tp_by_pool: Mapping[str, int]) -> pd.Series:
    """GPUs held (replicas up or starting, times their TP) summed over pools, per sample time."""
    held = (pools["replicas_up"] + pools["replicas_starting"]) * pools["pool"].map(lambda p: tp_by_pool.get(p, 1))
    wide = pools.assign(held=held).pivot_table(index="t_s", columns="pool", values="held", aggfunc="last")
    return wide.sort_index().ffill().fillna(0).sum(axis=1)


def _gpu_seconds(held: pd.Series) -> float:
    t = held.index.to_numpy(float)
    return float((held.to_numpy(float)[:-1] * np.diff(t)).sum()) if len(t) > 1 else 0.0


def autoscale_timeline(run_dir: str | Path, stem: Path, *, peer: str | Path | None = None,
                       gpu_budget: int | None = None, tp_by_pool: Mapping[str, int] | None = None) -> Figure:
    """Replicas per pool and GPUs held over time, for ``run_dir`` and (beside it) ``peer``.

    ``run_dir`` is pythia's run named by the config's ``timeline``; ``peer`` the reactive
    autoscaler's run of the same experiment, load and seed, when the grid has one. Each run's
    ``timeseries.parquet`` pool rows (``replica == -1``) give the replicas up and starting (and
    the autoscaler's ``predicted_load`` when recorded), ``calls.parquet`` the calls in flight.
    The GPU budget is the run summary's ``gpus`` (or ``cluster_gpus``) when present, else
    ``gpu_budget``; ``tp_by_pool`` gives the GPUs per replica (1 when not given).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tp = dict(tp_by_pool or {})
    dirs = [Path(run_dir)] + ([Path(peer)] if peer else [])
    runs = []
    for d in dirs:
        summary = _summary(d)
        ts = pd.read_parquet(d / "timeseries.parquet")
        pools = ts[ts["replica"] == -1]
        budget = summary.get("gpus", summary.get("cluster_gpus", gpu_budget))
        if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not budget > 0:
            budget = gpu_budget  # absent or not a count: fall back to the budget passed in
        runs.append({"dir": d, "summary": summary, "id": _identity(d, summary), "pools": pools,
                     "calls": pd.read_parquet(d / "calls.parquet"), "held": _gpus_held(pools, tp),
                     "budget": int(budget) if budget else None})
    names = sorted(set().union(*(set(r["pools"]["pool"]) for r in runs)))
    n_rows, n_cols = 1 + len(names), len(runs)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(PANEL_WIDTH_IN * n_cols, 1.05 + 1.15 * n_rows),
                             squeeze=False, sharex=True, sharey="row",
                             gridspec_kw={"height_ratios": [1.2] + [1.0] * len(names)})
    calls_max = {n: 1 for n in names}
    twins: dict[tuple[int, int], Any] = {}
    for c, run in enumerate(runs):
        # Neutral colours: the column title names the system, and the lines stay legible in grey.
        system = str(run["id"]["system"])
        ax = axes[0][c]
        held = run["held"]
        if run["budget"]:
            # Wide and grey beneath the GPUs held, so that a run holding exactly its budget shows both.
            ax.axhline(run["budget"], color="0.6", lw=2.4, linestyle=(0, (3, 1.5)), zorder=1,
                       label=f"GPU budget ({run['budget']})")
        ax.step(held.index, held.values, where="post", color="black", lw=1.2, zorder=3,
                label="GPUs held (up or starting)")
        ident = run["id"]
        where = (f"{ident['workload']}, {load_text(ident['load_kind'], ident['load'])}, seed {ident['seed']}"
                 if ident["workload"] else run["dir"].name)
        ax.set_title(f"{system}\n{where}")
        ax.set_ylabel("GPUs" if c == 0 else "")
        ax.grid(True)
        for i, name in enumerate(names, start=1):
            ax = axes[i][c]
            p = run["pools"][run["pools"]["pool"] == name].sort_values("t_s")
            t = p["t_s"].to_numpy()
            tw = ax.twinx()
            twins[(i, c)] = tw
            if len(p):
                inflight = calls_in_flight(run["calls"], t, name)
                calls_max[name] = max(calls_max[name], int(inflight.max(initial=0)))
                tw.fill_between(t, inflight, step="post", color="0.82", lw=0, label="calls in flight")
                if "predicted_load" in p and p["predicted_load"].notna().any():
                    tw.plot(t, p["predicted_load"], color="0.25", lw=0.9, ls=":", label="predicted load")
                ax.step(t, p["replicas_up"], where="post", color="black", lw=1.2, label="replicas up")
                ax.step(t, p["replicas_up"] + p["replicas_starting"], where="post", color="0.4", lw=0.9,
                        ls=(0, (3, 1.5)), label="up + starting")
            # Replicas in front of the calls' shading: the twin axis is drawn first.
            ax.set_zorder(tw.get_zorder() + 1)
            ax.patch.set_visible(False)
            ax.set_ylabel(f"{name}\nreplicas" if c == 0 else "")
            tw.spines["right"].set_visible(True)
            ax.grid(True, axis="x")
    for i, name in enumerate(names, start=1):
        top = max(int((r["pools"][r["pools"]["pool"] == name][["replicas_up", "replicas_starting"]].sum(axis=1)).max())
                  if (r["pools"]["pool"] == name).any() else 1 for r in runs)
        axes[i][0].set_ylim(0, top + 1)
        for c in range(n_cols):
            tw = twins[(i, c)]
            tw.set_ylim(0, calls_max[name] * 1.1 + 1)
            tw.yaxis.set_major_locator(MaxNLocator(integer=True))  # calls are counted, not measured
            tw.set_ylabel("calls in flight" if c == n_cols - 1 else "")
            if c < n_cols - 1:
                # One calls axis per row, on the right of the last column (the rows share its scale).
                tw.tick_params(right=False, labelright=False)
                tw.spines["right"].set_visible(False)
    top_gpus = max([float(r["held"].max()) if len(r["held"]) else 0.0 for r in runs] + [r["budget"] or 0 for r in runs])
    axes[0][0].set_ylim(0, top_gpus + 1)
    for c in range(n_cols):
        axes[-1][c].set_xlabel("time (s)")
    handles = [axes[0][c] for c in range(n_cols)] + [axes[1][0], twins[(1, 0)]] if names else [axes[0][0]]
    shared_legend(fig, handles, ncol=3)
    fig.tight_layout(h_pad=0.4)
    return finish(fig, stem, _timeline_shows(), _timeline_cells(runs), _timeline_reading(runs),
                  _timeline_notes(runs, peer))


def _timeline_shows() -> str:
    return ("Autoscaling over one run: the GPUs held (replicas up or starting, times their TP) against the cluster's GPU "
            "budget (top), and per pool the replicas up and up-plus-starting (left axis) over the calls in flight "
            "(grey, right axis). The run named by the config's timeline (pythia's) beside the reactive autoscaler "
            f"({REACTIVE}) on the same experiment, load and seed, on the same time axis.")


def _timeline_cells(runs: list[dict[str, Any]]) -> str:
    ident = runs[0]["id"]
    jobs = runs[0]["summary"].get("jobs_submitted")
    where = (f"{ident['workload']} at {load_text(ident['load_kind'], ident['load'])}, seed {ident['seed']}"
             if ident["workload"] else str(runs[0]["dir"]))
    names = " and ".join(str(r["id"]["system"]) for r in runs)
    return f"{where}: one run {'each ' if len(runs) > 1 else ''}of {names}" + (
        f" ({jobs} jobs)." if jobs is not None else ".")


def _timeline_reading(runs: list[dict[str, Any]]) -> str:
    parts = []
    for r in runs:
        held, s = r["held"], r["summary"]
        gpu_s = s.get("gpu_seconds")
        gpu_s = float(gpu_s) if isinstance(gpu_s, (int, float)) and math.isfinite(gpu_s) else _gpu_seconds(held)
        peak = float(held.max()) if len(held) else float("nan")
        budget = r["budget"]
        over = ""
        if budget and peak > budget:
            over = f", above its budget of {budget}"
        elif budget:
            over = f" of {budget}"
        jct = s.get("mean_jct_s")
        parts.append(f"{r['id']['system']} held at most {peak:g} GPUs{over} and {gpu_s:,.0f} GPU-seconds"
                     + (f" over {float(held.index.max()):,.0f} s" if len(held) else "")
                     + (f", mean JCT {float(jct):,.0f} s" if isinstance(jct, (int, float)) else ""))
    return "; ".join(parts) + "."


def _timeline_notes(runs: list[dict[str, Any]], peer: str | Path | None) -> list[str]:
    notes = []
    if peer is None:
        notes.append(f"{REACTIVE} has no run of this cell in the grid: {runs[0]['id']['system']}'s run is drawn alone.")
    if not runs[0]["budget"]:
        notes.append("The GPU budget is not recorded in the run summary and was not given: no budget line.")
    return notes


def fidelity(table: pd.DataFrame, stem: Path) -> Figure:
    """Simulated against real call latency and JCT (one point per call or job; y = x is exact)."""
    import matplotlib.pyplot as plt

    kinds = [("call_latency", "call latency (s)"), ("jct", "JCT (s)")]
    fig, axes = plt.subplots(1, 2, figsize=(2 * PANEL_WIDTH_IN, 3.0))
    errors = []
    for ax, (kind, label) in zip(axes, kinds):
        sub = table[table["kind"] == kind]
        for system in ordered(set(sub["system"])):
            s = sub[sub["system"] == system]
            kw = {k: v for k, v in line_kwargs(system).items() if k in ("color", "marker", "label")}
            ax.scatter(s["real_s"], s["sim_s"], s=12, alpha=0.8, **kw)
        title = label.split(" (")[0]
        if len(sub):
            lo = float(min(sub["real_s"].min(), sub["sim_s"].min()))
            hi = float(max(sub["real_s"].max(), sub["sim_s"].max()))
            ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--", label="_y = x")
            med = 100 * float(np.nanmedian(sub["rel_error"]))
            title += f": median error {med:.0f}%"
            errors.append(f"median relative error {med:.0f}% over {len(sub)} {'calls' if kind != 'jct' else 'jobs'}"
                          f" ({label.split(' (')[0]})")
        ax.set_title(title)
        ax.set_xlabel(f"real {label}")
        ax.set_ylabel(f"simulated {label}")
        ax.grid(True)
    shared_legend(fig, axes, ncol=4)
    fig.tight_layout()
    shows = ("Each real run's calls and jobs against its simulated twin on the calibrated cluster, matched by id "
             "(dashed: y = x, an exact simulation).")
    cells = "; ".join(sorted({f"{r.workload} {r.system} at {load_text(r.load_kind, r.load)}, seed {r.seed}"
                              for r in table[["workload", "system", "load_kind", "load", "seed"]]
                              .drop_duplicates().itertuples()})) or "no matched runs"
    return finish(fig, stem, shows, cells + ".", ("; ".join(errors) or "no matched calls") + ".")


def nvml_timeline(run_dirs: Sequence[str | Path], stem: Path) -> Figure | None:
    """GPU utilisation and power over time of real runs; ``None`` when no run has GPU rows."""
    import matplotlib.pyplot as plt

    frames = []
    for d in run_dirs:
        ts = pd.read_parquet(Path(d) / "timeseries.parquet")
        if "gpu_util" in ts and ts["gpu_util"].notna().any():
            frames.append(ts[ts["gpu_util"].notna()].assign(run=tables.run_identity(d)["system"]))
    if not frames:
        return None
    data = pd.concat(frames, ignore_index=True)
    fig, axes = plt.subplots(2, 1, figsize=(2 * PANEL_WIDTH_IN, 3.6), sharex=True)
    for (system, device), g in data.groupby(["run", "device"], sort=True):
        kw = line_kwargs(str(system))
        axes[0].plot(g["t_s"], g["gpu_util"], color=kw["color"], linestyle=kw["linestyle"], lw=0.9,
                     label=f"{system} gpu{device}")
        axes[1].plot(g["t_s"], g["gpu_power_w"], color=kw["color"], linestyle=kw["linestyle"], lw=0.9)
    axes[0].set_ylabel("GPU utilisation (%)")
    axes[1].set_ylabel("GPU power (W)")
    axes[1].set_xlabel("time (s)")
    shared_legend(fig, axes[:1], ncol=4)
    fig.tight_layout()
    util = data.groupby("run")["gpu_util"].mean()
    reading = "; ".join(f"{k}: mean utilisation {v:.0f}%" for k, v in util.items())
    return finish(fig, stem, "GPU utilisation and power sampled during the real runs (one line per run and GPU).",
                  f"{len(frames)} real run{'s' if len(frames) != 1 else ''} with GPU samples.", reading + ".")
