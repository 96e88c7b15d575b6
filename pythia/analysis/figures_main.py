"""The main comparison and the figures at each workload's top load.

These figures show the *main systems* of :func:`pythia.analysis.tables.main_systems`:
pythia, vllm, the oracle and the best member of each baseline family per workload. Ablations
and the vLLM routing and scaling variants are in :mod:`pythia.analysis.figures_ratio`.
Every uncertainty drawn is a 95% interval of a paired ratio
(:func:`pythia.analysis.tables.paired_ratios`); absolute values are means over seeds and
carry no error bars, because an unpaired spread would mostly measure how the seeds' jobs
differ, not how the systems do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pythia.analysis import tables
from pythia.analysis.figures_common import (
    Figure, cells_text, dodge, finish, fmt_ratio, invert, load_text, panel_grid, panel_title, ratio_limits, set_load_axis,
    shared_legend, times_text,
)
from pythia.analysis.style import BOUND_STYLE, line_kwargs, ordered, system_style

SUBJECT = "pythia"
BASELINE = "vllm"
INTERVAL_NOTE = (
    "Intervals are 95% percentile-bootstrap intervals of paired ratios: over the seeds' ratios "
    "(each seed against the same seed's run) where a cell has at least 3 seeds, otherwise over jobs "
    "paired by job_id (every system runs the same jobs)."
)


def _main(summaries: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    systems = tables.main_systems(summaries)
    return tables.select(summaries, systems), systems


def _choice_text(summaries: pd.DataFrame) -> str:
    """Which member of each multi-member family is shown, and on which workloads."""
    best = tables.best_of_families(summaries)
    by_member: dict[str, list[str]] = {}
    for wl, chosen in best.items():
        for fam, name in chosen.items():
            if len(tables.FAMILIES[fam]) > 1:
                by_member.setdefault(f"{name} ({fam})", []).append(wl)
    if not by_member:
        return "every family present has one member"
    everywhere = len(best)
    return "; ".join(f"{m} on {'every workload' if len(w) == everywhere else ', '.join(w)}"
                     for m, w in by_member.items())


def _ratio_axis(ax: object, rows: pd.DataFrame, systems: list[str], log: bool) -> None:
    """Ratio lines with paired intervals, one per system, dodged in x."""
    shown = [s for s in systems if s in set(rows["system"])]
    for k, system in enumerate(shown):
        r = rows[rows["system"] == system].sort_values("load")
        x = dodge(r["load"].to_numpy(float), k, len(shown), log)
        err = np.vstack([r["ratio"] - r["lo"], r["hi"] - r["ratio"]])
        err = np.where(np.isfinite(err), err, 0.0)
        ax.errorbar(x, r["ratio"], yerr=err, capsize=2, elinewidth=0.8, **line_kwargs(system))  # type: ignore[attr-defined]


def _reading(ratios: pd.DataFrame) -> str:
    """pythia against vllm and against the best other baseline, at each workload's top load."""
    top = tables.top_load(ratios) if not ratios.empty else ratios
    parts = []
    for wl, sub in top.groupby("workload", sort=True):
        sentences = []
        v = sub[sub["system"] == BASELINE]
        if len(v):
            sentences.append(times_text(v.iloc[0], SUBJECT))
        others = sub[~sub["system"].isin([SUBJECT, "oracle", BASELINE])]
        if len(others):
            best = others.sort_values("ratio").iloc[0]
            sentences.append("against the best other baseline, " + times_text(best, SUBJECT))
        if sentences:
            parts.append(f"{wl}: " + "; ".join(sentences))
    return ". ".join(parts) + "." if parts else "No cell has both pythia and another system."


def _regime_note(summaries: pd.DataFrame) -> list[str]:
    """Where each workload's top load sits, from vllm's runs: KV working set over the pool, JCT stretch."""
    cols = [c for c in ("kv_working_set_ratio", "jct_stretch") if c in summaries]
    top = tables.top_load(summaries)
    v = top[top["system"] == BASELINE]
    if not cols or v.empty:
        return []
    parts = []
    for wl, g in v.groupby("workload", sort=True):
        bits = []
        if "kv_working_set_ratio" in g and g["kv_working_set_ratio"].notna().any():
            bits.append(f"live KV working set {g['kv_working_set_ratio'].mean():.2g}x the KV pool")
        if "jct_stretch" in g and g["jct_stretch"].notna().any():
            bits.append(f"mean JCT {g['jct_stretch'].mean():.2f}x the lower bound")
        if bits:
            parts.append(f"{wl} at {load_text(str(g['load_kind'].iloc[0]), float(g['load'].iloc[0]))}: " + ", ".join(bits))
    return [f"Regime at the top load (vllm, mean over seeds): {'; '.join(parts)}."] if parts else []


