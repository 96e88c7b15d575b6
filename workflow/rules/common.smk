# Shared definitions: configuration check, the workloads and trace folders of the grid.
import os
import sys
from pathlib import Path

from snakemake.utils import validate

validate(config, "../schemas/config.schema.json")

PYTHIA = f"{sys.executable} -m pythia"
# The conda environment of every rule (used with --use-conda; pip users have .venv).
ENV = "../../environment.yml"
SPECS = sorted(glob_wildcards("workloads/{spec}.yaml").spec)
TRACES_DIR = Path(os.environ.get("PYTHIA_TRACES") or config["traces_dir"])
TRACE_SETS = sorted(p.name for p in TRACES_DIR.iterdir() if p.is_dir()) if TRACES_DIR.is_dir() else []
if not TRACE_SETS:
    print(f"public traces not found at {TRACES_DIR}; running synthetic workloads only", file=sys.stderr)
