"""The profiler's knobs, validated once.

Every threshold of the profiler lives here, with its default and its meaning; ``docs/profiler.md``
explains how each one is used. Errors a user can cause (a negative threshold, a confidence
outside (0, 1)) raise :class:`~pythia.errors.PythiaInputError` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pythia.errors import PythiaInputError


@dataclass(frozen=True)
class ProfilerConfig:
    """Configuration of :class:`~pythia.profiler.predictor.Profiler`.

    Attributes:
        prune_threshold: non-self transitions of a state whose probability is below this are
            pruned and the rest renormalised; the same share trims rare widths and run
            lengths from the bounded regular expression. In [0, 1).
        min_jobs: cold start: a workflow type gives no predictions (``None``) until this many
            jobs of it have been observed (after a drift reset, counted again).
        quantile: the output-length quantile ``p`` the upper bound covers (default 0.99).
        confidence: the confidence ``1 - delta`` that the bound is at least that quantile.
        max_unroll: loops are unrolled into states ``(role, visit)`` for visits
            ``0 .. max_unroll - 1``; later visits share the last state. 1 gives one state per role.
        max_length_samples: output lengths kept per role (the most recent ones).
        drift: whether drift detection runs.
        drift_allowance: the CUSUM allowance (``k``), in standard deviations of the monitored
            quantity: shifts smaller than this are not accumulated.
        drift_threshold: the CUSUM decision threshold (``h``), in standard deviations.
        drift_warmup: output lengths a role's detector uses to estimate its reference mean
            and spread before it may fire.
        drift_warmup_jobs: jobs past ``min_jobs`` from which the reference automaton of the
            transition and run-length detectors is learned before they start.
        drift_clip: standardised observations are clipped to +/- this, so one outlier
            cannot fire the detector alone.
        drift_keep: on drift, old history is multiplied by this weight (transition counts) or
            thinned to this share (length samples); 0 resets it.
        fixed_min_jobs: a prompt segment key seen in at least this many jobs of a type is a
            fixed instruction (a system prompt), not job context.
        head_segments: only the first this-many segments of a new agent's prompt are
            candidates for fixed instructions (bounds the memory of key counts).
        max_horizon: the longest horizon (in call generations) of
            :meth:`~pythia.profiler.predictor.Profiler.projection`.
        regex_min_path_prob: paths less likely than this are left out of the regular
            expression summary.
    """

    prune_threshold: float = 0.05
    min_jobs: int = 20
    quantile: float = 0.99
    confidence: float = 0.95
    max_unroll: int = 4
    max_length_samples: int = 20_000
    drift: bool = True
    drift_allowance: float = 0.5
    drift_threshold: float = 15.0
    drift_warmup: int = 300
    drift_warmup_jobs: int = 50
    drift_clip: float = 4.0
    drift_keep: float = 0.0
    fixed_min_jobs: int = 2
    head_segments: int = 4
    max_horizon: int = 16
    regex_min_path_prob: float = 0.01

    def __post_init__(self) -> None:
        def fail(name: str, rule: str) -> None:
            raise PythiaInputError(f"profiler option {name}={getattr(self, name)!r} must be {rule}")

        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_num(self.prune_threshold) or not 0.0 <= self.prune_threshold < 1.0:
            fail("prune_threshold", "a number in [0, 1)")
        if not is_num(self.drift_keep) or not 0.0 <= self.drift_keep <= 1.0:
            fail("drift_keep", "a number in [0, 1]")
        for name in ("quantile", "confidence"):
            v = getattr(self, name)
            if not is_num(v) or not 0.0 < v < 1.0:
                fail(name, "a number strictly between 0 and 1")
        if not is_num(self.regex_min_path_prob) or not 0.0 < self.regex_min_path_prob < 1.0:
            fail("regex_min_path_prob", "a number strictly between 0 and 1")
        for name, lo in (
            ("min_jobs", 0),
            ("max_unroll", 1),
            ("max_length_samples", 1),
            ("drift_warmup", 2),
            ("drift_warmup_jobs", 2),
            ("fixed_min_jobs", 2),
            ("head_segments", 1),
            ("max_horizon", 1),
        ):
            v = getattr(self, name)
            if not is_int(v) or v < lo:
                fail(name, f"an integer >= {lo}")
        if not is_num(self.drift_allowance) or self.drift_allowance < 0:
            fail("drift_allowance", "a non-negative number")
        for name in ("drift_threshold", "drift_clip"):
            v = getattr(self, name)
            if not is_num(v) or v <= 0:
                fail(name, "a positive number")
        if not isinstance(self.drift, bool):
            fail("drift", "true or false")

    @property
    def delta(self) -> float:
        """The bound's failure probability, ``1 - confidence``."""
        return 1.0 - self.confidence
