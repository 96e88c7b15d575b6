"""Correctness of the profiler: automaton, pruning, bounds, cold start, drift, expectations."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pythia.errors import PythiaInputError
from pythia.profiler import Profiler, ProfilerConfig, order_statistic_rank, report
from pythia.profiler.bounds import min_samples, order_statistic_bound
from pythia.profiler.drift import PageHinkley
from pythia.workflow.hashing import stable_key
from pythia.workflow.trace import Call, Job, Trace, segments

ROOT = Path(__file__).resolve().parents[1]
Z99 = 2.3263478740408408  # standard normal 0.99-quantile


# --------------------------------------------------------------------------- constructed traces


def build_job(
    job_id: str,
    stages: list[tuple[str, list[int]]],
    rng: np.random.Generator,
    workflow_type: str = "wf",
    out_median: dict[str, float] | None = None,
) -> Job:
    """A job from stages ``(role, run lengths per parallel instance)``, each stage joining the last.

    Prompts are ``[system(role), context(job), outputs of the previous stage, fresh]`` (a
    continuing instance: its previous prompt and output, then fresh text).
    """
    calls: list[Call] = []
    prev_last: list[int] = []
    seen_roles: dict[str, int] = {}
    ctx = (stable_key("ctx", job_id), 0, 50)
    for role, runs in stages:
        visit = seen_roles.get(role, 0)
        seen_roles[role] = visit + 1
        last: list[int] = []
        for j, length in enumerate(runs):
            prev: int | None = None
            prev_prompt: list[tuple[int, int, int]] = []
            for r in range(length):
                cid = len(calls)
                median = (out_median or {}).get(role, 200.0)
                out = max(1, int(rng.lognormal(math.log(median), 0.5)))
                fresh = (stable_key("fresh", job_id, cid), 0, 20)
                if prev is None:
                    deps = tuple(prev_last)
                    prompt = [(stable_key(workflow_type, role, "system"), 0, 100), ctx]
                    prompt += [(stable_key("out", job_id, d), 0, calls[d].output_tokens) for d in prev_last]
                else:
                    deps = (prev,)
                    prompt = prev_prompt + [(stable_key("out", job_id, prev), 0, calls[prev].output_tokens)]
                prompt = prompt + [fresh]
                calls.append(
                    Call(
                        call_id=cid, agent_role=role, model="m", input_tokens=sum(s[2] for s in prompt),
                        output_tokens=out, deps=deps, prompt=segments(prompt), parent=deps[-1] if deps else None,
                        agent_id=f"{role}/{visit}/{j}",
                    )
                )
                prev, prev_prompt = cid, prompt
            assert prev is not None
            last.append(prev)
        prev_last = last
    return Job(job_id, workflow_type, job_id, calls)


def branch_trace(n: int, p_b: float, seed: int, workflow_type: str = "wf") -> Trace:
    """``a -> b`` with probability ``p_b``, else ``a -> c``; then the end."""
    rng = np.random.default_rng(seed)
    jobs = []
    for i in range(n):
        nxt = "b" if rng.random() < p_b else "c"
        jobs.append(build_job(f"j{seed}-{i}", [("a", [1]), (nxt, [1])], rng, workflow_type))
    return Trace(jobs=jobs)


def retry_trace(n: int, q: float, seed: int, workflow_type: str = "retry", max_retries: int | None = None) -> Trace:
    """``worker -> checker``, the checker sending the job back with probability ``q``."""
    rng = np.random.default_rng(seed)
    jobs = []
    for i in range(n):
        stages: list[tuple[str, list[int]]] = [("worker", [1]), ("checker", [1])]
        while rng.random() < q and (max_retries is None or len(stages) // 2 <= max_retries):
            stages += [("worker", [1]), ("checker", [1])]
        jobs.append(build_job(f"r{seed}-{i}", stages, rng, workflow_type))
    return Trace(jobs=jobs)


def coding_trace(n: int, seed: int, workflow_type: str = "coding") -> Trace:
    """Planner -> 3-4 explorers (several calls each) -> 3-6 engineers -> reviewer -> verifier,
    a failing verifier (40%) sending the job back to the engineers at most twice."""
    rng = np.random.default_rng(seed)
    jobs = []
    for i in range(n):
        stages: list[tuple[str, list[int]]] = [("planner", [1])]
        stages.append(("explorer", [int(x) for x in rng.integers(2, 6, size=int(rng.integers(3, 5)))]))
        for attempt in range(3):
            stages.append(("engineer", [int(x) for x in rng.integers(1, 5, size=int(rng.integers(3, 7)))]))
            stages += [("reviewer", [1]), ("verifier", [1])]
            if attempt == 2 or rng.random() >= 0.4:
                break
        jobs.append(build_job(f"c{seed}-{i}", stages, rng, workflow_type, {"explorer": 300, "engineer": 250}))
    return Trace(jobs=jobs)


# --------------------------------------------------------------------------- automaton


def test_pfa_recovers_transition_probabilities() -> None:
    prof = Profiler(ProfilerConfig(min_jobs=1)).fit(branch_trace(2000, 0.7, seed=1))
    auto = prof.model("wf").automaton  # type: ignore[union-attr]
    assert auto.transitions["<start>"] == {"a": 1.0}
    assert auto.transitions["a"]["b"] == pytest.approx(0.7, abs=0.03)
    assert auto.transitions["a"]["c"] == pytest.approx(0.3, abs=0.03)
    assert auto.transitions["b"] == {"<end>": 1.0}


def test_pruning_removes_rare_transitions_and_renormalises() -> None:
    rng = np.random.default_rng(0)
    jobs = [build_job(f"j{i}", [("a", [1]), ("b" if i < 97 else "c", [1])], rng) for i in range(100)]
    model = Profiler(ProfilerConfig(min_jobs=1)).fit(jobs).model("wf")
    assert model is not None
    assert model.automaton.raw_transitions["a"] == pytest.approx({"b": 0.97, "c": 0.03})
    assert model.automaton.transitions["a"] == {"b": 1.0}
    pfa = model.pfa
    a = pfa.index[("a", 0)]
    assert pfa.P_exit[a].sum() == pytest.approx(1.0)
    assert pfa.P_exit[a, pfa.index[("c", 0)]] == 0.0
    kept = Profiler(ProfilerConfig(min_jobs=1, prune_threshold=0.01)).fit(jobs).model("wf")
    assert kept is not None and kept.automaton.transitions["a"] == pytest.approx({"b": 0.97, "c": 0.03})


def test_fan_out_widths_runs_and_regex() -> None:
    model = Profiler(ProfilerConfig(min_jobs=1)).fit(coding_trace(300, seed=3)).model("coding")
    assert model is not None
    auto = model.automaton
    assert set(auto.widths[("planner", "explorer")]) == {3, 4}
    assert set(auto.repeats["explorer"]) == {2, 3, 4, 5}
    assert auto.transitions["verifier"]["engineer"] == pytest.approx(0.4 * (1 + 0.4) / (1 + 0.4 + 0.16), abs=0.06)
    assert model.regex.startswith("planner explorer<3,4>{2,5} engineer<3,6>{1,4} reviewer verifier (")
    assert model.regex.endswith("engineer<3,6>{1,4} reviewer verifier){0,2}")


def test_unrolled_loop_learns_the_retry_bound() -> None:
    """After two retries the verifier always ends the job (visits are states)."""
    model = Profiler(ProfilerConfig(min_jobs=1)).fit(coding_trace(300, seed=4)).model("coding")
    assert model is not None
    pfa = model.pfa
    v2 = pfa.index[("verifier", 2)]
    assert pfa.P_exit[v2, 1] == 1.0  # <end>


def test_expected_calls_from_start_equal_the_mean_job_size() -> None:
    """Join credit makes expected counts exact in aggregate: F(start) = mean calls per job."""
    trace = coding_trace(200, seed=5)
    prof = Profiler(ProfilerConfig(min_jobs=1, prune_threshold=0.0)).fit(trace)
    pfa = prof.model("coding").pfa  # type: ignore[union-attr]
    mean_calls = np.mean([len(j.calls) for j in trace.jobs])
    assert pfa.F[0] == pytest.approx(mean_calls, rel=1e-9)
    job = prof.begin_job("new", "coding")
    pred = prof.predict(job)
    assert pred is not None and pred.expected_remaining_calls == pytest.approx(mean_calls, rel=1e-9)


def test_expected_distance_on_a_geometric_retry_loop() -> None:
    """worker -> checker -> (worker with prob. q | end): a fresh job has 2 / (1 - q) calls to go."""
    cfg = ProfilerConfig(min_jobs=1, max_unroll=1, prune_threshold=0.0)
    prof = Profiler(cfg).fit(retry_trace(3000, 0.5, seed=6))
    pfa = prof.model("retry").pfa  # type: ignore[union-attr]
    c, w = pfa.index[("checker", 0)], pfa.index[("worker", 0)]
    q = float(pfa.P_exit[c, w])
    assert q == pytest.approx(0.5, abs=0.03)
    job = prof.begin_job("x", "retry")
    assert prof.predict(job).expected_distance == pytest.approx(2 / (1 - q))  # type: ignore[union-attr]
    job.issue(0, "worker", agent_id="w")
    running = prof.predict(job)
    assert running is not None and running.expected_distance == pytest.approx(2 / (1 - q))
    assert running.expected_remaining_calls == pytest.approx(1 + q * 2 / (1 - q))
    job.finish(0, 10)
    job.issue(1, "checker", agent_id="c", deps=(0,))
    job.finish(1, 10)
    done = prof.predict(job)
    assert done is not None
    assert done.expected_distance == pytest.approx(q * 2 / (1 - q))
    assert done.p_end == pytest.approx(1 - q)
    assert done.next_roles[0].role == "worker" and done.next_roles[0].probability == pytest.approx(q)


# --------------------------------------------------------------------------- bounds


def test_order_statistic_rank_matches_the_binomial_definition() -> None:
    for n, p, delta in [(299, 0.99, 0.05), (500, 0.99, 0.05), (60, 0.9, 0.1), (1000, 0.95, 0.01)]:
        k = order_statistic_rank(n, p, delta)
        tail = lambda k: sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))  # noqa: E731
        assert k is not None and tail(k) <= delta < tail(k - 1)
    assert min_samples(0.99, 0.05) == 299
    assert order_statistic_rank(298, 0.99, 0.05) is None
    assert order_statistic_rank(299, 0.99, 0.05) == 299


_FAMILIES = {
    "lognormal": (lambda rng, a, size: rng.lognormal(0.0, a, size), lambda a, p: math.exp(a * Z99)),
    "exponential": (lambda rng, a, size: rng.exponential(a, size), lambda a, p: -a * math.log(1 - p)),
    "pareto": (lambda rng, a, size: (1 - rng.random(size)) ** (-1 / a), lambda a, p: (1 - p) ** (-1 / a)),
    # discrete: ties at the quantile, where the bound is conservative
    "uniform_int": (lambda rng, a, size: rng.integers(1, int(a * 10) + 2, size),
                    lambda a, p: float(math.ceil(p * (int(a * 10) + 1)))),
}


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    family=st.sampled_from(sorted(_FAMILIES)),
    shape=st.floats(min_value=0.3, max_value=3.0),
    n=st.integers(min_value=299, max_value=1500),
)
def test_order_statistic_bound_has_its_coverage(family: str, shape: float, n: int) -> None:
    """P(bound >= true 0.99-quantile) >= 0.95, over 400 simulated fits (slack 0.035, ~3 sd)."""
    draw, quantile = _FAMILIES[family]
    rng = np.random.default_rng([n, int(shape * 1000)])
    trials = 400
    x = draw(rng, shape, (trials, n))
    k = order_statistic_rank(n, 0.99, 0.05)
    assert k is not None
    bounds = np.partition(x, k - 1, axis=1)[:, k - 1]
    coverage = float((bounds >= quantile(shape, 0.99)).mean())
    assert coverage >= 0.95 - 0.035
    assert order_statistic_bound(x[0], 0.99, 0.05) == bounds[0]


def test_bound_is_none_with_too_few_samples() -> None:
    prof = Profiler(ProfilerConfig(min_jobs=1)).fit(branch_trace(100, 0.5, seed=2))
    b = prof.output_bound("wf", "a")
    assert b is not None and b.tokens is None and b.samples == 100 and "299" in b.reason
    prof.fit(branch_trace(250, 0.5, seed=3))
    b = prof.output_bound("wf", "a")
    assert b is not None and b.tokens is not None and b.rank is not None
    assert b.tokens >= np.quantile([c.output_tokens for j in branch_trace(350, 0.5, 9).jobs for c in j.calls], 0.5)


# --------------------------------------------------------------------------- cold start


def test_cold_start_answers_none_below_min_jobs() -> None:
    trace = coding_trace(20, seed=7)
    prof = Profiler(ProfilerConfig(min_jobs=20))
    prof.fit(trace.jobs[:19])
    job = prof.begin_job("live", "coding")
    job.issue_call(trace.jobs[0].calls[0])
    assert not prof.is_warm("coding")
    assert prof.model("coding") is None
    assert prof.predict(job) is None
    assert prof.next_calls(job) is None
    assert prof.output_bound("coding", "planner") is None
    assert prof.projection(job, 2) is None
    prof.observe_job(trace.jobs[19])
    assert prof.is_warm("coding")
    assert prof.predict(job) is not None
    assert prof.output_bound("coding", "planner") is not None  # exists; tokens None: too few samples


# --------------------------------------------------------------------------- drift


def test_page_hinkley_fires_on_a_shift_not_on_a_stationary_stream() -> None:
    rng = np.random.default_rng(11)
    det = PageHinkley(0.5, 15.0, 100, 4.0)
    assert all(det.update(x) is None for x in rng.normal(0, 1, 20_000))
    det = PageHinkley(0.5, 15.0, 100, 4.0)
    assert all(det.update(x) is None for x in rng.normal(0, 1, 500))
    fired = [det.update(x) for x in rng.normal(1.0, 1, 200)]
    first = next(i for i, f in enumerate(fired) if f is not None)
    assert first < 80 and fired[first] is not None and fired[first] <= first + 1 + 10


def test_output_length_drift_resets_the_role_history() -> None:
    rng = np.random.default_rng(12)
    prof = Profiler(ProfilerConfig(min_jobs=0))
    for x in rng.lognormal(math.log(200), 0.6, 5000):
        prof.observe_output("wf", "a", int(x))
    assert prof.drift_events() == []
    for x in rng.lognormal(math.log(600), 0.6, 400):
        prof.observe_output("wf", "a", int(x))
    events = prof.drift_events("wf")
    assert len(events) == 1 and events[0].kind == "output_length" and events[0].role == "a"
    kept = prof._types["wf"].lengths["a"].array()
    assert len(kept) < 450 and np.median(kept) > 450  # (mostly) post-change samples remain


def test_transition_drift_fires_on_a_changed_loop_probability() -> None:
    cfg = ProfilerConfig(min_jobs=20)
    stationary = Profiler(cfg).fit(retry_trace(600, 0.2, seed=13))
    assert stationary.drift_events() == []
    shifted = Profiler(cfg).fit(retry_trace(200, 0.2, seed=14))
    shifted.fit(retry_trace(200, 0.8, seed=15))
    kinds = {e.kind for e in shifted.drift_events()}
    assert "transitions" in kinds
    model = shifted.model("retry")
    assert model is not None  # re-learned after the reset
    assert model.automaton.transitions["checker"]["worker"] > 0.6


# --------------------------------------------------------------------------- templates and prefixes


def test_templates_and_predicted_prefix() -> None:
    trace = coding_trace(60, seed=16)
    prof = Profiler(ProfilerConfig(min_jobs=10)).fit(trace.jobs[:50])
    model = prof.model("coding")
    assert model is not None
    eng = model.templates[("engineer", "new")]
    assert [s.kind for s in eng.slots] == ["fixed", "context", "output", "fresh"]
    assert eng.slots[2].label == "explorer" and 3 <= eng.slots[2].mean_items <= 4
    assert [s.kind for s in model.templates[("explorer", "continued")].slots] == ["history", "fresh"]
    job = trace.jobs[55]
    live = prof.begin_job(job.job_id, "coding")
    for c in job.calls:
        if c.agent_role == "engineer":  # the first engineer call: system, context, explorer reports
            for d in c.deps:
                live.finish_call(job.calls[d], job)
            pred = prof.predict_prompt(live, "engineer", None)
            assert pred is not None and pred.tolist() == c.prompt[:-1].tolist()
            nxt = prof.next_calls(live)
            assert nxt is not None and nxt[0].role == "engineer" and nxt[0].prefix.tolist() == pred.tolist()
            break
        live.issue_call(c)
        if c.call_id == 1:  # an explorer's next call continues its conversation
            live.finish_call(c, job)
            cont = prof.predict_prompt(live, "explorer", c.agent_id)
            assert cont is not None
            assert cont.tolist() == c.prompt.tolist() + job.output_segments(c).tolist()


# --------------------------------------------------------------------------- service behaviour


def test_predictions_are_memoised_and_deterministic() -> None:
    trace = coding_trace(80, seed=17)
    a = Profiler(ProfilerConfig(min_jobs=10)).fit(trace)
    b = Profiler(ProfilerConfig(min_jobs=10)).fit(trace)
    assert a.model("coding").to_dict() == b.model("coding").to_dict()  # type: ignore[union-attr]
    job = a.begin_job("live", "coding")
    for c in trace.jobs[0].calls[:6]:
        job.issue_call(c)
    p1 = a.predict(job)
    assert a.predict(job) is p1  # memoised until the job or the model changes
    job.finish_call(trace.jobs[0].calls[5], trace.jobs[0])
    assert a.predict(job) is not p1
    r1 = report(Trace(jobs=trace.jobs[:60]), Trace(jobs=trace.jobs[60:]), ProfilerConfig(min_jobs=10))
    r2 = report(Trace(jobs=trace.jobs[:60]), Trace(jobs=trace.jobs[60:]), ProfilerConfig(min_jobs=10))
    assert r1 == r2
    t = r1["types"]["coding"]
    assert t["warm"] and 0.5 < t["next_role_top1"] <= 1.0
    assert set(t["roles"]) >= {"planner", "explorer", "engineer", "reviewer", "verifier"}


def test_online_tracking_learns_like_fit() -> None:
    trace = coding_trace(30, seed=18)
    online = Profiler(ProfilerConfig(min_jobs=5))
    for job in trace.jobs:
        live = online.begin_job(job.job_id, job.workflow_type)
        for c in job.calls:
            for d in c.deps:
                if not live.calls[d].finished:
                    online.call_finished(live, d, job.calls[d].output_tokens, job.output_segments(job.calls[d]))
            online.call_issued(live, c.call_id, c.agent_role, agent_id=c.agent_id, deps=c.deps,
                               parent=c.parent, prompt=c.prompt)
        for c in job.calls:
            if not live.calls[c.call_id].finished:
                online.call_finished(live, c.call_id, c.output_tokens, job.output_segments(c))
        online.end_job(live, jct_s=10.0)
    batch = Profiler(ProfilerConfig(min_jobs=5)).fit(trace)
    assert online.model("coding").regex == batch.model("coding").regex  # type: ignore[union-attr]
    assert online.type_stats("coding").mean_jct_s == 10.0  # type: ignore[union-attr]
    assert online.type_weights("jobs") == {"coding": 1.0}


def test_type_statistics_and_weights() -> None:
    prof = Profiler(ProfilerConfig(min_jobs=1))
    prof.fit(branch_trace(30, 0.5, seed=19, workflow_type="small"))
    prof.fit(coding_trace(10, seed=20))
    w = prof.type_weights("calls")
    assert set(w) == {"small", "coding"} and sum(w.values()) == pytest.approx(1.0) and w["coding"] > w["small"]
    s = prof.type_stats("small")
    assert s is not None and s.jobs == 30 and s.mean_calls == 2 and s.mean_critical_path_calls == 2
    assert prof.type_weights("jct") == {}
    with pytest.raises(PythiaInputError, match="metric"):
        prof.type_weights("latency")


def test_projection_counts_the_next_generations() -> None:
    prof = Profiler(ProfilerConfig(min_jobs=1, prune_threshold=0.0)).fit(retry_trace(500, 0.0, seed=21))
    job = prof.begin_job("x", "retry")
    assert prof.projection(job, 1) == pytest.approx({"checker": 0.0, "worker": 1.0})
    assert prof.projection(job, 3) == pytest.approx({"checker": 1.0, "worker": 1.0})
    with pytest.raises(PythiaInputError, match="horizon"):
        prof.projection(job, 0)


@pytest.mark.parametrize(
    "field, value",
    [("prune_threshold", 1.5), ("min_jobs", -1), ("quantile", 1.0), ("confidence", 0.0), ("max_unroll", 0),
     ("drift_keep", 2.0), ("drift_threshold", 0.0), ("fixed_min_jobs", 1)],
)
def test_config_errors_name_the_field(field: str, value: object) -> None:
    with pytest.raises(PythiaInputError, match=field):
        ProfilerConfig(**{field: value})  # type: ignore[arg-type]


def test_profiler_is_engine_agnostic() -> None:
    code = (
        "import sys, pythia.profiler; "
        "bad = [m for m in sys.modules if m.startswith('pythia.sim') or m.split('.')[0] == 'vllm']; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_generated_workloads_when_present() -> None:
    spec = ROOT / "workloads" / "coding-assistant.yaml"
    if not spec.exists():
        pytest.skip("workloads/coding-assistant.yaml not present")
    from pythia.workflow.load import LoadOptions, load_workload

    train = load_workload(spec, LoadOptions(seed=0, jobs=40))
    prof = Profiler(ProfilerConfig(min_jobs=20)).fit(train)
    model = prof.model("coding-assistant")
    assert model is not None
    assert model.regex.startswith("planner explorer<3,4>")
    assert "reviewer verifier (engineer<" in model.regex
    assert model.pfa.F[0] == pytest.approx(np.mean([len(j.calls) for j in train.jobs]), rel=1e-6)
