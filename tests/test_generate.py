"""The generator: invariants of generated jobs over seeds and over small random specs."""

from __future__ import annotations

import graphlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pythia.errors import PythiaInputError
from pythia.workflow.generate import (
    JobWalk,
    generate_job,
    generate_trace,
    job_rng,
    truncate_middle,
    walk_job,
)
from pythia.workflow.hashing import stable_key
from pythia.workflow.load import LoadOptions, load_workload
from pythia.workflow.spec import END, Dist, WorkflowSpec, load_spec, parse_spec
from pythia.workflow.trace import Job, read_trace, validate_job, write_trace

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {p.stem: load_spec(p) for p in sorted((ROOT / "workloads").glob("*.yaml"))}


# --------------------------------------------------------------------------- invariant checker


def _in_bounds(x: int, d: Dist, floor: int) -> bool:
    """Whether ``x`` is a value ``d.sample_int(rng, floor)`` can give."""
    lo, hi = d.int_bounds(floor)

    def clamp(v: int) -> int:
        return max(v if hi is None else min(v, hi), lo)

    if d.kind == "constant":
        return x == clamp(math.floor(d.value + 0.5))
    if d.kind == "uniform":
        return clamp(math.ceil(d.low)) <= x <= clamp(math.floor(d.high))
    return lo <= x and (hi is None or x <= hi)


def _ancestors(job: Job) -> list[set[int]]:
    anc: list[set[int]] = []
    for c in job.calls:
        s: set[int] = set()
        for d in c.deps:
            s.add(d)
            s |= anc[d]
        anc.append(s)
    return anc


def check_walk(spec: WorkflowSpec, walk: JobWalk) -> None:
    """Assert every invariant a generated job must keep."""
    job = walk.job
    validate_job(job, "generated")  # ids, deps to earlier calls, segments cover the token counts
    assert job.workflow_type == spec.name and job.workflow_id == job.job_id

    # Dependencies are acyclic: a real topological sort, not trust in the ids.
    order = list(graphlib.TopologicalSorter({c.call_id: set(c.deps) for c in job.calls}).static_order())
    assert sorted(order) == list(range(len(job.calls)))

    # The path: loops within their bounds, fan-out and calls within their ranges.
    used: dict[tuple[str, int], int] = {}
    for v, visit in enumerate(walk.visits):
        step = spec.steps[visit.step]
        assert _in_bounds(visit.width, step.parallel, 1)
        assert len(visit.calls) == visit.width and all(_in_bounds(n, step.calls, 1) for n in visit.calls)
        calls = [c for c in job.calls if c.step == v]
        assert len(calls) == sum(visit.calls)
        assert {c.agent_id for c in calls} == {f"{step.role}/{j}" for j in range(visit.width)}
        assert all(c.agent_role == step.role and c.model == spec.roles[step.role].model for c in calls)
        if visit.edge is not None:
            key = (visit.step, visit.edge)
            used[key] = used.get(key, 0) + 1
            if v + 1 < len(walk.visits):
                assert step.next[visit.edge].to == walk.visits[v + 1].step
            else:
                assert step.next[visit.edge].to == END
        else:
            assert v == len(walk.visits) - 1
    for (name, i), n in used.items():
        bound = spec.steps[name].next[i].max_traversals
        assert bound is None or n <= bound
    assert walk.visits[0].step == spec.start

    # Lengths, prompts and the segments that name earlier calls.
    out_key = {stable_key("out", job.job_id, c.call_id): c for c in job.calls}
    anc = _ancestors(job)
    prev_of_agent: dict[str, int] = {}
    latest: dict[tuple[str, str], int] = {}  # (role, agent_id) -> latest call in earlier visits
    clipped: dict[str, bool] = {}  # whether the agent's conversation has been truncated
    for v in range(len(walk.visits)):
        for c in (x for x in job.calls if x.step == v):
            _check_call(spec, walk, c, anc, out_key, prev_of_agent, latest, clipped)
        latest.update({(x.agent_role, x.agent_id): x.call_id for x in job.calls if x.step == v})


