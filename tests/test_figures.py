"""Figures and tables from a small fixed results table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pythia.analysis import tables
from pythia.analysis.figures import make_all
from pythia.errors import PythiaInputError

SYSTEMS = ["vllm", "sglang", "pythia", "pythia-no-cache", "oracle"]


def _fixture_runs(root: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for wl in ("coding-assistant", "deep-research"):
        for k, system in enumerate(SYSTEMS):
            for conc in (4, 8, 16):
                for seed in (0, 1, 2):
                    d = root / wl / system / f"c{conc}" / f"seed{seed}"
                    d.mkdir(parents=True)
                    mean = conc * (10 - k) * (1 + 0.05 * rng.standard_normal())
                    (d / "summary.json").write_text(json.dumps({
                        "mean_jct_s": mean, "p50_jct_s": 0.9 * mean, "p95_jct_s": 2 * mean,
                        "output_tokens_per_s": 1000 + 50 * k + conc, "prefix_hit_rate": 0.1 * k,
                        "preemptions": 3, "jobs_completed": 20, "jobs_submitted": 20, "calls_completed": 200,
                    }))
                    pd.DataFrame({"job_id": [f"j{i}" for i in range(20)],
                                  "jct_s": rng.gamma(2.0, mean / 2, size=20)}).to_parquet(d / "jobs.parquet")
                    files.append(d / "summary.json")
    return files


def test_collect_and_normalise(tmp_path: Path) -> None:
    files = _fixture_runs(tmp_path / "runs")
    df = tables.collect_summaries(files)
    assert len(df) == 2 * len(SYSTEMS) * 3 * 3
    assert set(df["load_kind"]) == {"concurrency"}
    norm = tables.normalise(df, "mean_jct_s")
    base = norm[norm["system"] == "vllm"]["mean_jct_s_norm"]
    assert np.allclose(base, 1.0)
    # normalised within each seed: the ratio uses the same seed's baseline
    row = norm[(norm["system"] == "oracle") & (norm["seed"] == 1) & (norm["load"] == 8) & (norm["workload"] == "deep-research")].iloc[0]
    vllm = df[(df["system"] == "vllm") & (df["seed"] == 1) & (df["load"] == 8) & (df["workload"] == "deep-research")].iloc[0]
    assert row["mean_jct_s_norm"] == pytest.approx(row["mean_jct_s"] / vllm["mean_jct_s"])
    agg = tables.aggregate(norm, "mean_jct_s_norm")
    assert (agg["n"] == 3).all()


def test_every_figure_is_written_as_pdf_and_png(tmp_path: Path) -> None:
    files = _fixture_runs(tmp_path / "runs")
    df = tables.collect_summaries(files)
    jobs = tables.collect_jobs([f.parent for f in files])
    written, notes = make_all(df, jobs, tmp_path / "fig")
    names = {p.name for p in written}
    for fig in ("jct_vs_load", "throughput_vs_load", "jct_cdf_peak", "jct_normalised", "prefix_hit_rate",
                "ablations", "oracle_gap", "throughput_normalised"):
        assert f"{fig}.pdf" in names and f"{fig}.png" in names
    assert notes == []
    pdf = (tmp_path / "fig" / "jct_vs_load.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and b"/Type3" not in pdf  # TrueType, not Type 3 fonts


def test_missing_data_skips_with_a_note(tmp_path: Path) -> None:
    files = [f for f in _fixture_runs(tmp_path / "runs") if "/oracle/" not in f.as_posix()]
    df = tables.collect_summaries(files)
    _, notes = make_all(df, pd.DataFrame(), tmp_path / "fig")
    assert any(n.startswith("oracle_gap") for n in notes)
    assert any(n.startswith("jct_cdf_peak") for n in notes)


def test_bad_run_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(PythiaInputError, match="not a run directory"):
        tables.run_identity(tmp_path / "somewhere")


def test_autoscale_timeline_from_a_real_simulated_run(tmp_path: Path) -> None:
    from sim_helpers import chain_trace

    from pythia.analysis.figures import autoscale_timeline, calls_in_flight
    from pythia.analysis.style import setup_matplotlib
    from pythia.sim.run import run_simulation

    run_simulation("vllm", chain_trace(6, concurrency=3), out=tmp_path / "run")
    calls = pd.read_parquet(tmp_path / "run" / "calls.parquet")
    pool = calls["pool"].iloc[0]
    t = np.array([calls["issue_s"].min() - 1.0, calls["finish_s"].max() + 1.0])
    assert calls_in_flight(calls, t, pool).tolist() == [0, 0]
    mid = np.array([calls["issue_s"].iloc[0] + 1e-9])
    assert calls_in_flight(calls, mid, pool)[0] >= 1
    setup_matplotlib()
    files = autoscale_timeline(tmp_path / "run", tmp_path / "timeline")
    assert [f.suffix for f in files] == [".pdf", ".png"]


def test_fidelity_table_and_figure_from_two_runs(tmp_path: Path) -> None:
    from sim_helpers import chain_trace

    from pythia.analysis.fidelity import fidelity_table
    from pythia.analysis.figures import fidelity
    from pythia.analysis.style import setup_matplotlib
    from pythia.sim.run import run_simulation

    real = tmp_path / "real-x" / "exp" / "vllm" / "c3" / "seed0"
    sim = tmp_path / "runs" / "exp" / "vllm" / "c3" / "seed0"
    run_simulation("vllm", chain_trace(4, concurrency=3), out=real)
    run_simulation("vllm", chain_trace(4, concurrency=3), cluster="llama8b-x8", out=sim)
    table = fidelity_table([(real, sim)])
    assert set(table["kind"]) == {"call_latency", "ttft", "jct"}
    assert len(table[table["kind"] == "jct"]) == 4
    assert (table["rel_error"] >= 0).all() and table["system"].eq("vllm").all()
    same = fidelity_table([(real, real)])
    assert (same["rel_error"] == 0).all()
    setup_matplotlib()
    assert [p.suffix for p in fidelity(table, tmp_path / "fid")] == [".pdf", ".png"]
