"""Malformed inputs, one parametrised table per format: each must stop with one sentence.

Every row writes a file the way users break them (a typo, a quoted boolean, NaN, a truncated
gzip, an alias bomb, a value past the simulator's ranges) and asserts that loading it raises
:class:`PythiaInputError` whose message is one line, names the file and contains the given
phrases, within a time bound. No row may load silently, hang or raise anything else. The
command-line and output-path rows are in ``tests/test_cli.py``; the pipeline config rows in
``tests/test_pipeline.py``.
"""

from __future__ import annotations

import gzip
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pythia.errors import PythiaInputError
from pythia.workflow.annotation import CallAnnotation, parse_request_body

TIME_LIMIT_S = 10

# --------------------------------------------------------------------------- harness


class _Hang(Exception):
    pass


def _expect_error(load: Callable[[], Any], needles: tuple[str, ...], name: str | None) -> str:
    def alarm(signum: int, frame: Any) -> None:
        raise _Hang(f"no answer within {TIME_LIMIT_S} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(TIME_LIMIT_S)
    try:
        with pytest.raises(PythiaInputError) as e:
            load()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert "Traceback" not in msg
    if name is not None:
        assert name in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


ALIAS_BOMB = "".join(
    [f"a0: &a0 [{', '.join(['x'] * 9)}]\n"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)]
)
DEEP_YAML = "x: " + "[" * 1000 + "]" * 1000 + "\n"
DEEP_YAML_BLOCK = "x:\n" + "".join("  " * i + "- \n" for i in range(1, 200))


# --------------------------------------------------------------------------- workflow specs

from test_spec import GOOD as SPEC  # noqa: E402  (the valid spec every row mutates)


def _spec(old: str, new: str) -> str:
    assert old in SPEC, old
    return SPEC.replace(old, new, 1)


SPEC_CASES: list[tuple[str, str | bytes, tuple[str, ...]]] = [
    ("unknown-edge-target", _spec("- to: work\n", "- to: wokr\n"), ("steps.plan.next[0].to", "'wokr'", "known: plan, work, check, end")),
    ("unknown-role", _spec("role: checker", "role: chekcer"), ("steps.check.role", "'chekcer'")),
    ("unknown-output-role", _spec("{outputs: [worker]}", "{outputs: [wroker]}"), ("steps.check.prompt[1].outputs[0]", "'wroker'")),
    ("negative-length", _spec("low: 5, high: 50", "low: -5, high: 50"), ("roles.worker.fresh_tokens.low", "negative")),
    ("negative-system-tokens", _spec("system_tokens: 50", "system_tokens: -50"), ("roles.planner.system_tokens", "minimum")),
    ("min-above-max", _spec("min: 10, max: 400", "min: 500, max: 400"), ("context_tokens.min", "above max")),
    ("zero-output", _spec("output_tokens: 40", "output_tokens: 0"), ("roles.worker.output_tokens", "at least 1")),
    ("probabilities-0.9", _spec("{to: end, p: 0.7}", "{to: end, p: 0.6}"), ("steps.check.next", "sum to 0.9")),
    ("branch-without-p", _spec("{to: end, p: 0.7}", "{to: end}"), ("steps.check.next[1]", "probability")),
    ("unbounded-loop", _spec(", max_traversals: 2", ""), ("steps.check.next[0]", "max_traversals")),
    ("unreachable-step", SPEC + "  orphan:\n    role: worker\n", ("steps.orphan", "unreachable")),
    ("unknown-start", _spec("concurrency: 4\n", "concurrency: 4\nstart: begin\n"), ("start", "'begin'")),
    ("yaml-syntax", _spec("{dist: uniform, low: 2, high: 3}", "{dist: uniform, low: 2, high: 3"), ("YAML syntax error",)),
    ("string-for-count", _spec("calls: {dist: uniform, low: 1, high: 4}", "calls: three"), ("steps.work.calls", "'three'")),
    ("misspelt-key", _spec("model: m-large", "modle: m-large"), ("roles.planner", "modle")),
    ("wrong-dist-parameter", _spec("{dist: normal, mean: 20, std: 5, min: 1}", "{dist: normal, mean: 20, sigma: 5}"), ("roles.checker.output_tokens", "sigma")),
    ("prompt-out-of-order", _spec("prompt: [system, context]", "prompt: [context, system]"), ("steps.plan.prompt[1]", "order")),
    ("duplicate-step", SPEC + "  work:\n    role: worker\n", ("steps.work", "twice")),
    ("reserved-step-name", SPEC + "  end:\n    role: worker\n", ("steps.end", "reserved")),
    ("system-longer-than-window", _spec("max_input_tokens: 2000", "max_input_tokens: 20"), ("roles.worker.system_tokens", "max_input_tokens")),
    ("inf-output", _spec("output_tokens: 40", "output_tokens: .inf"), ("roles.worker.output_tokens", "finite")),
    ("nan-gap", _spec("gap_before: 1.5", "gap_before: .nan"), ("steps.check.gap_before", "finite")),
    ("empty-file", "", ("empty",)),
    ("a-list", "- a\n- b\n", ("mapping",)),
    ("a-scalar", "just text\n", ("mapping",)),
    ("quoted-number", _spec("concurrency: 4", 'concurrency: "4"'), ("concurrency", "'4'")),
    ("bool-for-number", _spec("concurrency: 4", "concurrency: true"), ("concurrency",)),
    ("date-value", _spec("concurrency: 4", "concurrency: 2024-01-01"), ("concurrency", "date")),
    ("integer-key", _spec("steps:\n", "steps:\n  1:\n    role: worker\n"), ("key 1", "string")),
    ("tokens-past-range", _spec("output_tokens: 40", "output_tokens: 100000000"), ("roles.worker.output_tokens", "largest")),
    ("fanout-past-range", _spec("parallel: {dist: uniform, low: 2, high: 3}", "parallel: 100000"), ("steps.work.parallel", "largest")),
    ("gap-past-range", _spec("gap_before: 1.5", "gap_before: 1.0e+12"), ("steps.check.gap_before", "largest")),
    ("yaml11-exponent", _spec("gap_before: 1.5", "gap_before: 1e3"), ("steps.check.gap_before", "1.0e+3")),
    ("sigma-absurd", _spec("median: 80, sigma: 0.5", "median: 80, sigma: 50"), ("roles.planner.output_tokens.sigma", "sigma")),
    ("probability-above-one", _spec("{to: end, p: 0.7}", "{to: end, p: 1.7}"), ("steps.check.next[1].p",)),
    ("max-traversals-zero", _spec("max_traversals: 2", "max_traversals: 0"), ("max_traversals",)),
    ("alias-bomb", ALIAS_BOMB, ("aliases expand",)),
    ("deep-flow-nesting", DEEP_YAML, ("nests deeper than 64",)),
    ("deep-block-nesting", DEEP_YAML_BLOCK, ("nests deeper than 64",)),
    ("not-utf8", SPEC.encode().replace(b"tiny", b"t\xffny"), ("not UTF-8",)),
    ("python-tag", _spec("concurrency: 4", "concurrency: !!python/object/apply:os.system [ls]"), ("YAML syntax error",)),
    ("tab-indent", _spec("  planner:\n    model", "  planner:\n\tmodel"), ("YAML syntax error",)),
    ("bad-name", _spec("name: tiny", "name: 'has spaces'"), ("name",)),
]


