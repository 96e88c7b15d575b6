"""The results schema of a run, shared by the simulator and the replay client.

Every run, simulated (:mod:`pythia.sim.run`) or real (:mod:`pythia.bench.run`), writes the
same four files to its folder, so analysis code never asks which backend produced them:

- ``calls.parquet``: one row per call, columns :data:`CALL_COLUMNS`;
- ``jobs.parquet``: one row per job, columns :data:`JOB_COLUMNS`;
- ``timeseries.parquet``: samples per replica, columns :data:`TIMESERIES_COLUMNS` (a real run
  adds engine and GPU metric columns after them);
- ``summary.json``: the headline figures of :func:`summarise` plus what the backend adds.

Each file is written to a temporary name and renamed (:mod:`pythia.outputs`), so a reader
never sees half a file; :func:`write_run` writes ``summary.json`` last and removes a
previous one first, so a folder with a summary holds one complete run. Parquet is written
without wall-clock metadata: the same run gives the same bytes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pythia.outputs import write_atomic

CALL_COLUMNS = (
    "job_id", "call_id", "agent_role", "agent_id", "workflow_type", "model", "pool", "replica", "issue_s",
    "arrival_s", "queue_s", "ttft_s", "tpot_s", "finish_s", "latency_s", "prompt_tokens", "output_tokens",
    "cached_tokens", "computed_tokens", "preemptions", "status",
)
JOB_COLUMNS = (
    "job_id", "workflow_type", "workflow_id", "start_s", "end_s", "jct_s", "calls", "calls_completed",
    "completed", "critical_path_calls", "critical_path_gap_s", "lower_bound_jct_s",
)
TIMESERIES_COLUMNS = (
    "t_s", "pool", "replica", "state", "batch_size", "queue_len", "kv_used_blocks", "kv_cached_blocks",
    "kv_free_blocks", "replicas_up", "replicas_starting",
)
SUMMARY_FILE = "summary.json"
# The tables of every run folder, as the simulator and the replay client write them.
RUN_TABLES = ("calls.parquet", "jobs.parquet", "timeseries.parquet")
RUN_FILES = RUN_TABLES + (SUMMARY_FILE,)


def frame(rows: Sequence[tuple[Any, ...]], columns: Sequence[str]) -> pd.DataFrame:
    """A data frame of ``rows`` (possibly none) with ``columns``.

    A row shorter than ``columns`` gets NaN in the trailing ones: a backend that does not
    compute an optional column (the replay client has no ``lower_bound_jct_s``) leaves it out.
    """
    rows = list(rows)
    n = len(columns)
    if any(len(r) < n for r in rows):
        rows = [tuple(r) + (math.nan,) * (n - len(r)) for r in rows]
    return pd.DataFrame.from_records(rows, columns=list(columns))


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` atomically and deterministically."""
    write_atomic(path, df)


def write_json(obj: Any, path: Path) -> None:
    """Write JSON atomically (NaN becomes null)."""
    write_atomic(path, json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


def write_run(out: str | Path, tables: Mapping[str, pd.DataFrame], summary: Mapping[str, Any]) -> Path:
    """Write a run folder: each table (``{file name: frame}``) atomically, then ``summary.json``.

    A summary left by an earlier run into the same folder is removed first, so that a folder
    holding a summary always holds the tables written with it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).unlink(missing_ok=True)
    for name, df in tables.items():
        write_parquet(df, out / name)
    write_json(summary, out / SUMMARY_FILE)
    return out


def _clean(obj: Any) -> Any:
    """``obj`` with NaN and infinities as ``None`` and numpy scalars as Python ones (JSON has neither)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def summarise(calls: pd.DataFrame, jobs: pd.DataFrame, *, jobs_submitted: int, simulated_s: float,
              wall_s: float) -> dict[str, Any]:
    """The headline figures of a run.

    ``mean_lower_bound_jct_s`` is the mean of the completed jobs' ``lower_bound_jct_s`` and
    ``jct_stretch`` is ``mean_jct_s`` over it; both are NaN when the jobs table has no bound
    for some completed job (a real run, which does not compute it).
    """
    done = calls[calls["status"] == "finished"] if len(calls) else calls
    completed = jobs[jobs["completed"]] if len(jobs) else jobs
    jct = completed["jct_s"].to_numpy(dtype=float) if len(completed) else np.empty(0)
    if "lower_bound_jct_s" in completed.columns and len(completed):
        bound = completed["lower_bound_jct_s"].to_numpy(dtype=float)
    else:
        bound = np.full(len(jct), np.nan)
    mean_bound = float(bound.mean()) if len(bound) and not np.isnan(bound).any() else float("nan")
    mean_jct = float(jct.mean()) if len(jct) else float("nan")
    prompt = float(done["prompt_tokens"].sum()) if len(done) else 0.0
    out_tokens = float(done["output_tokens"].sum()) if len(done) else 0.0

    def pct(a: np.ndarray, q: float) -> float:
        return float(np.percentile(a, q)) if len(a) else float("nan")

    def col_mean(name: str) -> float:
        v = done[name].to_numpy(dtype=float) if len(done) else np.empty(0)
        v = v[~np.isnan(v)]
        return float(v.mean()) if len(v) else float("nan")

    return {
        "jobs_submitted": jobs_submitted,
        "jobs_completed": int(len(completed)),
        "calls_submitted": int(len(calls)),
        "calls_completed": int(len(done)),
        "mean_jct_s": mean_jct,
        "p50_jct_s": pct(jct, 50),
        "p95_jct_s": pct(jct, 95),
        "p99_jct_s": pct(jct, 99),
        "mean_lower_bound_jct_s": mean_bound,
        "jct_stretch": mean_jct / mean_bound if mean_bound > 0 else float("nan"),
        "mean_ttft_s": col_mean("ttft_s"),
        "mean_tpot_s": col_mean("tpot_s"),
        "mean_queue_s": col_mean("queue_s"),
        "output_tokens_per_s": out_tokens / simulated_s if simulated_s > 0 else float("nan"),
        "prefix_hit_rate": float(done["cached_tokens"].sum()) / prompt if prompt else float("nan"),
        "preemptions": int(done["preemptions"].sum()) if len(done) else 0,
        "simulated_s": simulated_s,
        "wall_s": wall_s,
        "speedup": simulated_s / wall_s if wall_s > 0 else float("nan"),
    }
