"""One fixed colour and marker per system, across every figure."""

from __future__ import annotations

import matplotlib

from pythia.workflow.hashing import stable_key

# Baselines in greys/blues/greens, Pythia in red, its ablations in lighter reds, the oracle black.
SYSTEM_STYLE: dict[str, tuple[str, str]] = {
    "vllm": ("#4c72b0", "o"),
    "vllm-session-affinity": ("#6a8fc7", "v"),
    "vllm-prefix-aware": ("#8fb0dd", "^"),
    "sglang": ("#55a868", "s"),
    "autellix": ("#8172b3", "D"),
    "continuum": ("#937860", "P"),
    "kvflow": ("#da8bc3", "X"),
    "thunderagent": ("#ccb974", "h"),
    "pythia": ("#c44e52", "*"),
    "pythia-no-cache": ("#e3868a", "<"),
    "pythia-no-routing": ("#e9a3a0", ">"),
    "pythia-no-priority": ("#d46a6e", "p"),
    "pythia-no-scaling": ("#f0c0bd", "d"),
    "oracle": ("#222222", "H"),
}
_FALLBACK_COLOURS = ["#8c8c8c", "#64b5cd", "#b47846", "#4878d0", "#ee854a", "#6acc64", "#d65f5f"]
_FALLBACK_MARKERS = ["o", "s", "^", "v", "D", "P", "X"]

# Paper order: baselines first, then Pythia, its ablations and the oracle.
ORDER = list(SYSTEM_STYLE)


def style(system: str) -> tuple[str, str]:
    """(colour, marker) of a system; systems not listed get a stable colour from their name."""
    if system in SYSTEM_STYLE:
        return SYSTEM_STYLE[system]
    k = stable_key("system", system)
    return _FALLBACK_COLOURS[k % len(_FALLBACK_COLOURS)], _FALLBACK_MARKERS[(k >> 8) % len(_FALLBACK_MARKERS)]


def ordered(systems: list[str] | set[str]) -> list[str]:
    """Systems in the fixed legend order (unknown ones last, by name)."""
    known = [s for s in ORDER if s in systems]
    return known + sorted(set(systems) - set(known))


def setup_matplotlib() -> None:
    """Vector-friendly defaults: TrueType fonts in PDF, no interactive backend."""
    matplotlib.use("Agg")
    matplotlib.rcParams.update(
        {"pdf.fonttype": 42, "ps.fonttype": 42, "savefig.bbox": "tight", "figure.dpi": 110, "font.size": 9}
    )
