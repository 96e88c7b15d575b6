# Shared definitions: configuration check, the workloads, systems and runs of the grid.
import json
import math
import os
import sys
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError

from pythia.provenance import ANALYSIS_PARTS, RUN_PARTS, data_files, source_digest

# The conda environment of every rule (used with --use-conda; pip users have .venv).
ENV = "../../environment.yml"


def _uses_conda() -> bool:
    """True when Snakemake runs rules in their conda environments (--use-conda / --sdm conda)."""
    try:
        from snakemake_interface_executor_plugins.settings import DeploymentMethod

        return DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    except Exception:  # an older or newer Snakemake without this API: the running interpreter
        return False


# With --use-conda a rule calls the package through its own environment's interpreter;
# otherwise through the interpreter running Snakemake (the project's .venv).
PYTHIA = "python -m pythia" if _uses_conda() else f"{sys.executable} -m pythia"
SPECS = sorted(glob_wildcards("workloads/{spec}.yaml").spec)

# ------------------------------------------------------------------ configuration check
# Every mistake in the configuration stops the run here, before any job starts, with one
# sentence naming the config file that set the field, the field and the fix.

_CLI_CONFIGFILES = [Path(p) for p in workflow.config_settings.configfiles]
# Merged in this order, later files winning: the Snakefile's configfile, then --configfile's.
CONFIG_FILES = [Path(p) for p in workflow.configfiles[len(_CLI_CONFIGFILES) :]] + _CLI_CONFIGFILES


def _shown(path):
    """A config file's name as the user would type it (relative to here when inside)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@lru_cache(maxsize=None)
def _config_file_data(path):
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def config_source(field):
    """Where ``field`` (a tuple of keys and indices) was set: ``--config``, else the last config file holding it."""
    if not field:
        return _shown(CONFIG_FILES[0]) if CONFIG_FILES else "the configuration"
    sources = [("--config", dict(workflow.config_settings.config))]
    sources += [(_shown(p), _config_file_data(str(p))) for p in reversed(CONFIG_FILES)]
    for name, node in sources:
        for key in field:
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and isinstance(key, int) and key < len(node):
                node = node[key]
            else:
                break
        else:
            return name
    return "the configuration"


def field_name(field):
    """``experiments.coding-assistant.rate[0]`` for ``("experiments", "coding-assistant", "rate", 0)``."""
    out = ""
    for key in field:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out or "(top level)"


def config_error(field, problem):
    """The error for ``field``: ``FILE: FIELD=VALUE problem`` (the value taken from the merged config)."""
    value = config
    for key in field:
        value = value[key]
    return WorkflowError(f"{config_source(field)}: {field_name(field)}={value!r} {problem}")


def _check_finite(node, field=()):
    """Refuse NaN and infinity anywhere (YAML's .nan and .inf); JSON Schema cannot express it."""
    if isinstance(node, float) and not math.isfinite(node):
        raise config_error(field, "is not a finite number")
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        _check_finite(value, (*field, key))


# An integer is an int, never a float such as 2.0 (which would reach a command line as "2.0").
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, x: isinstance(x, int) and not isinstance(x, bool)
    ),
)


def _check_schema():
    with open(Path(workflow.current_basedir) / "../schemas/config.schema.json", encoding="utf-8") as fh:
        schema = json.load(fh)
    error = jsonschema.exceptions.best_match(_Validator(schema).iter_errors(config))
    if error is None:
        return
    field = tuple(error.absolute_path)
    if error.validator == "oneOf" or (error.parent is not None and error.parent.validator == "oneOf"):
        if error.parent is not None:
            field = tuple(error.parent.absolute_path)
        raise WorkflowError(
            f"{config_source(field)}: {field_name(field)} needs exactly one of concurrency and rate (its load levels); "
            "an overlay's experiment is merged into the base config's experiment of the same name"
        )
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in known)[0]
        raise config_error((*field, extra), f"is not a known field; known: {', '.join(known)}")
    if error.validator == "required":
        missing = next(k for k in error.validator_value if k not in error.instance)
        raise WorkflowError(f"{config_source(field)}: field {field_name((*field, missing))} is missing")
    message = error.message.splitlines()[0]
    raise WorkflowError(f"{config_source(field)}: {field_name(field)}: {message[:300]}")


_check_finite(config)
_check_schema()

TRACES_DIR = Path(os.environ.get("PYTHIA_TRACES") or config["traces_dir"])
TRACE_SETS = sorted(p.name for p in TRACES_DIR.iterdir() if p.is_dir()) if TRACES_DIR.is_dir() else []
if not TRACE_SETS:
    print(f"public traces not found at {TRACES_DIR}; running synthetic workloads only", file=sys.stderr)
REAL = config.get("real") or {"backend": "vllm-cpu", "systems": [], "experiments": {}}


def _experiment_fields():
    """``(field, experiment)`` of every experiment, simulated and real."""
    out = [(("experiments", n), e) for n, e in config["experiments"].items()]
    return out + [(("real", "experiments", n), e) for n, e in REAL["experiments"].items()]


