"""Thin shim: draw every figure from the collected tables (logic in pythia.analysis.figures)."""

from pathlib import Path

import pandas as pd

from pythia.analysis.figures import autoscale_timeline, fidelity, make_all, nvml_timeline, write_index

sm = snakemake  # type: ignore[name-defined]  # noqa: F821
out = Path(sm.output.figures)
files, notes = make_all(pd.read_parquet(sm.input.summaries), pd.read_parquet(sm.input.jobs), out)
if sm.params.timeline:
    files += autoscale_timeline(sm.params.timeline, out / "autoscale_timeline")
if sm.input.fidelity:
    files += fidelity(pd.read_parquet(sm.input.fidelity[0]), out / "fidelity")
    gpu = nvml_timeline([Path(f).parent for f in sm.input.real], out / "nvml_timeline")
    if gpu is None:
        notes.append("nvml_timeline: skipped, the real runs recorded no GPU metrics (no GPU on this host)")
    else:
        files += gpu
write_index(files, notes, out / "index.md")