def jct_vs_load(summaries: pd.DataFrame, jobs: pd.DataFrame, stem: Path) -> Figure:
    """The main comparison: mean JCT against load with the lower bound, and each system over pythia."""
    main, systems = _main(summaries)
    workloads = sorted(main["workload"].unique())
    fig, panels = panel_grid(len(workloads), rows_per_panel=2, height=1.95, sharex_rows=True)
    ratios = tables.paired_ratios(main, jobs, "mean_jct_s", SUBJECT)
    for (ax, rax), wl in zip(panels, workloads):
        sub = main[main["workload"] == wl]
        kind, loads = str(sub["load_kind"].iloc[0]), sorted(sub["load"].unique())
        for system in ordered(set(sub["system"])):
            s = sub[sub["system"] == system].groupby("load")["mean_jct_s"].mean()
            ax.plot(s.index, s.values, **line_kwargs(system))
        if "mean_lower_bound_jct_s" in sub and sub["mean_lower_bound_jct_s"].notna().any():
            b = sub.groupby("load")["mean_lower_bound_jct_s"].mean()
            ax.plot(b.index, b.values, label="lower bound", **BOUND_STYLE)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("mean JCT (s)")
        ax.set_title(panel_title(wl, kind, loads))
        ax.grid(True)
        set_load_axis(ax, [kind], loads)
        ax.set_xlabel("")
        r = ratios[ratios["workload"] == wl]
        log = rax.get_xscale() == "log"
        _ratio_axis(rax, r, [s for s in ordered(systems[wl]) if s != SUBJECT], log)
        rax.axhline(1.0, color=system_style(SUBJECT).colour, lw=1.0, label="_pythia = 1")
        bound = pd.Series(dtype=float)
        if "mean_lower_bound_jct_s" in sub:
            p = sub[sub["system"] == SUBJECT].groupby("load")
            bound = (p["mean_lower_bound_jct_s"].mean() / p["mean_jct_s"].mean()).dropna()
            rax.plot(bound.index, bound.values, **{**BOUND_STYLE, "label": "_bound"})
        rax.set_ylim(*ratio_limits(r["lo"], r["hi"], [*r["ratio"], *bound.values]))
        rax.set_ylabel("mean JCT / pythia's")
        rax.grid(True)
        set_load_axis(rax, [kind], loads)
    shared_legend(fig, [a for stack in panels for a in stack], ncol=5)
    fig.tight_layout(h_pad=0.6)
    tail = tables.tail_eligible(main)
    few = sorted(main.loc[~tail, "workload"].unique())
    notes = [f"P95 JCT omitted for {', '.join(few)}: their runs have fewer than {tables.MIN_TAIL_JOBS} completed jobs"
             + (" (the P95 of the other cells is in jct_p95)." if tail.any() else ".")] if few else []
    shows = (
        "The main comparison. Upper panels: mean job completion time (JCT, s) against load for pythia, vllm, "
        "the oracle and the best system of each baseline family (lowest mean JCT at the workload's top load; "
        f"shown: {_choice_text(summaries)}), with the lower bound dashed (mean over seeds of "
        "mean_lower_bound_jct_s, the same jobs for every system); points are means over seeds. Lower panels: "
        "each system's mean JCT over pythia's (1 = pythia, solid line; dashed: the lower bound over pythia's). "
        + INTERVAL_NOTE
    )
    return finish(fig, stem, shows, cells_text(main), _reading(ratios), notes + _regime_note(summaries))


