"""The deterministic generator: a workflow spec and a seed become a canonical trace.

A job walks the spec's graph from its start step. Each *visit* of a step draws a fan-out
width ``k`` and, per instance, a number of sequential calls; calls are numbered in issue
order, round by round (every instance's first call, then every instance's second call, ...),
so that ids follow the order in which parallel instances progressing at the same pace
would issue them. When every instance has finished (the join) one outgoing edge is drawn;
an edge with ``max_traversals`` is dropped once used up and the remaining probabilities are
renormalised. ``docs/workflow-specs.md`` gives the full semantics.

Prompt content (see :mod:`pythia.workflow.trace`): a call's prompt is, in order, the role's
system prompt ``(stable_key(workflow_type, role, "system"), 0, n)``, the job context
``(stable_key("context", job_id), 0, n)``, the outputs of earlier calls exactly as
:meth:`~pythia.workflow.trace.Job.output_segments` gives them, and the fresh text
``(stable_key("fresh", job_id, call_id), 0, n)``. A call that continues its instance's
conversation (``history``) starts with the previous call's prompt and output, so a
simulator hashing blocks of the concatenated segments sees the prefix-cache hits a real
engine would.

Determinism: job ``i`` uses its own ``numpy`` generator seeded from ``(seed, i)``, so a job
is the same whatever the number of jobs, and the same spec and seed give the same trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pythia.errors import PythiaInputError
from pythia.inputs import MAX_CALLS_PER_JOB
from pythia.workflow.hashing import stable_key
from pythia.workflow.spec import END, Step, WorkflowSpec
from pythia.workflow.trace import Call, Job, Trace, segments

GENERATOR_VERSION = 1
_JOB_STREAM = 0x10B5  # keeps job generators apart from other seeded components ([seed, tag, ...])
_GAP_DECIMALS = 3  # gaps in whole milliseconds: readable trace files, no false precision

Segment = tuple[int, int, int]


@dataclass(slots=True)
class _Instance:
    """One agent instance of a job: its conversation so far."""

    agent_id: str
    last_call: int | None = None
    prompt: list[Segment] = field(default_factory=list)
    head_tokens: int = 0  # leading system + context tokens of ``prompt``, kept by truncation
    seen: set[int] = field(default_factory=set)  # calls whose outputs the conversation holds


@dataclass(frozen=True, slots=True)
class Visit:
    """One visit of a step in a generated job.

    Attributes:
        step: the step's name.
        width: the number of parallel instances (the fan-out).
        calls: the sequential calls made by each instance.
        edge: index of the edge taken afterwards in the step's ``next``, ``None`` when the
            job ended here without one (no edges, or all used up).
    """

    step: str
    width: int
    calls: tuple[int, ...]
    edge: int | None


@dataclass(frozen=True, slots=True)
class JobWalk:
    """A generated job and the path through the spec that produced it."""

    job: Job
    visits: tuple[Visit, ...]


# --------------------------------------------------------------------------- segment helpers


def _total(segs: list[Segment]) -> int:
    return sum(s[2] for s in segs)


def _take_front(segs: list[Segment], n: int) -> list[Segment]:
    """The segments covering the first ``n`` tokens of ``segs``."""
    out: list[Segment] = []
    for key, off, tok in segs:
        if n <= 0:
            break
        out.append((key, off, min(tok, n)))
        n -= tok
    return out


def _take_back(segs: list[Segment], n: int) -> list[Segment]:
    """The segments covering the last ``n`` tokens of ``segs``."""
    out: list[Segment] = []
    for key, off, tok in reversed(segs):
        if n <= 0:
            break
        keep = min(tok, n)
        out.append((key, off + tok - keep, keep))
        n -= keep
    out.reverse()
    return out


def truncate_middle(segs: list[Segment], head: int, limit: int | None) -> tuple[list[Segment], int]:
    """Cut ``segs`` to at most ``limit`` tokens by dropping tokens from the middle.

    The first ``head`` tokens (system prompt and job context) are kept whole; of the rest,
    the first ``budget // 2`` and the last ``budget - budget // 2`` tokens are kept, where
    ``budget = limit - head``. When the head alone does not fit, the whole prompt is cut
    this way with no head. Returns the segments and the head length kept.
    """
    if limit is None or _total(segs) <= limit:
        return segs, head
    if head >= limit:
        head = 0
    budget = limit - head
    body = _take_back(segs, _total(segs) - head)
    front = budget // 2
    return _take_front(segs, head) + _take_front(body, front) + _take_back(body, budget - front), head


# --------------------------------------------------------------------------- one job


class _JobBuilder:
    """Builds one job; keeps the per-job state of the walk."""

    def __init__(self, spec: WorkflowSpec, index: int, rng: np.random.Generator, seed: int = 0) -> None:
        self.spec = spec
        self.rng = rng
        # The seed is part of the id, and so of every content key derived from it: job i of
        # two seeds must not share context or outputs in a run (or a history) that mixes seeds.
        self.job_id = f"{spec.name}-s{seed}-{index:05d}"
        self.calls: list[Call] = []
        self.instances: dict[tuple[str, int], _Instance] = {}
        # role -> instance index -> id of that instance's latest call in a finished visit
        self.latest: dict[str, dict[int, int]] = {}
        self.context_tokens = spec.context_tokens.sample_int(rng, 0)

    def _out(self, call_id: int) -> Segment:
        # Must equal Job.output_segments for a call without explicit output segments.
        return (stable_key("out", self.job_id, call_id), 0, self.calls[call_id].output_tokens)

    def _prompt(
        self, step: Step, inst: _Instance, role: str, visible: dict[str, dict[int, int]], fresh: int, call_id: int
    ) -> list[Segment]:
        """Compose a prompt (system, context, earlier outputs / history, fresh) and truncate it."""
        spec_role = self.spec.roles[role]
        named = [cid for r in step.output_roles for _, cid in sorted(visible.get(r, {}).items())]
        if step.has("history") and inst.last_call is not None:
            segs = [*inst.prompt, self._out(inst.last_call)]
            head = inst.head_tokens
            inst.seen.add(inst.last_call)
            new = [c for c in named if c not in inst.seen]
        else:
            segs = []
            if step.has("system") and spec_role.system_tokens > 0:
                segs.append((stable_key(self.spec.name, role, "system"), 0, spec_role.system_tokens))
            if step.has("context") and self.context_tokens > 0:
                segs.append((stable_key("context", self.job_id), 0, self.context_tokens))
            head = _total(segs)
            inst.seen = set()
            new = named
        segs.extend(self._out(c) for c in new)
        inst.seen.update(new)
        if step.has("fresh") and fresh > 0:
            segs.append((stable_key("fresh", self.job_id, call_id), 0, fresh))
        if not segs:  # an engine needs at least one prompt token
            segs.append((stable_key("fresh", self.job_id, call_id), 0, 1))
        segs, inst.head_tokens = truncate_middle(segs, head, spec_role.max_input_tokens)
        return segs

    def _call(
        self,
        step: Step,
        j: int,
        r: int,
        n_calls: int,
        prev_last: list[int],
        visible: dict[str, dict[int, int]],
        visit: int,
    ) -> int:
        """Append call ``r`` (of ``n_calls``) of instance ``j`` in visit ``visit``; return its id."""
        role = step.role
        inst = self.instances.setdefault((role, j), _Instance(agent_id=f"{role}/{j}"))
        call_id = len(self.calls)
        if r == 0:  # the instance's first call of this visit joins the previous visit
            deps = tuple(prev_last)
            parent = max(prev_last) if prev_last else None
            gap = step.gap_before.sample(self.rng)
        else:
            assert inst.last_call is not None
            deps = (inst.last_call,)
            parent = inst.last_call
            gap = step.gap_between.sample(self.rng)
        out_dist = step.final_output_tokens if (r == n_calls - 1 and step.final_output_tokens) else step.output_tokens
        output_tokens = out_dist.sample_int(self.rng, 1)
        fresh = step.fresh_tokens.sample_int(self.rng, 0)
        call = Call(
            call_id=call_id,
            agent_role=role,
            model=self.spec.roles[role].model,
            input_tokens=0,
            output_tokens=output_tokens,
            deps=deps,
            gap_s=round(gap, _GAP_DECIMALS),
            step=visit,
            parent=parent,
            agent_id=inst.agent_id,
        )
        self.calls.append(call)
        if len(self.calls) > MAX_CALLS_PER_JOB:
            raise PythiaInputError(
                f"{self.spec.source}: a job of the spec makes more than {MAX_CALLS_PER_JOB:,} calls, the most one job "
                "may hold; lower the fan-out (parallel), calls or max_traversals"
            )
        prompt = self._prompt(step, inst, role, visible, fresh, call_id)
        call.prompt = segments(prompt)
        call.input_tokens = _total(prompt)
        inst.prompt = prompt
        inst.last_call = call_id
        return call_id

    def _choose_edge(self, step: Step, used: dict[tuple[str, int], int]) -> int | None:
        """Draw an edge among those not used up, renormalising their probabilities."""
        avail = [
            i for i, e in enumerate(step.next)
            if e.max_traversals is None or used.get((step.name, i), 0) < e.max_traversals
        ]
        total = sum(step.next[i].p for i in avail)
        if not avail or total <= 0.0:
            return None
        if len(avail) == 1:
            return avail[0]
        u = float(self.rng.random()) * total
        for i in avail:
            u -= step.next[i].p
            if u < 0.0:
                return i
        return next(i for i in reversed(avail) if step.next[i].p > 0.0)  # rounding at the top end

    def build(self) -> JobWalk:
        """Walk the graph from the start step until an edge to ``end`` or no edge is left."""
        visits: list[Visit] = []
        used: dict[tuple[str, int], int] = {}
        prev_last: list[int] = []
        name = self.spec.start
        while True:
            step = self.spec.steps[name]
            width = step.parallel.sample_int(self.rng, 1)
            n_calls = [step.calls.sample_int(self.rng, 1) for _ in range(width)]
            # self.latest is updated only after the join, so the instances of this visit, which
            # run in parallel, never read each other's outputs.
            visible = self.latest
            last: dict[int, int] = {}
            for r in range(max(n_calls)):
                for j in range(width):
                    if r < n_calls[j]:
                        last[j] = self._call(step, j, r, n_calls[j], prev_last, visible, len(visits))
            self.latest.setdefault(step.role, {}).update(last)
            prev_last = sorted(last.values())
            edge = self._choose_edge(step, used)
            visits.append(Visit(step=name, width=width, calls=tuple(n_calls), edge=edge))
            if edge is None:
                break
            used[(name, edge)] = used.get((name, edge), 0) + 1
            if step.next[edge].to == END:
                break
            name = step.next[edge].to
        job = Job(
            job_id=self.job_id,
            workflow_type=self.spec.name,
            workflow_id=self.job_id,
            calls=self.calls,
            source=self.spec.source,
        )
        return JobWalk(job=job, visits=tuple(visits))


# --------------------------------------------------------------------------- public API


def job_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of job ``index`` under ``seed`` (independent of the number of jobs)."""
    return np.random.default_rng([seed, _JOB_STREAM, index])


