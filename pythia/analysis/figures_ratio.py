"""Figures normalised to pythia: its ablations, the vLLM routing and scaling variants, the oracle gap.

Each shows a ratio of mean JCT per cell with its 95% paired interval
(:func:`pythia.analysis.tables.paired_ratios`) against load, one panel per workload.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from pythia.analysis import tables
from pythia.analysis.figures_common import (
    Figure, cells_text, dodge, finish, fmt_ratio, load_text, method_text, panel_grid, panel_title, ratio_limits,
    set_load_axis, shared_legend, times_text,
)
from pythia.analysis.figures_main import INTERVAL_NOTE, SUBJECT
from pythia.analysis.style import line_kwargs, ordered, system_style


def _ratio_row_text(row: pd.Series, metric: str = "mean JCT") -> str:
    """``system's mean JCT is 1.23x pythia's at 8 jobs in flight (95% interval ..., paired ...)``."""
    where = load_text(str(row["load_kind"]), float(row["load"]))
    r = float(row["ratio"])
    band = (f"95% interval {fmt_ratio(row['lo'], r)}-{fmt_ratio(row['hi'], r)}, {method_text(row)}" if np.isfinite(row["lo"])
            else "no interval: fewer than 3 seeds and no per-job table")
    return f"{row['system']}'s {metric} is {fmt_ratio(row['ratio'])}x {row['baseline']}'s at {where} ({band})"


def _against(summaries: pd.DataFrame, jobs: pd.DataFrame, stem: Path, pick: Callable[[set[str]], list[str]],
             baseline: str, ylabel: str, reference_label: str) -> tuple[Figure | None, pd.DataFrame, pd.DataFrame]:
    """Ratio-against-load panels of the systems ``pick`` chooses, over ``baseline`` (None if none ran)."""
    keep = summaries["system"].isin(set(pick(set(summaries["system"]))) | {baseline})
    sub = summaries[keep]
    ratios = tables.paired_ratios(sub, jobs, "mean_jct_s", baseline)
    ratios = ratios[ratios["system"] != baseline]
    if ratios.empty:
        return None, ratios, sub
    workloads = sorted(ratios["workload"].unique())
    fig, panels = panel_grid(len(workloads))
    for (ax,), wl in zip(panels, workloads):
        r = ratios[ratios["workload"] == wl]
        kind, loads = str(r["load_kind"].iloc[0]), sorted(r["load"].unique())
        set_load_axis(ax, [kind], loads)
        names = ordered(set(r["system"]))
        for k, system in enumerate(names):
            s = r[r["system"] == system].sort_values("load")
            x = dodge(s["load"].to_numpy(float), k, len(names), ax.get_xscale() == "log")
            err = np.vstack([s["ratio"] - s["lo"], s["hi"] - s["ratio"]])
            ax.errorbar(x, s["ratio"], yerr=np.where(np.isfinite(err), err, 0.0), capsize=2, elinewidth=0.8,
                        **line_kwargs(system))
        ref = system_style(baseline)
        ax.axhline(1.0, color=ref.colour, lw=1.0, linestyle=ref.linestyle, label=reference_label)
        ax.set_ylim(*ratio_limits(r["lo"], r["hi"], r["ratio"]))
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title(wl, kind, loads))
        ax.grid(True)
    shared_legend(fig, [p[0] for p in panels], ncol=3)
    fig.tight_layout()
    return fig, ratios, sub


def ablations(summaries: pd.DataFrame, jobs: pd.DataFrame, stem: Path) -> Figure | None:
    """Pythia without each mechanism: mean JCT over pythia's against load."""
    fig, ratios, sub = _against(summaries, jobs, stem, lambda s: sorted(x for x in s if x.startswith(tables.ABLATION_PREFIX)),
                                SUBJECT, "mean JCT / pythia's", "pythia (= 1)")
    if fig is None:
        return None
    top = tables.top_load(ratios)
    reading = "; ".join(f"{wl}: costliest removal, " + _ratio_row_text(g.sort_values("ratio").iloc[-1])
                        for wl, g in top.groupby("workload", sort=True))
    shows = ("Pythia with one mechanism removed (pythia-no-*): each variant's mean JCT over full pythia's on the same "
             "seed, against load (above 1: the mechanism helps). " + INTERVAL_NOTE)
    return finish(fig, stem, shows, cells_text(sub), reading + ".")


def router_variants(summaries: pd.DataFrame, jobs: pd.DataFrame, stem: Path) -> Figure | None:
    """vLLM and its routing and autoscaling variants: mean JCT over pythia's against load."""
    fig, ratios, sub = _against(summaries, jobs, stem, lambda s: [x for x in tables.VARIANTS if x in s],
                                SUBJECT, "mean JCT / pythia's", "pythia (= 1)")
    if fig is None:
        return None
    top = tables.top_load(ratios)
    reading = "; ".join(f"{wl}: against the best of vllm and its variants, "
                        + times_text(g.sort_values("ratio").iloc[0], SUBJECT)
                        for wl, g in top.groupby("workload", sort=True))
    shows = ("vLLM and its routing and scaling variants (session affinity, prefix-aware routing, reactive "
             "autoscaling): each one's mean JCT over pythia's on the same seed, against load (above 1: slower than "
             "pythia). The main comparison shows only the best variant per workload. " + INTERVAL_NOTE)
    return finish(fig, stem, shows, cells_text(sub), reading + ".")


def oracle_gap(summaries: pd.DataFrame, jobs: pd.DataFrame, stem: Path) -> Figure | None:
    """Pythia's mean JCT over the clairvoyant oracle's, against load."""
    fig, ratios, sub = _against(summaries, jobs, stem, lambda s: [SUBJECT], "oracle",
                                "pythia's mean JCT / oracle's", "oracle (= 1)")
    if fig is None:
        return None
    worst = ratios.sort_values("ratio").iloc[-1]
    best = ratios.sort_values("ratio").iloc[0]
    reading = (f"largest gap: {worst['workload']}, {_ratio_row_text(worst)}; smallest: {best['workload']}, "
               f"{_ratio_row_text(best)}")
    below = ratios[ratios["hi"] < 1]
    if len(below):
        reading += (f"; pythia is faster than the oracle (interval below 1) in {len(below)} cell"
                    f"{'s' if len(below) != 1 else ''}: the oracle is pythia's mechanisms fed true "
                    "predictions, not an optimal schedule")
    shows = ("Pythia's mean JCT over the clairvoyant oracle's on the same seed, against load (1 = the oracle; the "
             "axis always spans at least 0.9-1.1 so that a small gap is not drawn as a large one). " + INTERVAL_NOTE)
    return finish(fig, stem, shows, cells_text(sub), reading + ".")
