"""One fixed colour, marker and line style per system, across every figure.

The styles are chosen to survive a greyscale print: within each group of systems that share
a figure (the main comparison, the ablations, the vLLM routing and scaling variants) the
colours differ in luminance as well as hue, every system has its own marker and dash
pattern, and the vLLM variants and the oracle use hollow markers. Pythia is drawn thick and
solid, the oracle thin, black and nearly solid, and the lower bound black with even dashes.

Fonts are sized for a paper column: a panel is :data:`PANEL_WIDTH_IN` (3.3 in) wide and
every text is at least 8 pt there, legends at least 7 pt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matplotlib

from pythia.workflow.hashing import stable_key

# A single-column panel of a two-column paper, and the height that keeps an aspect near 3:2.
PANEL_WIDTH_IN = 3.3
PANEL_HEIGHT_IN = 2.3
# The sizes the figures use; tests/test_figures.py checks every drawn text against the minima.
FONT_PT = 8.0
TITLE_PT = 8.5
LEGEND_PT = 7.5
MIN_FONT_PT = 8.0
MIN_LEGEND_PT = 7.0
DPI = 300


@dataclass(frozen=True)
class SystemStyle:
    """How one system is drawn: colour, marker, dash pattern, marker fill and line width."""

    colour: str
    marker: str
    linestyle: str | tuple[float, tuple[float, ...]]
    filled: bool = True
    linewidth: float = 1.2


# Luminance (0.299 R + 0.587 G + 0.114 B) is in the comment after each colour: neighbours in
# one figure are kept apart in grey as well as in hue.
SYSTEM_STYLE: dict[str, SystemStyle] = {
    "vllm": SystemStyle("#0072b2", "o", (0, (6, 1.5))),  # 0.34
    "vllm-session-affinity": SystemStyle("#56b4e9", "v", (0, (3, 1)), filled=False),  # 0.62
    "vllm-prefix-aware": SystemStyle("#1f3d7a", "^", (0, (6, 1.5, 1.5, 1.5)), filled=False),  # 0.23
    "vllm-autoscale": SystemStyle("#7b68b5", "8", (0, (1.5, 1.5)), filled=False),  # 0.46
    "sglang": SystemStyle("#009e73", "s", (0, (4, 1.5, 1, 1.5, 1, 1.5))),  # 0.42
    "autellix": SystemStyle("#cc79a7", "D", (0, (2, 1))),  # 0.59
    "continuum": SystemStyle("#f0a830", "P", (0, (8, 2, 2, 2))),  # 0.69
    "kvflow": SystemStyle("#4a3000", "X", (0, (1, 1))),  # 0.20
    "thunderagent": SystemStyle("#999933", "h", (0, (5, 1, 1, 1, 1, 1, 1, 1))),  # 0.55
    "pythia": SystemStyle("#c0142e", "*", "solid", linewidth=1.8),  # 0.29
    "pythia-no-cache": SystemStyle("#e8776b", "<", (0, (5, 2, 1, 2))),  # 0.59
    "pythia-no-routing": SystemStyle("#f5b7a6", ">", (0, (2, 2))),  # 0.78
    "pythia-no-priority": SystemStyle("#5c0a1a", "p", (0, (1, 2))),  # 0.14
    "pythia-no-scaling": SystemStyle("#a8497a", "d", (0, (8, 2))),  # 0.42
    "oracle": SystemStyle("#000000", "H", (0, (8, 1)), filled=False, linewidth=1.0),  # 0.00
}
# The lower bound is the one black dashed line without markers in every figure.
BOUND_STYLE: dict[str, Any] = {"color": "black", "linestyle": (0, (2.5, 2.5)), "linewidth": 1.0, "marker": None}

_FALLBACK_COLOURS = ["#8c8c8c", "#64b5cd", "#b47846", "#4878d0", "#ee854a", "#6acc64", "#d65f5f"]
_FALLBACK_MARKERS = ["o", "s", "^", "v", "D", "P", "X"]
_FALLBACK_DASHES: list[tuple[float, tuple[float, ...]]] = [(0, (3, 1)), (0, (5, 1, 1, 1)), (0, (1, 2)), (0, (4, 2))]

# Paper order: baselines first, then Pythia, its ablations and the oracle.
ORDER = list(SYSTEM_STYLE)


def system_style(system: str) -> SystemStyle:
    """The style of a system; systems not listed get a stable style derived from their name."""
    if system in SYSTEM_STYLE:
        return SYSTEM_STYLE[system]
    k = stable_key("system", system)
    return SystemStyle(_FALLBACK_COLOURS[k % len(_FALLBACK_COLOURS)], _FALLBACK_MARKERS[(k >> 8) % len(_FALLBACK_MARKERS)],
                       _FALLBACK_DASHES[(k >> 16) % len(_FALLBACK_DASHES)])


def style(system: str) -> tuple[str, str]:
    """(colour, marker) of a system (the benchmarks' figures use this pair)."""
    s = system_style(system)
    return s.colour, s.marker


def line_kwargs(system: str, *, markersize: float = 4.5) -> dict[str, Any]:
    """Keyword arguments for ``plot``/``errorbar`` that draw ``system`` in its fixed style."""
    s = system_style(system)
    return {
        "color": s.colour, "marker": s.marker, "linestyle": s.linestyle, "linewidth": s.linewidth,
        "markersize": markersize * (1.5 if s.marker == "*" else 1.0),  # a star reads small at equal size
        "markerfacecolor": s.colour if s.filled else "white", "markeredgecolor": s.colour,
        "markeredgewidth": 0.9, "label": system,
    }


def luminance(colour: str) -> float:
    """Grey level of a colour as a greyscale print renders it (0 black, 1 white)."""
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(colour)
    return 0.299 * r + 0.587 * g + 0.114 * b


def ordered(systems: list[str] | set[str]) -> list[str]:
    """Systems in the fixed legend order (unknown ones last, by name)."""
    known = [s for s in ORDER if s in systems]
    return known + sorted(set(systems) - set(known))


def setup_matplotlib() -> None:
    """Paper defaults: TrueType fonts in PDF, 300 dpi PNG, column-width font sizes, no GUI backend."""
    matplotlib.use("Agg")
    matplotlib.rcParams.update({
        "pdf.fonttype": 42, "ps.fonttype": 42, "savefig.bbox": "tight", "savefig.pad_inches": 0.03,
        "savefig.dpi": DPI, "figure.dpi": 100,
        "font.size": FONT_PT, "axes.titlesize": TITLE_PT, "axes.labelsize": FONT_PT,
        "xtick.labelsize": FONT_PT, "ytick.labelsize": FONT_PT, "legend.fontsize": LEGEND_PT,
        "legend.title_fontsize": LEGEND_PT, "figure.titlesize": TITLE_PT,
        "axes.linewidth": 0.6, "grid.linewidth": 0.4, "grid.alpha": 0.5, "lines.linewidth": 1.2,
        "errorbar.capsize": 2.0, "axes.spines.top": False, "axes.spines.right": False,
    })
