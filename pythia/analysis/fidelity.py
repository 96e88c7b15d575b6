"""Simulated against real: per-call and per-job comparison of a real run and its simulated twin."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pythia.analysis.tables import run_identity


def rel_error(real: object, sim: object) -> np.ndarray:
    """``|sim - real| / real`` element-wise."""
    a, b = np.asarray(real, float), np.asarray(sim, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(b - a) / a


def compare_runs(real_dir: str | Path, sim_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calls and jobs finished in both runs, matched by id, with ``*_real``/``*_sim`` columns."""
    real_dir, sim_dir = Path(real_dir), Path(sim_dir)
    rc, sc = pd.read_parquet(real_dir / "calls.parquet"), pd.read_parquet(sim_dir / "calls.parquet")
    rj, sj = pd.read_parquet(real_dir / "jobs.parquet"), pd.read_parquet(sim_dir / "jobs.parquet")
    calls = rc.merge(sc, on=["job_id", "call_id"], suffixes=("_real", "_sim"))
    calls = calls[(calls["status_real"] == "finished") & (calls["status_sim"] == "finished")]
    jobs = rj.merge(sj, on="job_id", suffixes=("_real", "_sim"))
    jobs = jobs[jobs["completed_real"].astype(bool) & jobs["completed_sim"].astype(bool)]
    return calls.reset_index(drop=True), jobs.reset_index(drop=True)


def fidelity_table(pairs: Sequence[tuple[str | Path, str | Path]]) -> pd.DataFrame:
    """One row per matched call and job of every (real, simulated) run pair.

    Columns: the run identity, ``kind`` (``call_latency``, ``ttft`` or ``jct``), ``id``,
    ``real_s``, ``sim_s``, ``rel_error``.
    """
    frames = []
    for real_dir, sim_dir in pairs:
        calls, jobs = compare_runs(real_dir, sim_dir)
        ident = run_identity(real_dir)
        for kind, frame, col, ids in (
            ("call_latency", calls, "latency_s", calls["job_id"] + "#" + calls["call_id"].astype(str)),
            ("ttft", calls, "ttft_s", calls["job_id"] + "#" + calls["call_id"].astype(str)),
            ("jct", jobs, "jct_s", jobs["job_id"]),
        ):
            rows = pd.DataFrame({
                "kind": kind, "id": ids, "real_s": frame[f"{col}_real"].astype(float),
                "sim_s": frame[f"{col}_sim"].astype(float),
            })
            rows["rel_error"] = rel_error(rows["real_s"], rows["sim_s"])
            for k, v in ident.items():
                rows[k] = v
            frames.append(rows)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["kind", "id", "real_s", "sim_s", "rel_error", "workload", "system", "load_kind", "load", "seed"]
    )


def run_means(run_dirs: Sequence[str | Path]) -> tuple[pd.DataFrame, pd.Series]:
    """Per-call mean latency and TTFT, and per-job mean JCT, over repeated real runs of one workload.

    Only calls finished (and jobs completed) in every run count: a mean over runs where some
    failed would mix different things.
    """
    calls, jobs = [], []
    for d in run_dirs:
        c = pd.read_parquet(Path(d) / "calls.parquet")
        c = c[c["status"] == "finished"].set_index(["job_id", "call_id"])[["latency_s", "ttft_s"]]
        calls.append(c)
        j = pd.read_parquet(Path(d) / "jobs.parquet")
        jobs.append(j[j["completed"].astype(bool)].set_index("job_id")["jct_s"])
    keys = calls[0].index
    for c in calls[1:]:
        keys = keys.intersection(c.index)
    jkeys = jobs[0].index
    for j in jobs[1:]:
        jkeys = jkeys.intersection(j.index)
    mean_calls = sum(c.loc[keys] for c in calls) / len(calls)
    mean_jobs = sum(j.loc[jkeys] for j in jobs) / len(jobs)
    return mean_calls, mean_jobs


def errors_against(mean_calls: pd.DataFrame, mean_jobs: pd.Series, run_dir: str | Path) -> dict[str, float]:
    """Median relative errors of one run (real or simulated) against per-call and per-job reference means."""
    c = pd.read_parquet(Path(run_dir) / "calls.parquet").set_index(["job_id", "call_id"])
    j = pd.read_parquet(Path(run_dir) / "jobs.parquet").set_index("job_id")
    keys = mean_calls.index.intersection(c.index)
    jkeys = mean_jobs.index.intersection(j.index)
    return {
        "call_latency": float(np.median(rel_error(mean_calls.loc[keys, "latency_s"], c.loc[keys, "latency_s"]))),
        "ttft": float(np.nanmedian(rel_error(mean_calls.loc[keys, "ttft_s"], c.loc[keys, "ttft_s"]))),
        "jct": float(np.median(rel_error(mean_jobs.loc[jkeys], j.loc[jkeys, "jct_s"]))),
        "call_latency_sum_ratio": float(c.loc[keys, "latency_s"].sum() / mean_calls.loc[keys, "latency_s"].sum()),
        "jct_sum_ratio": float(j.loc[jkeys, "jct_s"].sum() / mean_jobs.loc[jkeys].sum()),
        "calls": int(len(keys)), "jobs": int(len(jkeys)),
    }