def _check_references():
    """Every name the config refers to exists: systems, clusters, workloads, the timeline's run."""
    from pythia.errors import PythiaInputError
    from pythia.sim.config import cluster_presets, load_cluster

    known_systems = sorted(p.stem for p in Path("baselines").glob("*.yaml"))
    lists = [(("systems",), config["systems"])]
    if config.get("real"):
        lists.append((("real", "systems"), REAL["systems"]))
    lists += [((*f, "systems"), e["systems"]) for f, e in _experiment_fields() if "systems" in e]
    for field, names in lists:
        for i, name in enumerate(names):
            if name not in known_systems:
                raise config_error((*field, i), f"is not a system in baselines/; known: {', '.join(known_systems)}")
    presets = cluster_presets()
    for field, exp in _experiment_fields():
        name = field[-1]
        if field[0] == "real" and name in config["experiments"]:
            raise WorkflowError(
                f"{config_source(field)}: {field_name(field)} has the same name as experiments.{name}; "
                "give the real experiment its own name (its simulated twin is run under that name)"
            )
        cluster = exp.get("cluster")
        if cluster is not None:
            if cluster not in presets and not Path(cluster).is_file():
                raise config_error(
                    (*field, "cluster"), f"is not a cluster preset or a file; known presets: {', '.join(presets)}"
                )
            try:
                load_cluster(cluster)
            except PythiaInputError as e:
                raise config_error((*field, "cluster"), f"is not a valid cluster ({e})") from None
        workload = Path(exp["workload"].replace("{traces}", str(TRACES_DIR)))
        if not exp.get("needs_traces"):
            if not workload.exists():
                raise config_error(
                    (*field, "workload"),
                    f"does not exist ({workload}); set needs_traces: true to skip it when the traces are absent"
                    if "{traces}" in exp["workload"]
                    else "does not exist",
                )
            if workload.is_dir() and not any(p.is_file() for p in workload.iterdir()):
                raise config_error((*field, "workload"), "is a folder holding no workload file")
    tl = config.get("timeline")
    if tl:
        exps = {**REAL["experiments"], **config["experiments"]}
        if tl["experiment"] not in exps:
            raise config_error(("timeline", "experiment"), f"is not an experiment; defined: {', '.join(exps)}")
        exp = exps[tl["experiment"]]
        systems = exp.get("systems", config["systems"])
        if tl["system"] not in systems:
            raise config_error(
                ("timeline", "system"), f"is not a system of experiment {tl['experiment']}; its systems: {', '.join(systems)}"
            )
        if tl["load"] not in load_levels(exp):
            raise config_error(
                ("timeline", "load"), f"is not a load level of experiment {tl['experiment']}; its levels: "
                + ", ".join(load_levels(exp))
            )
        seeds = exp.get("seeds", config["seeds"])
        if tl["seed"] not in seeds:
            raise config_error(
                ("timeline", "seed"), f"is not a seed of experiment {tl['experiment']}; its seeds: {', '.join(map(str, seeds))}"
            )


def load_levels(exp):
    """Run-directory names of an experiment's load levels: c<N> or r<R>."""
    if "concurrency" in exp:
        return [f"c{n}" for n in exp["concurrency"]]
    return [f"r{r:g}" for r in exp["rate"]]


_check_references()


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


def _cluster_files(w):
    """The cluster file a simulated run reads (a preset's file in the package, or the user's)."""
    from pythia.sim.config import DEFAULT_CLUSTER

    name = str(EXPERIMENTS[w.experiment].get("cluster", DEFAULT_CLUSTER))
    return [name] if Path(name).is_file() else data_files(f"clusters/{name}.yaml")


# The cost model's tables: GPU peaks, model shapes and the efficiency profile that
# `pythia calibrate --write` edits. Inputs, so that a change reruns every simulated run.
SIM_TABLES = data_files("gpus.yaml", "models.yaml", "efficiency.yaml")
# Digests of the code behind a run and behind the figures (pythia.provenance), given to the
# rules as params: Snakemake reruns a job whose params changed, so an upgraded package or an
# edited simulator or policy reruns the runs, and edited analysis code redraws the figures.
RUN_CODE = source_digest(RUN_PARTS)
ANALYSIS_CODE = source_digest(ANALYSIS_PARTS)


def _load_args(w):
    exp = EXPERIMENTS[w.experiment]
    load = f"--concurrency {w.load[1:]}" if w.load.startswith("c") else f"--rate {w.load[1:]}"
    args = [load, f"--seed {w.seed}"]
    if "jobs" in exp:
        args.append(f"--jobs {exp['jobs']}")
    if "max_gap_s" in exp:
        args.append(f"--max-gap-s {exp['max_gap_s']}")
    return args


def real_backend(system):
    """The engine a real run launches: SGLang for the sglang system (with its own flags from
    baselines/sglang.yaml, mapped by pythia.serve.engines), the configured vLLM build for the
    others. SGLang cannot serve on a CPU, so a vllm-cpu grid runs its sglang system on vLLM-CPU
    (said in the run's summary as its backend)."""
    if system == "sglang" and REAL["backend"] == "vllm":
        return "sglang"
    return REAL["backend"]


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