def _check_call(
    spec: WorkflowSpec,
    walk: JobWalk,
    c: Any,
    anc: list[set[int]],
    out_key: dict[int, Any],
    prev_of_agent: dict[str, int],
    latest: dict[tuple[str, str], int],
    clipped: dict[str, bool],
) -> None:
    """Assert the invariants of one call (lengths, prompt composition, named segments)."""
    job = walk.job
    visit = walk.visits[c.step]
    step, role = spec.steps[visit.step], spec.roles[c.agent_role]
    same = [x for x in job.calls if x.step == c.step and x.agent_id == c.agent_id]
    final = c is same[-1]
    out_dist = step.final_output_tokens if (final and step.final_output_tokens) else step.output_tokens
    assert _in_bounds(c.output_tokens, out_dist, 1)
    assert c.input_tokens >= 1
    limit = role.max_input_tokens
    assert limit is None or c.input_tokens <= limit
    truncated = limit is not None and c.input_tokens == limit
    keys = c.prompt[:, 0].tolist()
    fresh_key = stable_key("fresh", job.job_id, c.call_id)
    if not truncated and fresh_key in keys:
        tok = int(c.prompt[keys.index(fresh_key), 2])
        placeholder = len(keys) == 1 and tok == 1  # the one token of an otherwise empty prompt
        assert placeholder or (step.has("fresh") and _in_bounds(tok, step.fresh_tokens, 0))
    for key, off, tok in c.prompt.tolist():
        if key in out_key:
            src = out_key[key]
            assert src.call_id in anc[c.call_id]  # only outputs of finished ancestors
            full = job.output_segments(src).tolist()[0]
            if truncated:
                assert 0 <= off and off + tok <= src.output_tokens
            else:
                assert [key, off, tok] == full
    prev = prev_of_agent.get(c.agent_id)
    continues = prev is not None and step.has("history")
    # Named outputs: the latest call of each instance of the named roles in earlier visits.
    expected = [
        stable_key("out", job.job_id, latest[(r, a)])
        for r in step.output_roles
        for a in sorted((a for (rr, a) in latest if rr == r), key=lambda a: int(a.split("/")[1]))
    ]
    got = [k for k in keys if k in out_key]
    if not truncated:  # an output read once stays in the conversation; it is never repeated
        assert len(got) == len(set(got))
    clipped[c.agent_id] = truncated or (continues and clipped.get(c.agent_id, False))
    if not continues and not truncated:
        assert got == expected
    elif not clipped[c.agent_id]:
        assert set(expected) <= set(got)
    if not continues and not truncated and role.system_tokens and step.has("system"):
        assert c.prompt[0].tolist() == [stable_key(spec.name, c.agent_role, "system"), 0, role.system_tokens]
    # A continued conversation starts with the previous prompt and output of the instance.
    if continues and not truncated:
        p = job.calls[prev]
        head = np.concatenate([p.prompt, job.output_segments(p)])
        assert np.array_equal(c.prompt[: len(head)], head)
        assert prev in anc[c.call_id]
    prev_of_agent[c.agent_id] = c.call_id


def _trace_bytes(spec: WorkflowSpec, jobs: int, seed: int) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.jsonl.gz"
        write_trace(generate_trace(spec, jobs=jobs, seed=seed), path)
        return path.read_bytes()


# --------------------------------------------------------------------------- shipped specs


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_spec_generates(name: str, tmp_path: Path) -> None:
    spec = SHIPPED[name]
    trace = generate_trace(spec, jobs=6, seed=3)
    assert [j.job_id for j in trace.jobs] == [f"{name}-s3-{i:05d}" for i in range(6)]
    assert trace.arrival == {"process": "closed", "concurrency": spec.concurrency}
    assert trace.meta["spec"] == name and trace.meta["spec_sha256"] == spec.sha256 and trace.meta["seed"] == 3
    for i in range(6):
        check_walk(spec, walk_job(spec, i, job_rng(3, i)))
    path = tmp_path / "t.jsonl"
    write_trace(trace, path)
    back = read_trace(path)  # the generated trace passes the trace schema and validation
    assert [j.to_json() for j in back.jobs] == [j.to_json() for j in trace.jobs]


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(SHIPPED)), seed=st.integers(0, 2**31), index=st.integers(0, 99_999))
def test_shipped_specs_keep_invariants_over_seeds(name: str, seed: int, index: int) -> None:
    spec = SHIPPED[name]
    check_walk(spec, walk_job(spec, index, job_rng(seed, index)))