@pytest.mark.parametrize("case, content, needles", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_malformed_spec(tmp_path: Path, case: str, content: str | bytes, needles: tuple[str, ...]) -> None:
    from pythia.workflow.spec import load_spec

    path = _write(tmp_path / "spec.yaml", content)
    _expect_error(lambda: load_spec(path), needles, str(path))


def test_good_spec_of_the_table_loads(tmp_path: Path) -> None:
    from pythia.workflow.spec import load_spec

    assert load_spec(_write(tmp_path / "spec.yaml", SPEC)).name == "tiny"  # so every row above is one mistake


def test_spec_line_numbers(tmp_path: Path) -> None:
    from pythia.workflow.spec import load_spec

    path = _write(tmp_path / "spec.yaml", _spec("calls: {dist: uniform, low: 1, high: 4}", "calls: three"))
    line = SPEC.splitlines().index("    calls: {dist: uniform, low: 1, high: 4}") + 1
    _expect_error(lambda: load_spec(path), (f"spec.yaml:{line}:",), None)


# --------------------------------------------------------------------------- canonical traces

HEADER = {"pythia_trace": 1, "arrival": {"process": "timestamps", "time_scale": 1.0}}


def _job(**changes: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "job_id": "j0", "workflow_type": "t", "workflow_id": "w", "arrival_s": 0.0,
        "calls": [
            {"call_id": 0, "agent_role": "planner", "model": "m", "input_tokens": 10, "output_tokens": 4, "prompt": [[1, 0, 10]]},
            {"call_id": 1, "agent_role": "engineer", "model": "m", "input_tokens": 5, "output_tokens": 4, "deps": [0], "prompt": [[2, 0, 5]]},
        ],
    }
    for key, value in changes.items():
        if key.startswith("c1_"):
            job["calls"][1][key[3:]] = value
        else:
            job[key] = value
    return job


def _trace(*jobs: Any, header: Any = None) -> str:
    head = HEADER if header is None else header
    lines = [head if isinstance(head, str) else json.dumps(head)]
    lines += [j if isinstance(j, str) else json.dumps(j) for j in jobs]
    return "\n".join(lines) + "\n"


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode(), mtime=0)