def jct_p95(summaries: pd.DataFrame, jobs: pd.DataFrame, stem: Path) -> Figure | None:
    """P95 JCT over pythia's, only for runs with at least 20 completed jobs; ``None`` if there are none."""
    main, systems = _main(summaries)
    main = main[tables.tail_eligible(main)]
    if main.empty or SUBJECT not in set(main["system"]):
        return None
    keep = set(zip(main["workload"], main["load"], main["seed"], main["system"]))
    if not jobs.empty:
        jobs = jobs[[k in keep for k in zip(jobs["workload"], jobs["load"], jobs["seed"], jobs["system"])]]
    ratios = tables.paired_ratios(main, jobs, "p95_jct_s", SUBJECT)
    workloads = sorted(ratios["workload"].unique())
    if not workloads:
        return None
    fig, panels = panel_grid(len(workloads))
    for (ax,), wl in zip(panels, workloads):
        r = ratios[ratios["workload"] == wl]
        kind, loads = str(r["load_kind"].iloc[0]), sorted(r["load"].unique())
        set_load_axis(ax, [kind], loads)
        _ratio_axis(ax, r, [s for s in ordered(systems[wl]) if s != SUBJECT], ax.get_xscale() == "log")
        ax.axhline(1.0, color=system_style(SUBJECT).colour, lw=1.0, label="pythia (= 1)")
        ax.set_ylim(*ratio_limits(r["lo"], r["hi"], r["ratio"]))
        ax.set_ylabel("P95 JCT / pythia's")
        ax.set_title(panel_title(wl, kind, loads))
        ax.grid(True)
    shared_legend(fig, [p[0] for p in panels], ncol=4)
    fig.tight_layout()
    omitted = sorted(set(summaries["workload"]) - set(workloads))
    notes = [f"Omitted (runs with fewer than {tables.MIN_TAIL_JOBS} completed jobs): {', '.join(omitted)}."] if omitted else []
    shows = ("P95 job completion time of each main system over pythia's, against load, only for runs with at least "
             f"{tables.MIN_TAIL_JOBS} completed jobs (a P95 of fewer jobs is one of the largest jobs, not a tail). "
             + INTERVAL_NOTE)
    top = tables.top_load(ratios)
    v = top[top["system"] == BASELINE]
    reading = "; ".join(f"{row['workload']}: " + times_text(row, SUBJECT, "P95 JCT") for _, row in v.iterrows())
    return finish(fig, stem, shows, cells_text(main), (reading or "vllm has no eligible run.") + ".", notes)


def throughput_vs_load(summaries: pd.DataFrame, jobs: pd.DataFrame, stem: Path) -> Figure:
    """Output token throughput against load for the main systems."""
    main, _ = _main(summaries)
    workloads = sorted(main["workload"].unique())
    fig, panels = panel_grid(len(workloads))
    for (ax,), wl in zip(panels, workloads):
        sub = main[main["workload"] == wl]
        kind, loads = str(sub["load_kind"].iloc[0]), sorted(sub["load"].unique())
        for system in ordered(set(sub["system"])):
            s = sub[sub["system"] == system].groupby("load")["output_tokens_per_s"].mean()
            ax.plot(s.index, s.values, **line_kwargs(system))
        ax.set_ylim(bottom=0)
        ax.set_ylabel("output throughput (tokens/s)")
        ax.set_title(panel_title(wl, kind, loads))
        ax.grid(True)
        set_load_axis(ax, [kind], loads)
    shared_legend(fig, [p[0] for p in panels], ncol=5)
    fig.tight_layout()
    ratios = tables.paired_ratios(main, None, "output_tokens_per_s", BASELINE, [SUBJECT])
    top = tables.top_load(ratios) if not ratios.empty else ratios
    reading = "; ".join(
        f"{r['workload']}: pythia's throughput is {fmt_ratio(r['ratio'])}x vllm's at {load_text(r['load_kind'], r['load'])}"
        + (f" (95% interval {fmt_ratio(r['lo'], r['ratio'])}-{fmt_ratio(r['hi'], r['ratio'])}, paired over "
              f"{int(r['n_seeds'])} seeds)" if np.isfinite(r["lo"]) else " (fewer than 3 seeds: no interval)") for _, r in top.iterrows())
    shows = ("Output tokens per second against load for the main systems (as in jct_vs_load); points are means over "
             "seeds, without error bars (throughput has no per-job pairing; paired ratios to vllm are in "
             "throughput_normalised).")
    return finish(fig, stem, shows, cells_text(main), (reading or "No cell has both pythia and vllm.") + ".")


