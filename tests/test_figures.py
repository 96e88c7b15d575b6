"""Figures and tables from a small fixed results table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pythia.analysis import tables
from pythia.analysis.figures import make_all, write_index
from pythia.analysis.figures_main import jct_vs_load
from pythia.analysis.style import setup_matplotlib
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


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, list[str]]:
    """Every figure of the fixture runs, drawn once for the tests that read them back."""
    root = tmp_path_factory.mktemp("drawn")
    files = _fixture_runs(root / "runs")
    figs, notes = make_all(tables.collect_summaries(files), tables.collect_jobs([f.parent for f in files]), root / "fig")
    return root / "fig", figs, notes


def test_every_figure_is_written_as_pdf_and_png(drawn: tuple[Path, list, list[str]]) -> None:
    out, written, notes = drawn
    names = {p.name for f in written for p in f.files}
    for fig in ("jct_vs_load", "jct_p95", "throughput_vs_load", "jct_cdf_peak", "jct_normalised", "prefix_hit_rate",
                "ablations", "router_variants", "oracle_gap", "throughput_normalised"):
        assert f"{fig}.pdf" in names and f"{fig}.png" in names
    assert notes == []
    pdf = (out / "jct_vs_load.pdf").read_bytes()
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
    fig = autoscale_timeline(tmp_path / "run", tmp_path / "timeline")
    assert [f.suffix for f in fig.files] == [".pdf", ".png"]
    assert any("no run of this cell" in n for n in fig.notes)  # drawn alone, and the caption says so


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
    assert [p.suffix for p in fidelity(table, tmp_path / "fid").files] == [".pdf", ".png"]


# --------------------------------------------------------------------------- what the figures claim


def _summary_rows(cells: dict[tuple[str, str, int, int], float], jobs: int = 8) -> pd.DataFrame:
    """A summaries table from {(workload, system, load, seed): mean JCT}."""
    rows = [{"workload": wl, "system": sys_, "load_kind": "concurrency", "load": float(load), "seed": seed,
             "mean_jct_s": v, "p95_jct_s": 2 * v, "mean_lower_bound_jct_s": 50.0, "output_tokens_per_s": 1000.0 / v,
             "prefix_hit_rate": 0.3, "jobs_completed": jobs, "jobs_submitted": jobs}
            for (wl, sys_, load, seed), v in cells.items()]
    return pd.DataFrame(rows)


def test_main_comparison_keeps_only_the_best_member_of_each_family(tmp_path: Path) -> None:
    # Two vLLM routers: on "a" prefix-aware wins at the top load although session affinity wins
    # at the low one; on "b" session affinity wins. Ablations never enter the main comparison.
    mean = {"vllm": 200.0, "sglang": 150.0, "pythia": 100.0, "pythia-no-cache": 120.0, "oracle": 95.0}
    cells = {}
    for wl in ("a", "b"):
        for load in (2, 8):
            for seed in (0, 1, 2):
                for s, v in mean.items():
                    cells[(wl, s, load, seed)] = v * load / 8 * (1 + 0.01 * seed)
                top = load == 8
                sa, pa = (180.0, 170.0) if wl == "a" and top else (170.0, 180.0) if wl == "a" else (160.0, 175.0)
                cells[(wl, "vllm-session-affinity", load, seed)] = sa * load / 8
                cells[(wl, "vllm-prefix-aware", load, seed)] = pa * load / 8
    df = _summary_rows(cells)
    chosen = tables.main_systems(df)
    assert set(chosen["a"]) == {"vllm", "pythia", "oracle", "sglang", "vllm-prefix-aware"}
    assert set(chosen["b"]) == {"vllm", "pythia", "oracle", "sglang", "vllm-session-affinity"}
    setup_matplotlib()
    fig = jct_vs_load(df, pd.DataFrame(), tmp_path / "main")
    # Each router appears once in the legend (best on one workload each); nothing else beyond the chosen.
    assert set(fig.legend_labels) - {"lower bound"} == set(chosen["a"]) | set(chosen["b"])
    only_a = jct_vs_load(df[df["workload"] == "a"], pd.DataFrame(), tmp_path / "main_a")
    assert "vllm-session-affinity" not in only_a.legend_labels and "pythia-no-cache" not in only_a.legend_labels


def _unpaired_width(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> float:
    """Width of a 95% bootstrap interval of mean(a)/mean(b) that resamples a and b independently."""
    ra = a[rng.integers(0, len(a), size=(4000, len(a)))].mean(axis=1)
    rb = b[rng.integers(0, len(b), size=(4000, len(b)))].mean(axis=1)
    lo, hi = np.percentile(ra / rb, [2.5, 97.5])
    return float(hi - lo)


def test_intervals_come_from_paired_ratios_over_seeds() -> None:
    # The seeds differ tenfold in JCT, pythia is 0.5x vllm on every seed within 1%: the paired
    # interval is tight around 0.5 while an unpaired one spans most of the range.
    base = np.array([10.0, 100.0, 1000.0])
    own = base * 0.5 * np.array([1.0, 1.01, 0.99])
    cells = {("w", "vllm", 4, k): float(v) for k, v in enumerate(base)}
    cells |= {("w", "pythia", 4, k): float(v) for k, v in enumerate(own)}
    r = tables.paired_ratios(_summary_rows(cells), None, "mean_jct_s", "vllm", ["pythia"]).iloc[0]
    assert r["method"] == "seeds" and r["n_seeds"] == 3
    assert 0.49 <= r["lo"] <= r["ratio"] <= r["hi"] <= 0.51
    assert _unpaired_width(own, base, np.random.default_rng(0)) > 0.5


def test_intervals_come_from_jobs_paired_by_id_with_one_seed() -> None:
    rng = np.random.default_rng(1)
    base = rng.gamma(0.8, 300.0, size=30) + 5  # jobs from seconds to many minutes
    own = base * 0.8 * (1 + 0.01 * rng.standard_normal(30))
    ids = [f"j{i}" for i in range(30)]
    jobs = pd.concat([
        pd.DataFrame({"job_id": ids, "jct_s": base, "completed": True, "system": "vllm"}),
        # Rows in another order: pairing goes by job_id, not by position.
        pd.DataFrame({"job_id": ids[::-1], "jct_s": own[::-1], "completed": True, "system": "pythia"}),
    ]).assign(workload="w", load_kind="concurrency", load=4.0, seed=0)
    cells = {("w", "vllm", 4, 0): float(base.mean()), ("w", "pythia", 4, 0): float(own.mean())}
    r = tables.paired_ratios(_summary_rows(cells, jobs=30), jobs, "mean_jct_s", "vllm", ["pythia"]).iloc[0]
    assert r["method"] == "jobs" and r["n_jobs"] == 30
    assert r["ratio"] == pytest.approx(own.mean() / base.mean())
    assert r["hi"] - r["lo"] < 0.02 and r["lo"] <= 0.8 <= r["hi"] + 0.01
    assert _unpaired_width(own, base, np.random.default_rng(0)) > 0.3
    # Without the per-job table, one seed gives a point and no interval, never a spread.
    p = tables.paired_ratios(_summary_rows(cells, jobs=30), None, "mean_jct_s", "vllm", ["pythia"]).iloc[0]
    assert p["method"] == "point" and np.isnan(p["lo"]) and np.isnan(p["hi"])


def test_p95_is_omitted_below_20_completed_jobs(tmp_path: Path) -> None:
    cells = {(wl, s, 8, 0): v for wl in ("small", "large") for s, v in (("vllm", 200.0), ("pythia", 100.0))}
    df = _summary_rows(cells)
    df.loc[df["workload"] == "large", ["jobs_completed", "jobs_submitted"]] = 64
    assert tables.tail_eligible(df).tolist() == [w == "large" for w in df["workload"]]
    figs, notes = make_all(df, pd.DataFrame(), tmp_path / "fig")
    by = {f.name: f for f in figs}
    assert "large" in by["jct_p95"].cells and "small" not in by["jct_p95"].cells
    assert any("small" in n and "fewer than 20" in n for n in by["jct_p95"].notes)
    assert any("P95 JCT omitted for small" in n for n in by["jct_vs_load"].notes)
    few = df[df["workload"] == "small"]
    figs, notes = make_all(few, pd.DataFrame(), tmp_path / "few")
    assert "jct_p95" not in {f.name for f in figs} and any(n.startswith("jct_p95: skipped") for n in notes)
    assert not (tmp_path / "few" / "jct_p95.png").exists()


def test_pngs_are_300_dpi_and_fonts_fit_a_column(drawn: tuple[Path, list, list[str]]) -> None:
    from PIL import Image

    _, figs, _ = drawn
    for f in figs:
        png = next(p for p in f.files if p.suffix == ".png")
        with Image.open(png) as im:
            assert [round(v) for v in im.info["dpi"]] == [300, 300], png.name
            assert im.size[0] >= 3.3 * 300 * 0.9  # at least one column wide at 300 dpi
        assert f.min_text_pt >= 8 and f.min_legend_pt >= 7, f.name


def test_index_has_a_caption_for_every_figure_file(drawn: tuple[Path, list, list[str]]) -> None:
    out, figs, notes = drawn
    write_index(figs, notes, out / "index.md")
    text = (out / "index.md").read_text()
    sections = {s.split("\n", 1)[0].strip(): s for s in text.split("\n## ")[1:]}
    for png in sorted(out.glob("*.png")):
        section = sections[png.stem]
        assert f"({png.name})" in section and f"({png.stem}.pdf)" in section
        for part in ("**Shows.**", "**Cells.**", "**Reading.**"):
            line = next(ln for ln in section.splitlines() if ln.startswith(part))
            assert len(line) > len(part) + 20, (png.name, part)
        reading = next(ln for ln in section.splitlines() if ln.startswith("**Reading.**"))
        assert any(c.isdigit() for c in reading), png.name  # computed from the data, not boilerplate
    assert "3 seeds" in sections["jct_vs_load"] and "20 jobs per run" in sections["jct_vs_load"]


def test_every_system_has_its_own_colour_marker_and_dashes() -> None:
    from pythia.analysis.style import SYSTEM_STYLE, luminance

    styles = list(SYSTEM_STYLE.values())
    for attr in ("colour", "marker", "linestyle"):
        values = [str(getattr(s, attr)) for s in styles]
        assert len(set(values)) == len(values), attr
    # Greyscale: each group drawn together spans dark to light, and the ablations (one hue) differ in grey.
    main = ["vllm", "sglang", "autellix", "continuum", "kvflow", "thunderagent", "pythia", "oracle"]
    grey = [luminance(SYSTEM_STYLE[s].colour) for s in main]
    assert max(grey) - min(grey) >= 0.6
    abl = sorted(luminance(SYSTEM_STYLE[s].colour) for s in SYSTEM_STYLE if s.startswith("pythia-no-"))
    assert min(np.diff(abl)) >= 0.12


def test_ratio_axis_includes_one_and_never_zooms_to_a_percent() -> None:
    from pythia.analysis.figures_common import ratio_limits

    lo, hi = ratio_limits([1.002], [1.008], [1.005])
    assert lo <= 0.9 and hi >= 1.1
    lo, hi = ratio_limits([1.6], [2.4], [2.0])
    assert lo <= 1.0 and hi >= 2.4


def test_timeline_draws_the_reactive_autoscaler_beside_pythia_with_the_budget(tmp_path: Path) -> None:
    from sim_helpers import chain_trace

    from pythia.analysis.figures import autoscale_timeline
    from pythia.sim.run import run_simulation

    runs = tmp_path / "runs" / "exp"
    for system in ("pythia", "vllm-autoscale"):
        run_simulation(system, chain_trace(8, concurrency=4), out=runs / system / "c4" / "seed0")
    setup_matplotlib()
    fig = autoscale_timeline(runs / "pythia" / "c4" / "seed0", tmp_path / "tl", peer=runs / "vllm-autoscale" / "c4" / "seed0",
                             gpu_budget=8)
    assert "GPU budget (8)" in fig.legend_labels
    assert "pythia held at most" in fig.reading and "vllm-autoscale held at most" in fig.reading
    assert "exp at 4 jobs in flight, seed 0" in fig.cells and fig.notes == []
    # A budget recorded in the run's summary wins over the one passed in.
    summary = runs / "pythia" / "c4" / "seed0" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "gpus": 6}))
    fig = autoscale_timeline(summary.parent, tmp_path / "tl2", gpu_budget=8)
    assert "GPU budget (6)" in fig.legend_labels