TRACE_CASES: list[tuple[str, str | bytes, tuple[str, ...]]] = [
    ("truncated-json", _trace('{"job_id": "j0", "calls": ['), (":2:", "not valid JSON")),
    ("header-not-json", "not json\n", (":1:", "not valid JSON")),
    ("header-a-list", _trace(header=[1, 2]), (":1:", "JSON object")),
    ("header-missing-arrival", _trace(_job(), header={"pythia_trace": 1}), (":1:", "arrival")),
    ("header-unknown-process", _trace(_job(), header={"pythia_trace": 1, "arrival": {"process": "bursty"}}), (":1:", "process")),
    ("header-gamma-without-rate", _trace(_job(), header={"pythia_trace": 1, "arrival": {"process": "gamma", "burstiness": 0.5}}), (":1:", "rate")),
    ("header-poisson-without-rate", _trace(_job(), header={"pythia_trace": 1, "arrival": {"process": "poisson"}}), (":1:", "rate")),
    ("header-closed-without-concurrency", _trace(_job(), header={"pythia_trace": 1, "arrival": {"process": "closed"}}), (":1:", "concurrency")),
    ("header-unknown-arrival-key", _trace(_job(), header={"pythia_trace": 1, "arrival": {"process": "poisson", "rate": 1, "rat": 2}}), (":1:", "rat")),
    ("header-nan-rate", '{"pythia_trace": 1, "arrival": {"process": "poisson", "rate": NaN}}\n', (":1:", "NaN")),
    ("header-rate-zero", _trace(_job(), header={"pythia_trace": 1, "arrival": {"process": "poisson", "rate": 0}}), (":1:", "rate")),
    ("header-version-2", _trace(_job(), header={"pythia_trace": 2, "arrival": {"process": "closed", "concurrency": 1}}), (":1:", "version")),
    ("header-unknown-key", _trace(_job(), header={**HEADER, "extra": 1}), (":1:", "extra")),
    ("timestamps-job-without-time", _trace(_job(arrival_s=None)), (":2:", "arrival_s")),
    ("no-jobs", _trace(), ("no jobs",)),
    ("empty-file", "", ("empty",)),
    ("missing-field", _trace({k: v for k, v in _job().items() if k != "workflow_id"}), (":2:", "workflow_id")),
    ("unknown-job-field", _trace(_job(priority=3)), (":2:", "priority")),
    ("negative-tokens", _trace(_job(c1_input_tokens=-5)), (":2:", "input_tokens")),
    ("tokens-past-range", _trace(_job(c1_input_tokens=2**40, c1_prompt=[[2, 0, 2**40]])), (":2:", "input_tokens")),
    ("string-tokens", _trace(_job(c1_output_tokens="4")), (":2:", "output_tokens")),
    ("bool-tokens", _trace(_job(c1_output_tokens=True)), (":2:", "output_tokens")),
    ("nan-gap", _trace(_job()).replace('"deps": [0]', '"deps": [0], "gap_s": NaN'), (":2:", "NaN")),
    ("inf-gap", _trace(_job()).replace('"deps": [0]', '"deps": [0], "gap_s": 1e999'), (":2:", "infinity")),
    ("negative-gap", _trace(_job(c1_gap_s=-1.0)), (":2:", "gap_s")),
    ("gap-past-range", _trace(_job(c1_gap_s=1e12)), (":2:", "gap_s")),
    ("arrival-past-range", _trace(_job(arrival_s=1e15)), (":2:", "arrival_s")),
    ("forward-dep", _trace(_job(c1_deps=[1])), (":2:", "deps")),
    ("call-id-gap", _trace(_job(c1_call_id=5)), (":2:", "call_id")),
    ("segments-do-not-cover", _trace(_job(c1_prompt=[[2, 0, 3]])), (":2:", "covers 3 tokens")),
    ("segment-key-past-int64", _trace(_job(c1_prompt=[[2**64, 0, 5]])), (":2:", "prompt")),
    ("segment-of-two", _trace(_job(c1_prompt=[[2, 5]])), (":2:", "prompt")),
    ("repeated-job-id", _trace(_job(), _job()), (":3:", "repeats")),
    ("huge-integer", _trace(_job()).replace('"input_tokens": 10', '"input_tokens": ' + "9" * 5000), (":2:", "digits")),
    ("deep-nesting", _trace(_job()).replace('"arrival_s": 0.0', '"arrival_s": ' + "[" * 5000 + "]" * 5000), (":2:", "nests deeper")),
    ("not-utf8", _trace(_job()).encode().replace(b"planner", b"plan\xe9er"), (":2:", "not UTF-8")),
    ("truncated-gzip", _gz(_trace(_job(), _job(job_id="j1")))[:-12], ("gzip",)),
    ("corrupt-gzip", b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"garbage-not-deflate" * 3, ("gzip",)),
]


@pytest.mark.parametrize("case, content, needles", TRACE_CASES, ids=[c[0] for c in TRACE_CASES])
def test_malformed_trace(tmp_path: Path, case: str, content: str | bytes, needles: tuple[str, ...]) -> None:
    from pythia.workflow.trace import read_trace

    name = "t.jsonl.gz" if isinstance(content, bytes) and content[:2] == b"\x1f\x8b" else "t.jsonl"
    path = _write(tmp_path / name, content)
    _expect_error(lambda: read_trace(path), needles, str(path))


def test_good_trace_of_the_table_loads(tmp_path: Path) -> None:
    from pythia.workflow.trace import read_trace

    assert len(read_trace(_write(tmp_path / "t.jsonl", _trace(_job()))).jobs) == 1
    assert len(read_trace(_write(tmp_path / "t.jsonl.gz", _gz(_trace(_job()))) ).jobs) == 1


# --------------------------------------------------------------------------- public trace formats (through load_workload)

MOONCAKE_OK = {"timestamp": 0, "input_length": 1024, "output_length": 10, "hash_ids": [0, 1]}


def _mooncake(*records: Any) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in (MOONCAKE_OK, *records))


AZURE_OK = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,4808,10\n"

CLAUDE_OK: dict[str, Any] = {
    "id": "s", "block_size": 64, "hash_id_scope": "local", "tool_tokens": 100, "system_tokens": 50,
    "requests": [
        {"t": 0.0, "type": "n", "model": "m", "in": 200, "out": 10, "hash_ids": [1, 2], "think_time": 0.0, "api_time": 1.0},
        {"t": 5.0, "type": "n", "model": "m", "in": 300, "out": 10, "hash_ids": [1, 2, 3], "think_time": 4.0},
    ],
}


