"""The committed reference figures (``results/reference/``) agree with the tables beside them.

``make reference`` copies a default run's figures and the two tables they were drawn from.
Redrawing from those tables must give the same caption (what each figure shows, its cells
and its one-line reading, every number computed from the data) for every figure drawn from
the tables alone; the autoscaling timeline reads a run directory, which is not committed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from pythia.analysis.figures import make_all, write_index

REF = Path(__file__).resolve().parents[1] / "results" / "reference"


def _sections(text: str) -> dict[str, str]:
    """``## name`` -> its caption text, per figure of an ``index.md``."""
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    return {p.split("\n", 1)[0].strip(): p.split("\n", 1)[1].strip() for p in parts}


def test_the_reference_holds_its_tables_and_a_figure_per_caption() -> None:
    for f in ("tables/summaries.parquet", "tables/jobs.parquet", "figures/index.md", "workloads-summary.md"):
        assert (REF / f).is_file(), f"results/reference/{f} is missing (make reproduce && make reference)"
    captions = _sections((REF / "figures" / "index.md").read_text())
    assert "jct_vs_load" in captions
    for name in captions:
        if name != "Skipped":
            assert (REF / "figures" / f"{name}.png").is_file(), name


def test_captions_redrawn_from_the_reference_tables_equal_the_committed_ones(tmp_path: Path) -> None:
    summaries = pd.read_parquet(REF / "tables" / "summaries.parquet")
    jobs = pd.read_parquet(REF / "tables" / "jobs.parquet")
    figures, notes = make_all(summaries, jobs, tmp_path)
    write_index(figures, notes, tmp_path / "index.md")
    got = _sections((tmp_path / "index.md").read_text())
    want = _sections((REF / "figures" / "index.md").read_text())
    drawn = [f.name for f in figures]
    assert drawn, "no figure drawn from the reference tables"
    for name in drawn:
        assert name in want, f"{name}: drawn from the reference tables but not in results/reference/figures/index.md"
        assert got[name] == want[name], f"{name}: caption differs from the committed one (rerun make reference)"
    missing = set(want) - set(drawn) - {"Skipped", "autoscale_timeline", "fidelity", "nvml_timeline"}
    if missing:
        pytest.fail(f"committed captions with no figure drawn from the tables: {sorted(missing)}")
