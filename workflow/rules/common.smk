# Shared definitions: configuration check, the workloads, systems and runs of the grid.
import os
import sys
from pathlib import Path

import yaml
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

# Unknown systems stop the run here, before any job starts, naming the field.
_known_systems = sorted(p.stem for p in Path("baselines").glob("*.yaml"))
REAL = config.get("real") or {"backend": "vllm-cpu", "systems": [], "experiments": {}}
_system_lists = [("systems", config["systems"]), ("real.systems", REAL["systems"])]
_system_lists += [(f"experiments.{n}.systems", e["systems"]) for n, e in config["experiments"].items() if "systems" in e]
for _field, _names in _system_lists:
    for _i, _system in enumerate(_names):
        if _system not in _known_systems:
            raise ValueError(
                f"config field {_field}[{_i}]: unknown system {_system!r}; known: {', '.join(_known_systems)}"
            )


def experiment_workload(name):
    """The workload path of an experiment ({traces} expands to the traces folder)."""
    exp = config["experiments"].get(name) or REAL["experiments"][name]
    return exp["workload"].replace("{traces}", str(TRACES_DIR))


EXPERIMENTS = {}
for _name, _exp in {**REAL["experiments"], **config["experiments"]}.items():
    if _exp.get("needs_traces") and not Path(experiment_workload(_name)).exists():
        print(f"experiment {_name}: skipped, {experiment_workload(_name)} not found", file=sys.stderr)
        continue
    EXPERIMENTS[_name] = _exp


def load_levels(exp):
    """Run-directory names of an experiment's load levels: c<N> or r<R>."""
    if "concurrency" in exp:
        return [f"c{n}" for n in exp["concurrency"]]
    return [f"r{r:g}" for r in exp["rate"]]


_tl = config.get("timeline")
TIMELINE_RUN = (
    f"results/runs/{_tl['experiment']}/{_tl['system']}/{_tl['load']}/seed{_tl['seed']}"
    if _tl and _tl["experiment"] in EXPERIMENTS
    else None
)

RUN_DIRS = [
    f"results/runs/{name}/{system}/{load}/seed{seed}"
    for name, exp in EXPERIMENTS.items()
    if name in config["experiments"]
    for system in exp.get("systems", config["systems"])
    for load in load_levels(exp)
    for seed in exp.get("seeds", config["seeds"])
]

# Real runs, and their simulated twins on the calibrated cluster (for the fidelity figure).
REAL_DIR = f"results/real-{REAL['backend']}"
REAL_PAIRS = [
    (f"{REAL_DIR}/{name}/{system}/{load}/seed{seed}", f"results/runs/{name}/{system}/{load}/seed{seed}")
    for name, exp in REAL["experiments"].items()
    if name in EXPERIMENTS
    for system in REAL["systems"]
    for load in load_levels(exp)
    for seed in exp.get("seeds", config["seeds"])
]


def _workload_files(w):
    path = Path(experiment_workload(w.experiment))
    return sorted(str(p) for p in path.iterdir() if p.is_file()) if path.is_dir() else [str(path)]


def _system_files(w):
    """The system's file and those it extends, so that editing a parent reruns its variants."""
    files, name = [], w.system
    while name and f"baselines/{name}.yaml" not in files:
        files.append(f"baselines/{name}.yaml")
        if not Path(files[-1]).is_file():
            break
        name = (yaml.safe_load(Path(files[-1]).read_text()) or {}).get("extends")
    return files


def _load_args(w):
    exp = EXPERIMENTS[w.experiment]
    load = f"--concurrency {w.load[1:]}" if w.load.startswith("c") else f"--rate {w.load[1:]}"
    args = [load, f"--seed {w.seed}"]
    if "jobs" in exp:
        args.append(f"--jobs {exp['jobs']}")
    if "max_gap_s" in exp:
        args.append(f"--max-gap-s {exp['max_gap_s']}")
    return args


def _real_args(w):
    args = _load_args(w)
    if REAL.get("model"):
        args.append(f"--model {REAL['model']}")
    if REAL["backend"] == "vllm-cpu":
        # On the CPU, graph compilation for each new batch shape lands inside the measured
        # calls (seconds each); eager mode measures serving, as the fidelity benchmark does.
        args.append("--engine-arg=--enforce-eager")
    return " ".join(args)


def _sim_args(w):
    exp = EXPERIMENTS[w.experiment]
    args = _load_args(w)
    if "cluster" in exp:
        args.append(f"--cluster {exp['cluster']}")
    return " ".join(args)