def _claude(change: Callable[[dict[str, Any]], Any]) -> str:
    doc = json.loads(json.dumps(CLAUDE_OK))
    change(doc)
    return json.dumps(doc)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        obj: Any = doc
        parts = [int(p) if p.isdigit() else p for p in path.split(".")]
        for p in parts[:-1]:
            obj = obj[p]
        obj[parts[-1]] = value
    return change


IMPORT_CASES: list[tuple[str, str, str | bytes, tuple[str, ...]]] = [
    ("mooncake-bad-json", "m.jsonl", _mooncake('{"timestamp": 1, "input_length": 5'), (":2:", "not valid JSON")),
    ("mooncake-a-list", "m.jsonl", _mooncake("[1, 2]"), (":2:", "not a JSON object")),
    ("mooncake-negative-length", "m.jsonl", _mooncake({**MOONCAKE_OK, "input_length": -1}), (":2:", "input_length")),
    ("mooncake-string-length", "m.jsonl", _mooncake({**MOONCAKE_OK, "output_length": "10"}), (":2:", "output_length")),
    ("mooncake-nan-timestamp", "m.jsonl", _mooncake('{"timestamp": NaN, "input_length": 5, "output_length": 1, "hash_ids": []}'), (":2:", "NaN")),
    ("mooncake-inf-timestamp", "m.jsonl", _mooncake('{"timestamp": 1e400, "input_length": 5, "output_length": 1, "hash_ids": []}'), (":2:", "infinity")),
    ("mooncake-timestamp-past-range", "m.jsonl", _mooncake({**MOONCAKE_OK, "timestamp": 1e20}), (":2:", "timestamp")),
    ("mooncake-length-past-range", "m.jsonl", _mooncake({**MOONCAKE_OK, "input_length": 2**40}), (":2:", "input_length")),
    ("mooncake-too-many-ids", "m.jsonl", _mooncake({**MOONCAKE_OK, "hash_ids": [0, 1, 2, 3]}), (":2:", "hash_ids")),
    ("mooncake-string-ids", "m.jsonl", _mooncake({**MOONCAKE_OK, "hash_ids": ["a"]}), (":2:", "hash_ids")),
    ("mooncake-id-past-int64", "m.jsonl", _mooncake({**MOONCAKE_OK, "hash_ids": [2**70]}), (":2:", "hash_ids")),
    ("mooncake-missing-field", "m.jsonl", _mooncake({"timestamp": 0, "input_length": 5, "hash_ids": []}), (":2:", "output_length")),
    ("mooncake-deep", "m.jsonl", _mooncake('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": ' + "[" * 3000 + "]" * 3000 + "}"), (":2:", "nests deeper")),
    ("mooncake-not-utf8", "m.jsonl", _mooncake().encode() + b'{"timestamp": 1, "x": "\xff"}\n', (":2:", "not UTF-8")),
    ("mooncake-truncated-gzip", "m.jsonl.gz", _gz(_mooncake(*[MOONCAKE_OK] * 50))[:-20], ("gzip",)),
    ("azure-negative", "a.csv", AZURE_OK + "2023-11-16 18:17:04.0,-5,3\n", (":3:", "negative")),
    ("azure-not-a-number", "a.csv", AZURE_OK + "2023-11-16 18:17:04.0,many,3\n", (":3:", "ContextTokens")),
    ("azure-float-tokens", "a.csv", AZURE_OK + "2023-11-16 18:17:04.0,5.5,3\n", (":3:", "ContextTokens")),
    ("azure-nan-tokens", "a.csv", AZURE_OK + "2023-11-16 18:17:04.0,nan,3\n", (":3:", "ContextTokens")),
    ("azure-tokens-past-range", "a.csv", AZURE_OK + "2023-11-16 18:17:04.0,99999999999999,3\n", (":3:", "largest")),
    ("azure-bad-time", "a.csv", AZURE_OK + "yesterday,5,3\n", (":3:", "TIMESTAMP")),
    ("azure-month-13", "a.csv", AZURE_OK + "2023-13-16 18:17:04.0,5,3\n", (":3:", "TIMESTAMP")),
    ("azure-short-row", "a.csv", AZURE_OK + "2023-11-16 18:17:04.0,5\n", (":3:", "fields")),
    ("azure-not-utf8", "a.csv", AZURE_OK.encode() + b"2023-11-16 18:17:04.0,5,3\xff\n", (":3:", "not UTF-8")),
    ("azure-header-only", "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n", ("no requests",)),
    ("azure-truncated-gzip", "a.csv.gz", _gz(AZURE_OK + "2023-11-16 18:17:04.0,5,3\n" * 60)[:-15], ("gzip",)),
    ("claude-not-json", "s.json", '{"block_size": 64, "requests": [', ("not valid JSON",)),
    ("claude-a-list", "s.json", "[]", ("one JSON object",)),
    ("claude-nan-time", "s.json", _claude(_set("requests.1.t", 1.0)).replace('"t": 1.0', '"t": NaN'), ("NaN",)),
    ("claude-negative-in", "s.json", _claude(_set("requests.0.in", -1)), ("requests[0].in",)),
    ("claude-string-out", "s.json", _claude(_set("requests.0.out", "10")), ("requests[0].out",)),
    ("claude-block-size-zero", "s.json", _claude(_set("block_size", 0)), ("block_size",)),
    ("claude-global-scope", "s.json", _claude(_set("hash_id_scope", "global")), ("hash_id_scope",)),
    ("claude-unknown-type", "s.json", _claude(_set("requests.0.type", "x")), ("requests[0].type",)),
    ("claude-too-many-ids", "s.json", _claude(_set("requests.0.hash_ids", list(range(10)))), ("requests[0].hash_ids",)),
    ("claude-time-goes-back", "s.json", _claude(_set("requests.1.t", -0.0) if False else _set("requests.0.t", 9.0)), ("requests[1].t", "time order")),
    ("claude-no-requests", "s.json", _claude(_set("requests", [])), ("no request",)),
    ("claude-bad-status", "s.json", _claude(lambda d: d["requests"].insert(1, {"t": 2.0, "type": "subagent", "status": "running", "agent_id": "a", "subagent_type": "Explore", "duration_ms": None, "requests": []})), ("status", "async_launched")),
    ("claude-foreground-null-duration", "s.json", _claude(lambda d: d["requests"].insert(1, {"t": 2.0, "type": "subagent", "agent_id": "a", "subagent_type": "Explore", "duration_ms": None, "requests": []})), ("duration_ms",)),
    ("claude-in-past-range", "s.json", _claude(_set("requests.1.in", 2**40)), ("requests[1].in", "largest")),
    ("claude-deep", "s.json", '{"block_size": ' + "[" * 2000 + "]" * 2000 + "}", ("nests deeper",)),
    ("claude-not-utf8", "s.json", _claude(lambda d: None).encode().replace(b'"m"', b'"\xff"'), ("not UTF-8",)),
]


