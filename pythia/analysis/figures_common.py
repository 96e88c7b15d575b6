"""What every figure shares: the drawn-figure record, saving, layout, and caption text.

A figure function returns a :class:`Figure`: its files (PDF and a 300 dpi PNG) and a caption
computed from the same data (what it shows, the cells, seeds and jobs behind it, and a
one-line reading), which :func:`pythia.analysis.figures.write_index` writes to ``index.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from pythia.analysis.style import DPI, PANEL_HEIGHT_IN, PANEL_WIDTH_IN

# Panels per row: two 3.3-inch panels fill a two-column page at their design size.
MAX_COLUMNS = 2


@dataclass
class Figure:
    """One drawn figure: its files and its caption parts (Markdown)."""

    name: str
    files: list[Path]
    shows: str
    cells: str
    reading: str
    notes: list[str] = field(default_factory=list)
    # Smallest text and legend sizes in the drawn figure (points) and its legend entries,
    # recorded when saving so that tests can check what was drawn, not only what was asked for.
    min_text_pt: float = math.nan
    min_legend_pt: float = math.nan
    legend_labels: list[str] = field(default_factory=list)


def _font_audit(fig: Any) -> dict[str, Any]:
    """Smallest font size of non-empty texts outside and inside legends, and the legend entries."""
    from matplotlib.legend import Legend
    from matplotlib.text import Text

    legends = fig.findobj(Legend)
    legend_texts = {id(t) for leg in legends for t in leg.get_texts()} | {id(leg.get_title()) for leg in legends}
    text, legend = math.inf, math.inf
    for t in fig.findobj(Text):
        if not t.get_visible() or not t.get_text().strip():
            continue
        if id(t) in legend_texts:
            legend = min(legend, t.get_fontsize())
        else:
            text = min(text, t.get_fontsize())
    labels = [t.get_text() for leg in legends for t in leg.get_texts()]
    return {"min_text_pt": text, "min_legend_pt": legend, "legend_labels": labels}


def save(fig: Any, stem: Path) -> tuple[list[Path], dict[str, Any]]:
    """Write ``stem``.pdf and ``stem``.png (300 dpi); returns the files and the font audit."""
    import matplotlib.pyplot as plt

    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.canvas.draw()  # lay out tick labels so that the audit sees them
    audit = _font_audit(fig)
    out = []
    for ext in ("pdf", "png"):
        path = stem.with_suffix(f".{ext}")
        # Fixed metadata so a rerun on the same data gives the same bytes.
        meta = {"CreationDate": None} if ext == "pdf" else {"Software": None}
        fig.savefig(path, metadata=meta, dpi=DPI)
        out.append(path)
    plt.close(fig)
    return out, audit


def finish(fig: Any, stem: Path, shows: str, cells: str, reading: str, notes: Iterable[str] = ()) -> Figure:
    """Save ``fig`` and wrap it with its caption."""
    files, audit = save(fig, stem)
    return Figure(stem.name, files, shows, cells, reading, list(notes), **audit)


def panel_grid(n: int, rows_per_panel: int = 1, height: float = PANEL_HEIGHT_IN,
               sharex_rows: bool = False) -> tuple[Any, list[list[Any]]]:
    """A figure of ``n`` panels (each ``rows_per_panel`` axes tall) at most two to a row.

    Returns the figure and, per panel, its list of axes top to bottom; unused axes are removed.
    """
    import matplotlib.pyplot as plt

    cols = min(MAX_COLUMNS, max(1, n))
    grid_rows = math.ceil(max(1, n) / cols)
    fig, axes = plt.subplots(grid_rows * rows_per_panel, cols, squeeze=False,
                             figsize=(PANEL_WIDTH_IN * cols, height * grid_rows * rows_per_panel))
    panels = []
    for k in range(grid_rows * cols):
        r, c = divmod(k, cols)
        stack = [axes[r * rows_per_panel + i][c] for i in range(rows_per_panel)]
        if k >= n:
            for ax in stack:
                ax.remove()
            continue
        if sharex_rows:
            for ax in stack[1:]:
                ax.sharex(stack[0])
        panels.append(stack)
    return fig, panels


def shared_legend(fig: Any, axes: Iterable[Any], ncol: int = 4) -> None:
    """One legend above the figure with every labelled line of ``axes`` (first label wins)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if not lab.startswith("_"):
                seen.setdefault(lab, h)
    if seen:
        # About 1.3 in per entry (a long system name and its handle): never wider than the figure.
        ncol = max(1, min(ncol, len(seen), int(fig.get_figwidth() / 1.3)))
        fig.legend(list(seen.values()), list(seen), loc="lower center", bbox_to_anchor=(0.5, 1.0),
                   ncol=ncol, frameon=False, handlelength=2.6, columnspacing=1.2)


# --------------------------------------------------------------------------- load axes and text


def load_text(kind: str, value: float) -> str:
    """A load level in words: ``64 jobs in flight`` or ``2 jobs/s``."""
    return f"{value:g} jobs in flight" if kind == "concurrency" else f"{value:g} jobs/s"


def load_axis_label(kinds: Iterable[str]) -> str:
    """The x label of a load axis, with its unit."""
    kinds = set(kinds)
    if kinds == {"concurrency"}:
        return "load (jobs in flight)"
    if kinds == {"rate"}:
        return "load (arrival rate, jobs/s)"
    return "load"


