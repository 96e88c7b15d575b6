"""The paper's figures, regenerated from result tables alone.

Every figure is written as vector PDF (TrueType fonts) and PNG, uses one fixed colour and
marker per system (:mod:`pythia.analysis.style`), labels its axes with units, and
normalises to the ``vllm`` baseline within each seed before aggregating over seeds.
A figure whose data are absent (no oracle runs, one load level) is skipped and named in
the returned notes rather than drawn empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from pythia.analysis import tables
from pythia.analysis.style import ordered, setup_matplotlib, style

BASELINE = "vllm"
ABLATION_PREFIX = "pythia-no-"


def _save(fig, stem: Path) -> list[Path]:  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("pdf", "png"):
        path = stem.with_suffix(f".{ext}")
        # Fixed metadata so a rerun on the same data gives the same PDF bytes.
        meta = {"CreationDate": None} if ext == "pdf" else {"Software": None}
        fig.savefig(path, metadata=meta)
        out.append(path)
    plt.close(fig)
    return out


def _load_label(df: pd.DataFrame) -> str:
    kinds = set(df["load_kind"])
    if kinds == {"concurrency"}:
        return "concurrency (jobs in flight)"
    if kinds == {"rate"}:
        return "arrival rate (jobs/s)"
    return "load"


def _line_grid(df: pd.DataFrame, metrics: list[tuple[str, str]], stem: Path,
               bounds: dict[str, str] | None = None) -> list[Path]:
    """One panel per metric and workload; ``bounds`` maps a metric to the column of its lower
    bound, drawn as a dashed black line (the mean over seeds; the bound is the same for every
    system on the same jobs)."""
    import matplotlib.pyplot as plt

    workloads = sorted(df["workload"].unique())
    fig, axes = plt.subplots(
        len(metrics), len(workloads), figsize=(3.2 * len(workloads), 2.6 * len(metrics)), squeeze=False
    )
    for j, wl in enumerate(workloads):
        sub = df[df["workload"] == wl]
        for i, (metric, label) in enumerate(metrics):
            ax = axes[i][j]
            agg = tables.aggregate(sub, metric)
            for system in ordered(set(agg["system"])):
                s = agg[agg["system"] == system].sort_values("load")
                colour, marker = style(system)
                ax.errorbar(s["load"], s["mean"], yerr=s["std"].fillna(0.0), color=colour, marker=marker,
                            ms=4, lw=1.2, capsize=2, label=system)
            col = (bounds or {}).get(metric)
            if col and col in sub and sub[col].notna().any():
                b = sub.groupby("load")[col].mean().sort_index()
                ax.plot(b.index, b.values, "k--", lw=1.0, label="lower bound")
            loads = sorted(sub["load"].unique())
            if len(loads) > 2 and loads[0] > 0 and loads[-1] / loads[0] >= 8:
                ax.set_xscale("log", base=2)  # load grids double from level to level
            ax.set_xticks(loads, [f"{v:g}" for v in loads])
            ax.minorticks_off()
            ax.set_xlabel(_load_label(sub))
            ax.set_ylabel(label)
            if i == 0:
                ax.set_title(wl)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(7, len(labels)), bbox_to_anchor=(0.5, 1.02 + 0.04 * (len(labels) > 7)), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return _save(fig, stem)


def jct_vs_load(summaries: pd.DataFrame, stem: Path) -> list[Path]:
    """Mean and P95 job completion time against load, one panel column per workload."""
    return _line_grid(summaries, [("mean_jct_s", "mean JCT (s)"), ("p95_jct_s", "P95 JCT (s)")], stem,
                      bounds={"mean_jct_s": "mean_lower_bound_jct_s"})


def throughput_vs_load(summaries: pd.DataFrame, stem: Path) -> list[Path]:
    """Output token throughput against load."""
    return _line_grid(summaries, [("output_tokens_per_s", "output throughput (tokens/s)")], stem)


def jct_cdf(jobs: pd.DataFrame, stem: Path) -> list[Path]:
    """CDF of job completion time at each workload's peak load (lowest seed)."""
    import matplotlib.pyplot as plt

    peak = tables.peak_load(jobs)
    peak = peak[peak["seed"] == peak.groupby("workload")["seed"].transform("min")]
    workloads = sorted(peak["workload"].unique())
    fig, axes = plt.subplots(1, len(workloads), figsize=(3.2 * len(workloads), 2.6), squeeze=False)
    for ax, wl in zip(axes[0], workloads):
        sub = peak[peak["workload"] == wl]
        for system in ordered(set(sub["system"])):
            jct = np.sort(sub[sub["system"] == system]["jct_s"].dropna().to_numpy())
            if len(jct) == 0:
                continue
            colour, _ = style(system)
            ax.step(jct, np.arange(1, len(jct) + 1) / len(jct), where="post", color=colour, lw=1.2, label=system)
        ax.set_xlabel("JCT (s)")
        ax.set_ylabel("fraction of jobs")
        ax.set_title(f"{wl} (load {sub['load'].iloc[0]:g})")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, stem)


