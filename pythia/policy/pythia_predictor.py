"""Pythia's workflow service: the profiler behind the shared :class:`Predictor` interface.

Hosts report jobs and calls (``job_started`` / ``call_issued`` / ``call_finished`` /
``job_ended``); :class:`ProfilerPredictor` (registry name ``profiler``) keeps one
:class:`~pythia.profiler.RunningJob` per job, learns online from every finished call and job
(with the profiler's drift handling), and answers the questions Pythia's four mechanisms ask
through :class:`PythiaPredictor`'s small query interface:

- :meth:`~PythiaPredictor.distance`: the expected remaining critical-path calls of a job;
- :meth:`~PythiaPredictor.bound`: a call's output upper bound and the probability it overflows;
- :meth:`~PythiaPredictor.expected_output`: a call's expected output length;
- :meth:`~PythiaPredictor.upcoming`: the calls predicted next, with their prompt prefixes;
- :meth:`~PythiaPredictor.projection`: expected calls per role within a horizon.

The clairvoyant oracle (:mod:`pythia.policy.oracle`) answers the same queries from the truth.

History (warm start). ``history="spec"`` (default): the first time a workflow type is seen,
the jobs of ``history_jobs`` are generated from the spec ``<history_dir>/<type>.yaml`` with
the development seeds ``history_seeds`` (disjoint from evaluation seeds) and fitted: the
"logs" of earlier runs of the same application. A type without a spec (a trace such as the
Claude Code sessions) starts cold and learns online only. ``history="none"``: cold start for
every type. A path to a workload file (spec or trace) fits that file's jobs instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from pythia.errors import PythiaInputError
from pythia.policy.block_memory import BlockMemory
from pythia.policy.views import RequestView
from pythia.policy.workflow import Predictor

if TYPE_CHECKING:
    from pythia.profiler import Profiler, RunningJob
    from pythia.workflow.trace import Job


@dataclass(frozen=True, slots=True)
class Upcoming:
    """A call predicted to come next in a job.

    Attributes:
        role: its agent role.
        agent_id: the instance continuing its conversation (``None``: a new instance).
        probability: the probability that it comes next.
        prefix: its predicted leading prompt segments, shape ``(n, 3)`` (may be empty).
    """

    role: str
    agent_id: str | None
    probability: float
    prefix: np.ndarray


def prompt_of(req: RequestView) -> np.ndarray | None:
    """The prompt segments a host attached to a call's annotations, if any."""
    p = req.annotations.get("prompt") if req.annotations else None
    return None if p is None else np.asarray(p, dtype=np.int64).reshape(-1, 3)


_NO_SEGMENTS = np.empty((0, 3), dtype=np.int64)


