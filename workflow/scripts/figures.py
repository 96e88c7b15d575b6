"""Thin shim: draw every figure from the collected tables (logic in pythia.analysis.figures)."""

import json
from pathlib import Path

import pandas as pd

from pythia.analysis.figures import autoscale_timeline, fidelity, make_all, nvml_timeline, write_index
from pythia.errors import PythiaInputError
from pythia.sim.config import load_cluster


def cluster_gpus(run_dir: str) -> tuple[int | None, dict[str, int]]:
    """The GPU budget and GPUs per replica of the cluster a run names in its summary (None if unknown)."""
    name = json.loads((Path(run_dir) / "summary.json").read_text()).get("cluster")
    try:
        cluster = load_cluster(name) if name else None
    except PythiaInputError:
        return None, {}
    if cluster is None:
        return None, {}
    return (cluster.gpus or None), {p.name: p.tp for p in cluster.pools}


sm = snakemake  # type: ignore[name-defined]  # noqa: F821
out = Path(sm.output.figures)
figures, notes = make_all(pd.read_parquet(sm.input.summaries), pd.read_parquet(sm.input.jobs), out)
if sm.params.timeline:
    budget, tp = cluster_gpus(sm.params.timeline)
    peer = str(Path(sm.input.timeline_peer[0]).parent) if sm.input.timeline_peer else None
    figures.append(autoscale_timeline(sm.params.timeline, out / "autoscale_timeline", peer=peer, gpu_budget=budget,
                                      tp_by_pool=tp))
if sm.input.fidelity:
    figures.append(fidelity(pd.read_parquet(sm.input.fidelity[0]), out / "fidelity"))
    gpu = nvml_timeline([Path(f).parent for f in sm.input.real], out / "nvml_timeline")
    if gpu is None:
        notes.append("nvml_timeline: skipped, the real runs recorded no GPU metrics (no GPU on this host)")
    else:
        figures.append(gpu)
write_index(figures, notes, out / "index.md")
