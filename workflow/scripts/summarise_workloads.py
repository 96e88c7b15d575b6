"""Thin shim: the workload summary table (logic in pythia.analysis.workloads)."""

from pythia.analysis.workloads import summarise

summarise(snakemake.input, snakemake.output.json, snakemake.output.md)  # type: ignore[name-defined]  # noqa: F821