def walk_job(spec: WorkflowSpec, index: int, rng: np.random.Generator, seed: int = 0) -> JobWalk:
    """Generate job ``index`` and return it with the visits (path, widths, calls) that made it."""
    return _JobBuilder(spec, index, rng, seed).build()


def generate_job(spec: WorkflowSpec, index: int, rng: np.random.Generator, seed: int = 0) -> Job:
    """Generate job ``index`` of ``spec`` (under ``seed``, which names it) drawing from ``rng``."""
    return walk_job(spec, index, rng, seed).job


def _check_int(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise PythiaInputError(f"option {name}={value!r} must be an integer >= {lo}")
    return int(value)


def generate_trace(spec: WorkflowSpec, jobs: int, seed: int) -> Trace:
    """Generate ``jobs`` jobs of ``spec`` under ``seed`` as a closed-loop trace.

    Job ``i`` is ``generate_job(spec, i, job_rng(seed, i))``. The arrival process is a
    closed loop at the spec's ``concurrency``; ``meta`` records the spec's name and file
    hash, the seed and the number of jobs.
    """
    jobs = _check_int("jobs", jobs, 1)
    seed = _check_int("seed", seed, 0)
    return Trace(
        jobs=[generate_job(spec, i, job_rng(seed, i), seed) for i in range(jobs)],
        arrival={"process": "closed", "concurrency": spec.concurrency},
        meta={
            "generator": f"pythia.workflow.generate/{GENERATOR_VERSION}",
            "spec": spec.name,
            "spec_sha256": spec.sha256,
            "seed": seed,
            "jobs": jobs,
        },
    )