@pytest.mark.parametrize("case, name, content, needles", IMPORT_CASES, ids=[c[0] for c in IMPORT_CASES])
def test_malformed_public_trace(tmp_path: Path, case: str, name: str, content: str | bytes, needles: tuple[str, ...]) -> None:
    from pythia.workflow.importers import get
    from pythia.workflow.load import LoadOptions

    path = _write(tmp_path / name, content)
    fmt = {"m": "mooncake", "a": "azure2023", "s": "claude-code"}[name[0]]
    _expect_error(lambda: get(fmt).load(path, LoadOptions()), needles, str(path))


def test_good_public_traces_of_the_table_load(tmp_path: Path) -> None:
    from pythia.workflow.load import load_workload

    assert len(load_workload(_write(tmp_path / "m.jsonl", _mooncake())).jobs) == 1
    assert len(load_workload(_write(tmp_path / "a.csv", AZURE_OK)).jobs) == 1
    assert len(load_workload(_write(tmp_path / "s.json", json.dumps(CLAUDE_OK))).jobs) == 1
    assert len(load_workload(_write(tmp_path / "m2.jsonl.gz", _gz(_mooncake()))).jobs) == 1


WORKLOAD_CASES: list[tuple[str, str, str | bytes, tuple[str, ...]]] = [
    ("unknown-format", "x.txt", "hello\n", ("unsupported file",)),
    ("empty-json", "x.json", "", ("unsupported file",)),
]


@pytest.mark.parametrize("case, name, content, needles", WORKLOAD_CASES, ids=[c[0] for c in WORKLOAD_CASES])
def test_malformed_workload_path(tmp_path: Path, case: str, name: str, content: str | bytes, needles: tuple[str, ...]) -> None:
    from pythia.workflow.load import load_workload

    path = _write(tmp_path / name, content)
    _expect_error(lambda: load_workload(path), needles, str(path))


def test_missing_and_empty_workload_paths(tmp_path: Path) -> None:
    from pythia.workflow.load import load_workload

    _expect_error(lambda: load_workload(tmp_path / "nope.yaml"), ("no such file",), "nope.yaml")
    (tmp_path / "empty").mkdir()
    _expect_error(lambda: load_workload(tmp_path / "empty"), ("no supported workload",), "empty")


# --------------------------------------------------------------------------- system files (baselines/)

SYSTEM = """\
name: mine
source: [a test]
policies:
  scheduler: {name: fcfs}
  cache: {name: lru}
  router: {name: session_affinity, params: {vnodes: 40}}
  autoscaler: {name: none}
engine:
  max_num_batched_tokens: 2048
  max_num_seqs: 256
  block_size: 16
  enable_prefix_caching: true
  gpu_memory_utilization: 0.9
  watermark: 0.0
  host_kv_gib: 0
"""


def _sys(old: str, new: str) -> str:
    assert old in SYSTEM, old
    return SYSTEM.replace(old, new, 1)