def test_coding_assistant_structure() -> None:
    spec = SHIPPED["coding-assistant"]
    for i in range(20):
        walk = walk_job(spec, i, job_rng(0, i))
        steps = [v.step for v in walk.visits]
        assert steps[:5] == ["plan", "explore", "implement", "review", "verify"]
        assert steps.count("implement") <= 3  # one pass and at most two retries
        job = walk.job
        for c in job.calls:
            if c.agent_role == "engineer" and c.deps and job.calls[c.deps[0]].agent_role != "engineer":
                # The first engineer call of a visit joins every instance of the previous step.
                prev_role = job.calls[c.deps[0]].agent_role
                assert all(job.calls[d].agent_role == prev_role for d in c.deps)
                assert len(c.deps) == walk.visits[c.step - 1].width


def test_shared_prefixes() -> None:
    """Calls of one role share the system prompt across jobs and the job context within a job."""
    spec = SHIPPED["coding-assistant"]
    trace = generate_trace(spec, jobs=2, seed=0)
    firsts = [[c for c in j.calls if c.agent_role == "engineer"][0] for j in trace.jobs]
    assert firsts[0].prompt[0].tolist() == firsts[1].prompt[0].tolist()  # the system prompt
    assert firsts[0].prompt[1, 0] != firsts[1].prompt[1, 0]  # each job has its own context
    job = trace.jobs[0]
    engineers = [c for c in job.calls if c.agent_role == "engineer" and c.step == 2]
    first_calls = [c for c in engineers if c.deps and job.calls[c.deps[0]].agent_role == "explorer"]
    assert len(first_calls) >= 3
    n = min(len(c.prompt) for c in first_calls) - 1  # all but the fresh text
    assert all(np.array_equal(c.prompt[:n], first_calls[0].prompt[:n]) for c in first_calls)


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes() -> None:
    spec = SHIPPED["deep-research"]
    assert _trace_bytes(spec, 5, 11) == _trace_bytes(spec, 5, 11)
    assert _trace_bytes(spec, 5, 11) != _trace_bytes(spec, 5, 12)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_job_independent_of_job_count(name: str) -> None:
    spec = SHIPPED[name]
    small = generate_trace(spec, jobs=2, seed=5)
    large = generate_trace(spec, jobs=7, seed=5)
    for a, b in zip(small.jobs, large.jobs):
        assert json.dumps(a.to_json()) == json.dumps(b.to_json())
    assert json.dumps(generate_job(spec, 6, job_rng(5, 6), 5).to_json()) == json.dumps(large.jobs[6].to_json())


def test_seeds_share_no_job_content() -> None:
    """Job i of two seeds shares only the workflow type's fixed instructions, never job content."""
    spec = SHIPPED["coding-assistant"]
    a, b = generate_trace(spec, jobs=1, seed=0).jobs[0], generate_trace(spec, jobs=1, seed=1).jobs[0]
    system_keys = {stable_key(spec.name, role, "system") for role in spec.roles}

    def keys(job):  # type: ignore[no-untyped-def]
        out = {int(k) for c in job.calls for k in c.prompt[:, 0]}
        return out | {int(job.output_segments(c)[0, 0]) for c in job.calls}

    assert keys(a) & keys(b) <= system_keys


def test_bad_options() -> None:
    spec = SHIPPED["chat"]
    with pytest.raises(PythiaInputError, match="jobs"):
        generate_trace(spec, jobs=0, seed=0)
    with pytest.raises(PythiaInputError, match="seed"):
        generate_trace(spec, jobs=1, seed=-1)


def test_load_workload_generates_from_a_spec() -> None:
    trace = load_workload(ROOT / "workloads" / "rag-chain.yaml", LoadOptions(jobs=3, seed=2))
    assert len(trace.jobs) == 3 and trace.meta["seed"] == 2


# --------------------------------------------------------------------------- truncation


def test_truncate_middle_keeps_head_and_both_ends() -> None:
    segs = [(1, 0, 100), (2, 0, 50), (3, 0, 300), (4, 0, 60)]
    out, head = truncate_middle(segs, 150, 280)
    # budget 130 after the head: the first 65 and the last 65 tokens of the rest
    assert head == 150
    assert out == [(1, 0, 100), (2, 0, 50), (3, 0, 65), (3, 295, 5), (4, 0, 60)]
    assert truncate_middle(segs, 150, None) == (segs, 150)
    assert truncate_middle(segs, 150, 510) == (segs, 150)


def test_truncate_middle_without_room_for_the_head() -> None:
    out, head = truncate_middle([(1, 0, 100), (2, 0, 100)], 100, 60)
    assert head == 0 and out == [(1, 0, 30), (2, 70, 30)]


# --------------------------------------------------------------------------- small random specs


