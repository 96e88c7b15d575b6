"""The profiler service: learn workflows from call logs, answer predictions for running jobs.

One :class:`Profiler` serves every host (simulator, vLLM plugin, gateway) and every policy
(cache, routing, scheduling, scaling). It never imports an engine.

Learning: :meth:`Profiler.fit` (a trace, or a gateway's logs in the same shape) or online,
:meth:`Profiler.observe_output` as calls finish and :meth:`Profiler.observe_job` as jobs end
(or the host-facing trio :meth:`~Profiler.begin_job`, :meth:`~Profiler.call_issued` /
:meth:`~Profiler.call_finished`, :meth:`~Profiler.end_job`).

Answers are ``None`` while a workflow type is cold (fewer than ``min_jobs`` jobs, counted
again after a drift reset): the policies then behave as their plain counterparts. Answers
are small frozen dataclasses, memoised per running job until the job or the model changes;
per-state expectations are solved once per model change, so a query costs a few operations
per frontier call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from pythia.profiler.bounds import LengthStats, LengthSummary, OutputBound
from pythia.profiler.config import ProfilerConfig
from pythia.profiler.drift import PageHinkley
from pythia.profiler.pfa import END_ID, START_ID, CompiledPFA, JobDecomposition, PFACounts, RoleAutomaton, decompose
from pythia.profiler.running import RunningJob
from pythia.profiler.stats import METRICS, TypeStats, TypeStatsAcc
from pythia.profiler.template import CompiledTemplates, RoleTemplate, TemplateCounts
from pythia.errors import PythiaInputError
from pythia.workflow.trace import Job, Trace


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class NextRole:
    """A role that may run next in a job.

    Attributes:
        role: the agent role.
        probability: the probability that at least one frontier call is followed by a call
            of this role next.
        expected_calls: the expected number of such next calls (join-credited).
    """

    role: str
    probability: float
    expected_calls: float


@dataclass(frozen=True, slots=True)
class JobPrediction:
    """The predicted rest of a running job.

    Attributes:
        workflow_type: the job's type.
        expected_remaining_calls: expected calls still to be issued.
        expected_distance: expected calls on the critical path from now to the end, calls in
            flight on it included (so a job whose last call is running has distance 1).
        p_end: the probability that no further call follows the current frontier.
        next_roles: the roles that may come next, most likely first.
        model_version: the automaton version the prediction came from.
    """

    workflow_type: str
    expected_remaining_calls: float
    expected_distance: float
    p_end: float
    next_roles: tuple[NextRole, ...]
    model_version: int


@dataclass(frozen=True, slots=True)
class NextCall:
    """A call predicted to come next, with its predicted prompt prefix.

    Attributes:
        role: its agent role.
        agent_id: the instance that continues its conversation, ``None`` for a new instance.
        probability: the probability that such a call comes next.
        expected_calls: how many such calls (a fan-out of new instances counts its width).
        prefix: predicted leading prompt segments, shape ``(n, 3)`` (key, offset, tokens);
            empty when nothing can be predicted.
        prefix_tokens: tokens covered by ``prefix``.
    """

    role: str
    agent_id: str | None
    probability: float
    expected_calls: float
    prefix: np.ndarray
    prefix_tokens: int


@dataclass(frozen=True, slots=True)
class DriftEvent:
    """A detected change in a workflow type's behaviour.

    Attributes:
        workflow_type: the type.
        kind: ``output_length`` (one role's lengths), ``transitions`` (which role follows
            which) or ``run_lengths`` (how many calls an instance makes).
        role: the role, for ``output_length``.
        at_jobs: jobs of the type observed when it fired.
        since: observations (calls or jobs) estimated to come after the change.
    """

    workflow_type: str
    kind: str
    role: str | None
    at_jobs: float
    since: int


@dataclass(frozen=True)
class WorkflowModel:
    """What the profiler knows of one warm workflow type (a read-only snapshot).

    Attributes:
        workflow_type: the type.
        jobs: jobs behind the automaton (weighted).
        pfa: the compiled automaton over ``(role, visit)`` states.
        automaton: the automaton over roles (visits summed).
        regex: the bounded regular expression of the main paths.
        templates: prompt templates by ``(role, variant)``.
        lengths: output-length distribution and bound per role.
    """

    workflow_type: str
    jobs: float
    pfa: CompiledPFA
    automaton: RoleAutomaton
    regex: str
    templates: dict[tuple[str, str], RoleTemplate]
    lengths: dict[str, LengthSummary]

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready summary (automaton, regex, templates, lengths)."""
        return {
            "workflow_type": self.workflow_type,
            "jobs": self.jobs,
            "regex": self.regex,
            "transitions": self.automaton.transitions,
            "self_loop": self.automaton.self_loop,
            "states": [f"{r}#{v}" for r, v in self.pfa.states[2:]],
            "expected_calls_per_job": float(self.pfa.F[START_ID]),
            "expected_path_calls_per_job": float(self.pfa.h[START_ID]),
            "templates": {f"{r}/{v}": {"pattern": t.describe(), "share": t.share, "calls": t.calls}
                          for (r, v), t in self.templates.items()},
            "lengths": {
                r: {"samples": s.samples, "mean": s.mean, "quantiles": {str(q): v for q, v in s.quantiles.items()},
                    "bound": s.bound.tokens, "bound_reason": s.bound.reason}
                for r, s in self.lengths.items()
            },
        }


