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


# --------------------------------------------------------------------------- systems and cells

# Baseline families of the main comparison; a family with several members is shown by its best
# member per workload (lowest mean JCT at the workload's top load), the others in their own figure.
FAMILIES: dict[str, tuple[str, ...]] = {
    "SGLang": ("sglang",),
    "Autellix": ("autellix",),
    "Continuum": ("continuum",),
    "KVFlow": ("kvflow",),
    "ThunderAgent": ("thunderagent",),
    "vLLM routers": ("vllm-session-affinity", "vllm-prefix-aware", "vllm-autoscale"),
}
# Always in the main comparison: the baseline engine, the system under study and the oracle.
ANCHORS = ("vllm", "pythia", "oracle")
ABLATION_PREFIX = "pythia-no-"
# The routing and scaling variants of vLLM, drawn against plain vLLM in their own figure.
VARIANTS = ("vllm",) + FAMILIES["vLLM routers"]
# Tail percentiles need enough jobs: the P95 of fewer than 20 jobs is the largest or the
# second largest job, not a tail estimate.
MIN_TAIL_JOBS = 20
CELL = ["workload", "load_kind", "load"]


def top_load(df: pd.DataFrame) -> pd.DataFrame:
    """The rows at the highest load of each workload."""
    return peak_load(df)


def best_of_families(summaries: pd.DataFrame, metric: str = "mean_jct_s") -> dict[str, dict[str, str]]:
    """Per workload, the best member of each family present: lowest ``metric`` at the top load.

    The mean is over the seeds at that load; a tie goes to the member listed first, so the
    choice does not depend on row order.
    """
    out: dict[str, dict[str, str]] = {}
    top = top_load(summaries)
    for wl, sub in top.groupby("workload", sort=True):
        means = sub.groupby("system")[metric].mean()
        chosen: dict[str, str] = {}
        for family, members in FAMILIES.items():
            present = [m for m in members if m in means.index and np.isfinite(means[m])]
            if present:
                chosen[family] = min(present, key=lambda m: (means[m], members.index(m)))
        out[str(wl)] = chosen
    return out


def main_systems(summaries: pd.DataFrame) -> dict[str, list[str]]:
    """Per workload, the systems of the main comparison: the anchors and each family's best."""
    best = best_of_families(summaries)
    out = {}
    for wl, sub in summaries.groupby("workload", sort=True):
        present = set(sub["system"])
        out[str(wl)] = [s for s in ANCHORS if s in present] + list(best.get(str(wl), {}).values())
    return out


def select(df: pd.DataFrame, systems: dict[str, list[str]]) -> pd.DataFrame:
    """The rows of ``df`` whose system is among its workload's ``systems``."""
    keep = [s in systems.get(w, ()) for w, s in zip(df["workload"], df["system"])]
    return df[np.asarray(keep, dtype=bool)]


def tail_eligible(summaries: pd.DataFrame, min_jobs: int = MIN_TAIL_JOBS) -> pd.Series:
    """True for the runs with at least ``min_jobs`` completed jobs (those with a meaningful P95)."""
    if "jobs_completed" not in summaries:
        return pd.Series(False, index=summaries.index)
    return summaries["jobs_completed"].fillna(0) >= min_jobs


# --------------------------------------------------------------------------- paired ratios

N_BOOT = 4000
MIN_SEEDS = 3