def _bars(df: pd.DataFrame, column: str, ylabel: str, stem: Path, reference: float | None) -> list[Path]:
    import matplotlib.pyplot as plt

    agg = tables.aggregate(df, column)
    workloads = sorted(agg["workload"].unique())
    systems = ordered(set(agg["system"]))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(workloads) * (1 + 0.25 * len(systems))), 2.8))
    width = 0.8 / max(1, len(systems))
    x = np.arange(len(workloads))
    for k, system in enumerate(systems):
        s = agg[agg["system"] == system].set_index("workload").reindex(workloads)
        colour, _ = style(system)
        ax.bar(x + (k - (len(systems) - 1) / 2) * width, s["mean"], width, yerr=s["std"].fillna(0.0),
               color=colour, capsize=2, label=system)
    if reference is not None:
        ax.axhline(reference, color="black", lw=0.8, ls="--")
    ax.set_xticks(x, workloads)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=min(5, len(systems)), frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, stem)


def normalised_bars(summaries: pd.DataFrame, stem: Path) -> list[Path]:
    """Mean JCT at peak load relative to vllm (per seed, then mean and spread over seeds)."""
    norm = tables.normalise(tables.peak_load(summaries), "mean_jct_s", BASELINE)
    return _bars(norm, "mean_jct_s_norm", f"mean JCT / {BASELINE} (lower is better)", stem, 1.0)


def throughput_bars(summaries: pd.DataFrame, stem: Path) -> list[Path]:
    """Output throughput at peak load relative to vllm."""
    norm = tables.normalise(tables.peak_load(summaries), "output_tokens_per_s", BASELINE)
    return _bars(norm, "output_tokens_per_s_norm", f"throughput / {BASELINE} (higher is better)", stem, 1.0)


def prefix_hit_rate(summaries: pd.DataFrame, stem: Path) -> list[Path]:
    """Prefix-cache hit rate (cached prompt tokens / prompt tokens) at peak load."""
    return _bars(tables.peak_load(summaries), "prefix_hit_rate", "prefix hit rate (fraction of prompt tokens)", stem, None)


def ablations(summaries: pd.DataFrame, stem: Path) -> list[Path]:
    """Pythia and Pythia without each mechanism, mean JCT relative to vllm at peak load."""
    keep = summaries["system"].isin([BASELINE, "pythia"]) | summaries["system"].str.startswith(ABLATION_PREFIX)
    norm = tables.normalise(tables.peak_load(summaries[keep]), "mean_jct_s", BASELINE)
    norm = norm[norm["system"] != BASELINE]
    return _bars(norm, "mean_jct_s_norm", f"mean JCT / {BASELINE} (lower is better)", stem, 1.0)


def oracle_gap(summaries: pd.DataFrame, stem: Path) -> list[Path]:
    """Mean JCT of Pythia relative to the clairvoyant oracle, against load."""
    sub = summaries[summaries["system"].isin(["pythia", "oracle"])]
    norm = tables.normalise(sub, "mean_jct_s", "oracle")
    norm = norm[norm["system"] == "pythia"]
    return _line_grid(norm.assign(gap=norm["mean_jct_s_norm"]), [("gap", "mean JCT / oracle")], stem)


def calls_in_flight(calls: pd.DataFrame, times: np.ndarray, pool: str) -> np.ndarray:
    """Calls of ``pool`` issued and not yet finished at each of ``times``."""
    sub = calls[calls["pool"] == pool]
    issue = np.sort(sub["issue_s"].to_numpy())
    finish = np.sort(sub["finish_s"].fillna(np.inf).to_numpy())
    return np.searchsorted(issue, times, side="right") - np.searchsorted(finish, times, side="right")


def autoscale_timeline(run_dir: str | Path, stem: Path) -> list[Path]:
    """Replicas up per pool against the calls in flight (and the predicted load, when recorded).

    ``run_dir`` is one run's directory; its ``timeseries.parquet`` pool rows (``replica == -1``)
    give the replicas up and starting, an optional ``predicted_load`` column the autoscaler's
    projection; ``calls.parquet`` gives the actual load.
    """
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    ts = pd.read_parquet(run_dir / "timeseries.parquet")
    calls = pd.read_parquet(run_dir / "calls.parquet")
    pools = ts[ts["replica"] == -1]
    names = sorted(pools["pool"].unique())
    fig, axes = plt.subplots(len(names), 1, figsize=(6.4, 1.9 * len(names)), squeeze=False, sharex=True)
    for ax, name in zip(axes[:, 0], names):
        p = pools[pools["pool"] == name].sort_values("t_s")
        t = p["t_s"].to_numpy()
        ax.step(t, p["replicas_up"], where="post", color="black", lw=1.2, label="replicas up")
        ax.step(t, p["replicas_up"] + p["replicas_starting"], where="post", color="grey", lw=0.8, ls="--",
                label="up + starting")
        ax.set_ylim(0, max(1, int((p["replicas_up"] + p["replicas_starting"]).max())) + 1)
        ax.set_ylabel(f"{name}\nreplicas")
        ax2 = ax.twinx()
        ax2.plot(t, calls_in_flight(calls, t, name), color="#c44e52", lw=0.9, label="calls in flight")
        if "predicted_load" in p and p["predicted_load"].notna().any():
            ax2.plot(t, p["predicted_load"], color="#4c72b0", lw=0.9, ls=":", label="predicted load")
        ax2.set_ylabel("calls")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=6, frameon=False, loc="upper right")
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    return _save(fig, stem)


