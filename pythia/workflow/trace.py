"""The canonical job/call trace: what every workload becomes before it is served or simulated.

A *trace* is a list of jobs (one run of a multi-agent workflow, one chat session, one
request of a flat trace) and an arrival process. A job is a DAG of calls. A call carries its
annotation fields, its model, its token counts, its dependencies and the gap (tool or
think time) between the end of its last dependency and its issue, and its prompt content
as *segments*.

Prompt content. A segment ``(key, offset, tokens)`` stands for tokens
``offset .. offset+tokens`` of a virtual token stream named by the 63-bit ``key``; equal
keys give equal tokens. A prompt is a list of segments covering exactly ``input_tokens``;
the call's output is a list covering exactly ``output_tokens`` (by default one segment
unique to the call). A consumer that needs block hashes (the simulator, the replay client
that synthesises text) cuts the sequence prompt + output into blocks of its own size and
hashes each block's pieces, chained as vLLM does, so two calls share a cached block
exactly when their whole prefixes up to that block are equal. An imported trace block id
``h`` of ``B`` tokens becomes the segment ``(key(scope, h), 0, B)``.

File form: JSON Lines, optionally gzip-compressed (``.jsonl.gz``). Line 1 is a header
``{"pythia_trace": 1, "arrival": {...}, "meta": {...}}``; every other line is one job.
The JSON schema is ``pythia/workflow/schemas/trace.schema.json`` and
``docs/trace-format.md`` documents each field.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from pythia.errors import PythiaInputError
from pythia.workflow import arrivals
from pythia.workflow.hashing import stable_key

FORMAT_VERSION = 1
SEGMENT_COLUMNS = 3  # key, offset, tokens


def segments(rows: Iterable[tuple[int, int, int]] | np.ndarray) -> np.ndarray:
    """A segment array of shape (n, 3), int64: key, offset, tokens."""
    arr = np.asarray(rows if not isinstance(rows, list) or rows else np.empty((0, 3)), dtype=np.int64)
    return arr.reshape(-1, SEGMENT_COLUMNS)


@dataclass(slots=True, eq=False)
class Call:
    """One LLM call of a job.

    Attributes:
        call_id: index of the call within its job (0-based, in issue order of a sequential run).
        agent_role: the annotation's role.
        model: the model the role calls (a name the cluster config maps to a pool).
        input_tokens: prompt length in tokens.
        output_tokens: generated tokens (the true length; schedulers see only predictions).
        deps: ids of earlier calls of the same job that must finish before this one is issued.
        gap_s: seconds between the end of the last dependency (the job start if none) and
            the issue of this call: tool execution, a web request, a person thinking.
        prompt: segments covering exactly ``input_tokens``.
        output: segments covering exactly ``output_tokens``, or ``None`` for content unique
            to this call.
        step: the annotation's step (position of the call in its job).
        parent: the call that spawned this one (the annotation's parent call), if any.
        agent_id: the agent instance making the call (a role may have several instances in a
            job: parallel explorers, sub-agents); calls of one instance share a conversation.
    """

    call_id: int
    agent_role: str
    model: str
    input_tokens: int
    output_tokens: int
    deps: tuple[int, ...] = ()
    gap_s: float = 0.0
    prompt: np.ndarray = field(default_factory=lambda: segments([]))
    output: np.ndarray | None = None
    step: int = 0
    parent: int | None = None
    agent_id: str = ""

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this call in a trace file."""
        return {
            "call_id": self.call_id,
            "agent_role": self.agent_role,
            "agent_id": self.agent_id,
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "deps": list(self.deps),
            "gap_s": self.gap_s,
            "step": self.step,
            "parent": self.parent,
            "prompt": self.prompt.tolist(),
            "output": None if self.output is None else self.output.tolist(),
        }


@dataclass(slots=True, eq=False)
class Job:
    """One run of a workflow: a DAG of calls sharing a ``workflow_id``.

    Attributes:
        job_id: unique within the trace.
        workflow_type: the annotation's workflow type.
        workflow_id: the annotation's workflow id (session id).
        calls: the calls, ``calls[i].call_id == i``, dependencies pointing to earlier calls.
        arrival_s: open-loop arrival time in seconds from the start of the trace; ``None``
            when the arrival process (closed loop) decides.
        source: where the job came from (``file`` or ``file:line``), for messages.
    """

    job_id: str
    workflow_type: str
    workflow_id: str
    calls: list[Call]
    arrival_s: float | None = None
    source: str = ""

    @property
    def uid(self) -> int:
        """A stable 63-bit id, used to derive content keys unique to this job."""
        return stable_key("job", self.job_id)

    def output_segments(self, call: Call) -> np.ndarray:
        """The segments of ``call``'s output (a unique stream when the trace gives none)."""
        if call.output is not None:
            return call.output
        return segments([(stable_key("out", self.job_id, call.call_id), 0, call.output_tokens)])

    def agents(self) -> list[str]:
        """The agent instances of this job in order of first call, the root agent first."""
        seen: dict[str, None] = {}
        for c in self.calls:
            seen.setdefault(c.agent_id or c.agent_role, None)
        return list(seen)

    def critical_path(self) -> tuple[int, float]:
        """Length (calls) and gap sum of the longest dependency chain (ties: the larger gap sum)."""
        depth = [0] * len(self.calls)
        gaps = [0.0] * len(self.calls)
        for c in self.calls:
            if c.deps:
                p = max(c.deps, key=lambda d: (depth[d], gaps[d]))
                depth[c.call_id], gaps[c.call_id] = depth[p] + 1, gaps[p] + c.gap_s
            else:
                depth[c.call_id], gaps[c.call_id] = 1, c.gap_s
        cp = max(range(len(self.calls)), key=lambda i: (depth[i], gaps[i]))
        return depth[cp], gaps[cp]

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this job (one line of a trace file)."""
        return {
            "job_id": self.job_id,
            "workflow_type": self.workflow_type,
            "workflow_id": self.workflow_id,
            "arrival_s": self.arrival_s,
            "calls": [c.to_json() for c in self.calls],
        }


@dataclass(slots=True, eq=False)
class Trace:
    """A workload: jobs plus the arrival process that releases them.

    ``arrival`` is one of ``{"process": "closed", "concurrency": N}`` (N jobs in flight, the
    next starting when one ends, in job order), ``{"process": "timestamps", "time_scale": s}``
    (each job at ``arrival_s * s``), or the description of the open-loop process that
    produced the jobs' ``arrival_s`` (``poisson``, ``gamma``, ``waves``).
    """

    jobs: list[Job]
    arrival: dict[str, Any] = field(default_factory=lambda: {"process": "timestamps", "time_scale": 1.0})
    meta: dict[str, Any] = field(default_factory=dict)

    def iter_calls(self) -> Iterator[tuple[Job, Call]]:
        """Every (job, call) pair in trace order."""
        for job in self.jobs:
            for call in job.calls:
                yield job, call

    def stats(self) -> dict[str, Any]:
        """Totals of the workload, as ``pythia workload stats`` prints them."""
        calls = in_tok = out_tok = subagents = 0
        roles: dict[str, int] = {}
        models: dict[str, int] = {}
        types: dict[str, int] = {}
        for job in self.jobs:
            types[job.workflow_type] = types.get(job.workflow_type, 0) + 1
            for c in job.calls:
                calls += 1
                in_tok += c.input_tokens
                out_tok += c.output_tokens
                roles[c.agent_role] = roles.get(c.agent_role, 0) + 1
                models[c.model] = models.get(c.model, 0) + 1
            subagents += len(job.agents()) - 1
        arrivals = [j.arrival_s for j in self.jobs if j.arrival_s is not None]
        return {
            "jobs": len(self.jobs),
            "calls": calls,
            "input_tokens": in_tok,
            "output_tokens": out_tok,
            "subagents": subagents,
            "workflow_types": dict(sorted(types.items())),
            "agent_roles": dict(sorted(roles.items())),
            "models": dict(sorted(models.items())),
            "arrival": self.arrival,
            "span_s": (max(arrivals) - min(arrivals)) if arrivals else None,
            "mean_input_tokens": in_tok / calls if calls else 0.0,
            "mean_output_tokens": out_tok / calls if calls else 0.0,
        }


# --------------------------------------------------------------------------- validation


@lru_cache(maxsize=None)
def _validator(kind: str):  # type: ignore[no-untyped-def]
    """A draft 2020-12 validator for one definition (``header``, ``job``) of the trace schema."""
    import jsonschema

    text = resources.files("pythia.workflow").joinpath("schemas/trace.schema.json").read_text()
    schema = json.loads(text)
    schema["$ref"] = f"#/$defs/{kind}"
    return jsonschema.Draft202012Validator(schema)


def json_path(error: Any) -> str:
    """The dotted path of a jsonschema error (``calls[2].deps``)."""
    parts: list[str] = []
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else (f".{p}" if parts else str(p)))
    return "".join(parts) or "(top level)"


def describe_schema_error(error: Any) -> str:
    """One phrase naming the field a jsonschema error is about and what is wrong with it."""
    path = json_path(error)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        if missing:
            field = missing[0] if path == "(top level)" else f"{path}.{missing[0]}"
            return f"field {field} is missing"
    return f"field {path}: {error.message}"


def _check_schema(obj: Any, kind: str, where: str) -> None:
    if not isinstance(obj, dict):
        what = "header" if kind == "header" else "job"
        raise PythiaInputError(f"{where}: a {what} line must be a JSON object, not {type(obj).__name__}")
    errors = sorted(_validator(kind).iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        raise PythiaInputError(f"{where}: {describe_schema_error(errors[0])}")


def validate_job(job: Job, where: str) -> None:
    """Check the invariants a job must keep; raise :class:`PythiaInputError` naming the field."""
    if not job.calls:
        raise PythiaInputError(f"{where}: job {job.job_id!r} has no calls")
    for i, c in enumerate(job.calls):
        f = f"calls[{i}]"
        if c.call_id != i:
            raise PythiaInputError(f"{where}: field {f}.call_id is {c.call_id}, expected {i}")
        for d in c.deps:
            if not 0 <= d < i:
                raise PythiaInputError(
                    f"{where}: field {f}.deps names call {d}, which is not an earlier call of the job"
                )
        if c.parent is not None and not 0 <= c.parent < i:
            raise PythiaInputError(
                f"{where}: field {f}.parent names call {c.parent}, which is not an earlier call of the job"
            )
        if c.input_tokens < 0 or c.output_tokens < 0:
            raise PythiaInputError(f"{where}: field {f} has a negative token count")
        if c.gap_s < 0:
            raise PythiaInputError(f"{where}: field {f}.gap_s is negative ({c.gap_s})")
        for name, segs, total in (("prompt", c.prompt, c.input_tokens), ("output", c.output, c.output_tokens)):
            if segs is None:
                continue
            if segs.ndim != 2 or segs.shape[1] != SEGMENT_COLUMNS:
                raise PythiaInputError(f"{where}: field {f}.{name} must be a list of [key, offset, tokens]")
            if len(segs) and ((segs[:, 1] < 0).any() or (segs[:, 2] <= 0).any()):
                raise PythiaInputError(
                    f"{where}: field {f}.{name} has a negative offset or a segment of no tokens"
                )
            covered = int(segs[:, 2].sum()) if len(segs) else 0
            if covered != total:
                raise PythiaInputError(
                    f"{where}: field {f}.{name} covers {covered} tokens but the call has {total}"
                )


def job_from_json(obj: Any, where: str) -> Job:
    """Build and validate a :class:`Job` from its JSON object."""
    _check_schema(obj, "job", where)
    calls = [
        Call(
            call_id=c["call_id"],
            agent_role=c["agent_role"],
            agent_id=c.get("agent_id", "") or c["agent_role"],
            model=c["model"],
            input_tokens=c["input_tokens"],
            output_tokens=c["output_tokens"],
            deps=tuple(c.get("deps", ())),
            gap_s=float(c.get("gap_s", 0.0)),
            step=c.get("step", i),
            parent=c.get("parent"),
            prompt=segments(c["prompt"]),
            output=None if c.get("output") is None else segments(c["output"]),
        )
        for i, c in enumerate(obj["calls"])
    ]
    job = Job(
        job_id=obj["job_id"],
        workflow_type=obj["workflow_type"],
        workflow_id=obj["workflow_id"],
        calls=calls,
        arrival_s=obj.get("arrival_s"),
        source=where,
    )
    validate_job(job, where)
    return job


# --------------------------------------------------------------------------- file I/O


def _open_text(path: Path, mode: str) -> io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8")


def is_canonical_trace(path: Path) -> bool:
    """True when ``path`` starts with a canonical-trace header line."""
    try:
        with _open_text(path, "r") as fh:
            first = fh.readline(4096)
        return first.lstrip().startswith('{"pythia_trace"')
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return False


def write_trace(trace: Trace, path: str | Path) -> None:
    """Write ``trace`` as canonical JSON Lines (gzip when the name ends in ``.gz``)."""
    from pythia.outputs import atomic_path

    path = Path(path)
    # The trace appears under its name only once complete; a failure leaves no temporary file.
    with atomic_path(path) as tmp, contextlib.ExitStack() as stack:
        raw = stack.enter_context(open(tmp, "wb"))
        if path.suffix == ".gz":  # mtime=0: the same trace gives byte-identical files
            raw = stack.enter_context(gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0))
        fh = stack.enter_context(io.TextIOWrapper(raw, encoding="utf-8"))
        header = {"pythia_trace": FORMAT_VERSION, "arrival": trace.arrival, "meta": trace.meta}
        fh.write(json.dumps(header, separators=(",", ":")) + "\n")
        for job in trace.jobs:
            fh.write(json.dumps(job.to_json(), separators=(",", ":")) + "\n")


def read_trace(path: str | Path) -> Trace:
    """Read and validate a canonical trace file."""
    from pythia import inputs

    path = Path(path)
    jobs: list[Job] = []
    ids: set[str] = set()
    lines = inputs.iter_lines(path, "trace")
    first = next(lines, None)
    if first is None:
        raise PythiaInputError(f"{path}: the trace is empty; line 1 must be a pythia_trace header")
    header = inputs.parse_json(first[1], f"{path}:1")
    _check_schema(header, "header", f"{path}:1")
    if header["pythia_trace"] != FORMAT_VERSION:
        raise PythiaInputError(
            f"{path}:1: field pythia_trace is {header['pythia_trace']}, this Pythia reads version {FORMAT_VERSION}"
        )
    try:
        arrival = arrivals.normalise(header["arrival"])
    except PythiaInputError as e:
        raise PythiaInputError(f"{path}:1: {e}") from None
    for lineno, line in lines:
        if not line.strip():
            continue
        job = job_from_json(inputs.parse_json(line, f"{path}:{lineno}"), f"{path}:{lineno}")
        if job.job_id in ids:
            raise PythiaInputError(f"{path}:{lineno}: field job_id {job.job_id!r} repeats an earlier job")
        if arrival["process"] != "closed" and job.arrival_s is None:
            raise PythiaInputError(
                f"{path}:{lineno}: field arrival_s is missing, but the header's arrival process "
                f"{arrival['process']!r} releases jobs at their arrival times"
            )
        ids.add(job.job_id)
        jobs.append(job)
    if not jobs:
        raise PythiaInputError(f"{path}: the trace holds a header but no jobs")
    return Trace(jobs=jobs, arrival=header["arrival"], meta=header.get("meta", {}))
