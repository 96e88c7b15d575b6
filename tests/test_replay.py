"""The replay client against a stub OpenAI-compatible server on 127.0.0.1 (no engine needed).

The stub streams ``max_tokens`` tokens per completion (one SSE chunk each, a fixed delay per
token), returns the token ids it generated, and records every request body with its arrival
time, so tests can check dependency order, gaps, annotations, prompt synthesis and bounds.
"""

from __future__ import annotations

import gc
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("httpx", reason="httpx comes with the vllm-cpu extra")

from pythia.bench.replay import FINISHED, NOT_ISSUED, ReplayOptions, run_replay  # noqa: E402
from pythia.bench.tokens import PromptBuilder, TokenSpace  # noqa: E402
from pythia.errors import PythiaInputError  # noqa: E402
from pythia.results import CALL_COLUMNS, JOB_COLUMNS  # noqa: E402
from pythia.workflow.hashing import stable_key  # noqa: E402
from pythia.workflow.trace import Call, Job, Trace, segments  # noqa: E402

SPACE = TokenSpace(5, 4096)
TOKEN_DELAY_S = 0.002


class _Stub(BaseHTTPRequestHandler):
    server: "_StubServer"

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append((time.monotonic(), body))
            n = len(self.server.requests)
        if self.server.fail_every and n % self.server.fail_every == 0:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        out = int(body["max_tokens"])
        start = 7 * n
        for i in range(out):
            time.sleep(TOKEN_DELAY_S)
            chunk = {"choices": [{"index": 0, "text": "x", "token_ids": [start + i]}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": out,
                 "prompt_tokens_details": {"cached_tokens": 0}}
        self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


class _StubServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the warm-up opens 16 connections at once (the default backlog is 5)

    def __init__(self, fail_every: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _Stub)
        self.requests: list[tuple[float, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.fail_every = fail_every

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def stub() -> Iterator[_StubServer]:
    srv = _StubServer()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


SYSTEM_KEY = stable_key("test", "system")


def multi_agent_job(j: int, gap_s: float = 0.0) -> Job:
    """planner -> two explorers (parallel) -> engineer quoting the explorers' outputs."""
    job_id = f"job-{j}"
    ctx = stable_key("ctx", job_id)
    sys_seg = (SYSTEM_KEY, 0, 32)

    def out_key(c: int) -> int:
        return stable_key("out", job_id, c)

    calls = [
        Call(0, "planner", "m", 48, 6, prompt=segments([sys_seg, (ctx, 0, 16)]), agent_id="planner"),
        Call(1, "explorer", "m", 54, 5, deps=(0,), gap_s=gap_s, step=1, parent=0, agent_id="explorer/0",
             prompt=segments([sys_seg, (ctx, 0, 16), (out_key(0), 0, 6)])),
        Call(2, "explorer", "m", 54, 5, deps=(0,), gap_s=gap_s, step=2, parent=0, agent_id="explorer/1",
             prompt=segments([sys_seg, (ctx, 0, 16), (out_key(0), 0, 6)])),
        Call(3, "engineer", "m", 58, 4, deps=(1, 2), gap_s=gap_s, step=3, parent=0, agent_id="engineer",
             prompt=segments([sys_seg, (ctx, 0, 16), (out_key(1), 0, 5), (out_key(2), 0, 5)])),
    ]
    return Job(job_id, "coding-assistant", f"wf-{j}", calls)


def options(url: str, **kw: Any) -> ReplayOptions:
    return ReplayOptions(base_url=url, model="tiny", tokens=SPACE, **kw)


def test_token_synthesis_is_deterministic_and_shares_equal_segments() -> None:
    a = SPACE.ids(123, 10, 50)
    assert np.array_equal(a, SPACE.ids(123, 10, 50))
    assert np.array_equal(a[5:], SPACE.ids(123, 15, 45))  # the same stream at the same offsets
    assert not np.array_equal(a, SPACE.ids(124, 10, 50))
    assert a.min() >= SPACE.low and a.max() < SPACE.high
    b = PromptBuilder(SPACE)
    p1 = b.prompt(segments([(SYSTEM_KEY, 0, 32), (1, 0, 8)]))
    p2 = b.prompt(segments([(SYSTEM_KEY, 0, 16), (SYSTEM_KEY, 16, 16), (2, 0, 8)]))
    assert p1[:32] == p2[:32] and p1[32:] != p2[32:]
    b.record_output(9, [1, 2, 3])
    assert b.prompt(segments([(9, 1, 4)]))[:2] == [2, 3]  # realised tokens, then synthesised past the end
    assert len(b.prompt(segments([(9, 1, 4)]))) == 4


def test_token_space_for_a_model_folder(tmp_path: Any) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 32000}))
    assert TokenSpace.for_model(tmp_path) == TokenSpace(256, 32000 - 1024)
    with pytest.raises(PythiaInputError, match="config.json"):
        TokenSpace.for_model(tmp_path / "missing")


