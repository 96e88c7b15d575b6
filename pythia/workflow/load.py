"""One entry point from a path to a :class:`~pythia.workflow.trace.Trace`.

A workload path is any of
- a workflow spec (``*.yaml``/``*.yml`` in ``workloads/``): jobs are generated from it;
- a canonical trace (``*.jsonl``/``*.jsonl.gz`` starting with a ``pythia_trace`` header);
- a public trace file in a format an importer recognises (Mooncake JSONL, Azure 2023 CSV,
  Claude Code session JSON);
- a directory: every supported file in it (sorted by name, not recursing), combined into
  one workload.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pythia.errors import PythiaInputError
from pythia.workflow import arrivals
from pythia.workflow.trace import Job, Trace, is_canonical_trace, read_trace

SPEC_SUFFIXES = (".yaml", ".yml")
DEFAULT_SPEC_JOBS = 64
DEFAULT_SESSION_CONCURRENCY = 8


@dataclass(frozen=True)
class LoadOptions:
    """How to turn a path into a workload.

    Attributes:
        seed: seed of the generator (specs) and of open-loop arrivals.
        jobs: number of jobs to generate from a spec; for traces, keep only the first N jobs.
        arrival: an arrival process (see :mod:`pythia.workflow.arrivals`) replacing the
            workload's own; ``None`` keeps it (timestamps for timed traces, closed loop with
            ``DEFAULT_SESSION_CONCURRENCY`` sessions for untimed ones).
        max_gap_s: cap, in seconds, on think/tool gaps imported from recorded sessions, so
            that job completion time measures serving and tool time, not a person's lunch;
            ``None`` keeps gaps as recorded.
        gap_scale: multiplies every call's think/tool gap (after the cap), for specs and
            traces alike: 0.1 makes tools and people ten times faster.
    """

    seed: int = 0
    jobs: int | None = None
    arrival: dict[str, Any] | None = None
    max_gap_s: float | None = 60.0
    gap_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.gap_scale >= 0:
            raise PythiaInputError(f"option gap_scale={self.gap_scale} must be non-negative")
        if self.jobs is not None and self.jobs < 1:
            raise PythiaInputError(f"option jobs={self.jobs} must be a positive integer")
        if self.max_gap_s is not None and self.max_gap_s < 0:
            raise PythiaInputError(f"option max_gap_s={self.max_gap_s} must be non-negative")


def _load_file(path: Path, options: LoadOptions) -> Trace:
    if path.suffix in SPEC_SUFFIXES:
        from pythia.workflow.generate import generate_trace
        from pythia.workflow.spec import load_spec

        spec = load_spec(path)
        return generate_trace(spec, jobs=options.jobs or DEFAULT_SPEC_JOBS, seed=options.seed)
    if is_canonical_trace(path):
        return read_trace(path)
    from pythia.workflow import importers

    importer = importers.detect(path)
    if importer is None:
        raise PythiaInputError(
            f"{path}: unsupported file; expected a workflow spec (.yaml), a canonical trace "
            f"(.jsonl with a pythia_trace header) or one of: {importers.describe()}"
        )
    return importer.load(path, options)


def _supported_files(directory: Path) -> list[Path]:
    from pythia.workflow import importers

    files = []
    for p in sorted(directory.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix in SPEC_SUFFIXES or is_canonical_trace(p) or importers.detect(p) is not None:
            files.append(p)
    if not files:
        raise PythiaInputError(f"{directory}: the directory holds no supported workload file")
    return files


def _combine(traces: list[tuple[Path, Trace]]) -> Trace:
    if len(traces) == 1:
        return traces[0][1]
    jobs: list[Job] = []
    seen: set[str] = set()
    for path, tr in traces:
        for job in tr.jobs:
            if job.job_id in seen:
                job = replace(job, job_id=f"{path.stem}/{job.job_id}")
            seen.add(job.job_id)
            jobs.append(job)
    processes = {tr.arrival["process"] for _, tr in traces}
    arrival = traces[0][1].arrival if len(processes) == 1 else {"process": "timestamps", "time_scale": 1.0}
    if arrival["process"] == "closed":
        total = sum(tr.arrival.get("concurrency", 1) for _, tr in traces)
        arrival = {"process": "closed", "concurrency": max(1, min(total, DEFAULT_SESSION_CONCURRENCY))}
    meta = {"sources": [str(p) for p, _ in traces]}
    return Trace(jobs=jobs, arrival=arrival, meta=meta)


def apply_arrival(trace: Trace, arrival: dict[str, Any], seed: int) -> Trace:
    """Release ``trace``'s jobs under ``arrival`` instead of its own process."""
    arrival = arrivals.normalise(arrival)
    process = arrival["process"]
    if process == "timestamps":
        missing = [j.job_id for j in trace.jobs if j.arrival_s is None]
        if missing:
            raise PythiaInputError(
                f"job {missing[0]!r} ({trace.jobs[0].source or 'workload'}) has no timestamp; "
                "choose a closed loop (--concurrency) or an open-loop rate (--rate)"
            )
        return Trace(jobs=trace.jobs, arrival=arrival, meta=trace.meta)
    # Arrivals are a component of their own: a generator seeded apart from the spec's.
    rng = np.random.default_rng([seed, 0xA771])
    times = arrivals.arrival_times(arrival, len(trace.jobs), rng)
    jobs = [
        replace(job, arrival_s=None if times is None else float(times[i]))
        for i, job in enumerate(trace.jobs)
    ]
    return Trace(jobs=jobs, arrival=arrival, meta=trace.meta)


def load_workload(path: str | Path, options: LoadOptions | None = None) -> Trace:
    """Load any supported workload path (see the module docstring) as one trace."""
    options = options or LoadOptions()
    path = Path(path)
    if not path.exists():
        raise PythiaInputError(f"{path}: no such file or directory")
    if path.is_dir():
        trace = _combine([(p, _load_file(p, options)) for p in _supported_files(path)])
    else:
        trace = _load_file(path, options)
    if options.jobs is not None and path.suffix not in SPEC_SUFFIXES:
        trace = Trace(jobs=trace.jobs[: options.jobs], arrival=trace.arrival, meta=trace.meta)
    if options.arrival is not None:
        trace = apply_arrival(trace, options.arrival, options.seed)
    if options.gap_scale != 1.0:
        trace = scale_gaps(trace, options.gap_scale)
    return trace


def scale_gaps(trace: Trace, factor: float) -> Trace:
    """A copy of ``trace`` whose calls' think/tool gaps are multiplied by ``factor``."""
    if not factor >= 0:
        raise PythiaInputError(f"option gap_scale={factor} must be non-negative")
    jobs = []
    for job in trace.jobs:
        calls = [replace(c, gap_s=c.gap_s * factor) for c in job.calls]
        jobs.append(replace(job, calls=calls))
    return Trace(jobs=jobs, arrival=trace.arrival, meta=trace.meta)
