"""Thin shim: draw every figure from the collected tables (logic in pythia.analysis.figures)."""

from pathlib import Path

import pandas as pd

from pythia.analysis.figures import write_index, make_all

out = Path(snakemake.output.figures)  # type: ignore[name-defined]  # noqa: F821
summaries = pd.read_parquet(snakemake.input.summaries)  # type: ignore[name-defined]  # noqa: F821
jobs = pd.read_parquet(snakemake.input.jobs)  # type: ignore[name-defined]  # noqa: F821
files, notes = make_all(summaries, jobs, out)
write_index(files, notes, out / "index.md")  # type: ignore[name-defined]  # noqa: F821
