"""Outputs of a simulation: the shared results schema, kept here under its old import path.

The schema (column tuples, :func:`frame`, :func:`summarise`, the atomic writers) lives in
:mod:`pythia.results`, since the replay client writes the same tables; new code imports it
from there. This module re-exports it for code that still imports ``pythia.sim.metrics``
(``benchmarks/sim_diff.py`` reads ``_clean``).
"""

from __future__ import annotations

from pythia.results import (  # noqa: F401  (re-exports)
    CALL_COLUMNS,
    JOB_COLUMNS,
    TIMESERIES_COLUMNS,
    _clean,
    frame,
    summarise,
    write_json,
    write_parquet,
)

__all__ = ["CALL_COLUMNS", "JOB_COLUMNS", "TIMESERIES_COLUMNS", "frame", "summarise", "write_json", "write_parquet"]
