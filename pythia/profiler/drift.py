"""Drift detection: a two-sided Page-Hinkley (CUSUM) test on a standardised stream.

A detector first watches ``warmup`` observations to estimate the stream's reference mean
``mu`` and standard deviation ``sigma``. Afterwards each observation ``x`` becomes
``z = clip((x - mu) / sigma, -c, c)`` and two cumulative sums are kept,

    g+ = max(0, g+ + z - k)        (the mean has gone up)
    g- = max(0, g- - z - k)        (the mean has gone down)

and the detector fires when either exceeds ``h``. ``k`` (the allowance) ignores shifts
smaller than ``k`` standard deviations; ``h`` trades false alarms against detection delay.
For a Gaussian stream, ``k = 0.5`` and ``h = 15`` (the defaults) give an average run of
about 10^7 observations between false alarms (``h = 10``: about 3 * 10^4, too few for a
role that makes tens of thousands of calls) and detect a one-standard-deviation shift after
about 32 observations.
The index at which the firing sum last left zero estimates the change point, so the caller
can keep only the observations after it.

The profiler monitors, per workflow type, ``log(1 + output_tokens)`` per role (output
lengths are heavy-tailed; the log makes them close to Gaussian), and per finished job two
scores against a *reference* automaton frozen when monitoring starts: the summed surprise
of its transitions, ``sum(-log P(target | state) - H(state))``, divided by the square root of
the summed variances the reference predicts (zero mean and unit variance while the
reference is right, whichever way the frequencies move), and the mean standardised log run
length, scaled the same way. These two arrive standardised, so their detectors need no
warm-up.
"""

from __future__ import annotations

import math


class PageHinkley:
    """A two-sided Page-Hinkley / CUSUM detector with a warm-up reference.

    Args:
        allowance: ``k``, in reference standard deviations.
        threshold: ``h``, in reference standard deviations.
        warmup: observations used to estimate the reference before the detector may fire;
            0 for a stream already standardised (reference mean 0, standard deviation 1).
        clip: standardised observations are clipped to ``[-clip, clip]``.
    """

    __slots__ = ("allowance", "threshold", "warmup", "clip", "_n", "_mean", "_m2",
                 "_sigma", "_up", "_down", "_t", "_up_start", "_down_start", "alarms")

    def __init__(self, allowance: float, threshold: float, warmup: int, clip: float) -> None:
        self.allowance = allowance
        self.threshold = threshold
        self.warmup = warmup
        self.clip = clip
        self.alarms = 0
        self.reset()

    def reset(self) -> None:
        """Forget the reference and the sums (after a detected change)."""
        self._n = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._sigma = 1.0 if self.warmup == 0 else 0.0
        self._up = 0.0
        self._down = 0.0
        self._t = 0
        self._up_start = 0
        self._down_start = 0

    @property
    def warm(self) -> bool:
        """Whether the reference is estimated and the detector may fire."""
        return self._n >= self.warmup

    @property
    def statistic(self) -> float:
        """The larger of the two cumulative sums, in reference standard deviations."""
        return max(self._up, self._down)

    def update(self, x: float) -> int | None:
        """Add one observation; on a detected change, the number of observations since it.

        Returns ``None`` while no change is detected. On a change it returns how many of the
        latest observations (this one included) came after the estimated change point, and
        resets itself; the caller decides what to drop.
        """
        if self._n < self.warmup:  # Welford: the reference mean and spread
            self._n += 1
            d = x - self._mean
            self._mean += d / self._n
            self._m2 += d * (x - self._mean)
            if self._n == self.warmup:
                var = self._m2 / max(self._n - 1, 1)
                # A constant warm-up stream: any later change is large relative to a tiny unit.
                self._sigma = math.sqrt(var) if var > 1e-12 else 1e-6 * max(1.0, abs(self._mean))
            return None
        self._t += 1
        z = (x - self._mean) / self._sigma
        z = min(max(z, -self.clip), self.clip)
        if self._up <= 0.0:
            self._up_start = self._t - 1
        if self._down <= 0.0:
            self._down_start = self._t - 1
        self._up = max(0.0, self._up + z - self.allowance)
        self._down = max(0.0, self._down - z - self.allowance)
        if self._up > self.threshold or self._down > self.threshold:
            start = self._up_start if self._up > self.threshold else self._down_start
            since = self._t - start
            self.alarms += 1
            self.reset()
            return since
        return None
