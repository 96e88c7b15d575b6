"""The context clamp: how a call longer than a model's context is cut, the same for every backend.

A trace may hold calls longer than the context of the model that serves them (a recorded
session replayed on a smaller model, a pool with a short ``context_len``). Such a call is
clamped, the same way for every system and by both the simulator
(:mod:`pythia.sim.runtime`) and the replay client (:mod:`pythia.bench.replay`), so that
simulated and real runs of one trace serve the same calls: the output keeps at most
``context // CLAMP_OUTPUT_SHARE`` tokens (at least 1) and the prompt keeps its first
``context - output`` tokens. Cutting the prompt's tail, never its head, keeps prefixes shared
between calls shared.
"""

from __future__ import annotations

import numpy as np

from pythia.workflow.trace import segments

CLAMP_OUTPUT_SHARE = 8  # a clamped call keeps at most context // 8 output tokens


def cut_segments(segs: np.ndarray, tokens: int) -> np.ndarray:
    """The first ``tokens`` tokens of a segment list."""
    if tokens <= 0:
        return segments([])
    ends = np.cumsum(segs[:, 2])
    n = int(np.searchsorted(ends, tokens, side="left")) + 1
    out = segs[:n].copy()
    out[-1, 2] -= int(ends[n - 1]) - tokens
    return out


def clamp_lengths(prompt: int, output: int, context: int) -> tuple[int, int]:
    """Prompt and output lengths that fit ``context`` (unchanged when they already fit)."""
    output = max(1, output)
    if prompt + output <= context:
        return prompt, output
    out = min(output, max(1, context // CLAMP_OUTPUT_SHARE))
    return min(prompt, context - out), out