class PythiaPredictor(Predictor):
    """The query interface Pythia's mechanisms use, plus facts every Pythia predictor keeps.

    Besides :class:`~pythia.policy.workflow.JobInfo`, it learns which pool serves each role
    (reported by the cache and routing policies, which see replicas), how idle each pool is,
    the mean prompt length per role, and which prompt segment keys are shared by several
    jobs (fixed instructions: never released early). Subclasses answer the predictions.

    Calls whose client sent no prompt segments (a real application's, or every call when
    ``use_hints`` is off) are followed through the engine's block names instead
    (:class:`~pythia.policy.block_memory.BlockMemory`, :meth:`upcoming_blocks`).
    """

    name = "pythia-base"

    def __init__(self) -> None:
        super().__init__()
        self.use_hints = True
        self.block_memory = BlockMemory()
        self.jobs_ended_count = 0  # lets policies notice ended jobs without scanning theirs
        self.role_pool: dict[tuple[str, str], str] = {}
        self.pool_idle: dict[str, float] = {}
        self.shared_keys: set[int] = set()
        self._key_job: dict[int, str] = {}
        self._prompt_mean: dict[tuple[str, str], list[float]] = {}
        self._out_mean: dict[tuple[str, str], list[float]] = {}
        self._type_done: dict[str, float] = {}  # finished calls per type (the sum of _out_mean's counts)

    # hooks ------------------------------------------------------------------------

    def call_issued(self, req: RequestView, now: float) -> None:
        super().call_issued(req, now)
        acc = self._prompt_mean.setdefault((req.workflow_type, req.agent_role), [0.0, 0.0])
        acc[0] += req.prompt_tokens
        acc[1] += 1
        self.block_memory.call_issued(req.job_id, req.workflow_type, req.agent_role, req.agent_id, now)
        segs = self.prompt(req)
        if segs is not None:
            for key in segs[:4, 0].tolist():  # leading segments: where fixed instructions sit
                first = self._key_job.setdefault(key, req.job_id)
                if first != req.job_id:
                    self.shared_keys.add(key)

    def call_finished(self, req: RequestView, now: float) -> None:
        super().call_finished(req, now)
        acc = self._out_mean.setdefault((req.workflow_type, req.agent_role), [0.0, 0.0])
        acc[0] += req.num_output_tokens
        acc[1] += 1
        self._type_done[req.workflow_type] = self._type_done.get(req.workflow_type, 0.0) + 1

    def job_ended(self, job_id: str, now: float) -> None:
        super().job_ended(job_id, now)
        self.block_memory.job_ended(job_id)
        self.jobs_ended_count += 1

    def prompt(self, req: RequestView) -> np.ndarray | None:
        """The call's prompt segments when the client sent them and hints are used, else ``None``."""
        return prompt_of(req) if self.use_hints else None

    def upcoming_blocks(self, job_id: str, workflow_type: str) -> list[tuple[Upcoming, np.ndarray]]:
        """The calls predicted next in a job followed by block names (no prompt segments).

        With a warm model of the type: :meth:`upcoming`'s calls, each with its agent's
        conversation (a continuing instance) or its role's shared instructions (a new one).
        Cold: every agent of the job with no call in the engine, with its conversation and
        the probability its role's calls are continued (:mod:`pythia.policy.block_memory`).
        """
        mem = self.block_memory
        out: list[tuple[Upcoming, np.ndarray]] = []
        if self.warm(workflow_type):
            for u in self.upcoming(job_id) or ():
                blocks = mem.conversation(job_id, u.agent_id) if u.agent_id is not None else mem.instructions(workflow_type, u.role)
                if u.agent_id is not None and not len(blocks):
                    blocks = mem.instructions(workflow_type, u.role)
                if len(blocks):
                    out.append((u, blocks))
            return out
        for agent, role, blocks in mem.idle_agents(job_id):
            if len(blocks):
                out.append((Upcoming(role, agent, mem.continue_probability(workflow_type, role), _NO_SEGMENTS), blocks))
        return out

    # facts reported by policies that see replicas ------------------------------------

    def note_pool(self, workflow_type: str, role: str, pool: str) -> None:
        """Record that ``role`` of ``workflow_type`` runs on ``pool``."""
        self.role_pool[(workflow_type, role)] = pool

    def note_idle(self, pool: str, idle_share: float) -> None:
        """Record the share of ``pool``'s replicas about to go idle."""
        self.pool_idle[pool] = idle_share

    def mean_prompt(self, workflow_type: str, role: str) -> float | None:
        """Mean prompt tokens of the role's calls seen so far."""
        acc = self._prompt_mean.get((workflow_type, role))
        return acc[0] / acc[1] if acc and acc[1] else None

    def mean_output(self, workflow_type: str, role: str) -> float | None:
        """Mean output tokens of the role's finished calls seen so far."""
        acc = self._out_mean.get((workflow_type, role))
        return acc[0] / acc[1] if acc and acc[1] else None

    # predictions (None: no prediction; policies then behave plainly) ------------------

    def warm(self, workflow_type: str) -> bool:
        """Whether predictions exist for the type."""
        return False

    def distance(self, job_id: str) -> float | None:
        """Expected calls on the job's critical path still to finish (>= 1 while a call runs)."""
        return None

    def bound(self, req: RequestView) -> tuple[int, float] | None:
        """``(output upper bound in tokens, probability the output exceeds it)``."""
        return None

    def expected_output(self, req: RequestView) -> float | None:
        """Expected output tokens of the call."""
        return None

    def upcoming(self, job_id: str) -> Sequence[Upcoming] | None:
        """The calls predicted to come next in the job, most likely first."""
        return None

    def projection(self, job_id: str, horizon: int) -> dict[str, float] | None:
        """Expected calls per role of the job within ``horizon`` call generations."""
        return None

    def type_weight(self, workflow_type: str) -> float:
        """Scheduling weight of a type (1.0: neutral)."""
        return 1.0


def as_pythia(predictor: Predictor | None) -> PythiaPredictor:
    """The predictor if it is a Pythia one, else a cold stand-in (plain behaviour)."""
    return predictor if isinstance(predictor, PythiaPredictor) else PythiaPredictor()


# --------------------------------------------------------------------------- history


def ids_only(job: "Job") -> "Job":
    """The job as a host of a plain application logs it: IDs, agents, lengths and gaps only.

    Call dependencies, parents and prompt and output contents are dropped (outputs become
    each call's own stream, as for a call without explicit output).
    """
    from dataclasses import replace

    from pythia.workflow.trace import segments

    return replace(job, calls=[replace(c, deps=(), parent=None, prompt=segments([]), output=None) for c in job.calls])

_HISTORY_CACHE: dict[tuple[str, tuple[int, ...], int], list["Job"]] = {}


