"""Arrival processes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pythia.errors import PythiaInputError
from pythia.workflow.arrivals import arrival_times, normalise


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["poisson", "gamma", "waves"]),
    st.floats(min_value=0.05, max_value=50),
    st.integers(min_value=1, max_value=300),
    st.integers(min_value=0, max_value=2**31),
)
def test_times_are_sorted_start_at_zero_and_are_deterministic(process: str, rate: float, n: int, seed: int) -> None:
    spec = {"process": process, "rate": rate, "burstiness": 0.5, "period_s": 60.0}
    a = arrival_times(spec, n, np.random.default_rng(seed))
    b = arrival_times(spec, n, np.random.default_rng(seed))
    assert a is not None and len(a) == n
    assert a[0] == 0.0 and np.all(np.diff(a) >= 0)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("process", ["poisson", "gamma", "waves"])
def test_mean_rate_matches(process: str) -> None:
    spec = {"process": process, "rate": 4.0, "burstiness": 0.3, "period_s": 50.0, "amplitude": 0.9}
    t = arrival_times(spec, 20_000, np.random.default_rng(7))
    assert t is not None
    assert abs((len(t) - 1) / t[-1] - 4.0) / 4.0 < 0.05


def test_gamma_burstiness_raises_dispersion() -> None:
    rng = np.random.default_rng
    bursty = np.diff(arrival_times({"process": "gamma", "rate": 1.0, "burstiness": 0.2}, 5000, rng(1)))
    regular = np.diff(arrival_times({"process": "gamma", "rate": 1.0, "burstiness": 5.0}, 5000, rng(1)))
    assert bursty.std() / bursty.mean() > 1.5 > 1.0 > 0.6 > regular.std() / regular.mean()


def test_closed_loop_has_no_times() -> None:
    assert arrival_times({"process": "closed", "concurrency": 4}, 10, np.random.default_rng(0)) is None


@pytest.mark.parametrize(
    "spec, needle",
    [
        ({"process": "poisson"}, "rate"),
        ({"process": "poisson", "rate": -1}, "rate"),
        ({"process": "closed", "concurrency": 0}, "concurrency"),
        ({"process": "waves", "rate": 1, "amplitude": 2}, "amplitude"),
        ({"process": "storm", "rate": 1}, "process"),
        ({"process": "gamma", "rate": "fast"}, "rate"),
    ],
)
def test_bad_arrival_names_the_field(spec: dict, needle: str) -> None:
    with pytest.raises(PythiaInputError, match=needle):
        normalise(spec)
