"""Loading workloads: directories, arrival processes, job limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from pythia.errors import PythiaInputError
from pythia.workflow.load import LoadOptions, load_workload
from pythia.workflow.trace import Call, Job, Trace, segments, write_trace


def _trace(path: Path, n: int, prefix: str, timed: bool) -> Path:
    jobs = [
        Job(f"{prefix}{i}", "t", f"w{i}", [Call(0, "r", "m", 8, 2, prompt=segments([(i, 0, 8)]))],
            arrival_s=float(i) if timed else None)
        for i in range(n)
    ]
    arrival = {"process": "timestamps", "time_scale": 1.0} if timed else {"process": "closed", "concurrency": 1}
    write_trace(Trace(jobs, arrival=arrival), path)
    return path


def test_directory_is_one_workload_with_unique_job_ids(tmp_path: Path) -> None:
    _trace(tmp_path / "a.jsonl", 3, "j", timed=True)
    _trace(tmp_path / "b.jsonl", 2, "j", timed=True)
    (tmp_path / ".hidden").write_text("x")
    trace = load_workload(tmp_path)
    assert len(trace.jobs) == 5
    assert len({j.job_id for j in trace.jobs}) == 5
    assert trace.arrival["process"] == "timestamps"


def test_untimed_sessions_default_to_a_bounded_closed_loop(tmp_path: Path) -> None:
    for k in range(12):
        _trace(tmp_path / f"s{k:02d}.jsonl", 1, f"s{k}-", timed=False)
    trace = load_workload(tmp_path)
    assert trace.arrival == {"process": "closed", "concurrency": 8}


def test_poisson_override_is_seeded(tmp_path: Path) -> None:
    path = _trace(tmp_path / "a.jsonl", 50, "j", timed=False)
    opts = LoadOptions(seed=3, arrival={"process": "poisson", "rate": 2.0})
    a = [j.arrival_s for j in load_workload(path, opts).jobs]
    b = [j.arrival_s for j in load_workload(path, opts).jobs]
    c = [j.arrival_s for j in load_workload(path, LoadOptions(seed=4, arrival=opts.arrival)).jobs]
    assert a == b != c
    assert a[0] == 0.0 and a == sorted(a)


def test_jobs_limit_and_timestamps_need_times(tmp_path: Path) -> None:
    path = _trace(tmp_path / "a.jsonl", 10, "j", timed=False)
    assert len(load_workload(path, LoadOptions(jobs=4)).jobs) == 4
    with pytest.raises(PythiaInputError, match="no timestamp"):
        load_workload(path, LoadOptions(arrival={"process": "timestamps"}))


def test_empty_directory_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(PythiaInputError, match="no supported workload file"):
        load_workload(tmp_path)
    with pytest.raises(PythiaInputError, match="jobs"):
        LoadOptions(jobs=0)


def test_gap_scale_multiplies_every_gap_of_specs_and_traces(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pythia.workflow.load import LoadOptions, load_workload

    spec = "workloads/rag-chain.yaml"
    base = load_workload(spec, LoadOptions(seed=3, jobs=4))
    half = load_workload(spec, LoadOptions(seed=3, jobs=4, gap_scale=0.5))
    gaps = [c.gap_s for j in base.jobs for c in j.calls]
    assert any(g > 0 for g in gaps)
    assert [c.gap_s for j in half.jobs for c in j.calls] == pytest.approx([0.5 * g for g in gaps])
    # Nothing else moves, and the loaded trace's own calls are not touched.
    assert [c.input_tokens for j in half.jobs for c in j.calls] == [c.input_tokens for j in base.jobs for c in j.calls]
    assert [c.gap_s for j in load_workload(spec, LoadOptions(seed=3, jobs=4)).jobs for c in j.calls] == gaps
    with pytest.raises(PythiaInputError, match="gap_scale"):
        LoadOptions(gap_scale=-1.0)
