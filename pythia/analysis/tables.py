"""Tidy tables built from run directories.

A run directory is ``<root>/<workload>/<system>/<load>/seed<k>/`` holding the outputs of
``pythia sim`` or ``pythia run``: ``summary.json``, ``calls.parquet``, ``jobs.parquet``,
``timeseries.parquet``. ``<load>`` is ``c<N>`` (closed loop, N jobs in flight) or
``r<R>`` (open loop, R jobs/s).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pythia import inputs
from pythia.errors import PythiaInputError

RUN_DIR = re.compile(r"(?P<workload>[^/]+)/(?P<system>[^/]+)/(?P<load>[cr][0-9.]+)/seed(?P<seed>\d+)$")
METRICS = (
    "mean_jct_s",
    "p50_jct_s",
    "p95_jct_s",
    "output_tokens_per_s",
    "prefix_hit_rate",
    "preemptions",
    "jobs_completed",
    "jobs_submitted",
    "calls_completed",
)


def run_identity(run_dir: str | Path) -> dict[str, object]:
    """workload, system, load kind and value, seed of a run directory (from its path)."""
    text = Path(run_dir).as_posix().rstrip("/")
    m = RUN_DIR.search(text)
    if m is None:
        raise PythiaInputError(
            f"{run_dir}: not a run directory of the form <workload>/<system>/c<N>|r<R>/seed<k>"
        )
    load = m["load"]
    return {
        "workload": m["workload"],
        "system": m["system"],
        "load_kind": "concurrency" if load[0] == "c" else "rate",
        "load": float(load[1:]),
        "seed": int(m["seed"]),
    }


def collect_summaries(summary_files: Sequence[str | Path]) -> pd.DataFrame:
    """One row per run: its identity plus every metric of its ``summary.json``."""
    rows = []
    for f in summary_files:
        f = Path(f)
        summary = inputs.load_json(f, "run summary")
        if not isinstance(summary, dict):
            raise PythiaInputError(f"{f}: a run summary must be a JSON object, not {type(summary).__name__}")
        row = run_identity(f.parent)
        for k, v in summary.items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                row[k] = v
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df.sort_values(["workload", "system", "load", "seed"], kind="stable").reset_index(drop=True)


def collect_jobs(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """Every run's ``jobs.parquet`` with the run identity as columns."""
    frames = []
    for d in run_dirs:
        path = Path(d) / "jobs.parquet"
        if path.exists():
            frame = inputs.read_parquet(path, "jobs table", required=("job_id",))
            for k, v in run_identity(d).items():
                frame[k] = v
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def normalise(df: pd.DataFrame, metric: str, baseline: str = "vllm") -> pd.DataFrame:
    """``metric`` of each run divided by the baseline's within the same workload, load and seed.

    Normalising within each seed before aggregating keeps seed-to-seed workload variation
    out of the error bars. Rows whose baseline run is missing are dropped.
    """
    keys = ["workload", "load_kind", "load", "seed"]
    base = df[df["system"] == baseline][keys + [metric]].rename(columns={metric: "_base"})
    out = df.merge(base, on=keys, how="inner")
    with np.errstate(divide="ignore", invalid="ignore"):
        out[f"{metric}_norm"] = out[metric] / out["_base"]
    return out.drop(columns="_base")


def aggregate(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, standard deviation and count of ``column`` over seeds."""
    keys = ["workload", "system", "load_kind", "load"]
    g = df.groupby(keys, sort=False)[column]
    return g.agg(mean="mean", std="std", n="count").reset_index()


def peak_load(df: pd.DataFrame) -> pd.DataFrame:
    """The rows at the highest load of each workload (the paper's peak-concurrency point)."""
    top = df.groupby("workload")["load"].transform("max")
    return df[df["load"] == top]