def history_jobs(source: str, workflow_type: str, seeds: Sequence[int], jobs: int,
                 history_dir: str) -> list["Job"]:
    """Jobs of ``workflow_type`` to warm-start from (cached per process: they never change)."""
    from pythia.paths import project_root
    from pythia.workflow.load import LoadOptions, load_workload

    if source == "spec":
        d = Path(history_dir)
        path = (d if d.is_absolute() else project_root() / d) / f"{workflow_type}.yaml"
    else:
        path = Path(source)
        if not path.is_absolute():
            path = project_root() / path
    if not path.is_file():
        return []
    key = (str(path), tuple(seeds), jobs)
    if key not in _HISTORY_CACHE:
        out: list[Job] = []
        for s in seeds:
            tr = load_workload(path, LoadOptions(seed=int(s), jobs=jobs))
            out.extend(j for j in tr.jobs if j.workflow_type == workflow_type)
        _HISTORY_CACHE[key] = out
    return _HISTORY_CACHE[key]


# --------------------------------------------------------------------------- the profiler predictor


class ProfilerPredictor(PythiaPredictor):
    """Registry name ``profiler``: predictions from :class:`pythia.profiler.Profiler`.

    Args:
        history: ``spec`` (warm start from the type's spec with development seeds),
            ``none`` (cold start), or a workload path.
        history_seeds: the development seeds of the generated history.
        history_jobs: jobs generated per history seed.
        history_dir: where ``history="spec"`` finds ``<workflow_type>.yaml``.
        online: learn from the run's own finished calls and jobs.
        min_jobs / quantile / prune_threshold / drift: profiler knobs (``ProfilerConfig``).
        type_weighting: ``load``: a type's scheduling weight is its fair share over its share
            of output tokens, clipped to ``[1/type_weight_clip, type_weight_clip]``; ``none``: 1.
        type_weight_clip: the clip of ``load`` weights (>= 1).
        hints: use what an annotating client sends beyond the IDs (prompt segments, call
            dependencies, the parent call); ``False``: only what a host sees of a plain
            application (the IDs, the agent instance and the engine's block names), for
            the history too.
    """

    name = "profiler"

    def __init__(self, history: str = "spec", history_seeds: Sequence[int] = (1000, 1001),
                 history_jobs: int = 100, history_dir: str = "workloads", online: bool = True,
                 min_jobs: int = 20, quantile: float = 0.99, prune_threshold: float = 0.05,
                 drift: bool = True, type_weighting: str = "load", type_weight_clip: float = 2.0,
                 hints: bool = True) -> None:
        super().__init__()
        from pythia.profiler import Profiler, ProfilerConfig

        if not isinstance(history, str) or not history:
            raise PythiaInputError(f"predictor param history={history!r} must be 'spec', 'none' or a workload path")
        seeds = tuple(history_seeds)
        if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
            raise PythiaInputError(f"predictor param history_seeds={history_seeds!r} must be non-negative integers")
        if not isinstance(history_jobs, int) or history_jobs < 1:
            raise PythiaInputError(f"predictor param history_jobs={history_jobs!r} must be a positive integer")
        if type_weighting not in ("load", "none"):
            raise PythiaInputError(f"predictor param type_weighting={type_weighting!r} must be 'load' or 'none'")
        if not type_weight_clip >= 1.0:
            raise PythiaInputError(f"predictor param type_weight_clip={type_weight_clip!r} must be >= 1")
        self.history, self.history_seeds, self.history_n = history, seeds, history_jobs
        self.history_dir, self.online = history_dir, bool(online)
        self.type_weighting, self.type_weight_clip = type_weighting, float(type_weight_clip)
        if not isinstance(hints, bool):
            raise PythiaInputError(f"predictor param hints={hints!r} must be true or false")
        self.use_hints = hints
        self.profiler: Profiler = Profiler(ProfilerConfig(
            min_jobs=min_jobs, quantile=quantile, prune_threshold=prune_threshold, drift=drift))
        self.running: dict[str, RunningJob] = {}
        self._seen_types: set[str] = set()
        self._weights: dict[str, float] = {}
        self._weights_at = -1
        self._ended = 0
        self._means: dict[str, tuple[float, dict[str, float]]] = {}
        self._bounds: dict[tuple[str, str], tuple[float, tuple[int, float] | None]] = {}
        # Per job: the profiler's last answer and its Upcoming list (kept while the answer is).
        self._upcoming: dict[str, tuple[object, list[Upcoming]]] = {}

    def _warm_start(self, workflow_type: str) -> None:
        if workflow_type in self._seen_types:
            return
        self._seen_types.add(workflow_type)
        if self.history != "none":
            jobs = history_jobs(self.history, workflow_type, self.history_seeds, self.history_n, self.history_dir)
            self.profiler.fit(jobs if self.use_hints else [ids_only(j) for j in jobs])

    # hooks -----------------------------------------------------------------------

    def job_started(self, job_id: str, workflow_type: str, workflow_id: str, now: float,
                    truth: "Job | None" = None) -> None:
        super().job_started(job_id, workflow_type, workflow_id, now)  # truth is never kept
        self._warm_start(workflow_type)
        self.running[job_id] = self.profiler.begin_job(job_id, workflow_type, workflow_id)

    def call_issued(self, req: RequestView, now: float) -> None:
        super().call_issued(req, now)
        rj = self.running.get(req.job_id)
        if rj is None:
            return
        ann = (req.annotations or {}) if self.use_hints else {}
        deps = tuple(d for d in ann.get("deps", ()) if d in rj.calls)
        parent = ann.get("parent")
        rj.issue(req.call_id, req.agent_role, agent_id=req.agent_id, deps=deps,
                 parent=parent if parent in rj.calls else None,
                 prompt=self.prompt(req), input_tokens=req.prompt_tokens)

    def call_finished(self, req: RequestView, now: float) -> None:
        super().call_finished(req, now)
        rj = self.running.get(req.job_id)
        if rj is not None and req.call_id in rj.calls:
            self.profiler.call_finished(rj, req.call_id, req.num_output_tokens, learn=self.online)

    def job_ended(self, job_id: str, now: float) -> None:
        info = self.jobs.get(job_id)
        super().job_ended(job_id, now)
        rj = self.running.pop(job_id, None)
        self._upcoming.pop(job_id, None)
        if rj is not None:
            jct = None if info is None else now - info.start_s
            self.profiler.end_job(rj, jct_s=jct, learn=self.online)
            self._ended += 1

    # queries ---------------------------------------------------------------------

    def warm(self, workflow_type: str) -> bool:
        return self.profiler.is_warm(workflow_type)

    def distance(self, job_id: str) -> float | None:
        rj = self.running.get(job_id)
        if rj is None:
            return None
        p = self.profiler.predict(rj)
        return None if p is None else max(p.expected_distance, 1.0)

    def bound(self, req: RequestView) -> tuple[int, float] | None:
        # The profiler recomputes a bound after every new sample (a partition of up to
        # 20,000 lengths); routing asks for every running call, so answers are reused until
        # 32 more calls of the role have finished.
        key = (req.workflow_type, req.agent_role)
        seen = self._out_mean.get(key, (0.0, 0.0))[1]
        hit = self._bounds.get(key)
        if hit is None or seen - hit[0] >= 32 or (hit[1] is None and seen != hit[0]):
            b = self.profiler.bound_tokens(req.workflow_type, req.agent_role)
            hit = self._bounds[key] = (seen, None if b is None else (int(b), 1.0 - self.profiler.config.quantile))
        return hit[1]

    def expected_output(self, req: RequestView) -> float | None:
        # Mean lengths come from the model snapshot (history and online samples), rebuilt
        # after every 256 finished calls of the type: a snapshot also rebuilds the regex.
        wt = req.workflow_type
        done = self._type_done.get(wt, 0.0)
        hit = self._means.get(wt)
        if hit is None or done - hit[0] >= 256:
            m = self.profiler.model(wt)
            hit = self._means[wt] = (done, {} if m is None else {r: s.mean for r, s in m.lengths.items()})
        return hit[1].get(req.agent_role)

    def upcoming(self, job_id: str) -> Sequence[Upcoming] | None:
        rj = self.running.get(job_id)
        if rj is None:
            return None
        nxt = self.profiler.next_calls(rj)
        if nxt is None:
            return None
        hit = self._upcoming.get(job_id)
        if hit is not None and hit[0] is nxt:  # the profiler's memo: the same prediction
            return hit[1]
        up = [Upcoming(n.role, n.agent_id, n.probability, n.prefix) for n in nxt]
        self._upcoming[job_id] = (nxt, up)
        return up

    def projection(self, job_id: str, horizon: int) -> dict[str, float] | None:
        rj = self.running.get(job_id)
        if rj is None:
            return None
        return self.profiler.projection(rj, min(horizon, self.profiler.config.max_horizon))

    def type_weight(self, workflow_type: str) -> float:
        if self.type_weighting == "none":
            return 1.0
        if self._weights_at != self._ended:  # shares change only when a job ends
            shares = self.profiler.type_weights("output_tokens")
            n = len(shares)
            c = self.type_weight_clip
            self._weights = {t: min(c, max(1.0 / c, (1.0 / n) / s)) for t, s in shares.items() if s > 0}
            self._weights_at = self._ended
        return self._weights.get(workflow_type, 1.0)

    def describe(self) -> dict[str, Any]:
        return {"predictor": self.name, "history": self.history, "history_seeds": list(self.history_seeds),
                "history_jobs": self.history_n, "online": self.online, "hints": self.use_hints,
                "warm_types": [t for t in self.profiler.workflow_types() if self.profiler.is_warm(t)]}