def test_closed_loop_replay_follows_dependencies_and_writes_simulator_columns(stub: _StubServer) -> None:
    trace = Trace([multi_agent_job(j) for j in range(3)], arrival={"process": "closed", "concurrency": 2})
    res = run_replay(trace, options(stub.url))
    assert list(res.calls.columns) == list(CALL_COLUMNS) and list(res.jobs.columns) == list(JOB_COLUMNS)
    assert (res.calls["status"] == FINISHED).all()
    assert res.calls["output_tokens"].tolist() == [c.output_tokens for j in trace.jobs for c in j.calls]
    assert (res.calls["ttft_s"] > 0).all() and (res.calls["ttft_s"] <= res.calls["latency_s"]).all()
    assert res.calls["tpot_s"].notna().all()
    by = {(r.job_id, r.call_id): r for r in res.calls.itertuples()}
    for j in trace.jobs:
        for c in j.calls:
            for d in c.deps:
                assert by[(j.job_id, c.call_id)].issue_s >= by[(j.job_id, d)].finish_s
    # closed loop of 2: the third job starts only when one of the first two has ended
    starts = res.jobs.set_index("job_id")["start_s"]
    ends = res.jobs.set_index("job_id")["end_s"]
    assert starts["job-2"] >= min(ends["job-0"], ends["job-1"]) - 1e-3
    s = res.summary
    assert s["jobs_completed"] == 3 and s["calls_completed"] == 12 and s["calls_failed"] == 0
    assert s["mean_jct_s"] > 0 and s["duration_s"] > 0 and "simulated_s" not in s
    assert res.jobs["critical_path_calls"].tolist() == [3, 3, 3]
    # The client reports its own health and the clock origin engine-side logs join on.
    assert 0 <= s["client_loop_lag_p99_ms"] <= s["client_loop_lag_max_ms"]
    assert 0 < s["clock_origin_monotonic_s"] <= time.monotonic()
    assert gc.get_freeze_count() == 0  # the collector's frozen set is given back after the replay


def test_a_job_with_two_ends_marks_no_last_call(stub: _StubServer) -> None:
    job = multi_agent_job(0)
    # Drop the engineer: the two explorers both end the job, and either may finish last.
    two_ends = Job(job.job_id, job.workflow_type, job.workflow_id, job.calls[:3])
    run_replay(Trace([two_ends], arrival={"process": "closed", "concurrency": 1}), options(stub.url))
    assert not any(b["vllm_xargs"].get("pythia_hint.last_call") for _, b in stub.requests)


def test_warm_up_covers_each_shape_class_outside_the_workloads_streams(stub: _StubServer) -> None:
    from pythia.bench.replay import WARMUP_ROUNDS, warm_up

    sent = warm_up(stub.url, "tiny", SPACE, max_context=1024)
    assert sent == sum(n for n, _, _ in WARMUP_ROUNDS) == len(stub.requests)
    lengths = sorted({len(b["prompt"]) for _, b in stub.requests})
    assert max(lengths) < 1024 and len(lengths) == len(WARMUP_ROUNDS)  # clamped to the context
    assert all(b["max_tokens"] == b["min_tokens"] and b["ignore_eos"] for _, b in stub.requests)
    prompts = [tuple(b["prompt"][:16]) for _, b in stub.requests]
    assert len(set(prompts)) == len(prompts)  # every warm-up prompt is its own stream


