"""The paper's figures, regenerated from result tables alone.

Every figure is written as vector PDF (TrueType fonts) and a 300 dpi PNG, draws each system
in one fixed colour, marker and line style (:mod:`pythia.analysis.style`), labels its axes
with units and names the workload and load in its titles. Uncertainty is always a 95%
interval of a ratio paired per seed (or per job, with fewer than three seeds): see
:func:`pythia.analysis.tables.paired_ratios`. A figure whose data are absent (no oracle
runs, no ablations, no run with enough jobs for a P95) is skipped and named in the notes
rather than drawn empty.

The figures themselves live in :mod:`pythia.analysis.figures_main` (the main comparison and
the top-load figures), :mod:`pythia.analysis.figures_ratio` (normalised to pythia) and
:mod:`pythia.analysis.figures_timeline` (single runs); this module runs them and writes the
captioned index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from pythia.analysis import tables
from pythia.analysis.figures_common import Figure
from pythia.analysis.figures_main import (
    jct_cdf, jct_p95, jct_vs_load, normalised_bars, prefix_hit_rate, throughput_bars, throughput_vs_load,
)
from pythia.analysis.figures_ratio import ablations, oracle_gap, router_variants
from pythia.analysis.figures_timeline import autoscale_timeline, calls_in_flight, fidelity, nvml_timeline
from pythia.analysis.style import setup_matplotlib

BASELINE = "vllm"
ABLATION_PREFIX = tables.ABLATION_PREFIX

Draw = Callable[[pd.DataFrame, pd.DataFrame, Path], "Figure | None"]


def _has(*systems: str) -> Callable[[pd.DataFrame, pd.DataFrame], bool]:
    return lambda s, j: set(systems) <= set(s["system"])


# name: (function, whether its data are present, what is missing when they are not)
FIGURES: dict[str, tuple[Draw, Callable[[pd.DataFrame, pd.DataFrame], bool], str]] = {
    "jct_vs_load": (jct_vs_load, lambda s, j: True, ""),
    "jct_p95": (jct_p95, lambda s, j: bool(tables.tail_eligible(s).any()) and "p95_jct_s" in s,
                f"no run has at least {tables.MIN_TAIL_JOBS} completed jobs, so no P95 is reported"),
    "throughput_vs_load": (throughput_vs_load, lambda s, j: "output_tokens_per_s" in s, "no throughput column"),
    "jct_cdf_peak": (jct_cdf, lambda s, j: not j.empty, "the per-job table is empty"),
    "jct_normalised": (normalised_bars, _has(BASELINE), f"no {BASELINE} runs"),
    "throughput_normalised": (throughput_bars, lambda s, j: BASELINE in set(s["system"]) and "output_tokens_per_s" in s,
                              f"no {BASELINE} runs or no throughput column"),
    "prefix_hit_rate": (prefix_hit_rate, lambda s, j: "prefix_hit_rate" in s, "no prefix_hit_rate column"),
    "ablations": (ablations, lambda s, j: "pythia" in set(s["system"]) and s["system"].str.startswith(ABLATION_PREFIX).any(),
                  "no pythia-no-* runs beside pythia"),
    "router_variants": (router_variants,
                        lambda s, j: "pythia" in set(s["system"]) and bool(set(tables.VARIANTS) & set(s["system"])),
                        "no vllm or vllm variant runs beside pythia"),
    "oracle_gap": (oracle_gap, _has("pythia", "oracle"), "no oracle runs beside pythia"),
}


def make_all(summaries: pd.DataFrame, jobs: pd.DataFrame, out_dir: str | Path) -> tuple[list[Figure], list[str]]:
    """Draw every figure whose data are present; returns the figures and notes on skipped ones."""
    setup_matplotlib()
    out_dir = Path(out_dir)
    drawn: list[Figure] = []
    notes: list[str] = []
    if summaries.empty:
        return drawn, [f"{name}: skipped, the results hold no runs" for name in FIGURES]
    for name, (fn, has_data, missing) in FIGURES.items():
        if not has_data(summaries, jobs):
            notes.append(f"{name}: skipped, {missing}")
            continue
        fig = fn(summaries, jobs, out_dir / name)
        if fig is None:
            notes.append(f"{name}: skipped, {missing or 'its data are not in the results'}")
        else:
            drawn.append(fig)
    return drawn, notes


def write_index(figures: list[Figure], notes: list[str], path: str | Path) -> None:
    """``index.md`` beside the figures: a caption per figure, then the figures skipped and why."""
    path = Path(path)
    lines = [
        "# Figures", "",
        "Drawn from `results/tables/summaries.parquet` and `jobs.parquet` (and, for the timeline, the run it names). "
        "Ratios are paired: each system against the other on the same seed, or on the same jobs where a cell has "
        "fewer than 3 seeds; intervals are 95% bootstrap intervals of those paired ratios.", "",
    ]
    for f in figures:
        files = ", ".join(f"[{p.name}]({p.name})" for p in f.files)
        lines += [f"## {f.name}", "", f"Files: {files}", "", f"**Shows.** {f.shows}", "", f"**Cells.** {f.cells}", "",
                  f"**Reading.** {f.reading}", ""]
        for n in f.notes:
            lines += [f"**Note.** {n}", ""]
    if notes:
        lines += ["## Skipped", ""] + [f"- {n}" for n in notes] + [""]
    path.write_text("\n".join(lines).rstrip() + "\n")


__all__ = [
    "FIGURES", "Figure", "autoscale_timeline", "calls_in_flight", "fidelity", "make_all", "nvml_timeline", "write_index",
]