SYSTEM_CASES: list[tuple[str, str | bytes, tuple[str, ...]]] = [
    ("quoted-boolean", _sys("enable_prefix_caching: true", 'enable_prefix_caching: "false"'), ("engine.enable_prefix_caching", "without quotes")),
    ("number-for-boolean", _sys("enable_prefix_caching: true", "enable_prefix_caching: 0"), ("engine.enable_prefix_caching",)),
    ("string-for-int", _sys("block_size: 16", "block_size: sixteen"), ("engine.block_size",)),
    ("quoted-int", _sys("block_size: 16", 'block_size: "16"'), ("engine.block_size",)),
    ("float-for-int", _sys("block_size: 16", "block_size: 16.5"), ("engine.block_size",)),
    ("zero-block", _sys("block_size: 16", "block_size: 0"), ("engine.block_size",)),
    ("nan-utilisation", _sys("gpu_memory_utilization: 0.9", "gpu_memory_utilization: .nan"), ("engine.gpu_memory_utilization", "finite")),
    ("utilisation-above-one", _sys("gpu_memory_utilization: 0.9", "gpu_memory_utilization: 1.5"), ("engine.gpu_memory_utilization",)),
    ("watermark-one", _sys("watermark: 0.0", "watermark: 1.0"), ("engine.watermark",)),
    ("negative-host-kv", _sys("host_kv_gib: 0", "host_kv_gib: -1"), ("engine.host_kv_gib",)),
    ("inf-host-kv", _sys("host_kv_gib: 0", "host_kv_gib: .inf"), ("engine.host_kv_gib", "finite")),
    ("batch-below-seqs", _sys("max_num_batched_tokens: 2048", "max_num_batched_tokens: 64"), ("max_num_batched_tokens",)),
    ("unknown-engine-flag", _sys("block_size: 16", "block_size: 16\n  max_tokens: 5"), ("engine.max_tokens", "known:")),
    ("unknown-top-field", SYSTEM + "polices: {}\n", ("polices",)),
    ("missing-source", _sys("source: [a test]\n", ""), ("source",)),
    ("empty-source", _sys("source: [a test]", "source: []"), ("source",)),
    ("unknown-policy-kind", _sys("  autoscaler: {name: none}", "  autoscaler: {name: none}\n  admission: {name: x}"), ("admission",)),
    ("unknown-policy-name", _sys("cache: {name: lru}", "cache: {name: lfu}"), ("policies.cache.name", "'lfu'", "known:")),
    ("policy-without-name", _sys("cache: {name: lru}", "cache: {params: {}}"), ("policies.cache",)),
    ("unknown-param", _sys("params: {vnodes: 40}", "params: {vnode: 40}"), ("policies.router.params", "vnode", "accepted: vnodes")),
    ("quoted-param", _sys("params: {vnodes: 40}", 'params: {vnodes: "40"}'), ("policies.router.params.vnodes", "without quotes")),
    ("params-a-list", _sys("params: {vnodes: 40}", "params: [40]"), ("policies.router.params",)),
    ("extends-unknown", _sys("name: mine\n", "name: mine\nextends: no-such-system\n"), ("extends", "no-such-system")),
    ("extends-a-path", _sys("name: mine\n", "name: mine\nextends: ../vllm\n"), ("extends",)),
    ("duplicate-key", _sys("block_size: 16", "block_size: 16\n  block_size: 32"), ("engine.block_size", "twice")),
    ("a-list", "- vllm\n", ("mapping",)),
    ("empty-file", "", ("mapping",)),
    ("yaml-syntax", _sys("cache: {name: lru}", "cache: {name: lru"), ("YAML syntax error",)),
    ("alias-bomb", ALIAS_BOMB, ("aliases expand",)),
    ("deep-nesting", SYSTEM + "extra: " + "[" * 500 + "]" * 500 + "\n", ("nests deeper",)),
    ("not-utf8", SYSTEM.encode().replace(b"a test", b"a t\xffst"), ("not UTF-8",)),
]


@pytest.mark.parametrize("case, content, needles", SYSTEM_CASES, ids=[c[0] for c in SYSTEM_CASES])
def test_malformed_system(tmp_path: Path, case: str, content: str | bytes, needles: tuple[str, ...]) -> None:
    from pythia.policy.systems import load_system

    path = _write(tmp_path / "mine.yaml", content)
    _expect_error(lambda: load_system(path).build(), needles, str(path))


def test_good_system_of_the_table_loads(tmp_path: Path) -> None:
    from pythia.policy.systems import load_system

    s = load_system(_write(tmp_path / "mine.yaml", SYSTEM))
    assert s.engine.enable_prefix_caching is True and s.engine.block_size == 16
    s.build()


def test_unknown_system_name() -> None:
    from pythia.policy.systems import load_system

    _expect_error(lambda: load_system("no-such-system"), ("unknown system", "known:"), None)


# --------------------------------------------------------------------------- cluster files

CLUSTER = """\
name: mine
gpu: a100-80gb
gpus: 4
cold_start_s: 30
pools:
  big:
    model: llama-3.1-8b
    tp: 1
    replicas: 2
    min_replicas: 1
    max_replicas: 4
"""


def _cl(old: str, new: str) -> str:
    assert old in CLUSTER, old
    return CLUSTER.replace(old, new, 1)


