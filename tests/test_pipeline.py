"""The Snakemake pipeline: lint, dry run, and the config check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pythia.paths import traces_dir

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _snakemake(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)


def test_lint_passes() -> None:
    proc = _snakemake("--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _job_counts(*args: str) -> dict[str, int]:
    proc = _snakemake("-n", "--quiet", "rules", "--forceall", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = {}
    for ln in (proc.stdout + proc.stderr).splitlines():
        parts = ln.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def test_dry_run_lists_the_grid() -> None:
    specs = len(list((ROOT / "workloads").glob("*.yaml")))
    counts = _job_counts("--configfile", "config/smoke.yaml")
    traces = (traces_dir() / "claude-code").is_dir()
    # 5 systems x 2 experiments x 2 loads x 1 seed, 2 systems on the shrunk saturated cell,
    # plus 2 systems on the Claude Code sessions
    assert counts["sim_run"] == 20 + 2 + (2 if traces else 0)
    assert counts["workload_trace"] == specs
    assert counts["collect"] == counts["figures"] == 1
    default = _job_counts()
    # every system: two workflows at three loads and three seeds, and the saturated cell
    assert default["sim_run"] >= 15 * 2 * 3 * 3 + 15


def test_bad_config_value_stops_before_any_job(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: zero\nworkload_jobs: 10\ntraces_dir: nowhere\n")
    proc = _snakemake("-n", "--configfile", str(bad))
    assert proc.returncode != 0
    assert "seed" in proc.stdout + proc.stderr


def _copy_project(dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("Snakefile", "environment.yml", "workflow", "config", "workloads", "baselines"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name)
        else:
            shutil.copy2(src, dst / name)
    return dst


@pytest.mark.slow
def test_smoke_run_end_to_end_then_nothing_to_do(tmp_path: Path) -> None:
    proj = _copy_project(tmp_path / "p")
    # No public traces, wherever the checkout sits: the synthetic grid alone.
    env = {**os.environ, "PYTHIA_TRACES": str(tmp_path / "no-traces")}
    first = _snakemake("--cores", "2", "--configfile", "config/smoke.yaml", cwd=proj, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    index = (proj / "results" / "figures" / "index.md").read_text()
    assert "jct_vs_load.png" in index and "autoscale_timeline.png" in index
    assert (proj / "results" / "figures" / "jct_vs_load.pdf").stat().st_size > 0
    import pandas as pd

    summaries = pd.read_parquet(proj / "results" / "tables" / "summaries.parquet")
    assert set(summaries["workload"]) == {"coding-assistant", "deep-research", "coding-assistant-saturated"}
    assert (summaries["jobs_completed"] == summaries["jobs_submitted"]).all()
    again = _snakemake("--cores", "2", "--configfile", "config/smoke.yaml", cwd=proj, env=env)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
    report = _snakemake("--configfile", "config/smoke.yaml", "--report", "report.html", cwd=proj, env=env)
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    assert (proj / "report.html").stat().st_size > 10_000


def test_unknown_system_stops_before_any_job(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("systems: [vllm, vlm]\n")
    proc = _snakemake("-n", "--configfile", str(bad))
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "systems[1]" in out and "'vlm'" in out


# (overlay text, the message after "SOURCE: ", extra snakemake arguments). {tmp} is the test's folder. The
# source is the overlay, unless the row's arguments give --config or the field comes from config/config.yaml.
BAD_CONFIGS = [
    ("experiments:\n  coding-assistant: {cluster: papr}\n",
     "experiments.coding-assistant.cluster='papr' is not a cluster preset or a file; known presets: ", ()),
    ("experiments:\n  coding-assistant: {cluster: '{tmp}/cluster.yaml'}\n",
     "experiments.coding-assistant.cluster='{tmp}/cluster.yaml' is not a valid cluster (", ()),
    ("experiments:\n  deep-research: {systems: [vllm, pytha]}\n",
     "experiments.deep-research.systems[1]='pytha' is not a system in baselines/; known: ", ()),
    ("real: {backend: vllm-cpu, systems: [vlm], experiments: {}}\n",
     "real.systems[0]='vlm' is not a system in baselines/", ()),
    ("experiments:\n  coding-assistant: {workload: workloads/nope.yaml}\n",
     "experiments.coding-assistant.workload='workloads/nope.yaml' does not exist", ()),
    ("experiments:\n  claude-code: {needs_traces: false}\n",
     "config/config.yaml: experiments.claude-code.workload='{traces}/claude-code' does not exist", ()),
    ("timeline: {experiment: nope, system: pythia, load: c8, seed: 0}\n",
     "timeline.experiment='nope' is not an experiment; defined: coding-assistant", ()),
    ("timeline: {experiment: coding-assistant, system: pythia-x, load: c8, seed: 0}\n",
     "timeline.system='pythia-x' is not a system of experiment coding-assistant", ()),
    ("timeline: {experiment: coding-assistant, system: pythia, load: c3, seed: 0}\n",
     "timeline.load='c3' is not a load level of experiment coding-assistant; its levels: c2, c4, c8", ()),
    ("experiments:\n  r: {workload: workloads/chat.yaml, rate: [.nan]}\ntimeline: null\n",
     "experiments.r.rate[0]=nan is not a finite number", ()),
    ("experiments:\n  r: {workload: workloads/chat.yaml, rate: [1, .inf]}\n",
     "experiments.r.rate[1]=inf is not a finite number", ()),
    ("experiments:\n  claude-code: {needs_traces: 'true'}\n",
     "experiments.claude-code.needs_traces: 'true' is not of type 'boolean'", ()),
    ("experiments:\n  r: {workload: workloads/chat.yaml, concurrency: [2.0]}\n",
     "experiments.r.concurrency[0]: 2.0 is not of type 'integer'", ()),
    ("experiments:\n  deep-research: {rate: [1]}\n",
     "experiments.deep-research needs exactly one of concurrency and rate", ()),
    ("sede: 1\n", "sede=1 is not a known field; known: experiments, real, seed", ()),
    ("experiments:\n  a/b: {workload: workloads/chat.yaml, concurrency: [2]}\n",
     "experiments: 'a/b' does not match", ()),
    ("real: {backend: vllm-cpu, systems: [vllm], experiments: {deep-research: {workload: workloads/chat.yaml, concurrency: [2]}}}\n",
     "real.experiments.deep-research has the same name as experiments.deep-research", ()),
    ("seeds: [0]\n", "--config: systems[1]='zz' is not a system in baselines/", ("--config", 'systems=["vllm","zz"]')),
]


@pytest.mark.parametrize("text, needle, extra", BAD_CONFIGS, ids=[f"{i:02d}" for i in range(len(BAD_CONFIGS))])
def test_a_bad_config_reference_stops_the_dry_run_naming_file_and_field(
    tmp_path: Path, text: str, needle: str, extra: tuple[str, ...]
) -> None:
    (tmp_path / "cluster.yaml").write_text("pools: {}\n")
    (tmp_path / "traces").mkdir()  # an empty traces folder: experiments that need traces are skipped
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("{tmp}", str(tmp_path)))
    env = {**os.environ, "PYTHIA_TRACES": str(tmp_path / "traces")}
    proc = subprocess.run([*SNAKEMAKE, "-n", "--configfile", str(bad), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Building DAG" not in out and "Job stats" not in out  # stopped before any job was planned
    expected = needle.replace("{tmp}", str(tmp_path))
    if not expected.startswith(("--config: ", "config/config.yaml: ")):
        expected = f"{bad}: {expected}"
    source = expected.split(": ")[0] + ": "
    lines = [ln for ln in out.splitlines() if ln.startswith(source)]
    assert len(lines) == 1 and lines[0].startswith(expected), out[-2000:]


def test_the_shipped_configs_pass_the_check() -> None:
    # The check runs while the Snakefile is read: listing the rules is enough, no DAG needed.
    for overlay in sorted((ROOT / "config").glob("*.yaml")):
        proc = _snakemake("--list-rules", "--configfile", str(overlay.relative_to(ROOT)))
        assert proc.returncode == 0, f"{overlay.name}: " + (proc.stdout + proc.stderr)[-2000:]


# What a simulated run depends on, and the rules a change of it must rerun. Each row: a label,
# the file changed (relative to the copied project), how (edit: a comment appended to its
# text; version: another package version; rows: the table's rows written in another order),
# and the jobs a dry run must then plan. A newer modification time alone is not a change:
# Snakemake compares the checksum of an input that is newer than its outputs.
RERUN_TRIGGERS = [
    ("system file", "baselines/vllm.yaml", "edit", {"sim_run": 2}),
    ("parent of a system file", "baselines/pythia.yaml", "edit", {"sim_run": 2}),
    ("cluster file of an experiment", "mycluster.yaml", "edit", {"sim_run": 2}),
    ("cluster preset", "pythia/sim/data/clusters/paper.yaml", "edit", {"sim_run": 2}),
    ("efficiency profile", "pythia/sim/data/efficiency.yaml", "edit", {"sim_run": 4}),
    ("workload", "workloads/chat.yaml", "edit", {"sim_run": 4}),
    ("simulator code", "pythia/sim/engine.py", "edit", {"sim_run": 4}),
    ("policy code", "pythia/policy/pythia_router.py", "edit", {"sim_run": 4}),
    ("package version", "pythia/__init__.py", "version", {"sim_run": 4}),
    ("analysis code", "pythia/analysis/figures_main.py", "edit", {"sim_run": 0, "collect": 1, "figures": 1}),
    ("collected table", "results/tables/summaries.parquet", "rows", {"sim_run": 0, "collect": 0, "figures": 1}),
]

TINY_CONFIG = """\
seed: 0
workload_jobs: 2
traces_dir: no-traces
systems: [vllm, pythia-no-cache]
seeds: [0]
experiments:
  on-preset: {workload: workloads/chat.yaml, jobs: 2, concurrency: [2]}
  on-file: {workload: workloads/chat.yaml, jobs: 2, concurrency: [2], cluster: mycluster.yaml, systems: [vllm, pythia-no-cache]}