def loads_text(kind: str, loads: Iterable[float]) -> str:
    """Load levels in words: ``2, 4 and 8 jobs in flight``."""
    vals = [f"{v:g}" for v in sorted(set(loads))]
    joined = vals[0] if len(vals) == 1 else ", ".join(vals[:-1]) + " and " + vals[-1]
    return f"{joined} jobs in flight" if kind == "concurrency" else f"{joined} jobs/s"


def panel_title(workload: str, kind: str, loads: Iterable[float]) -> str:
    """A panel title naming the workload and its load levels."""
    loads = sorted(set(loads))
    if len(loads) == 1:
        return f"{workload}, {load_text(kind, loads[0])}"
    unit = "jobs in flight" if kind == "concurrency" else "jobs/s"
    return f"{workload}, {loads[0]:g}-{loads[-1]:g} {unit}"


def set_load_axis(ax: Any, kinds: Iterable[str], loads: Iterable[float]) -> None:
    """Load ticks at the levels run; a log2 axis when the levels double up to 8x or more."""
    loads = sorted(set(float(v) for v in loads))
    if len(loads) > 2 and loads[0] > 0 and loads[-1] / loads[0] >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(loads, [f"{v:g}" for v in loads])
    ax.minorticks_off()
    if len(loads) == 1:
        ax.set_xlim(loads[0] * 0.85, loads[0] * 1.15)
    ax.set_xlabel(load_axis_label(kinds))


def dodge(loads: np.ndarray, k: int, n: int, log: bool) -> np.ndarray:
    """x positions of the ``k``-th of ``n`` series, spread a little so that intervals do not overlap.

    The spread is a fixed share of the gap between load levels (a third of an octave on a
    log2 axis, a fifth of the level on a linear one), whatever the number of series.
    """
    t = (k - (n - 1) / 2) / max(n - 1, 1) if n > 1 else 0.0
    return loads * 2.0 ** (t / 3) if log else loads * (1 + t / 5)


def cells_text(df: pd.DataFrame) -> str:
    """The cells behind a figure: per workload its loads, seeds and jobs per run."""
    parts = []
    for wl, sub in df.groupby("workload", sort=True):
        kind = str(sub["load_kind"].iloc[0])
        seeds = sorted(sub["seed"].unique())
        col = "jobs_submitted" if "jobs_submitted" in sub else None
        jobs = ""
        if col is not None and sub[col].notna().any():
            lo, hi = int(sub[col].min()), int(sub[col].max())
            jobs = f", {lo} jobs per run" if lo == hi else f", {lo}-{hi} jobs per run"
        seed_text = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"
        parts.append(f"{wl} at {loads_text(kind, sub['load'])}, {seed_text}{jobs}")
    return "; ".join(parts) + "."


def fmt_ratio(x: float, near: float | None = None) -> str:
    """A ratio to two decimals, or three when ``near`` (default ``x``) is within 10% of 1.

    Near 1, two decimals would print an interval as 1.00-1.01; an interval's ends take the
    decimals of its point estimate so that they read alike.
    """
    return f"{x:.3f}" if abs((x if near is None else near) - 1) < 0.1 else f"{x:.2f}"


def method_text(row: pd.Series) -> str:
    """How a ratio's interval was obtained, in words."""
    if row["method"] == "seeds":
        return f"paired over {int(row['n_seeds'])} seeds"
    if row["method"] == "jobs":
        return f"paired over {int(row['n_jobs'])} jobs of {int(row['n_seeds'])} seed{'s' if row['n_seeds'] != 1 else ''}"
    return "point estimate"


def invert(row: pd.Series, system: str) -> pd.Series:
    """A ratio row ``a / b`` turned into ``b / a`` (interval bounds swap), now naming ``system``."""
    out = row.copy()
    out["ratio"], out["lo"], out["hi"] = 1 / row["ratio"], 1 / row["hi"], 1 / row["lo"]
    out["system"] = system
    return out


def times_text(row: pd.Series, subject: str, metric: str = "mean JCT") -> str:
    """``subject``'s metric against the row's system, from a ratio row ``system / subject``.

    Above 1 the sentence says how many times lower ``subject``'s value is, below 1 how many
    times higher (the interval inverted accordingly).
    """
    r, lo, hi = float(row["ratio"]), float(row["lo"]), float(row["hi"])
    where = load_text(str(row["load_kind"]), float(row["load"]))
    factor, word, (a, b) = (r, "lower", (lo, hi)) if r >= 1 else (1 / r, "higher", (1 / hi, 1 / lo))
    if np.isfinite(lo):
        band = f"95% interval {fmt_ratio(a, factor)}-{fmt_ratio(b, factor)}x, {method_text(row)}"
        if lo <= 1 <= hi:
            band += "; the interval includes 1"
    else:
        band = "no interval: fewer than 3 seeds and no per-job table"
    return f"{subject}'s {metric} is {fmt_ratio(factor)}x {word} than {row['system']}'s at {where} ({band})"


def ratio_limits(lo: Iterable[float], hi: Iterable[float], points: Iterable[float], min_span: float = 0.2) -> tuple[float, float]:
    """y limits of a ratio axis: include 1.0, every interval, and at least ``min_span`` around 1."""
    vals = [v for v in [*lo, *hi, *points] if np.isfinite(v)] + [1.0]
    bottom, top = min(vals), max(vals)
    pad = 0.08 * max(top - bottom, 1e-9)
    bottom, top = bottom - pad, top + pad
    # Never narrower than 1 +- min_span / 2: a 1% gap must not fill the axis and read as a large one.
    return max(0.0, min(bottom, 1 - min_span / 2)), max(top, 1 + min_span / 2)