CLUSTER_CASES: list[tuple[str, str | bytes, tuple[str, ...]]] = [
    ("string-replicas", _cl("replicas: 2", "replicas: two"), ("pools.big.replicas", "'two'")),
    ("quoted-replicas", _cl("replicas: 2", 'replicas: "2"'), ("pools.big.replicas",)),
    ("float-tp", _cl("tp: 1", "tp: 1.5"), ("pools.big.tp",)),
    ("bool-tp", _cl("tp: 1", "tp: true"), ("pools.big.tp",)),
    ("tp-3", _cl("tp: 1", "tp: 3").replace("gpus: 4", "gpus: 16"), ("tensor parallel",)),
    ("negative-replicas", _cl("replicas: 2", "replicas: -1"), ("pools.big.replicas",)),
    ("replicas-above-max", _cl("max_replicas: 4", "max_replicas: 1"), ("min_replicas <= replicas <= max_replicas",)),
    ("gpus-too-few", _cl("gpus: 4", "gpus: 1"), ("the cluster has 1",)),
    ("nan-cold-start", _cl("cold_start_s: 30", "cold_start_s: .nan"), ("cold_start_s", "finite")),
    ("negative-cold-start", _cl("cold_start_s: 30", "cold_start_s: -5"), ("cold_start_s",)),
    ("string-cold-start", _cl("cold_start_s: 30", "cold_start_s: soon"), ("cold_start_s",)),
    ("unknown-gpu", _cl("gpu: a100-80gb", "gpu: a100"), ("unknown GPU", "known:")),
    ("unknown-model", _cl("model: llama-3.1-8b", "model: llama-9"), ("unknown model", "known:")),
    ("unknown-pool-key", _cl("tp: 1", "tp: 1\n    tensor_parallel: 2"), ("pools.big.tensor_parallel",)),
    ("unknown-top-key", CLUSTER + "regions: 2\n", ("regions",)),
    ("no-pools", _cl("pools:\n", "pool:\n"), ("pool",)),
    ("empty-pools", "gpu: a100-80gb\npools: {}\n", ("pools",)),
    ("pool-without-model", "gpu: a100-80gb\npools: {big: {tp: 1}}\n", ("pools.big.model",)),
    ("default-pool-unknown", CLUSTER + "default_pool: small\n", ("default_pool", "'small'")),
    ("context-above-model", _cl("tp: 1", "tp: 1\n    max_model_len: 1000000"), ("max_model_len",)),
    ("replicas-past-range", _cl("replicas: 2", "replicas: 1000000"), ("pools.big.replicas",)),
    ("a-list", "- a\n", ("mapping",)),
    ("alias-bomb", ALIAS_BOMB, ("aliases expand",)),
    ("not-utf8", CLUSTER.encode().replace(b"mine", b"m\xffne"), ("not UTF-8",)),
    ("yaml-syntax", _cl("tp: 1", "tp: [1"), ("YAML syntax error",)),
]


@pytest.mark.parametrize("case, content, needles", CLUSTER_CASES, ids=[c[0] for c in CLUSTER_CASES])
def test_malformed_cluster(tmp_path: Path, case: str, content: str | bytes, needles: tuple[str, ...]) -> None:
    from pythia.sim.config import load_cluster
    from pythia.sim.costmodel import CostModel

    path = _write(tmp_path / "cluster.yaml", content)

    def load() -> None:
        cfg = load_cluster(path)
        for p in cfg.pools:  # what a run builds first
            try:
                CostModel(cfg.gpu, p.model, p.tp)
            except PythiaInputError as e:
                raise PythiaInputError(f"{path}: {e}") from None

    _expect_error(load, needles, str(path))


def test_good_cluster_of_the_table_loads(tmp_path: Path) -> None:
    from pythia.sim.config import load_cluster

    assert load_cluster(_write(tmp_path / "cluster.yaml", CLUSTER)).pools[0].replicas == 2


def test_unknown_cluster_preset() -> None:
    from pythia.sim.config import load_cluster

    _expect_error(lambda: load_cluster("papr"), ("unknown cluster", "known:"), None)


# --------------------------------------------------------------------------- shipped data files (GPU, model, efficiency)

DATA_CASES: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("gpu-string-tflops", "gpus", "h9:\n  memory_gib: 80\n  tflops: fast\n  hbm_tbps: 3\n  pcie_gbps: 64\n  link_gbps: 450\n", ("h9.tflops",)),
    ("gpu-zero-bandwidth", "gpus", "h9:\n  memory_gib: 80\n  tflops: 900\n  hbm_tbps: 0\n  pcie_gbps: 64\n  link_gbps: 450\n", ("h9.hbm_tbps",)),
    ("gpu-missing-memory", "gpus", "h9:\n  tflops: 900\n  hbm_tbps: 3\n  pcie_gbps: 64\n  link_gbps: 450\n", ("memory_gib",)),
    ("gpu-unknown-key", "gpus", "h9:\n  memory_gib: 80\n  tflops: 900\n  hbm_tbps: 3\n  pcie_gbps: 64\n  link_gbps: 450\n  nvlink: 9\n", ("h9.nvlink",)),
    ("gpu-nan", "gpus", "h9:\n  memory_gib: .nan\n  tflops: 900\n  hbm_tbps: 3\n  pcie_gbps: 64\n  link_gbps: 450\n", ("h9.memory_gib", "finite")),
    ("model-quoted-bool", "models", "m:\n  layers: 2\n  hidden: 64\n  heads: 2\n  kv_heads: 2\n  head_dim: 32\n  intermediate: 128\n  vocab: 100\n  tied_embeddings: 'no'\n  max_model_len: 1024\n", ("m.tied_embeddings", "without quotes")),
    ("model-zero-layers", "models", "m:\n  layers: 0\n  hidden: 64\n  heads: 2\n  kv_heads: 2\n  head_dim: 32\n  intermediate: 128\n  vocab: 100\n  tied_embeddings: false\n  max_model_len: 1024\n", ("m.layers",)),
    ("model-dtype-3", "models", "m:\n  layers: 2\n  hidden: 64\n  heads: 2\n  kv_heads: 2\n  head_dim: 32\n  intermediate: 128\n  vocab: 100\n  tied_embeddings: false\n  max_model_len: 1024\n  dtype_bytes: 3\n", ("m.dtype_bytes",)),
    ("efficiency-no-default", "efficiency", "a100-80gb/llama-3.1-8b: {mfu: 0.5}\n", ("default",)),
    ("efficiency-negative-overhead", "efficiency", "default: {mfu: 0.5, mbu: 0.7, overhead_ms: -1, per_seq_us: 1, allreduce_us: 1, activation_gib: 1}\n", ("default.overhead_ms",)),
    ("efficiency-zero-mfu", "efficiency", "default: {mfu: 0, mbu: 0.7, overhead_ms: 1, per_seq_us: 1, allreduce_us: 1, activation_gib: 1}\n", ("default.mfu",)),
    ("efficiency-bad-pair-key", "efficiency", "default: {mfu: 0.5, mbu: 0.7, overhead_ms: 1, per_seq_us: 1, allreduce_us: 1, activation_gib: 1}\na100 llama: {mfu: 0.5}\n", ("a100 llama",)),
    ("efficiency-unknown-coefficient", "efficiency", "default: {mfu: 0.5, mbu: 0.7, overhead_ms: 1, per_seq_us: 1, allreduce_us: 1, activation_gib: 1, mxu: 3}\n", ("default.mxu",)),
]