def _length(draw: Any, floor: int) -> Any:
    kind = draw(st.sampled_from(["constant", "uniform", "normal", "lognormal"]))
    if kind == "constant":
        return draw(st.integers(floor, 300))
    lo = draw(st.one_of(st.none(), st.integers(floor, 40)))
    hi = draw(st.one_of(st.none(), st.integers(max(lo or 0, floor, 1), 400)))
    d: dict[str, Any] = {"dist": kind}
    if kind == "uniform":
        a, b = sorted((draw(st.integers(0, 300)), draw(st.integers(floor, 300))))
        d.update(low=a, high=max(b, floor))
    elif kind == "normal":
        d.update(mean=draw(st.integers(0, 300)), std=draw(st.integers(0, 100)))
    else:
        d.update(median=draw(st.integers(1, 300)), sigma=draw(st.floats(0, 1.5)))
    if lo is not None:
        d["min"] = lo
    if hi is not None:
        d["max"] = hi
    return d


@st.composite
def small_specs(draw: Any) -> dict[str, Any]:
    n_roles = draw(st.integers(1, 3))
    roles: dict[str, Any] = {}
    for r in range(n_roles):
        role: dict[str, Any] = {
            "model": f"model-{draw(st.integers(0, 1))}",
            "system_tokens": draw(st.integers(0, 300)),
            "fresh_tokens": _length(draw, 0),
            "output_tokens": _length(draw, 1),
        }
        if draw(st.booleans()):  # a small window, so that truncation happens
            role["max_input_tokens"] = draw(st.integers(role["system_tokens"] + 1, 1500))
        roles[f"r{r}"] = role
    n_steps = draw(st.integers(1, 4))
    steps: dict[str, Any] = {}
    for i in range(n_steps):
        hi_par, hi_calls = draw(st.integers(1, 3)), draw(st.integers(1, 4))
        prompt: list[Any] = [p for p in ("system", "context") if draw(st.booleans())]
        named = draw(st.lists(st.sampled_from(sorted(roles)), max_size=2, unique=True))
        if named:
            prompt.append({"outputs": named})
        prompt += [p for p in ("history", "fresh") if draw(st.booleans())]
        step: dict[str, Any] = {
            "role": draw(st.sampled_from(sorted(roles))),
            "parallel": {"dist": "uniform", "low": draw(st.integers(1, hi_par)), "high": hi_par},
            "calls": {"dist": "uniform", "low": 1, "high": hi_calls},
            "gap_before": draw(st.sampled_from([0, 0.5, {"dist": "lognormal", "median": 2, "sigma": 1, "max": 20}])),
            "gap_between": draw(st.sampled_from([0, {"dist": "uniform", "low": 0.1, "high": 3}])),
        }
        if prompt:
            step["prompt"] = prompt
        if draw(st.booleans()):
            step["final_output_tokens"] = _length(draw, 1)
        # A forward edge, maybe an early end, maybe a bounded loop back.
        edges: list[dict[str, Any]] = [{"to": f"s{i + 1}" if i + 1 < n_steps else END}]
        if draw(st.booleans()):
            edges.append({"to": f"s{draw(st.integers(0, i))}", "max_traversals": draw(st.integers(1, 3))})
        if i + 1 < n_steps and draw(st.booleans()):
            edges.append({"to": END})
        weights = [draw(st.integers(1, 9)) for _ in edges]
        for e, w in zip(edges, weights):
            e["p"] = w / sum(weights)
        edges[-1]["p"] = 1.0 - sum(e["p"] for e in edges[:-1])
        step["next"] = edges
        steps[f"s{i}"] = step
    spec = {"name": "rand", "roles": roles, "steps": steps}
    if draw(st.booleans()):
        spec["context_tokens"] = _length(draw, 0)
    return spec


@settings(max_examples=40, deadline=None)
@given(raw=small_specs(), seed=st.integers(0, 2**31))
def test_random_specs_keep_invariants(raw: dict[str, Any], seed: int) -> None:
    spec = parse_spec(raw, "random")
    for i in range(3):
        check_walk(spec, walk_job(spec, i, job_rng(seed, i)))
    two = generate_trace(spec, jobs=2, seed=seed)
    three = generate_trace(spec, jobs=3, seed=seed)
    assert [j.to_json() for j in two.jobs] == [j.to_json() for j in three.jobs[:2]]
    assert _trace_bytes(spec, 2, seed) == _trace_bytes(spec, 2, seed)
