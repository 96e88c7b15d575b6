"""Thin shim: the simulated-against-real table (logic in pythia.analysis.fidelity)."""

from pathlib import Path

from pythia.analysis.fidelity import fidelity_table

pairs = [(Path(r).parent, Path(s).parent) for r, s in zip(snakemake.input.real, snakemake.input.sim)]  # type: ignore[name-defined]  # noqa: F821
fidelity_table(pairs).to_parquet(snakemake.output[0], index=False)  # type: ignore[name-defined]  # noqa: F821