def fidelity(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Simulated against real call latency and JCT (one point per call or job; y = x is exact)."""
    import matplotlib.pyplot as plt

    kinds = [("call_latency", "call latency (s)"), ("jct", "JCT (s)")]
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.0))
    for ax, (kind, label) in zip(axes, kinds):
        sub = table[table["kind"] == kind]
        for system in ordered(set(sub["system"])):
            s = sub[sub["system"] == system]
            colour, marker = style(system)
            ax.scatter(s["real_s"], s["sim_s"], s=10, color=colour, marker=marker, label=system, alpha=0.8)
        if len(sub):
            lo = float(min(sub["real_s"].min(), sub["sim_s"].min()))
            hi = float(max(sub["real_s"].max(), sub["sim_s"].max()))
            ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--")
            ax.set_title(f"median error {100 * float(np.nanmedian(sub['rel_error'])):.0f}%")
        ax.set_xlabel(f"real {label}")
        ax.set_ylabel(f"simulated {label}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, stem)


def nvml_timeline(run_dirs: list[str | Path], stem: Path) -> list[Path] | None:
    """GPU utilisation and power over time of real runs; ``None`` when no run has GPU rows."""
    import matplotlib.pyplot as plt

    frames = []
    for d in run_dirs:
        ts = pd.read_parquet(Path(d) / "timeseries.parquet")
        if "gpu_util" in ts and ts["gpu_util"].notna().any():
            ts = ts[ts["gpu_util"].notna()].assign(run=tables.run_identity(d)["system"])
            frames.append(ts)
    if not frames:
        return None
    data = pd.concat(frames, ignore_index=True)
    fig, axes = plt.subplots(2, 1, figsize=(6.4, 3.6), sharex=True)
    for (system, device), g in data.groupby(["run", "device"], sort=True):
        colour, _ = style(str(system))
        axes[0].plot(g["t_s"], g["gpu_util"], color=colour, lw=0.9, label=f"{system} gpu{device}")
        axes[1].plot(g["t_s"], g["gpu_power_w"], color=colour, lw=0.9)
    axes[0].set_ylabel("utilisation (%)")
    axes[1].set_ylabel("power (W)")
    axes[1].set_xlabel("time (s)")
    axes[0].legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return _save(fig, stem)


FIGURES: dict[str, tuple[Callable[..., list[Path]], str, Callable[[pd.DataFrame], bool]]] = {
    "jct_vs_load": (jct_vs_load, "summaries", lambda d: d["load"].nunique() > 0),
    "throughput_vs_load": (throughput_vs_load, "summaries", lambda d: d["load"].nunique() > 0),
    "jct_cdf_peak": (jct_cdf, "jobs", lambda d: not d.empty),
    "jct_normalised": (normalised_bars, "summaries", lambda d: BASELINE in set(d["system"])),
    "throughput_normalised": (throughput_bars, "summaries", lambda d: BASELINE in set(d["system"])),
    "prefix_hit_rate": (prefix_hit_rate, "summaries", lambda d: "prefix_hit_rate" in d),
    "ablations": (
        ablations,
        "summaries",
        lambda d: BASELINE in set(d["system"]) and d["system"].str.startswith(ABLATION_PREFIX).any(),
    ),
    "oracle_gap": (oracle_gap, "summaries", lambda d: {"pythia", "oracle"} <= set(d["system"])),
}


def make_all(summaries: pd.DataFrame, jobs: pd.DataFrame, out_dir: str | Path) -> tuple[list[Path], list[str]]:
    """Draw every figure whose data are present; returns the files and notes on skipped ones."""
    setup_matplotlib()
    out_dir = Path(out_dir)
    files: list[Path] = []
    notes: list[str] = []
    data = {"summaries": summaries, "jobs": jobs}
    for name, (fn, source, has_data) in FIGURES.items():
        frame = data[source]
        if frame.empty or not has_data(frame):
            notes.append(f"{name}: skipped, its data are not in the results")
            continue
        files += fn(frame, out_dir / name)
    return files, notes


def write_index(files: list[Path], notes: list[str], path: str | Path) -> None:
    """A Markdown index of the figures drawn and the ones skipped, beside the figures."""
    path = Path(path)
    lines = ["# Figures", ""]
    lines += [f"- [{p.name}]({p.name})" for p in files if p.suffix == ".png"]
    if notes:
        lines += ["", "Skipped:", ""] + [f"- {n}" for n in notes]
    path.write_text("\n".join(lines) + "\n")