@pytest.mark.parametrize("case, schema, content, needles", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_malformed_data_file(tmp_path: Path, case: str, schema: str, content: str, needles: tuple[str, ...]) -> None:
    from pythia import inputs

    path = _write(tmp_path / f"{schema}.yaml", content)
    _expect_error(lambda: inputs.validate(inputs.load_yaml(path, f"{schema} file"), schema), needles, str(path))


def test_shipped_data_files_pass_their_schemas() -> None:
    from pythia.sim.costmodel import load_data

    for name in ("gpus", "models", "efficiency"):
        load_data.cache_clear()
        assert load_data(name)


# --------------------------------------------------------------------------- call annotations

GOOD_ARGS = {"pythia.workflow_type": "coding-assistant", "pythia.workflow_id": "job-1", "pythia.agent_role": "planner"}

ANNOTATION_CASES: list[tuple[str, Any, tuple[str, ...]]] = [
    ("missing-role", {k: v for k, v in GOOD_ARGS.items() if k != "pythia.agent_role"}, ("agent_role",)),
    ("unknown-field", {**GOOD_ARGS, "pythia.agent": "x"}, ("agent",)),
    ("role-with-space", {**GOOD_ARGS, "pythia.agent_role": "code reviewer"}, ("agent_role",)),
    ("role-too-long", {**GOOD_ARGS, "pythia.agent_role": "a" * 500}, ("agent_role",)),
    ("empty-workflow-id", {**GOOD_ARGS, "pythia.workflow_id": ""}, ("workflow_id",)),
    ("workflow-id-too-long", {**GOOD_ARGS, "pythia.workflow_id": "j" * 1000}, ("workflow_id",)),
    ("numeric-workflow-id", {**GOOD_ARGS, "pythia.workflow_id": 17}, ("workflow_id",)),
    ("negative-step", {**GOOD_ARGS, "pythia.step": -1}, ("step",)),
    ("string-step", {**GOOD_ARGS, "pythia.step": "3"}, ("step",)),
    ("bool-step", {**GOOD_ARGS, "pythia.step": True}, ("step",)),
    ("nan-step", {**GOOD_ARGS, "pythia.step": float("nan")}, ("step",)),
    ("step-past-range", {**GOOD_ARGS, "pythia.step": 10**12}, ("step",)),
    ("empty-parent", {**GOOD_ARGS, "pythia.parent_call_id": ""}, ("parent_call_id",)),
]


@pytest.mark.parametrize("case, args, needles", ANNOTATION_CASES, ids=[c[0] for c in ANNOTATION_CASES])
def test_malformed_annotation(case: str, args: Any, needles: tuple[str, ...]) -> None:
    _expect_error(lambda: CallAnnotation.from_extra_args(args), needles, None)


@pytest.mark.parametrize("body", [{"pythia": "x"}, {"vllm_xargs": [1]}, {"pythia": {"workflow_type": "t"}}],
                         ids=["pythia-a-string", "xargs-a-list", "nested-missing-ids"])
def test_malformed_request_body(body: dict[str, Any]) -> None:
    _expect_error(lambda: parse_request_body(body), (), None)


def test_good_annotation_parses() -> None:
    ann = CallAnnotation.from_extra_args({**GOOD_ARGS, "pythia.step": 3.0})
    assert ann is not None and ann.step == 3 and ann.agent_role == "planner"


def test_table_size() -> None:
    """The sweep the hardening work promised: at least 150 malformed inputs across formats."""
    rows = len(SPEC_CASES) + len(TRACE_CASES) + len(IMPORT_CASES) + len(WORKLOAD_CASES) + len(SYSTEM_CASES)
    rows += len(CLUSTER_CASES) + len(DATA_CASES) + len(ANNOTATION_CASES) + 3
    assert rows >= 150
