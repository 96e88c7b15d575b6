"""Thin shim: collect run directories into tables (logic in pythia.analysis.tables)."""

from pathlib import Path

from pythia.analysis import tables

summaries = tables.collect_summaries(snakemake.input)  # type: ignore[name-defined]  # noqa: F821
summaries.to_parquet(snakemake.output.summaries, index=False)  # type: ignore[name-defined]  # noqa: F821
jobs = tables.collect_jobs([Path(f).parent for f in snakemake.input])  # type: ignore[name-defined]  # noqa: F821
jobs.to_parquet(snakemake.output.jobs, index=False)  # type: ignore[name-defined]  # noqa: F821