"""


@pytest.fixture(scope="module")
def ran_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project (package included) whose tiny grid has run once."""
    proj = _copy_project(tmp_path_factory.mktemp("rerun") / "p")
    shutil.copytree(ROOT / "pythia", proj / "pythia", ignore=shutil.ignore_patterns("__pycache__"))
    (proj / "config" / "config.yaml").write_text(TINY_CONFIG)
    shutil.copy2(ROOT / "pythia" / "sim" / "data" / "clusters" / "cpu-tiny.yaml", proj / "mycluster.yaml")
    first = _in_copy(proj, "--cores", "2", *_TARGETS)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return proj


_TARGETS = ("results/tables/summaries.parquet", "results/figures")


def _in_copy(proj: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The copy's package is imported first, by Snakemake and by every rule.
    env = {**os.environ, "PYTHONPATH": str(proj), "PYTHIA_TRACES": str(proj / "no-traces")}
    return subprocess.run([*SNAKEMAKE, *args], cwd=proj, env=env, capture_output=True, text=True, check=False)


def _planned(proj: Path) -> dict[str, int]:
    proc = _in_copy(proj, *_TARGETS, "-n", "--quiet", "rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = {}
    for ln in (proc.stdout + proc.stderr).splitlines():
        parts = ln.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("label, path, how, expected", RERUN_TRIGGERS, ids=[r[0] for r in RERUN_TRIGGERS])
def test_a_change_reruns_what_depends_on_it(ran_project: Path, label: str, path: str, how: str,
                                            expected: dict[str, int]) -> None:
    assert _planned(ran_project) == {}, "the grid is not up to date before the change"
    target = ran_project / path
    before = target.stat()
    text = target.read_bytes()
    try:
        if how == "rows":
            import pandas as pd

            pd.read_parquet(target).iloc[::-1].to_parquet(target)
        elif how == "edit":
            target.write_bytes(text + b"\n# changed\n")
        else:
            target.write_text(text.decode().replace('__version__ = "', '__version__ = "9.'))
        planned = _planned(ran_project)
        assert {rule: planned.get(rule, 0) for rule in expected} == expected, f"{label}: {planned}"
    finally:
        target.write_bytes(text)
        os.utime(target, (before.st_atime, before.st_mtime))
    assert _planned(ran_project) == {}, f"{label}: undoing the change should leave nothing to do"