def _interval(stats: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def _seed_bootstrap(log_ratios: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    """Geometric mean of per-seed ratios and its 95% percentile interval over resampled seeds.

    Ratios are averaged in log space so that A/B and B/A give reciprocal answers (the caption
    of a figure normalised to Pythia and one normalised to vLLM then agree).
    """
    n = len(log_ratios)
    idx = rng.integers(0, n, size=(N_BOOT, n))
    lo, hi = _interval(log_ratios[idx].mean(axis=1))
    return float(np.exp(log_ratios.mean())), float(np.exp(lo)), float(np.exp(hi))


def _job_statistic(values: np.ndarray, stat: str) -> np.ndarray:
    """Mean or P95 along the last axis."""
    return values.mean(axis=-1) if stat == "mean" else np.percentile(values, 95, axis=-1)


def _job_bootstrap(pairs: list[tuple[np.ndarray, np.ndarray]], stat: str,
                   rng: np.random.Generator) -> tuple[float, float, float]:
    """Ratio of a per-job statistic, jobs resampled in pairs (the same jobs for both systems).

    Each seed's jobs are resampled within that seed, its ratio taken, and the seeds' ratios
    combined by geometric mean. Resampling a job with its partner keeps the job-to-job
    variation (large and small jobs) out of the interval; only the systems' difference on the
    same job remains.
    """
    logs = np.zeros(N_BOOT)
    point = 0.0
    for a, b in pairs:
        idx = rng.integers(0, len(a), size=(N_BOOT, len(a)))
        with np.errstate(divide="ignore", invalid="ignore"):
            logs += np.log(_job_statistic(a[idx], stat) / _job_statistic(b[idx], stat))
            point += float(np.log(_job_statistic(a, stat) / _job_statistic(b, stat)))
    logs /= len(pairs)
    lo, hi = _interval(logs)
    return float(np.exp(point / len(pairs))), float(np.exp(lo)), float(np.exp(hi))


def _completed_jct(jobs: pd.DataFrame) -> dict[tuple[object, ...], pd.Series]:
    """Per run (workload, load, seed, system): completed jobs' JCT indexed by job id."""
    if jobs.empty or "jct_s" not in jobs:
        return {}
    ok = jobs["jct_s"].notna()
    if "completed" in jobs:
        ok &= jobs["completed"].astype(bool)
    done = jobs[ok]
    return {key: g.set_index("job_id")["jct_s"].astype(float)
            for key, g in done.groupby(["workload", "load", "seed", "system"], sort=False)}


def _job_pairs(per_job: dict[tuple[object, ...], pd.Series], wl: object, load: object, seeds: list[object],
               system: str, baseline: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per seed, the JCTs of the jobs both runs completed, aligned by job id (seeds lacking them are left out)."""
    pairs = []
    for k in seeds:
        a, b = per_job.get((wl, load, k, system)), per_job.get((wl, load, k, baseline))
        if a is not None and b is not None:
            common = a.index.intersection(b.index)
            if len(common) >= 2:
                pairs.append((a.loc[common].to_numpy(), b.loc[common].to_numpy()))
    return pairs


def paired_ratios(summaries: pd.DataFrame, jobs: pd.DataFrame | None, metric: str, baseline: str,
                  systems: list[str] | None = None, *, rng_seed: int = 0) -> pd.DataFrame:
    """``metric`` of each system over ``baseline``'s on the same cell, with a paired 95% interval.

    One row per (workload, load, system) where both ran on at least one common seed. The
    interval (``lo``, ``hi``) comes from

    - ``method == "seeds"``: with at least :data:`MIN_SEEDS` common seeds, a bootstrap over
      the seeds' paired ratios (each seed's ratio uses the same seed's baseline run);
    - ``method == "jobs"``: with fewer seeds, for ``mean_jct_s`` and ``p95_jct_s``, a
      bootstrap over the jobs of each seed, paired by ``job_id`` (every system runs the same
      jobs), from ``jobs``; the point estimate is then over the jobs both completed;
    - ``method == "point"``: otherwise; ``lo`` and ``hi`` are NaN and only the ratio is given.

    ``n_seeds`` counts the common seeds and ``n_jobs`` the jobs behind the ratio (paired jobs
    for ``jobs``, the fewest completed in any paired run otherwise). Standard deviations of
    unpaired values are never used: seed-to-seed and job-to-job variation would swamp the
    difference between systems on the same jobs.
    """
    stat = {"mean_jct_s": "mean", "p95_jct_s": "p95"}.get(metric)
    per_job = _completed_jct(jobs) if (jobs is not None and stat) else {}
    rows = []
    base = summaries[summaries["system"] == baseline]
    for (wl, kind, load), cell in summaries.groupby(CELL, sort=True):
        b = base[(base["workload"] == wl) & (base["load"] == load)].set_index("seed")
        if b.empty:
            continue
        names = [s for s in (systems if systems is not None else sorted(set(cell["system"]))) if s in set(cell["system"])]
        for system in names:
            s = cell[cell["system"] == system].set_index("seed")
            seeds = sorted(set(s.index) & set(b.index))
            ratio = s.loc[seeds, metric].astype(float) / b.loc[seeds, metric].astype(float)
            ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
            if ratio.empty:
                continue
            # A fresh generator per row: an interval does not depend on which other rows were computed.
            rng = np.random.default_rng(rng_seed)
            done = [min(s.loc[k].get("jobs_completed", np.nan), b.loc[k].get("jobs_completed", np.nan)) for k in ratio.index]
            row = {"workload": wl, "load_kind": kind, "load": load, "system": system, "baseline": baseline,
                   "n_seeds": len(ratio), "n_jobs": float(np.nanmin(done)) if np.isfinite(done).any() else np.nan}
            pairs = [] if len(ratio) >= MIN_SEEDS else _job_pairs(per_job, wl, load, list(ratio.index), system, baseline)
            if len(ratio) >= MIN_SEEDS:
                row.update(zip(("ratio", "lo", "hi"), _seed_bootstrap(np.log(ratio.to_numpy()), rng)), method="seeds")
            elif pairs and len(pairs) == len(ratio):
                row.update(zip(("ratio", "lo", "hi"), _job_bootstrap(pairs, stat or "mean", rng)), method="jobs",
                           n_jobs=sum(len(a) for a, _ in pairs))
            else:
                row.update(ratio=float(np.exp(np.log(ratio.to_numpy()).mean())), lo=np.nan, hi=np.nan, method="point")
            rows.append(row)
    cols = ["workload", "load_kind", "load", "system", "baseline", "ratio", "lo", "hi", "n_seeds", "n_jobs", "method"]
    return pd.DataFrame(rows, columns=cols)