def jct_cdf(summaries: pd.DataFrame, jobs: pd.DataFrame, stem: Path) -> Figure:
    """CDF of per-job JCT at each workload's top load (lowest seed), with the lower bound's CDF."""
    main, systems = _main(summaries)
    peak = tables.top_load(jobs)
    peak = peak[peak["seed"] == peak.groupby("workload")["seed"].transform("min")]
    peak = tables.select(peak, systems) if systems else peak
    if "completed" in peak:
        peak = peak[peak["completed"].astype(bool)]
    workloads = sorted(peak["workload"].unique())
    fig, panels = panel_grid(len(workloads))
    medians = []
    for (ax,), wl in zip(panels, workloads):
        sub = peak[peak["workload"] == wl]
        for system in ordered(set(sub["system"])):
            jct = np.sort(sub[sub["system"] == system]["jct_s"].dropna().to_numpy())
            if len(jct):
                # Sparse markers keep the steps readable and the systems apart in greyscale.
                ax.step(jct, np.arange(1, len(jct) + 1) / len(jct), where="post",
                        markevery=max(1, len(jct) // 5), **line_kwargs(system, markersize=3.5))
        ref = sub[sub["system"] == (SUBJECT if SUBJECT in set(sub["system"]) else sub["system"].iloc[0])]
        if "lower_bound_jct_s" in ref and ref["lower_bound_jct_s"].notna().any():
            lb = np.sort(ref["lower_bound_jct_s"].dropna().to_numpy())
            ax.step(lb, np.arange(1, len(lb) + 1) / len(lb), where="post", **{**BOUND_STYLE, "label": "lower bound"})
        med = sub.groupby("system")["jct_s"].median()
        if SUBJECT in med and BASELINE in med:
            medians.append(f"{wl}: median JCT {med[SUBJECT]:.0f} s for pythia, {med[BASELINE]:.0f} s for vllm")
        ax.set_xlim(left=0)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("job completion time (s)")
        ax.set_ylabel("fraction of jobs")
        n = sub.groupby("system").size().max()
        ax.set_title(f"{wl}, {load_text(str(sub['load_kind'].iloc[0]), float(sub['load'].iloc[0]))}, "
                     f"seed {int(sub['seed'].iloc[0])} ({n} jobs)")
        ax.grid(True)
    shared_legend(fig, [p[0] for p in panels], ncol=5)
    fig.tight_layout()
    cells = main.merge(peak[["workload", "load", "seed"]].drop_duplicates(), on=["workload", "load", "seed"])
    shows = ("Distribution of job completion time at each workload's top load (lowest seed) for the main systems, "
             "one step per completed job; dashed: the distribution of the jobs' lower bounds (lower_bound_jct_s).")
    return finish(fig, stem, shows, cells_text(cells), ("; ".join(medians) or "pythia or vllm is missing") + ".")


def _dot_panels(rows: pd.DataFrame, xlabel: str, reference: float | None,
                per_seed: pd.DataFrame | None = None) -> tuple[object, list[str]]:
    """One panel per workload at its top load: a row per system, its value and interval."""
    workloads = sorted(rows["workload"].unique())
    n_sys = max(len(set(rows[rows["workload"] == w]["system"])) for w in workloads)
    fig, panels = panel_grid(len(workloads), height=max(1.6, 0.6 + 0.2 * n_sys))
    for (ax,), wl in zip(panels, workloads):
        r = rows[rows["workload"] == wl]
        names = ordered(set(r["system"]))[::-1]  # first in legend order at the top
        for y, system in enumerate(names):
            s = r[r["system"] == system].iloc[0]
            kw = {**line_kwargs(system), "linestyle": "none"}
            if np.isfinite(s.get("lo", np.nan)):
                ax.errorbar([s["ratio"]], [y], xerr=[[s["ratio"] - s["lo"]], [s["hi"] - s["ratio"]]], capsize=2,
                            elinewidth=0.9, **kw)
            else:
                ax.plot([s["ratio"]], [y], **kw)
            if per_seed is not None:
                v = per_seed[(per_seed["workload"] == wl) & (per_seed["system"] == system)]["value"]
                if len(v) > 1:  # one seed's tick would only repeat the marker
                    ax.plot(v, [y] * len(v), "|", color="0.35", ms=7, zorder=1, label="_seed")
        ax.set_yticks(range(len(names)), names)
        ax.set_ylim(-0.6, len(names) - 0.4)
        if reference is not None:
            ax.axvline(reference, color="0.3", lw=0.8)
            lo = np.nanmin(np.r_[r["lo"], r["ratio"], reference])
            hi = np.nanmax(np.r_[r["hi"], r["ratio"], reference])
            pad = 0.08 * max(hi - lo, 0.1)
            ax.set_xlim(max(0.0, lo - pad), hi + pad)
        ax.set_xlabel(xlabel)
        kind, load = str(r["load_kind"].iloc[0]), float(r["load"].iloc[0])
        ax.set_title(f"{wl}, {load_text(kind, load)}")
        ax.grid(True, axis="x")
    fig.tight_layout()
    return fig, workloads


def _normalised(summaries: pd.DataFrame, jobs: pd.DataFrame, stem: Path, metric: str, what: str,
                better: str) -> Figure | None:
    main, _ = _main(summaries)
    top = tables.top_load(main)
    ratios = tables.paired_ratios(top, jobs, metric, BASELINE)
    ratios = ratios[ratios["system"] != BASELINE]
    if ratios.empty:  # no main system beside vllm
        return None
    fig, _ = _dot_panels(ratios, f"{what} / vllm's ({better} is better)", 1.0)
    p = ratios[ratios["system"] == SUBJECT]
    if metric == "mean_jct_s":
        reading = "; ".join(f"{r['workload']}: " + times_text(invert(r, BASELINE), SUBJECT) for _, r in p.iterrows())
    else:
        reading = "; ".join(
            f"{r['workload']}: pythia's {what} is {fmt_ratio(r['ratio'])}x vllm's at {load_text(r['load_kind'], r['load'])}"
            + (f" (95% interval {fmt_ratio(r['lo'], r['ratio'])}-{fmt_ratio(r['hi'], r['ratio'])}, paired over "
               f"{int(r['n_seeds'])} seeds)"
               if np.isfinite(r["lo"]) else " (fewer than 3 seeds: no interval)") for _, r in p.iterrows())
    shows = (f"{what[0].upper() + what[1:]} of each main system over vllm's at each workload's top load (vertical line: "
             f"vllm; {better} is better), with 95% intervals. " + INTERVAL_NOTE
             + ("" if metric == "mean_jct_s" else " Throughput has no per-job pairing: cells with fewer than 3 seeds "
                "show the ratio alone."))
    return finish(fig, stem, shows, cells_text(top), (reading or "pythia or vllm is missing") + ".")


def normalised_bars(summaries: pd.DataFrame, jobs: pd.DataFrame, stem: Path) -> Figure | None:
    """Mean JCT over vllm's at each workload's top load, with paired intervals."""
    return _normalised(summaries, jobs, stem, "mean_jct_s", "mean JCT", "lower")


def throughput_bars(summaries: pd.DataFrame, jobs: pd.DataFrame, stem: Path) -> Figure | None:
    """Output throughput over vllm's at each workload's top load."""
    return _normalised(summaries, jobs, stem, "output_tokens_per_s", "output throughput", "higher")


def prefix_hit_rate(summaries: pd.DataFrame, jobs: pd.DataFrame, stem: Path) -> Figure:
    """Prefix-cache hit rate at each workload's top load: the mean over seeds and each seed."""
    main, _ = _main(summaries)
    top = tables.top_load(main)
    means = top.groupby(["workload", "load_kind", "load", "system"])["prefix_hit_rate"].mean().reset_index()
    means = means.rename(columns={"prefix_hit_rate": "ratio"}).assign(lo=np.nan, hi=np.nan)
    seeds = top[["workload", "system", "prefix_hit_rate"]].rename(columns={"prefix_hit_rate": "value"})
    fig, _ = _dot_panels(means, "prefix hit rate (cached / prompt tokens)", None, per_seed=seeds)
    for ax in fig.axes:
        ax.set_xlim(0, 1)
    parts = []
    for wl, sub in means.groupby("workload"):
        best = sub.sort_values("ratio").iloc[-1]
        own = sub[sub["system"] == SUBJECT]["ratio"]
        parts.append(f"{wl}: highest {best['system']} ({best['ratio']:.2f})"
                     + (f", pythia {own.iloc[0]:.2f}" if len(own) and best["system"] != SUBJECT else ""))
    shows = ("Prefix-cache hit rate (cached prompt tokens / prompt tokens of finished calls) of the main systems at "
             "each workload's top load: the mean over seeds (marker) and each seed's value (ticks, where there are "
             "several seeds). A rate, not a ratio: no interval is drawn.")
    return finish(fig, stem, shows, cells_text(top), "; ".join(parts) + ".")
