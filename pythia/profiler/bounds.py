"""Output-length distributions per role and their distribution-free upper bound.

The bound is an order statistic. Let ``X_1 .. X_n`` be i.i.d. output lengths of a role with
``p``-quantile ``q_p = inf{x : F(x) >= p}`` and order statistics ``X_(1) <= .. <= X_(n)``.
``X_(k) >= q_p`` exactly when fewer than ``k`` samples fall below ``q_p``; the number below
``q_p`` is ``Binomial(n, P(X < q_p))`` with ``P(X < q_p) <= p``, so

    P(X_(k) >= q_p) >= P(Bin(n, p) <= k - 1) = 1 - P(Bin(n, p) >= k)

for every distribution (equality when ``F`` is continuous). The bound is ``X_(k)`` for the
smallest ``k`` with ``P(Bin(n, p) >= k) <= delta``. It exists only when
``P(Bin(n, p) >= n) = p**n <= delta``, i.e. ``n >= ln(delta) / ln(p)`` (299 samples for
``p = 0.99, delta = 0.05``); with fewer samples the answer is ``None``, never a guess.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=4096)
def order_statistic_rank(n: int, p: float, delta: float) -> int | None:
    """The 1-based rank ``k`` of the order-statistic bound, or ``None`` when ``n`` is too small.

    ``k`` is the smallest rank with ``P(Bin(n, p) >= k) <= delta``. The binomial upper tail
    is summed from ``j = n`` downwards in log space (about ``n (1 - p)`` terms), so the cost
    does not grow with ``n`` for high quantiles.
    """
    if n <= 0 or not 0.0 < p < 1.0 or not 0.0 < delta < 1.0:
        return None
    log_p, log_q = math.log(p), math.log1p(-p)
    log_pmf = n * log_p  # log P(Bin = n)
    log_delta = math.log(delta)
    if log_pmf > log_delta:
        return None
    log_tail = log_pmf  # log P(Bin >= j), j = n
    j = n
    while j > 0:
        # pmf(j - 1) = pmf(j) * j / (n - j + 1) * q / p
        nxt = log_pmf + math.log(j) - math.log(n - j + 1) + log_q - log_p
        m = max(log_tail, nxt)
        new_tail = m + math.log(math.exp(log_tail - m) + math.exp(nxt - m))
        if new_tail > log_delta:
            return j
        log_pmf, log_tail, j = nxt, new_tail, j - 1
    return 1


def min_samples(p: float, delta: float) -> int:
    """The fewest samples for which an order-statistic bound of the ``p``-quantile exists."""
    return int(math.ceil(math.log(delta) / math.log(p) - 1e-12))


def order_statistic_bound(samples: np.ndarray, p: float, delta: float) -> float | None:
    """The order-statistic upper bound of the ``p``-quantile at confidence ``1 - delta``."""
    k = order_statistic_rank(len(samples), p, delta)
    if k is None:
        return None
    return float(np.partition(np.asarray(samples), k - 1)[k - 1])


@dataclass(frozen=True, slots=True)
class OutputBound:
    """A high-confidence upper bound on the output length of one role's calls.

    Attributes:
        role: the agent role.
        tokens: the bound (an observed length), or ``None`` when it cannot be given.
        quantile: the quantile ``p`` it bounds.
        confidence: ``1 - delta``: the probability that ``tokens >= q_p``.
        samples: the number of lengths it rests on.
        rank: the order statistic used (1-based), ``None`` without a bound.
        max_observed: the largest length seen (information only; no guarantee).
        reason: why ``tokens`` is ``None`` (empty when there is a bound).
    """

    role: str
    tokens: int | None
    quantile: float
    confidence: float
    samples: int
    rank: int | None
    max_observed: int | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class LengthSummary:
    """The empirical output-length distribution of one role."""

    role: str
    samples: int
    mean: float
    quantiles: dict[float, float]
    bound: OutputBound


SUMMARY_QUANTILES = (0.5, 0.9, 0.95, 0.99)


class LengthStats:
    """The recent output lengths of one role, with a memoised bound and summary.

    Samples are kept in arrival order (the newest ``capacity``), so a drift reset can drop
    the ones before an estimated change point.
    """

    def __init__(self, role: str, capacity: int) -> None:
        self.role = role
        self.capacity = capacity
        self._samples: deque[int] = deque(maxlen=capacity)
        self._cache: dict[tuple[float, float], OutputBound] = {}
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, tokens: int) -> None:
        """Record one observed output length."""
        self._samples.append(int(tokens))
        self._cache.clear()
        self._array = None

    def array(self) -> np.ndarray:
        """The kept samples, oldest first."""
        if self._array is None:
            self._array = np.fromiter(self._samples, dtype=np.int64, count=len(self._samples))
        return self._array

    def keep_recent(self, recent: int, keep_share: float) -> None:
        """Keep the last ``recent`` samples and an evenly spaced ``keep_share`` of the older ones."""
        arr = self.array()
        recent = min(max(recent, 0), len(arr))
        old, new = arr[: len(arr) - recent], arr[len(arr) - recent :]
        n_old = int(round(len(old) * keep_share))
        kept_old = old[np.linspace(0, len(old) - 1, n_old).round().astype(int)] if n_old else old[:0]
        self._samples = deque((int(x) for x in np.concatenate([kept_old, new])), maxlen=self.capacity)
        self._cache.clear()
        self._array = None

    def bound(self, p: float, delta: float) -> OutputBound:
        """The order-statistic bound of the ``p``-quantile at confidence ``1 - delta`` (memoised)."""
        key = (p, delta)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        arr = self.array()
        n = len(arr)
        k = order_statistic_rank(n, p, delta)
        max_obs = int(arr.max()) if n else None
        if k is None:
            need = min_samples(p, delta)
            out = OutputBound(
                self.role, None, p, 1.0 - delta, n, None, max_obs,
                reason=f"{n} samples, the bound of the {p:g}-quantile at confidence {1 - delta:g} needs {need}",
            )
        else:
            tokens = int(np.partition(arr, k - 1)[k - 1])
            out = OutputBound(self.role, tokens, p, 1.0 - delta, n, k, max_obs)
        self._cache[key] = out
        return out

    def summary(self, p: float, delta: float) -> LengthSummary:
        """Mean, quantiles and bound of the kept samples."""
        arr = self.array()
        qs = {q: float(np.quantile(arr, q)) for q in SUMMARY_QUANTILES} if len(arr) else {}
        return LengthSummary(
            role=self.role,
            samples=len(arr),
            mean=float(arr.mean()) if len(arr) else float("nan"),
            quantiles=qs,
            bound=self.bound(p, delta),
        )