# --------------------------------------------------------------------------- per-type state


class _TypeState:
    """Everything learned about one workflow type."""

    def __init__(self, name: str, cfg: ProfilerConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.counts = PFACounts(cfg.max_unroll)
        self.templates = TemplateCounts(cfg.fixed_min_jobs, cfg.head_segments)
        self.lengths: dict[str, LengthStats] = {}
        self.len_det: dict[str, PageHinkley] = {}
        self.exit_det = self._detector(0)  # fed standardised scores
        self.run_det = self._detector(0)
        self.stats = TypeStatsAcc()
        self.drift: list[DriftEvent] = []
        self._pfa: CompiledPFA | None = None
        self.ref_pfa: CompiledPFA | None = None  # the drift detectors' reference
        self._tmpl: CompiledTemplates | None = None
        self._model: WorkflowModel | None = None
        self._model_key: tuple[int, int, int] | None = None
        self.length_version = 0

    def _detector(self, warmup: int) -> PageHinkley:
        c = self.cfg
        return PageHinkley(c.drift_allowance, c.drift_threshold, warmup, c.drift_clip)

    @property
    def warm(self) -> bool:
        return self.counts.jobs >= self.cfg.min_jobs and self.counts.jobs > 0

    def pfa(self) -> CompiledPFA:
        if self._pfa is None or self._pfa.version != self.counts.version:
            self._pfa = CompiledPFA(self.counts, self.cfg.prune_threshold, self.cfg.max_horizon)
        return self._pfa

    def tmpl(self) -> CompiledTemplates:
        if self._tmpl is None or self._tmpl.version != self.templates.version:
            self._tmpl = self.templates.compile()
        return self._tmpl

    def model(self) -> WorkflowModel:
        key = (self.counts.version, self.templates.version, self.length_version)
        if self._model is None or self._model_key != key:
            pfa = self.pfa()
            c = self.cfg
            self._model = WorkflowModel(
                workflow_type=self.name,
                jobs=self.counts.jobs,
                pfa=pfa,
                automaton=pfa.role_automaton(),
                regex=pfa.regex(c.regex_min_path_prob),
                templates=dict(self.tmpl().templates),
                lengths={r: ls.summary(c.quantile, c.delta) for r, ls in sorted(self.lengths.items())},
            )
            self._model_key = key
        return self._model


def _resolve(pfa: CompiledPFA, state: tuple[str, int]) -> int | None:
    """The state id of ``state``, or of the same role at the nearest lower visit."""
    role, visit = state
    for v in range(visit, -1, -1):
        sid = pfa.index.get((role, v))
        if sid is not None:
            return sid
    return None


# --------------------------------------------------------------------------- the service


class Profiler:
    """Learns per-workflow-type automata, output bounds and prompt templates; predicts.

    Args:
        config: the knobs (:class:`~pythia.profiler.config.ProfilerConfig`); defaults when omitted.
    """

    def __init__(self, config: ProfilerConfig | None = None) -> None:
        self.config = config or ProfilerConfig()
        self._types: dict[str, _TypeState] = {}

    def _type(self, workflow_type: str) -> _TypeState:
        t = self._types.get(workflow_type)
        if t is None:
            t = self._types[workflow_type] = _TypeState(workflow_type, self.config)
        return t

    # -- learning

    def fit(self, data: Trace | Iterable[Job]) -> "Profiler":
        """Observe every job of a trace (or an iterable of jobs), in order. Returns ``self``."""
        jobs = data.jobs if isinstance(data, Trace) else data
        for job in jobs:
            self.observe_job(job)
        return self

    def observe_job(self, job: Job, *, outputs: bool = True, jct_s: float | None = None) -> None:
        """Learn from one finished job: its transitions, runs and prompts.

        ``outputs`` also records every call's output length (leave it off when they were
        reported one by one with :meth:`observe_output`); ``jct_s`` is the job's completion
        time when the host measured it (per-type statistics).
        """
        t = self._type(job.workflow_type)
        dec = decompose(job, self.config.max_unroll)
        if self.config.drift and t.warm:
            self._structure_drift(t, dec)
        t.counts.add(dec)
        t.templates.add(job)
        t.stats.add(job, jct_s)
        if outputs:
            for c in job.calls:
                self.observe_output(job.workflow_type, c.agent_role, c.output_tokens)

    def observe_output(self, workflow_type: str, agent_role: str, output_tokens: int) -> None:
        """Learn one finished call's output length (and watch that role's lengths for drift)."""
        t = self._type(workflow_type)
        ls = t.lengths.get(agent_role)
        if ls is None:
            ls = t.lengths[agent_role] = LengthStats(agent_role, self.config.max_length_samples)
        ls.add(output_tokens)
        t.length_version += 1
        if not self.config.drift:
            return
        det = t.len_det.get(agent_role)
        if det is None:
            det = t.len_det[agent_role] = t._detector(self.config.drift_warmup)
        since = det.update(math.log1p(max(output_tokens, 0)))
        if since is not None:
            ls.keep_recent(since, self.config.drift_keep)
            t.drift.append(DriftEvent(workflow_type, "output_length", agent_role, t.stats.jobs, since))

    def _structure_drift(self, t: _TypeState, dec: JobDecomposition) -> None:
        """Feed one job's transition surprise and run-length score to the detectors.

        Both are measured against a *reference* automaton, frozen when monitoring starts and
        refreshed when the history doubles: against the live automaton, which keeps learning,
        a change would partly explain itself away.
        """
        if t.ref_pfa is None or t.counts.jobs >= 2 * t.ref_pfa.jobs:
            # The reference is learned from drift_warmup_jobs jobs past min_jobs and refreshed
            # each time the history doubles: its own estimation noise, large at first, would
            # otherwise look like drift (a skewed score accumulates towards the threshold).
            if t.counts.jobs < self.config.min_jobs + self.config.drift_warmup_jobs:
                return
            t.ref_pfa = t.pfa()
            t.exit_det.reset()
            t.run_det.reset()
        pfa = t.ref_pfa
        unseen_state = math.log(pfa.jobs + 1.0)  # a state the reference never reached
        surprise = 0.0
        variance = 0.0
        for src, dst, _, _, _ in dec.events:
            if src == "<start>":
                continue
            s = pfa.index.get(src)  # type: ignore[arg-type]
            if s is None:
                surprise += unseen_state
                variance += 1.0
                continue
            d = END_ID if dst == "<end>" else pfa.index.get(dst)  # type: ignore[arg-type]
            if d is None or pfa.exit_counts[s, d] <= 0:
                surprise += float(pfa.surprise_unseen[s])
                variance += max(float(pfa.surprise_var[s]), 1.0)
            elif pfa.informative[s]:
                surprise += float(pfa.surprise[s, d])
                variance += float(pfa.surprise_var[s])
        runs = []
        for st, length in dec.runs:
            s = pfa.index.get(st)
            if s is not None and pfa.run_count[s] > 0:
                runs.append((math.log(length) - pfa.run_log_mean[s]) / pfa.run_log_sd[s])
        fired = []
        if variance > 0 and (since := t.exit_det.update(surprise / math.sqrt(variance))) is not None:
            fired.append(("transitions", since))
        if runs and (since := t.run_det.update(float(np.sum(runs)) / math.sqrt(len(runs)))) is not None:
            fired.append(("run_lengths", since))
        if fired:
            t.counts.scale(self.config.drift_keep)
            t.exit_det.reset()
            t.run_det.reset()
            t.ref_pfa = None
            for kind, since in fired:
                t.drift.append(DriftEvent(t.name, kind, None, t.stats.jobs, since))

    # -- host-facing tracking of running jobs

    def begin_job(self, job_id: str, workflow_type: str, workflow_id: str | None = None) -> RunningJob:
        """A fresh :class:`RunningJob` to report the job's calls into."""
        return RunningJob(job_id, workflow_type, workflow_id, self.config.max_unroll)

    def call_issued(self, job: RunningJob, call_id: int, agent_role: str, **kw: object) -> None:
        """Report an issued call (keywords as :meth:`RunningJob.issue`)."""
        job.issue(call_id, agent_role, **kw)  # type: ignore[arg-type]

    def call_finished(self, job: RunningJob, call_id: int, output_tokens: int,
                      output: np.ndarray | None = None, *, learn: bool = True) -> None:
        """Report a finished call; with ``learn`` its output length updates the model."""
        rc = job.finish(call_id, output_tokens, output)
        if learn:
            self.observe_output(job.workflow_type, rc.role, output_tokens)

    def end_job(self, job: RunningJob, *, jct_s: float | None = None, learn: bool = True) -> None:
        """Report that a job ended; with ``learn`` its structure updates the model."""
        if learn and job.calls:
            self.observe_job(job.to_job(), outputs=False, jct_s=jct_s)

    # -- state queries

    def workflow_types(self) -> list[str]:
        """Every workflow type seen, sorted."""
        return sorted(self._types)

    def is_warm(self, workflow_type: str) -> bool:
        """Whether the type has enough history (``min_jobs``) for predictions."""
        t = self._types.get(workflow_type)
        return t is not None and t.warm

    def model(self, workflow_type: str) -> WorkflowModel | None:
        """The learned model of a warm type, ``None`` while cold."""
        t = self._types.get(workflow_type)
        return t.model() if t is not None and t.warm else None

    def drift_events(self, workflow_type: str | None = None) -> list[DriftEvent]:
        """Drift detected so far (of one type, or of all)."""
        types = [self._types[workflow_type]] if workflow_type in self._types else (
            [] if workflow_type is not None else list(self._types.values()))
        return [e for t in types for e in t.drift]

    # -- predictions

    def output_bound(self, workflow_type: str, agent_role: str) -> OutputBound | None:
        """The output-length bound of a call of ``agent_role``; ``None`` while the type is cold.

        The bound's ``tokens`` is itself ``None`` (with a ``reason``) when the role has too
        few samples for the configured quantile and confidence.
        """
        t = self._types.get(workflow_type)
        if t is None or t.stats.jobs < self.config.min_jobs:
            return None
        ls = t.lengths.get(agent_role)
        if ls is None:
            return None
        return ls.bound(self.config.quantile, self.config.delta)

    def bound_tokens(self, workflow_type: str, agent_role: str) -> int | None:
        """Just the bound in tokens (``None`` when there is none)."""
        b = self.output_bound(workflow_type, agent_role)
        return None if b is None else b.tokens

    def predict(self, job: RunningJob) -> JobPrediction | None:
        """The remaining path of a running job; ``None`` while its type is cold."""
        t = self._types.get(job.workflow_type)
        if t is None or not t.warm:
            return None
        pfa = t.pfa()
        memo = job.memo.get("predict")
        if memo is not None and memo[0] == pfa.version and memo[1] == job.version:
            return memo[2]
        out = self._predict(job, pfa)
        job.memo["predict"] = (pfa.version, job.version, out)
        return out

    def _frontier(self, job: RunningJob, pfa: CompiledPFA) -> list[tuple[int, int, bool, str | None, tuple[int, ...]]]:
        """``(state id, run position, running, agent, stage)`` per leaf; ``<start>`` for an empty job."""
        if not job.calls:
            return [(START_ID, 0, False, None, ())]
        out = []
        for i in job.leaves:
            rc = job.calls[i]
            sid = _resolve(pfa, rc.place.state)
            if sid is not None:
                out.append((sid, rc.place.run_pos, not rc.finished, rc.agent_id, rc.place.stage))
        return out

    def _predict(self, job: RunningJob, pfa: CompiledPFA) -> JobPrediction | None:
        frontier = self._frontier(job, pfa)
        if not frontier:
            return None
        n_roles = len(pfa.roles)
        not_role = np.ones(n_roles)
        count = np.zeros(n_roles)
        remaining = 0.0
        distance = 0.0
        p_end = 1.0
        # Leaves of one stage (siblings of a fan-out) share its joins: credit those once,
        # weighted by the share of the stage's runs that may still end.
        stage_exit: dict[tuple[int, tuple[int, ...]], list[float]] = {}
        for sid, pos, running, _, stage in frontier:
            if sid == START_ID:
                hz = res = 0.0
                remaining += pfa.F[START_ID]
                distance = max(distance, pfa.h[START_ID])
            else:
                hz = pfa.hazard_at(sid, pos)
                res = pfa.residual_at(sid, pos)
                remaining += res + pfa.spawned_run[sid]
                distance = max(distance, float(running) + res + pfa.after_run[sid])
                stage_exit.setdefault((sid, stage), []).append(1.0 - hz)
            p_leaf = (1.0 - hz) * pfa.P_role[sid]
            c_leaf = (1.0 - hz) * (pfa.Y_role_run[sid] if sid != START_ID else pfa.Y_role[sid])
            if sid != START_ID:
                r = pfa.role_of[sid]
                p_leaf[r] += hz
                c_leaf[r] += hz
            not_role *= 1.0 - np.minimum(p_leaf, 1.0)
            count += c_leaf
            p_end *= (1.0 - hz) * pfa.P_exit[sid, END_ID]
        for (sid, _), exits in stage_exit.items():
            remaining += pfa.spawned_stage[sid]
            count += pfa.Y_role_stage[sid] * (sum(exits) / len(exits))
        prob = 1.0 - not_role
        order = sorted((i for i in range(n_roles) if prob[i] > 1e-12), key=lambda i: (-prob[i], pfa.roles[i]))
        return JobPrediction(
            workflow_type=job.workflow_type,
            expected_remaining_calls=float(remaining),
            expected_distance=float(distance),
            p_end=float(p_end),
            next_roles=tuple(NextRole(pfa.roles[i], float(prob[i]), float(count[i])) for i in order),
            model_version=pfa.version,
        )

    def next_calls(self, job: RunningJob, min_probability: float = 0.05) -> tuple[NextCall, ...] | None:
        """The calls likely to come next, with predicted prompt prefixes; ``None`` while cold."""
        t = self._types.get(job.workflow_type)
        if t is None or not t.warm:
            return None
        pfa, tmpl = t.pfa(), t.tmpl()
        key = (pfa.version, tmpl.version, min_probability)
        memo = job.memo.get("next_calls")
        if memo is not None and memo[0] == key and memo[1] == job.version:
            return memo[2]
        job.scan_context(tmpl.fixed, tmpl.note_prompt)
        cands: dict[tuple[str, str | None], list[float]] = {}

        def note(role: str, agent: str | None, p: float, calls: float) -> None:
            c = cands.setdefault((role, agent), [0.0, 0.0])
            c[0] = max(c[0], p)
            c[1] += calls

        for sid, pos, _, agent, _ in self._frontier(job, pfa):
            hz = 0.0 if sid == START_ID else pfa.hazard_at(sid, pos)
            if hz > 0 and agent is not None:
                note(pfa.name(sid), agent, hz, hz)
            for tgt in np.flatnonzero(pfa.P_exit[sid]):
                if tgt == END_ID:
                    continue
                p = (1.0 - hz) * float(pfa.P_exit[sid, tgt])
                calls = (1.0 - hz) * float(pfa.Y[sid, tgt])
                role = pfa.name(int(tgt))
                existing = job.agents_of(role)
                if existing and tmpl.reuse.get(role, 0.0) >= 0.5:  # a retry continues the instances
                    for a in existing:
                        note(role, a, p, calls / len(existing))
                else:
                    note(role, None, p, calls)
        out = []
        for (role, agent), (p, calls) in sorted(cands.items(), key=lambda kv: (-kv[1][0], kv[0][0], kv[0][1] or "")):
            if p < min_probability:
                continue
            segs = tmpl.predict_prefix(job, role, agent)
            arr = np.asarray(segs, dtype=np.int64).reshape(-1, 3)
            out.append(NextCall(role, agent, p, calls, arr, int(arr[:, 2].sum())))
        res = tuple(out)
        job.memo["next_calls"] = (key, job.version, res)
        return res

    def predict_prompt(self, job: RunningJob, agent_role: str, agent_id: str | None) -> np.ndarray | None:
        """The predicted prompt prefix of a call of ``agent_role`` by ``agent_id`` (``None``: a
        new instance); ``None`` while the type is cold."""
        t = self._types.get(job.workflow_type)
        if t is None or not t.warm:
            return None
        tmpl = t.tmpl()
        job.scan_context(tmpl.fixed, tmpl.note_prompt)
        if agent_id is not None and job.last_call_of(agent_id) is None:
            agent_id = None
        return np.asarray(tmpl.predict_prefix(job, agent_role, agent_id), dtype=np.int64).reshape(-1, 3)

    def projection(self, job: RunningJob, horizon: int) -> dict[str, float] | None:
        """Expected calls per role within the next ``horizon`` call generations (autoscaling)."""
        t = self._types.get(job.workflow_type)
        if t is None or not t.warm:
            return None
        if not 1 <= horizon <= self.config.max_horizon:
            raise PythiaInputError(f"projection horizon={horizon} must be between 1 and max_horizon={self.config.max_horizon}")
        pfa = t.pfa()
        acc = np.zeros(len(pfa.roles))
        for sid, _, _, _, _ in self._frontier(job, pfa):
            acc += pfa.projection[horizon, sid]
        return {r: float(acc[i]) for i, r in enumerate(pfa.roles)}

    # -- per-type statistics

    def type_stats(self, workflow_type: str) -> TypeStats | None:
        """What has been seen of one type (``None`` when never seen)."""
        t = self._types.get(workflow_type)
        return None if t is None else t.stats.freeze(workflow_type)

    def type_weights(self, metric: str = "output_tokens") -> dict[str, float]:
        """Each type's share of ``metric`` (``jobs``, ``calls``, ``output_tokens``,
        ``input_tokens`` or ``jct``: total completion time); types without it are left out."""
        if metric not in METRICS:
            raise PythiaInputError(f"type_weights metric={metric!r} must be one of {', '.join(METRICS)}")
        totals = {n: t.stats.total(metric) for n, t in sorted(self._types.items())}
        have = {n: v for n, v in totals.items() if v is not None and v > 0}
        s = sum(have.values())
        return {n: v / s for n, v in have.items()} if s > 0 else {}

    def __repr__(self) -> str:
        return f"Profiler(types={self.workflow_types()}, warm={[n for n in self._types if self.is_warm(n)]})"



__all__ = ["DriftEvent", "JobPrediction", "NextCall", "NextRole", "Profiler", "WorkflowModel"]
