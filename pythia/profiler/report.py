"""How good the profiler's predictions are on jobs it was not fitted on.

:func:`report` fits a :class:`~pythia.profiler.predictor.Profiler` on one trace and replays
every job of another, call by call in issue order (a call's dependencies finish just before
it is issued), asking the profiler what a policy would ask:

- *next role*: for each finished call, the most likely next role (its instance's next call,
  a transition, or ``<end>``); top-1 is right when some call that depends on it has that role
  (``<end>`` when none does). The log-likelihood of the observed targets is averaged per
  transition (pruned transitions get probability 1e-6 and are counted);
- *remaining calls* and *distance to the end* after each issue, against the truth (and, for
  remaining calls, against the structure-blind guess "mean calls per job minus calls issued");
- *output bound* per role: the share of calls whose output length stays under the bound;
- *prompt prefix*: for each call, the prefix predicted from the job's state just before it
  (given its role and instance) against its actual prompt, in tokens.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from pythia.profiler.config import ProfilerConfig
from pythia.profiler.pfa import END, END_ID, START, START_ID, decompose
from pythia.profiler.predictor import Profiler
from pythia.profiler.template import common_prefix_tokens
from pythia.workflow.trace import Job, Trace

_FLOOR = 1e-6


def _depth_to_end(job: Job, succ: list[list[int]]) -> list[int]:
    """Calls on the longest chain starting at each call (the call included)."""
    depth = [1] * len(job.calls)
    for i in range(len(job.calls) - 1, -1, -1):
        if succ[i]:
            depth[i] = 1 + max(depth[d] for d in succ[i])
    return depth


class _Acc:
    """Per-type accumulators."""

    def __init__(self) -> None:
        self.next_n: dict[str, int] = defaultdict(int)
        self.next_hit: dict[str, int] = defaultdict(int)
        self.loglik: dict[str, float] = defaultdict(float)
        self.loglik_n: dict[str, int] = defaultdict(int)
        self.zero_prob = 0
        self.rem_err: list[float] = []
        self.rem_true: list[float] = []
        self.rem_pred: list[float] = []
        self.rem_base_err: list[float] = []
        self.dist_err: list[float] = []
        self.dist_true: list[float] = []
        self.dist_pred: list[float] = []
        self.out: dict[str, list[int]] = defaultdict(list)
        self.pref_pred: dict[str, int] = defaultdict(int)
        self.pref_match: dict[str, int] = defaultdict(int)
        self.pref_actual: dict[str, int] = defaultdict(int)
        self.next_call_hit = 0
        self.next_call_n = 0


def _role_dist(prof: Profiler, wt: str, state: tuple[str, int] | str, pos: int) -> dict[str, float]:
    """The profiler's distribution of the next role after a call (or the job start)."""
    t = prof._types[wt]
    pfa = t.pfa()
    if state == START:
        sid: int | None = START_ID
    else:
        from pythia.profiler.predictor import _resolve

        sid = _resolve(pfa, state)  # type: ignore[arg-type]
    if sid is None:
        return {}
    hz = 0.0 if sid == START_ID else pfa.hazard_at(sid, pos)
    out: dict[str, float] = {}
    if sid != START_ID:
        out[pfa.name(sid)] = hz
    for i, r in enumerate(pfa.roles):
        p = (1.0 - hz) * float(pfa.P_role[sid, i])
        if p > 0:
            out[r] = out.get(r, 0.0) + p
    pe = (1.0 - hz) * float(pfa.P_exit[sid, END_ID])
    if pe > 0:
        out[END] = pe
    return out


def _replay(prof: Profiler, job: Job, acc: _Acc) -> None:
    wt = job.workflow_type
    dec = decompose(job, prof.config.max_unroll)
    succ = dec.successors
    # next role, per source call (and the job start)
    sources: list[tuple[str, tuple[str, int] | str, int, set[str]]] = [
        (START, START, 0, {job.calls[i].agent_role for i, c in enumerate(job.calls) if not c.deps and c.parent is None})
    ]
    for i, c in enumerate(job.calls):
        targets = {job.calls[d].agent_role for d in succ[i]} or {END}
        sources.append((c.agent_role, dec.places[i].state, dec.places[i].run_pos, targets))
    for role, state, pos, targets in sources:
        dist = _role_dist(prof, wt, state, pos)
        if not dist:
            continue
        best = max(sorted(dist), key=dist.__getitem__)
        acc.next_n[role] += 1
        acc.next_hit[role] += best in targets
        for tgt in targets:
            p = dist.get(tgt, 0.0)
            if p <= 0:
                acc.zero_prob += 1
            acc.loglik[role] += math.log(max(p, _FLOOR))
            acc.loglik_n[role] += 1
    # replay for remaining calls, distance and prefixes
    depth = _depth_to_end(job, succ)
    rj = prof.begin_job(job.job_id, wt, job.workflow_id)
    n = len(job.calls)
    stats = prof.type_stats(wt)
    mean_calls = stats.mean_calls if stats is not None else 0.0
    for i, c in enumerate(job.calls):
        for p in sorted(set(c.deps) | ({c.parent} if c.parent is not None else set())):
            if not rj.calls[p].finished:
                rj.finish_call(job.calls[p], job)
        nxt = prof.next_calls(rj) or ()
        agent = c.agent_id if rj.last_call_of(c.agent_id) is not None else None
        acc.next_call_n += 1
        acc.next_call_hit += any(nc.role == c.agent_role and nc.agent_id == agent for nc in nxt)
        pred = prof.predict_prompt(rj, c.agent_role, agent)
        if pred is not None:
            pseg = [tuple(r) for r in pred.tolist()]
            aseg = [tuple(r) for r in c.prompt.tolist()]
            matched, _ = common_prefix_tokens(pseg, aseg)  # type: ignore[arg-type]
            acc.pref_pred[c.agent_role] += int(pred[:, 2].sum()) if len(pred) else 0
            acc.pref_match[c.agent_role] += matched
            acc.pref_actual[c.agent_role] += c.input_tokens
        rj.issue_call(c)
        jp = prof.predict(rj)
        if jp is not None:
            true_rem = n - 1 - i
            true_dist = max(depth[l] - (0 if not rj.calls[l].finished else 1) for l in rj.leaves)
            acc.rem_err.append(abs(jp.expected_remaining_calls - true_rem))
            acc.rem_true.append(true_rem)
            acc.rem_pred.append(jp.expected_remaining_calls)
            acc.rem_base_err.append(abs(max(mean_calls - (i + 1), 0.0) - true_rem))
            acc.dist_err.append(abs(jp.expected_distance - true_dist))
            acc.dist_true.append(true_dist)
            acc.dist_pred.append(jp.expected_distance)
    for c in job.calls:
        acc.out[c.agent_role].append(c.output_tokens)


