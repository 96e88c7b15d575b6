"""The canonical trace: round trip, validation, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pythia.errors import PythiaInputError
from pythia.workflow.trace import Call, Job, Trace, read_trace, segments, write_trace


@st.composite
def jobs(draw: st.DrawFn, index: int = 0) -> Job:
    n = draw(st.integers(min_value=1, max_value=6))
    calls = []
    for i in range(n):
        deps = tuple(sorted(draw(st.sets(st.integers(min_value=0, max_value=i - 1), max_size=i)))) if i else ()
        seg_tokens = draw(st.lists(st.integers(min_value=1, max_value=300), max_size=4))
        prompt = segments([(draw(st.integers(0, 2**62)), draw(st.integers(0, 1000)), t) for t in seg_tokens])
        calls.append(
            Call(
                call_id=i,
                agent_role=draw(st.sampled_from(["planner", "engineer", "reviewer"])),
                agent_id=f"a{i % 2}",
                model="qwen2.5-7b",
                input_tokens=sum(seg_tokens),
                output_tokens=draw(st.integers(0, 500)),
                deps=deps,
                gap_s=draw(st.floats(min_value=0, max_value=100, allow_nan=False)),
                prompt=prompt,
                step=i,
                parent=deps[-1] if deps else None,
            )
        )
    return Job(f"job-{index}", "coding-assistant", f"w{index}", calls, arrival_s=draw(st.none() | st.floats(0, 1e5)))


@settings(max_examples=40, deadline=None)
@given(st.lists(jobs(), min_size=1, max_size=4))
def test_round_trip_is_exact_and_byte_stable(tmp_path_factory: pytest.TempPathFactory, js: list[Job]) -> None:
    for i, j in enumerate(js):
        j.job_id = f"job-{i}"
    tmp = tmp_path_factory.mktemp("rt")
    # A trace whose jobs lack times is a closed loop; timestamps need every job's time.
    untimed = any(j.arrival_s is None for j in js)
    arrival = {"process": "closed", "concurrency": 2} if untimed else {"process": "timestamps", "time_scale": 1.0}
    trace = Trace(js, arrival=arrival, meta={"seed": 1})
    write_trace(trace, tmp / "a.jsonl.gz")
    back = read_trace(tmp / "a.jsonl.gz")
    assert [j.to_json() for j in back.jobs] == [j.to_json() for j in js]
    write_trace(back, tmp / "b.jsonl.gz")
    assert (tmp / "a.jsonl.gz").read_bytes() == (tmp / "b.jsonl.gz").read_bytes()
    assert back.stats()["calls"] == sum(len(j.calls) for j in js)


def _good_job() -> dict:
    return {
        "job_id": "j0",
        "workflow_type": "t",
        "workflow_id": "w",
        "arrival_s": 0.0,
        "calls": [
            {"call_id": 0, "agent_role": "planner", "model": "m", "input_tokens": 10, "output_tokens": 4,
             "prompt": [[1, 0, 10]]},
            {"call_id": 1, "agent_role": "engineer", "model": "m", "input_tokens": 5, "output_tokens": 4,
             "deps": [0], "prompt": [[2, 0, 5]]},
        ],
    }


def _write(path: Path, jobs_json: list, header: dict | None = None) -> Path:
    header = header or {"pythia_trace": 1, "arrival": {"process": "timestamps", "time_scale": 1.0}}
    lines = [json.dumps(header)] + [j if isinstance(j, str) else json.dumps(j) for j in jobs_json]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_good_file_reads(tmp_path: Path) -> None:
    trace = read_trace(_write(tmp_path / "t.jsonl", [_good_job()]))
    assert trace.stats()["input_tokens"] == 15
    assert trace.jobs[0].calls[1].deps == (0,)
    out = trace.jobs[0].output_segments(trace.jobs[0].calls[0])
    assert out.shape == (1, 3) and out[0, 2] == 4


def _mutate(fn):  # type: ignore[no-untyped-def]
    job = _good_job()
    fn(job)
    return job


@pytest.mark.parametrize(
    "job, needle",
    [
        ('{"job_id": "j0", "calls": [', ":2: not valid JSON"),
        (_mutate(lambda j: j.pop("workflow_type")), "workflow_type"),
        (_mutate(lambda j: j["calls"][1].update(deps=[1])), "calls[1].deps"),
        (_mutate(lambda j: j["calls"][1].update(deps=[7])), "calls[1].deps"),
        (_mutate(lambda j: j["calls"][0].update(input_tokens=-3)), "calls[0].input_tokens"),
        (_mutate(lambda j: j["calls"][0].update(input_tokens=11)), "calls[0].prompt covers 10 tokens"),
        (_mutate(lambda j: j["calls"][0].update(prompt=[[1, 0]])), "calls[0].prompt[0]"),
        (_mutate(lambda j: j["calls"][0].update(call_id=3)), "calls[0].call_id"),
        (_mutate(lambda j: j["calls"][0].update(colour="red")), "colour"),
    ],
)
def test_bad_job_line_names_file_line_and_field(tmp_path: Path, job: object, needle: str) -> None:
    path = _write(tmp_path / "bad.jsonl", [job])
    with pytest.raises(PythiaInputError) as err:
        read_trace(path)
    msg = str(err.value)
    assert str(path) + ":2" in msg
    assert needle in msg
    assert "\n" not in msg


def test_bad_header_and_duplicate_jobs(tmp_path: Path) -> None:
    with pytest.raises(PythiaInputError, match=r":1: field arrival"):
        read_trace(_write(tmp_path / "h.jsonl", [_good_job()], header={"pythia_trace": 1}))
    with pytest.raises(PythiaInputError, match=r":3: field job_id 'j0' repeats"):
        read_trace(_write(tmp_path / "d.jsonl", [_good_job(), _good_job()]))


def test_segments_shape() -> None:
    assert segments([]).shape == (0, 3)
    assert segments(np.array([[1, 2, 3]])).dtype == np.int64
