"""Importers of public traces: totals against the raw files, invariants, bad input."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pythia.errors import PythiaInputError
from pythia.workflow import importers
from pythia.workflow.importers import azure, claude_code, mooncake
from pythia.workflow.importers.claude_code import SYSTEM_KEY, TOOLS_KEY, slice_segments
from pythia.workflow.load import LoadOptions, load_workload
from pythia.workflow.trace import Job, Trace, validate_job


def _traces_dir() -> Path:
    env = os.environ.get("PYTHIA_TRACES")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "traces"


TRACES = _traces_dir()
SUFFIXES = {"mooncake": ".jsonl", "azure2023": ".csv", "claude-code": ".json"}


def _files(folder: str) -> list[Any]:
    d = TRACES / folder
    found = sorted(d.glob(f"*{SUFFIXES[folder]}")) if d.is_dir() else []
    if not found:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"public traces not found in {d}"))]
    return [pytest.param(p, id=p.name) for p in found]


HYPO = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------- shared checks


def _merged(segs: np.ndarray) -> np.ndarray:
    """Maximal runs of one stream: equal token sequences have equal merged forms."""
    if len(segs) <= 1:
        return segs
    key, off, tok = segs[:, 0], segs[:, 1], segs[:, 2]
    cont = (key[1:] == key[:-1]) & (off[1:] == off[:-1] + tok[:-1])
    starts = np.flatnonzero(np.concatenate(([True], ~cont)))
    out = segs[starts].copy()
    out[:, 2] = np.add.reduceat(tok, starts)
    return out


def _check_job(job: Job) -> None:
    validate_job(job, job.source)  # coverage, earlier deps, non-negative gaps
    for c in job.calls:
        assert all(d < c.call_id for d in c.deps)
        assert int(c.prompt[:, 2].sum()) == c.input_tokens
        if c.output is not None:
            assert int(c.output[:, 2].sum()) == c.output_tokens


def _check_continuations(job: Job) -> int:
    """A call with an output shows, with its prompt, the next prompt of its agent; return how many."""
    by_agent: dict[str, list[Any]] = defaultdict(list)
    for c in job.calls:
        by_agent[c.agent_id].append(c)
    n = 0
    for calls in by_agent.values():
        for a, b in zip(calls, calls[1:]):
            if a.output is None:
                continue
            upto = min(a.input_tokens + a.output_tokens, b.input_tokens)
            mine = slice_segments(np.concatenate([a.prompt, a.output]), 0, upto)
            assert np.array_equal(_merged(mine), _merged(slice_segments(b.prompt, 0, upto)))
            n += 1
    return n


def _totals(trace: Trace) -> tuple[int, int, int, int, int]:
    s = trace.stats()
    return s["jobs"], s["calls"], s["input_tokens"], s["output_tokens"], s["subagents"]


# --------------------------------------------------------------------------- real files


@pytest.mark.parametrize("path", _files("mooncake"))
def test_mooncake_totals_match_raw_file(path: Path) -> None:
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    trace = mooncake.IMPORTER.load(path, LoadOptions())
    raw = (len(recs), len(recs), sum(r["input_length"] for r in recs), sum(r["output_length"] for r in recs), 0)
    assert _totals(trace) == raw
    assert [j.arrival_s for j in trace.jobs] == [r["timestamp"] / 1000 for r in recs]
    assert trace.arrival == {"process": "timestamps", "time_scale": 1.0}
    for job in trace.jobs:
        _check_job(job)


@pytest.mark.parametrize("path", _files("azure2023"))
def test_azure_totals_match_raw_file(path: Path) -> None:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    trace = azure.IMPORTER.load(path, LoadOptions())
    raw = (
        len(rows),
        len(rows),
        sum(int(r["ContextTokens"]) for r in rows),
        sum(int(r["GeneratedTokens"]) for r in rows),
        0,
    )
    assert _totals(trace) == raw
    assert trace.jobs[0].arrival_s == 0.0
    assert all(j.arrival_s is not None and j.arrival_s >= 0 for j in trace.jobs)
    keys = {int(j.calls[0].prompt[0, 0]) for j in trace.jobs if j.calls[0].input_tokens}
    assert len(keys) == len(trace.jobs)  # no sharing information: every prompt is unique
    for job in trace.jobs:
        _check_job(job)


def _raw_claude(doc: dict[str, Any]) -> tuple[int, int, int, int]:
    calls = tin = tout = subs = 0
    for r in doc["requests"]:
        reqs = r["requests"] if r["type"] == "subagent" else [r]
        subs += r["type"] == "subagent"
        for q in reqs:
            calls += 1
            tin += q["in"]
            tout += q["out"]
    return calls, tin, tout, subs


@pytest.mark.parametrize("path", _files("claude-code"))
def test_claude_code_totals_match_raw_file(path: Path) -> None:
    doc = json.loads(path.read_text())
    trace = claude_code.IMPORTER.load(path, LoadOptions())
    calls, tin, tout, subs = _raw_claude(doc)
    assert _totals(trace) == (1, calls, tin, tout, subs)
    job = trace.jobs[0]
    assert job.job_id == job.workflow_id == path.stem and job.arrival_s is None
    assert trace.arrival == {"process": "closed", "concurrency": 1}
    _check_job(job)
    assert all(c.gap_s <= 60.0 for c in job.calls)
    assert _check_continuations(job) > 0
    # The main agent's first prompt starts with the synthesised tools + system prefix.
    first = job.calls[0].prompt
    assert first[0].tolist() == [TOOLS_KEY, 0, doc["tool_tokens"]]
    assert first[1, 0] == SYSTEM_KEY


def test_fan_out_and_join_in_a_real_session() -> None:
    path = TRACES / "claude-code" / "trace_0274.json"
    if not path.is_file():
        pytest.skip(f"{path.name} not found")
    job = claude_code.IMPORTER.load(path, LoadOptions()).jobs[0]
    subs = [c for c in job.calls if c.agent_id != "main"]
    firsts = {c.agent_id: c for c in reversed(subs)}
    assert len(firsts) == 3
    for c in firsts.values():
        assert c.deps == (0,) and c.parent == 0 and c.agent_role == "explore"
        assert 0.0 <= c.gap_s < 1.0  # sub-agents start right after the parent call returns
    lasts = {c.agent_id: c.call_id for c in subs}
    join = next(c for c in job.calls if c.agent_id == "main" and c.call_id > 0)
    assert join.deps == tuple(sorted(lasts.values()))


def test_gap_cap_applies_only_when_set() -> None:
    path = TRACES / "claude-code" / "trace_0004.json"
    if not path.is_file():
        pytest.skip(f"{path.name} not found")
    raw = claude_code.IMPORTER.load(path, LoadOptions(max_gap_s=None)).jobs[0]
    capped = claude_code.IMPORTER.load(path, LoadOptions(max_gap_s=30.0)).jobs[0]
    assert max(c.gap_s for c in raw.calls) > 3600
    assert max(c.gap_s for c in capped.calls) == 30.0
    assert [min(a.gap_s, 30.0) for a in raw.calls] == [b.gap_s for b in capped.calls]


def test_directories_combine() -> None:
    cc, mc = TRACES / "claude-code", TRACES / "mooncake"
    if not (cc.is_dir() and mc.is_dir()):
        pytest.skip("public traces not found")
    sessions = load_workload(cc)
    assert sessions.arrival == {"process": "closed", "concurrency": 8}
    assert len(sessions.jobs) == len(list(cc.glob("*.json")))
    assert len({j.job_id for j in sessions.jobs}) == len(sessions.jobs)
    poisson = load_workload(cc, LoadOptions(arrival={"process": "poisson", "rate": 0.1}, jobs=5))
    assert len(poisson.jobs) == 5 and all(j.arrival_s is not None for j in poisson.jobs)
    timed = load_workload(mc)
    assert timed.arrival["process"] == "timestamps"
    assert len({j.job_id for j in timed.jobs}) == len(timed.jobs)


def test_real_import_is_deterministic() -> None:
    path = TRACES / "claude-code" / "trace_0277.json"
    if not path.is_file():
        pytest.skip(f"{path.name} not found")
    a = claude_code.IMPORTER.load(path, LoadOptions()).jobs[0].to_json()
    b = claude_code.IMPORTER.load(path, LoadOptions()).jobs[0].to_json()
    assert a == b


# --------------------------------------------------------------------------- random files


@st.composite
def mooncake_records(draw: st.DrawFn) -> list[dict[str, Any]]:
    recs, ts = [], 0
    for _ in range(draw(st.integers(1, 8))):
        ts += draw(st.integers(0, 5000))
        n_in = draw(st.integers(0, 3000))
        ids = draw(st.lists(st.integers(0, 50), min_size=math.ceil(n_in / 512), max_size=math.ceil(n_in / 512)))
        recs.append({"timestamp": ts, "input_length": n_in, "output_length": draw(st.integers(0, 400)), "hash_ids": ids})
    return recs


@HYPO
@given(recs=mooncake_records())
def test_mooncake_random_files_keep_totals(tmp_path: Path, recs: list[dict[str, Any]]) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert importers.detect(path) is mooncake.IMPORTER
    trace = mooncake.IMPORTER.load(path, LoadOptions())
    assert _totals(trace) == (len(recs), len(recs), sum(r["input_length"] for r in recs), sum(r["output_length"] for r in recs), 0)
    for job, rec in zip(trace.jobs, recs):
        _check_job(job)
        assert job.arrival_s == rec["timestamp"] / 1000
    # Equal leading ids give equal leading segments.
    for a, ra in zip(trace.jobs, recs):
        for b, rb in zip(trace.jobs, recs):
            if ra["hash_ids"][:1] and ra["hash_ids"][:1] == rb["hash_ids"][:1]:
                assert a.calls[0].prompt[0, 0] == b.calls[0].prompt[0, 0]


@HYPO
@given(
    rows=st.lists(st.tuples(st.integers(0, 10**11), st.integers(0, 9000), st.integers(0, 900)), min_size=1, max_size=10)
)
def test_azure_random_files_keep_totals_and_exact_times(tmp_path: Path, rows: list[tuple[int, int, int]]) -> None:
    base = 738_840 * 86400 * 10**7  # 2023-11-16 in ticks of 100 ns since 0001-01-01
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for ticks, n_in, n_out in rows:
        secs, frac = divmod(base + ticks, 10**7)
        day, rest = divmod(secs, 86400)
        date = dt.date.fromordinal(day)
        lines.append(f"{date} {rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}.{frac:07d},{n_in},{n_out}")
    path = tmp_path / "a.csv"
    path.write_text("\n".join(lines) + "\n")
    assert importers.detect(path) is azure.IMPORTER
    trace = azure.IMPORTER.load(path, LoadOptions())
    assert _totals(trace) == (len(rows), len(rows), sum(r[1] for r in rows), sum(r[2] for r in rows), 0)
    t0 = min(r[0] for r in rows)
    assert [j.arrival_s for j in trace.jobs] == [(r[0] - t0) * 100 / 1e9 for r in rows]
    for job in trace.jobs:
        _check_job(job)


@st.composite
def _agent_requests(draw: st.DrawFn, counter: list[int], model: str) -> list[dict[str, Any]]:
    """A conversation: each request usually continues the previous one (appending blocks)."""
    reqs: list[dict[str, Any]] = []
    ids: list[int] = []
    t = 0.0
    for k in range(draw(st.integers(1, 5))):
        action = draw(st.sampled_from(["grow", "grow", "grow", "compact", "same"]))
        if action == "compact" or not ids:
            ids = ids[: draw(st.integers(0, len(ids)))]
        if action != "same" or not ids:
            for _ in range(draw(st.integers(0, 6))):
                counter[0] += 1
                ids.append(counter[0])
        n_in = len(ids) * 64 + draw(st.integers(0, 63))
        req: dict[str, Any] = {
            "t": t,
            "type": draw(st.sampled_from(["n", "s"])),
            "model": model,
            "in": n_in,
            "out": draw(st.integers(0, 300)),
            "hash_ids": list(ids),
            "think_time": 0.0 if k == 0 else draw(st.floats(0, 200)),
        }
        if draw(st.booleans()):
            req["api_time"] = draw(st.floats(0, 30))
        reqs.append(req)
        t += req.get("api_time", 1.0) + draw(st.floats(0, 100))
    return reqs


@st.composite
def claude_sessions(draw: st.DrawFn) -> dict[str, Any]:
    counter = [0]
    entries: list[dict[str, Any]] = []
    t = 0.0
    n_sub = 0
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            for _ in range(draw(st.integers(1, 3))):
                n_sub += 1
                dur = draw(st.floats(0, 100))
                entry: dict[str, Any] = {
                    "t": t + dur,
                    "type": "subagent",
                    "agent_id": f"agent_{n_sub:03d}",
                    "subagent_type": draw(st.sampled_from(["Explore", "Plan"])),
                    "duration_ms": dur * 1000,
                    "requests": draw(_agent_requests(counter, "small")),
                    "tool_tokens": draw(st.integers(0, 400)),
                    "system_tokens": draw(st.integers(0, 200)),
                }
                if draw(st.booleans()):  # launched in the background: no totals
                    entry.update(t=t, status="async_launched", duration_ms=None)
                    entry.update(total_tokens=None, tool_use_count=None)
                entries.append(entry)
        for r in draw(_agent_requests(counter, "big")):
            r["t"] += t
            entries.append(r)
        t = entries[-1]["t"] + 10
    return {
        "id": "x",
        "block_size": 64,
        "hash_id_scope": "local",
        "tool_tokens": draw(st.integers(0, 500)),
        "system_tokens": draw(st.integers(0, 300)),
        "requests": entries,
    }


@HYPO
@given(doc=claude_sessions(), cap=st.none() | st.floats(0, 50))
def test_claude_code_random_sessions_keep_totals_and_coverage(tmp_path: Path, doc: dict[str, Any], cap: float | None) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    assert importers.detect(path) is claude_code.IMPORTER
    trace = claude_code.IMPORTER.load(path, LoadOptions(max_gap_s=cap))
    calls, tin, tout, subs = _raw_claude(doc)
    job = trace.jobs[0]
    assert _totals(trace)[:4] == (1, calls, tin, tout)
    assert len({c.agent_id for c in job.calls if c.agent_id != "main"}) == sum(
        1 for e in doc["requests"] if e["type"] == "subagent" and e["requests"]
    )
    _check_job(job)
    _check_continuations(job)
    if cap is not None:
        assert all(c.gap_s <= cap for c in job.calls)


# --------------------------------------------------------------------------- sharing and determinism


def _session(tool: int, system: int, n_ids: int, first_id: int = 1) -> dict[str, Any]:
    ids = list(range(first_id, first_id + n_ids))
    return {
        "block_size": 64,
        "hash_id_scope": "local",
        "tool_tokens": tool,
        "system_tokens": system,
        "requests": [
            {"t": 0.0, "type": "n", "model": "m", "in": n_ids * 64 + 10, "out": 50, "hash_ids": ids, "think_time": 0.0, "api_time": 1.0},
            {"t": 5.0, "type": "n", "model": "m", "in": n_ids * 64 + 200, "out": 20, "hash_ids": ids + [999, 1000], "think_time": 4.0},
        ],
    }


def test_sessions_share_the_tools_prefix_but_never_their_own_ids(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_session(1000, 300, 40)))
    b.write_text(json.dumps(_session(1000, 500, 40)))  # same ids 1..40 in both files
    ja = claude_code.IMPORTER.load(a, LoadOptions()).jobs[0]
    jb = claude_code.IMPORTER.load(b, LoadOptions()).jobs[0]
    pa, pb = ja.calls[0].prompt, jb.calls[0].prompt
    assert pa[0].tolist() == pb[0].tolist() == [TOOLS_KEY, 0, 1000]
    assert pa[1, 0] == pb[1, 0] == SYSTEM_KEY
    shared = {TOOLS_KEY, SYSTEM_KEY}
    own_a = {int(k) for c in ja.calls for k in c.prompt[:, 0]} - shared
    own_b = {int(k) for c in jb.calls for k in c.prompt[:, 0]} - shared
    assert own_a and own_b and not own_a & own_b
    # (1000 + 300) // 64 = 20 blocks are synthesised; the other 20 keep their ids.
    assert int(pa[:2, 2].sum()) == 20 * 64


def test_continuation_output_is_the_next_prompt(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_session(0, 0, 3)))
    job = claude_code.IMPORTER.load(path, LoadOptions()).jobs[0]
    first, second = job.calls
    # Tail (10 tokens) and output (50) lie in the next request's block 3 (id 999).
    assert first.prompt[-1, 1:].tolist() == [0, 10]
    assert first.output is not None and first.output[:, 1:].tolist() == [[10, 50]]
    assert first.prompt[-1, 0] == first.output[0, 0] == second.prompt[3, 0]
    assert second.output is None
    assert second.deps == (0,) and second.gap_s == 4.0


def test_synthetic_import_is_deterministic(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_session(700, 100, 30)))
    runs = [json.dumps(claude_code.IMPORTER.load(path, LoadOptions()).jobs[0].to_json()) for _ in range(2)]
    assert runs[0] == runs[1]


# --------------------------------------------------------------------------- background sub-agents


def _launch_session(background: bool) -> dict[str, Any]:
    """A session shaped like ``trace_0274``: a main call, one Explore sub-agent, two more main calls.

    The main agent's first call ends at 19 s. The sub-agent's requests are issued 1.5 s and 6 s
    after it starts (at 19 s, as the launching call returns) and the second is served in 2 s,
    so it ends at 27 s. In the background the record is the launch (null totals) and the main
    agent goes on at 21 s; in the foreground the record is the completion and the main agent's
    next request waits for it.
    """

    def req(t: float, model: str, ids: list[int], tail: int, out: int, api: float, think: float) -> dict[str, Any]:
        return {
            "t": t,
            "type": "n",
            "model": model,
            "in": len(ids) * 64 + tail,
            "out": out,
            "hash_ids": ids,
            "input_types": ["tool_result"],
            "output_types": ["text", "tool_use"],
            "stop": "tool_use",
            "api_time": api,
            "think_time": think,
        }

    big, small = "claude-opus-4-5-20251101", "claude-haiku-4-5-20251001"
    main = list(range(1, 30))
    sub = list(range(100, 120))
    sub_agent: dict[str, Any] = {
        "t": 19.2 if background else 27.0,
        "type": "subagent",
        "agent_id": "agent_001",
        "subagent_type": "Explore",
        "duration_ms": None if background else 8000,
        "total_tokens": None if background else 2860,
        "tool_use_count": None if background else 3,
        "status": "async_launched" if background else "completed",
        "models": [small],
        "tool_tokens": 700,
        "system_tokens": 200,
        "requests": [
            req(1.5, small, sub, 30, 120, 2.5, 0.0),
            req(6.0, small, sub + [120, 121, 122], 10, 90, 2.0, 2.0),
        ],
    }
    # In the foreground the next request's think_time spans the whole sub-agent.
    t_next, think_next = (21.0, 2.0) if background else (30.0, 11.0)
    return {
        "id": "trace_bg",
        "models": [big],
        "block_size": 64,
        "hash_id_scope": "local",
        "tool_tokens": 900,
        "system_tokens": 300,
        "requests": [
            req(0.0, big, main, 20, 400, 19.0, 0.0),
            sub_agent,
            req(t_next, big, main + [30, 31], 40, 300, 5.0, think_next),
            req(40.0, big, main + [30, 31, 32, 33], 5, 200, 4.0, 14.0),
        ],
    }


def _ancestors(job: Job, call_id: int) -> set[int]:
    """Every call that ``call_id`` depends on, directly or through other calls."""
    seen: set[int] = set()
    todo = list(job.calls[call_id].deps)
    while todo:
        d = todo.pop()
        if d not in seen:
            seen.add(d)
            todo.extend(job.calls[d].deps)
    return seen


def _load_launch(tmp_path: Path, background: bool) -> Job:
    path = tmp_path / "trace_bg.json"
    path.write_text(json.dumps(_launch_session(background)))
    job = claude_code.IMPORTER.load(path, LoadOptions()).jobs[0]
    _check_job(job)
    return job


def test_background_subagent_fans_out_without_join(tmp_path: Path) -> None:
    job = _load_launch(tmp_path, background=True)
    main = [c.call_id for c in job.calls if c.agent_id == "main"]
    sub = [c.call_id for c in job.calls if c.agent_id == "agent_001"]
    assert len(main) == 3 and len(sub) == 2 and job.calls[sub[0]].agent_role == "explore"
    launch = main[0]
    first = job.calls[sub[0]]
    assert first.deps == (launch,) and first.parent == launch
    assert all(launch in _ancestors(job, s) for s in sub)
    # It starts as the launching call returns; its first request was issued 1.5 s later.
    assert first.gap_s == 1.5
    # The main agent did not wait: no later main call depends on the sub-agent's calls.
    for m in main[1:]:
        assert not _ancestors(job, m) & set(sub)
    nxt = job.calls[main[1]]
    assert nxt.deps == (launch,) and nxt.gap_s == 2.0  # its own think_time after the launch
    # Nothing depends on the sub-agent's last call: the job ends when it ends, not before.
    assert not any(sub[-1] in c.deps for c in job.calls)


def test_foreground_subagent_is_still_joined(tmp_path: Path) -> None:
    job = _load_launch(tmp_path, background=False)
    main = [c.call_id for c in job.calls if c.agent_id == "main"]
    sub = [c.call_id for c in job.calls if c.agent_id == "agent_001"]
    first = job.calls[sub[0]]
    assert first.deps == (main[0],) and first.parent == main[0] and first.gap_s == 1.5
    nxt = job.calls[main[1]]
    assert nxt.deps == (sub[-1],)  # the join
    assert set(sub) <= _ancestors(job, main[1])
    assert nxt.gap_s == pytest.approx(3.0)  # 30 s minus the sub-agent's end at 27 s


def test_directory_with_a_background_session_loads(tmp_path: Path) -> None:
    real = TRACES / "claude-code" / "trace_0274.json"
    if not real.is_file():
        pytest.skip(f"{real.name} not found")
    folder = tmp_path / "sessions"
    folder.mkdir()
    shutil.copy(real, folder / real.name)
    (folder / "trace_bg.json").write_text(json.dumps(_launch_session(background=True)))
    trace = load_workload(folder)
    assert [j.job_id for j in trace.jobs] == ["trace_0274", "trace_bg"]
    assert trace.arrival == {"process": "closed", "concurrency": 2}
    for job in trace.jobs:
        _check_job(job)
    bg = trace.jobs[1]
    assert {c.agent_id for c in bg.calls} == {"main", "agent_001"}


@pytest.mark.parametrize(
    ("edit", "field", "needle"),
    [
        ({"status": "running"}, "requests[1].status", "expected one of completed, async_launched"),
        ({"status": None}, "requests[1].status", "expected one of completed, async_launched"),
        # Null totals only with a background launch; a foreground sub-agent needs its duration.
        ({"status": "completed"}, "requests[1].duration_ms", "finite number"),
        ({"duration_ms": -5}, "requests[1].duration_ms", "negative"),
        ({"total_tokens": "many"}, "requests[1].total_tokens", "non-negative integer"),
        ({"tool_use_count": 2.5}, "requests[1].tool_use_count", "non-negative integer"),
    ],
    ids=["unknown status", "null status", "foreground null duration", "negative duration", "bad total", "bad count"],
)
def test_claude_code_bad_subagent_fields(tmp_path: Path, edit: dict[str, Any], field: str, needle: str) -> None:
    doc = _launch_session(background=True)
    doc["requests"][1].update(edit)
    path = tmp_path / "trace_bg.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PythiaInputError) as info:
        claude_code.IMPORTER.load(path, LoadOptions())
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and f"field {field} " in msg and needle in msg and "\n" not in msg


# --------------------------------------------------------------------------- bad input


def _error(path: Path) -> str:
    with pytest.raises(PythiaInputError) as info:
        load_workload(path)
    msg = str(info.value)
    assert path.name in msg and "\n" not in msg
    return msg


GOOD_LINE = '{"timestamp": 0, "input_length": 600, "output_length": 2, "hash_ids": [1, 2]}'


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("{bad json", "not valid JSON"),
        ('{"timestamp": 0, "input_length": 10, "hash_ids": [1]}', "output_length is missing"),
        ('{"timestamp": 0, "input_length": -10, "output_length": 2, "hash_ids": []}', "negative"),
        ('{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": "x"}', "hash_ids"),
        ('{"timestamp": 0, "input_length": "10", "output_length": 2, "hash_ids": [1]}', "input_length"),
        ('{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1, 2]}', "fills only 1"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_mooncake_bad_lines(tmp_path: Path, line: str, needle: str) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(f"{GOOD_LINE}\n\n{line}\n")
    msg = _error(path)
    assert f"{path.name}:3:" in msg and needle in msg


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ("2023-11-16 18:17:04.0,12", "fields"),
        ("2023-11-16 18:17:04.0,-12,3", "negative"),
        ("2023-11-16 18:17:04.0,12,x", "GeneratedTokens"),
        ("2023-13-16 18:17:04.0,12,3", "TIMESTAMP"),
        ("yesterday,12,3", "TIMESTAMP"),
    ],
)
def test_azure_bad_rows(tmp_path: Path, row: str, needle: str) -> None:
    path = tmp_path / "a.csv"
    path.write_text(f"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,4808,10\n{row}\n")
    msg = _error(path)
    assert f"{path.name}:3:" in msg and needle in msg


def test_azure_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens,x\n2023-11-16 18:17:03.9799600,4808,10,1\n")
    assert importers.detect(path) is azure.IMPORTER
    path.write_text("TIMESTAMP,ContextTokens,Generated\n2023-11-16 18:17:03.9799600,4808,10\n")
    assert importers.detect(path) is None
    with pytest.raises(PythiaInputError) as info:
        azure.IMPORTER.load(path, LoadOptions())
    assert f"{path.name}:1:" in str(info.value) and "GeneratedTokens" in str(info.value)


def _mutate(doc: dict[str, Any], edit: str) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    r0, r1 = doc["requests"]
    if edit == "missing":
        del r1["in"]
    elif edit == "negative":
        r0["out"] = -3
    elif edit == "type":
        r0["in"] = "12"
    elif edit == "ids":
        r1["hash_ids"] = [1, "two"]
    elif edit == "too many ids":
        r0["hash_ids"] = r0["hash_ids"] * 3
    elif edit == "kind":
        r1["type"] = "q"
    elif edit == "subagent":
        doc["requests"].insert(1, {"t": 3.0, "type": "subagent", "duration_ms": 1000, "requests": []})
    elif edit == "top":
        del doc["block_size"]
    return doc


@pytest.mark.parametrize(
    ("edit", "field", "needle"),
    [
        ("missing", "requests[1].in", "missing"),
        ("negative", "requests[0].out", "negative"),
        ("type", "requests[0].in", "integer"),
        ("ids", "requests[1].hash_ids", "integer block ids"),
        ("too many ids", "requests[0].hash_ids", "more than in"),
        ("kind", "requests[1].type", "expected one of"),
        ("subagent", "requests[1].agent_id", "missing"),
        ("top", "block_size", "missing"),
    ],
)
def test_claude_code_bad_fields(tmp_path: Path, edit: str, field: str, needle: str) -> None:
    path = tmp_path / "trace_0004.json"
    path.write_text(json.dumps(_mutate(_session(100, 100, 4), edit)))
    with pytest.raises(PythiaInputError) as info:
        claude_code.IMPORTER.load(path, LoadOptions())
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and f"field {field} " in msg and needle in msg


def test_claude_code_not_json(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"block_size": 64, "requests": [')
    assert "not valid JSON" in _error(path)


def test_unsupported_file_names_the_formats(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    msg = _error(path)
    assert "unsupported" in msg and importers.describe() in msg
    other = tmp_path / "x.json"
    other.write_text('{"something": 1}')
    assert importers.detect(other) is None


def test_registry_lists_each_format_once() -> None:
    names = [imp.name for imp in importers.importers()]
    assert names == ["mooncake", "azure2023", "claude-code"]
    assert all(isinstance(imp, importers.Importer) for imp in importers.importers())
    assert importers.get("claude-code") is claude_code.IMPORTER
    with pytest.raises(PythiaInputError, match="unknown"):
        importers.get("nope")