def _corr(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _type_report(prof: Profiler, wt: str, jobs: list[Job]) -> dict[str, Any]:
    model = prof.model(wt)
    if model is None:
        return {"warm": False, "test_jobs": len(jobs), "note": "fewer fitted jobs than min_jobs: no predictions"}
    acc = _Acc()
    for job in jobs:
        _replay(prof, job, acc)
    roles: dict[str, Any] = {}
    cov_n = cov_hit = 0
    for role in sorted(set(acc.out) | set(acc.next_n)):
        r: dict[str, Any] = {}
        if role in acc.next_n:
            r["next_role_top1"] = acc.next_hit[role] / acc.next_n[role]
            r["transitions"] = acc.next_n[role]
            r["mean_loglik"] = acc.loglik[role] / max(acc.loglik_n[role], 1)
        if role in acc.out:
            outs = np.array(acc.out[role])
            b = prof.output_bound(wt, role)
            r["calls"] = int(len(outs))
            r["mean_output"] = float(outs.mean())
            r["p99_output"] = float(np.quantile(outs, 0.99))
            r["bound"] = None if b is None else b.tokens
            r["bound_samples"] = None if b is None else b.samples
            if b is not None and b.tokens is not None:
                hit = int((outs <= b.tokens).sum())
                r["coverage"] = hit / len(outs)
                r["bound_over_p99"] = b.tokens / max(r["p99_output"], 1.0)
                cov_n += len(outs)
                cov_hit += hit
            else:
                r["coverage"] = None
                r["bound_reason"] = "cold type" if b is None else b.reason
        if acc.pref_actual.get(role):
            r["prefix_recall"] = acc.pref_match[role] / acc.pref_actual[role]
            r["prefix_precision"] = acc.pref_match[role] / acc.pref_pred[role] if acc.pref_pred[role] else None
        roles[role] = r
    n_next = sum(acc.next_n.values())
    n_ll = sum(acc.loglik_n.values())
    match, actual, predicted = (sum(d.values()) for d in (acc.pref_match, acc.pref_actual, acc.pref_pred))
    return {
        "warm": True,
        "test_jobs": len(jobs),
        "regex": model.regex,
        "next_role_top1": sum(acc.next_hit.values()) / max(n_next, 1),
        "mean_transition_loglik": sum(acc.loglik.values()) / max(n_ll, 1),
        "transition_perplexity": math.exp(-sum(acc.loglik.values()) / max(n_ll, 1)),
        "zero_probability_transitions": acc.zero_prob,
        "next_call_hit_rate": acc.next_call_hit / max(acc.next_call_n, 1),
        "remaining_calls": {
            "mae": float(np.mean(acc.rem_err)) if acc.rem_err else None,
            "mean_true": float(np.mean(acc.rem_true)) if acc.rem_true else None,
            "corr": _corr(acc.rem_pred, acc.rem_true),
            "baseline_mae": float(np.mean(acc.rem_base_err)) if acc.rem_base_err else None,
        },
        "distance_to_end": {
            "mae": float(np.mean(acc.dist_err)) if acc.dist_err else None,
            "mean_true": float(np.mean(acc.dist_true)) if acc.dist_true else None,
            "corr": _corr(acc.dist_pred, acc.dist_true),
        },
        "bound_coverage": cov_hit / cov_n if cov_n else None,
        "bound_calls": cov_n,
        "prefix_recall": match / actual if actual else None,
        "prefix_precision": match / predicted if predicted else None,
        "roles": roles,
    }


def evaluate(prof: Profiler, trace_test: Trace) -> dict[str, Any]:
    """Replay ``trace_test`` against a fitted profiler (which it does not update)."""
    by_type: dict[str, list[Job]] = defaultdict(list)
    for job in trace_test.jobs:
        by_type[job.workflow_type].append(job)
    return {
        "config": {"quantile": prof.config.quantile, "confidence": prof.config.confidence,
                   "prune_threshold": prof.config.prune_threshold, "min_jobs": prof.config.min_jobs},
        "types": {wt: _type_report(prof, wt, jobs) for wt, jobs in sorted(by_type.items())},
    }


def report(trace_train: Trace, trace_test: Trace, config: ProfilerConfig | None = None) -> dict[str, Any]:
    """Fit on ``trace_train``, then measure path prediction, bound coverage and prefix
    prediction per workflow type and role on ``trace_test`` (see the module docstring)."""
    prof = Profiler(config).fit(trace_train)
    return evaluate(prof, trace_test)
