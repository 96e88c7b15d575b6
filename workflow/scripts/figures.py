"""Thin shim: draw every figure from the collected tables (logic in pythia.analysis.figures)."""

from pathlib import Path

import pandas as pd

from pythia.analysis.figures import autoscale_timeline, make_all, write_index

out = Path(snakemake.output.figures)  # type: ignore[name-defined]  # noqa: F821
summaries = pd.read_parquet(snakemake.input.summaries)  # type: ignore[name-defined]  # noqa: F821
jobs = pd.read_parquet(snakemake.input.jobs)  # type: ignore[name-defined]  # noqa: F821
files, notes = make_all(summaries, jobs, out)
if snakemake.params.timeline:  # type: ignore[name-defined]  # noqa: F821
    files += autoscale_timeline(snakemake.params.timeline, out / "autoscale_timeline")  # type: ignore[name-defined]  # noqa: F821
write_index(files, notes, out / "index.md")