def test_requests_carry_annotations_exact_lengths_and_realised_outputs(stub: _StubServer) -> None:
    trace = Trace([multi_agent_job(0)], arrival={"process": "closed", "concurrency": 1})
    run_replay(trace, options(stub.url))
    bodies = [b for _, b in stub.requests]
    assert len(bodies) == 4
    for b in bodies:
        assert b["max_tokens"] == b["min_tokens"] and b["ignore_eos"] is True and b["stream"] is True
        assert b["vllm_xargs"]["pythia.workflow_id"] == "wf-0"
        assert b["vllm_xargs"]["pythia.workflow_type"] == "coding-assistant"
    roles = sorted(b["vllm_xargs"]["pythia.agent_role"] for b in bodies)
    assert roles == ["engineer", "explorer", "explorer", "planner"]
    planner = next(b for b in bodies if b["vllm_xargs"]["pythia.agent_role"] == "planner")
    explorer = next(b for b in bodies if b["vllm_xargs"]["pythia.agent_role"] == "explorer")
    assert planner["prompt"][:48] == explorer["prompt"][:48]  # system prompt and job context shared
    assert explorer["vllm_xargs"]["pythia.parent_call_id"] == "job-0/0"
    for b in bodies:  # segment hints: the plugin names the request's blocks as the simulator does
        segs = b["vllm_xargs"]["pythia_hint.prompt"]
        assert len(segs) % 3 == 0 and sum(segs[2::3]) == len(b["prompt"])
    assert explorer["vllm_xargs"]["pythia_hint.parent"] == 0 and explorer["vllm_xargs"]["pythia_hint.deps"] == [0]
    last = [b for b in bodies if b["vllm_xargs"].get("pythia_hint.last_call")]
    assert [b["vllm_xargs"]["pythia.agent_role"] for b in last] == ["engineer"]  # the one call all others lead to
    # the explorer quotes the planner's output: the tokens the server generated for it
    first = 7 * 1  # the stub's token ids for its first request
    assert explorer["prompt"][48:54] == list(range(first, first + 6))
    assert all(len(b["prompt"]) == n for b, n in zip(sorted(bodies, key=lambda b: b["vllm_xargs"].get("pythia.step", 0)),
                                                     [48, 54, 54, 58]))


def test_gaps_are_waited_and_scaled(stub: _StubServer) -> None:
    trace = Trace([multi_agent_job(0, gap_s=0.4)], arrival={"process": "closed", "concurrency": 1})
    res = run_replay(trace, options(stub.url, gap_scale=0.5))
    c = res.calls.set_index("call_id")
    assert c.loc[1, "issue_s"] - c.loc[0, "finish_s"] >= 0.2 - 1e-3
    assert c.loc[3, "issue_s"] - max(c.loc[1, "finish_s"], c.loc[2, "finish_s"]) >= 0.2 - 1e-3


def test_open_loop_releases_jobs_at_their_arrival_times(stub: _StubServer) -> None:
    jobs = [multi_agent_job(j) for j in range(3)]
    for j, t in zip(jobs, (10.0, 10.3, 10.6)):
        j.arrival_s = t
    res = run_replay(Trace(jobs, arrival={"process": "timestamps", "time_scale": 1.0}), options(stub.url))
    starts = res.jobs.set_index("job_id")["start_s"]
    assert starts["job-1"] - starts["job-0"] == pytest.approx(0.3, abs=0.1)
    assert starts["job-2"] - starts["job-0"] == pytest.approx(0.6, abs=0.1)


def test_bounds_on_calls_and_failures_are_recorded(stub: _StubServer) -> None:
    trace = Trace([multi_agent_job(j) for j in range(2)], arrival={"process": "closed", "concurrency": 1})
    res = run_replay(trace, options(stub.url, max_calls=5))
    assert len(stub.requests) == 5
    # the two explorers of job 1 are not issued, so its engineer is skipped
    assert res.calls["status"].tolist()[5:] == [NOT_ISSUED, NOT_ISSUED, "skipped"]
    assert res.summary["calls_not_issued"] == 3
    assert res.summary["jobs_completed"] == 1


def test_a_failed_call_skips_its_dependants_without_stopping_the_run() -> None:
    srv = _StubServer(fail_every=1)  # every request fails
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        res = run_replay(Trace([multi_agent_job(0)], arrival={"process": "closed", "concurrency": 1}), options(srv.url))
    finally:
        srv.shutdown()
        srv.server_close()
    assert res.calls["status"].tolist() == ["failed", "skipped", "skipped", "skipped"]
    assert res.summary["calls_failed"] == 1 and res.summary["jobs_completed"] == 0
    assert "HTTP 500" in res.errors[0]
    assert math.isnan(res.summary["mean_jct_s"])


def test_only_loopback_engines_are_accepted() -> None:
    with pytest.raises(PythiaInputError, match="loopback"):
        options("http://10.0.0.5:8000")
    with pytest.raises(PythiaInputError, match="loopback"):
        options("http://example.com")
    options("http://localhost:8000")
    options("http://127.0.0.2:8000")


def test_open_loop_needs_arrival_times(stub: _StubServer) -> None:
    with pytest.raises(PythiaInputError, match="arrival times"):
        run_replay(Trace([multi_agent_job(0)], arrival={"process": "poisson", "rate": 1.0}), options(stub.url))
