"""The probabilistic finite automaton over agent roles, learned from call logs.

States. A call's state is ``(role, visit)``: ``visit`` counts how often the job had already
*entered* that role on the call's ancestry (0 the first time, 1 on the first retry, ...),
capped at ``max_unroll - 1``. Unrolling loops this way lets the automaton learn bounded
retries ("at most twice") exactly; summed over visits it is the plain automaton over roles
(:meth:`CompiledPFA.role_automaton`). Two pseudo-states, ``<start>`` and ``<end>``, open and
close every job.

Runs and transitions. An agent instance (``agent_id``) that calls again, depending on its own
previous call, *continues its run*: the sequence of consecutive calls of one instance in one
state is a run, and its length is the state's repetition count (the self-loop, described by
its empirical distribution instead of a geometric one). Every other dependency is a
*transition*: from a call to the calls that depend on it or that it spawned (``deps`` and
``parent``), grouped by target state; the group's size is the fan-out *width*. A call with no
dependents transitions to ``<end>``; a job's root calls are reached from ``<start>``.

Expectations. With joins (four explorers -> each engineer), counting each transition fully
would count each engineer four times. Each target call therefore credits ``1 / (number of
calls it depends on)`` to each source (*join credit*), which makes expected call counts
additive over a running job's frontier. The compiled automaton solves two absorbing-chain
systems once per model change: ``h = EL + P_exit h`` (expected calls on a path to the end,
``EL`` the mean run length) and ``F = EL + Y F`` (expected calls descending from a run, ``Y``
the join-credited transitions per run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from pythia.workflow.trace import Job

START = "<start>"
END = "<end>"
START_ID = 0
END_ID = 1
JOIN_RATIO = 0.75  # mean 1/(dependencies) of a transition's targets below this: a join
HAZARD_PRIOR = 2.0  # pseudo-runs pulling a run's continuation probability towards geometric

State = tuple[str, int]


# --------------------------------------------------------------------------- placing calls


@dataclass(slots=True)
class CallPlace:
    """Where one call sits in its job's automaton.

    Attributes:
        state: ``(role, visit)``.
        run_pos: the call's 1-based position in its instance's run.
        continues: the call whose run this one continues, if any.
        entries: per role, how often the role was entered on this call's ancestry.
        stage: the calls that started this call's run (its first call's predecessors):
            parallel instances started together share it (siblings of one fan-out).
    """

    state: State
    run_pos: int
    continues: int | None
    entries: dict[str, int]
    stage: tuple[int, ...] = ()


def place_call(
    role: str,
    agent_id: str,
    preds: Iterable[int],
    places: list[CallPlace] | dict[int, CallPlace],
    agents: list[str] | dict[int, str],
    max_unroll: int,
) -> CallPlace:
    """The :class:`CallPlace` of a call given its predecessors' places."""
    entries: dict[str, int] = {}
    cont: int | None = None
    preds = tuple(preds)
    for p in preds:
        pe = places[p].entries
        for r, n in pe.items():
            if entries.get(r, 0) < n:
                entries[r] = n
        if agents[p] == agent_id and places[p].state[0] == role and (cont is None or p > cont):
            cont = p
    if cont is not None:
        prev = places[cont]
        return CallPlace(prev.state, prev.run_pos + 1, cont, entries, prev.stage)
    visit = entries.get(role, 0)
    entries[role] = visit + 1
    return CallPlace((role, min(visit, max_unroll - 1)), 1, None, entries, preds)


def predecessors(deps: Iterable[int], parent: int | None) -> tuple[int, ...]:
    """The calls a call depends on or was spawned by, sorted and without repeats."""
    s = set(deps)
    if parent is not None:
        s.add(parent)
    return tuple(sorted(s))


@dataclass(slots=True)
class JobDecomposition:
    """A finished job seen through the automaton: places, transitions and runs.

    ``events`` holds ``(source, target, width, join_mass, source_call)`` with source
    ``START`` for the roots (``source_call`` -1) and target ``END`` for calls with no
    dependents; ``runs`` holds ``(state, length)`` per finished run; ``stages`` holds
    ``(state, width)`` per group of runs started together.
    """

    places: list[CallPlace]
    events: list[tuple[State | str, State | str, int, float, int]]
    runs: list[tuple[State, int]]
    successors: list[list[int]]
    stages: list[tuple[State, int]]


def decompose(job: Job, max_unroll: int) -> JobDecomposition:
    """Place every call of a finished ``job`` and list its transitions and runs."""
    calls = job.calls
    preds = [predecessors(c.deps, c.parent) for c in calls]
    agents = [c.agent_id or c.agent_role for c in calls]
    places: list[CallPlace] = []
    for c, pr in zip(calls, preds):
        places.append(place_call(c.agent_role, agents[c.call_id], pr, places, agents, max_unroll))
    succ: list[list[int]] = [[] for _ in calls]
    for i, pr in enumerate(preds):
        for p in pr:
            succ[p].append(i)
    events: list[tuple[State | str, State | str, int, float, int]] = []
    roots: dict[State, int] = {}
    for i, pr in enumerate(preds):
        if not pr:
            roots[places[i].state] = roots.get(places[i].state, 0) + 1
    for st, w in sorted(roots.items()):
        events.append((START, st, w, float(w), -1))
    runs: list[tuple[State, int]] = []
    for i, c in enumerate(calls):
        src = places[i].state
        groups: dict[State, list[int]] = {}
        continued = False
        for d in succ[i]:
            if places[d].continues == i:
                continued = True
                continue
            groups.setdefault(places[d].state, []).append(d)
        if not continued:
            runs.append((src, places[i].run_pos))
        if not succ[i]:
            events.append((src, END, 1, 0.0, i))
        for st, ds in sorted(groups.items()):
            mass = sum(1.0 / len(preds[d]) for d in ds)
            events.append((src, st, len(ds), mass, i))
    widths: dict[tuple[State, tuple[int, ...]], int] = {}
    for pl in places:
        if pl.continues is None:
            widths[(pl.state, pl.stage)] = widths.get((pl.state, pl.stage), 0) + 1
    stages = [(st, w) for (st, _), w in widths.items()]
    return JobDecomposition(places, events, runs, succ, stages)


# --------------------------------------------------------------------------- counts


@dataclass(slots=True)
class PFACounts:
    """Weighted counts of one workflow type's automaton, updated job by job."""

    max_unroll: int
    states: list[State] = field(default_factory=lambda: [(START, 0), (END, 0)])
    index: dict[State, int] = field(default_factory=lambda: {(START, 0): START_ID, (END, 0): END_ID})
    exits: dict[tuple[int, int], float] = field(default_factory=dict)
    mass: dict[tuple[int, int], float] = field(default_factory=dict)
    widths: dict[tuple[int, int], dict[int, float]] = field(default_factory=dict)
    runs: dict[int, dict[int, float]] = field(default_factory=dict)
    stages: dict[int, float] = field(default_factory=dict)
    targets: dict[tuple[int, int], float] = field(default_factory=dict)
    jobs: float = 0.0
    version: int = 0

    def state_id(self, st: State | str) -> int:
        """The index of a state, adding it when new (``<start>``/``<end>`` by name)."""
        if st == START:
            return START_ID
        if st == END:
            return END_ID
        assert isinstance(st, tuple)
        i = self.index.get(st)
        if i is None:
            i = len(self.states)
            self.states.append(st)
            self.index[st] = i
        return i

    def add(self, dec: JobDecomposition, weight: float = 1.0) -> None:
        """Add one decomposed job."""
        for src, dst, w, m, _ in dec.events:
            key = (self.state_id(src), self.state_id(dst))
            self.exits[key] = self.exits.get(key, 0.0) + weight
            self.mass[key] = self.mass.get(key, 0.0) + m * weight
            wd = self.widths.setdefault(key, {})
            wd[w] = wd.get(w, 0.0) + weight
            self.targets[key] = self.targets.get(key, 0.0) + w * weight
        for st, length in dec.runs:
            rd = self.runs.setdefault(self.state_id(st), {})
            rd[length] = rd.get(length, 0.0) + weight
        for st, _ in dec.stages:
            i = self.state_id(st)
            self.stages[i] = self.stages.get(i, 0.0) + weight
        self.jobs += weight
        self.version += 1

    def scale(self, keep: float) -> None:
        """Multiply all history by ``keep`` (a drift reset when 0)."""
        if keep <= 0.0:
            self.exits.clear()
            self.mass.clear()
            self.widths.clear()
            self.runs.clear()
            self.stages.clear()
            self.targets.clear()
            self.jobs = 0.0
        else:
            for d in (self.exits, self.mass, self.targets, self.stages):
                for k in d:  # type: ignore[attr-defined]
                    d[k] *= keep  # type: ignore[index]
            for nested in (*self.widths.values(), *self.runs.values()):
                for k in nested:
                    nested[k] *= keep
            self.jobs *= keep
        self.version += 1


# --------------------------------------------------------------------------- compiled chain


def _trim_range(dist: dict[int, float], share: float) -> tuple[int, int]:
    """The smallest and largest values once ``share / 2`` of the mass is cut from each tail."""
    items = sorted((v, w) for v, w in dist.items() if w > 0)
    if not items:
        return (0, 0)
    vals = np.array([v for v, _ in items])
    cum = np.cumsum([w for _, w in items])
    cum /= cum[-1]
    cut = share / 2.0
    lo = int(vals[np.searchsorted(cum, cut, side="right")]) if cut > 0 else int(vals[0])
    hi = int(vals[min(np.searchsorted(cum, 1.0 - cut, side="left"), len(vals) - 1)])
    return (min(lo, hi), hi)


@dataclass(frozen=True, slots=True)
class RoleAutomaton:
    """The automaton summed over visits: one state per role plus ``<start>``/``<end>``.

    Attributes:
        transitions: ``{source: {target: probability}}``, pruned and renormalised; the self
            loop of a role (its instances calling again) is not a transition here but
            ``repeats``.
        raw_transitions: the same before pruning.
        repeats: per role, the run-length distribution ``{length: probability}``.
        widths: per ``(source, target)``, the fan-out width distribution ``{width: probability}``.
        self_loop: per role, the probability that a call is followed by its instance's next
            call (``1 - 1 / mean run length``).
    """

    transitions: dict[str, dict[str, float]]
    raw_transitions: dict[str, dict[str, float]]
    repeats: dict[str, dict[int, float]]
    widths: dict[tuple[str, str], dict[int, float]]
    self_loop: dict[str, float]


def _normalise(row: dict[str, float]) -> dict[str, float]:
    tot = sum(row.values())
    return {k: v / tot for k, v in sorted(row.items())} if tot > 0 else {}


def _prune_row(row: np.ndarray, threshold: float) -> np.ndarray:
    tot = row.sum()
    if tot <= 0:
        return row.copy()
    q = row / tot
    keep = q >= threshold
    if not keep.any():
        keep = q == q.max()
    out = np.where(keep, q, 0.0)
    return out / out.sum()


def _reaches_end(P: np.ndarray) -> np.ndarray:
    """Which states have a path to ``<end>`` in the transition matrix ``P``."""
    ok = np.zeros(len(P), dtype=bool)
    ok[END_ID] = True
    changed = True
    while changed:
        new = ok | ((P > 0) & ok[None, :]).any(axis=1)
        changed = bool((new != ok).any())
        ok = new
    return ok


def _solve(A: np.ndarray, b: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Solve ``(I - M) x = b``; a truncated series when the system is singular or explosive."""
    try:
        x = np.linalg.solve(A, b)
        if np.all(np.isfinite(x)) and np.all(x >= -1e-9):
            return np.maximum(x, 0.0)
    except np.linalg.LinAlgError:
        pass
    x = b.copy()
    term = b.copy()
    for _ in range(1000):  # a workflow whose expected size diverges is capped, not solved
        term = M @ term
        x += term
        if term.max() < 1e-9:
            break
    return x


class CompiledPFA:
    """The automaton of one workflow type, with per-state expectations solved.

    Built from :class:`PFACounts`; read-only afterwards. Arrays are indexed by state id
    (``0`` = ``<start>``, ``1`` = ``<end>``).
    """

    def __init__(self, counts: PFACounts, prune_threshold: float, max_horizon: int) -> None:
        self.version = counts.version
        self.states: list[State] = list(counts.states)
        self.index: dict[State, int] = dict(counts.index)
        self.prune_threshold = prune_threshold
        S = len(self.states)
        self.n_states = S
        self.roles: list[str] = sorted({r for r, _ in self.states[2:]})
        self.role_of = np.array([-1, -1] + [self.roles.index(r) for r, _ in self.states[2:]], dtype=np.int64)
        raw = np.zeros((S, S))
        mass = np.zeros((S, S))
        for (s, t), w in counts.exits.items():
            raw[s, t] = w
            mass[s, t] = counts.mass[(s, t)]
        self.exit_counts = raw
        # Runs: mean length, hazard and mean residual by position.
        self.mean_run = np.zeros(S)
        self.run_count = np.zeros(S)
        self.hazard: list[np.ndarray] = [np.zeros(1) for _ in range(S)]
        self.residual: list[np.ndarray] = [np.zeros(1) for _ in range(S)]
        self.run_dist: list[dict[int, float]] = [{} for _ in range(S)]
        self.tail_hazard = np.zeros(S)  # beyond the longest run seen: geometric
        self.tail_residual = np.zeros(S)
        for s, dist in counts.runs.items():
            self._compile_runs(s, dist)
        self.mean_run[START_ID] = 0.0
        # Exit distribution, pruned; rows that would no longer reach the end keep their raw form.
        self.P_exit_raw = np.zeros((S, S))
        self.P_exit = np.zeros((S, S))
        for s in range(S):
            tot = raw[s].sum()
            if tot > 0:
                self.P_exit_raw[s] = raw[s] / tot
                self.P_exit[s] = _prune_row(raw[s], prune_threshold)
        self.P_exit[END_ID] = 0.0
        ok = _reaches_end(self.P_exit)
        if not ok[2:].all() or not ok[START_ID]:
            for s in np.flatnonzero(~ok):
                if s != END_ID and raw[s].sum() > 0:
                    self.P_exit[s] = self.P_exit_raw[s]
            ok = _reaches_end(self.P_exit)
            for s in np.flatnonzero(~ok):
                if s != END_ID:  # unreachable end in the data itself (truncated logs): leak
                    self.P_exit[s] = 0.95 * self.P_exit[s]
                    self.P_exit[s, END_ID] += 0.05 if self.P_exit[s].sum() > 0 else 1.0
        # Join-credited transitions per run, rescaled to the kept targets.
        runs = np.maximum(self.run_count, 1e-12)
        runs[START_ID] = max(counts.jobs, 1e-12)
        Y = mass / runs[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(self.P_exit_raw > 0, self.P_exit / self.P_exit_raw, 0.0)
        self.Y = Y * ratio
        self.Y[:, END_ID] = 0.0
        self.widths = {k: dict(v) for k, v in counts.widths.items()}
        self.jobs = counts.jobs
        # A join (targets depending on several of the stage's runs) is credited per stage,
        # not per run: the stage's mean width times the per-run credit.
        self.join = np.zeros((S, S), dtype=bool)
        for key, n_t in counts.targets.items():
            if n_t > 0 and counts.mass[key] / n_t < JOIN_RATIO:
                self.join[key] = True
        self.stage_width = np.ones(S)
        for st, n in counts.stages.items():
            if n > 0:
                self.stage_width[st] = self.run_count[st] / n
        self._solve_expectations()
        R = np.zeros((S, len(self.roles)))
        for s in range(2, S):
            R[s, self.role_of[s]] = 1.0
        self.P_role = self.P_exit @ R  # per state: P(next run is of role r), summed over visits
        self.Y_role = self.Y @ R  # per state: join-credited calls of role r started per run
        self.Y_role_run = np.where(self.join, 0.0, self.Y) @ R
        self.Y_role_stage = (np.where(self.join, self.Y, 0.0) @ R) * self.stage_width[:, None]
        self._compile_projection(max_horizon)
        self._compile_surprise()
        self._regex: str | None = None

    # -- construction helpers

    def _compile_runs(self, s: int, dist: dict[int, float]) -> None:
        items = sorted((L, w) for L, w in dist.items() if w > 0)
        if not items:
            return
        Lmax = items[-1][0]
        w = np.zeros(Lmax + 2)
        for L, c in items:
            w[L] = c
        total = w.sum()
        self.run_count[s] = total
        self.mean_run[s] = float((np.arange(Lmax + 2) * w).sum() / total)
        self.run_dist[s] = {L: c / total for L, c in items}
        # at_least[n] = weight of runs with L >= n. The empirical hazard is shrunk towards the
        # geometric one (1 - 1 / mean length) with HAZARD_PRIOR pseudo-runs, so a position seen
        # in a few runs never gets a certain 0 or 1.
        at_least = np.cumsum(w[::-1])[::-1]
        prior = 1.0 - 1.0 / self.mean_run[s]
        cont = np.append(at_least[1:], 0.0)
        hz = (cont + HAZARD_PRIOR * prior) / (at_least + HAZARD_PRIOR)
        hz[0] = prior
        res = np.zeros(Lmax + 3)
        res[Lmax + 2] = prior / (1.0 - prior) if prior < 1.0 else 0.0
        for n in range(Lmax + 1, 0, -1):  # residual(n) = hazard(n) * (1 + residual(n + 1))
            res[n] = hz[n] * (1.0 + res[n + 1])
        self.hazard[s] = hz
        self.residual[s] = res[: Lmax + 2]
        self.tail_hazard[s] = prior
        self.tail_residual[s] = float(res[Lmax + 2])

    def _solve_expectations(self) -> None:
        S = self.n_states
        T = np.arange(2, S)
        EL = self.mean_run[T]
        I = np.eye(len(T))
        h = np.zeros(S)
        F = np.zeros(S)
        if len(T):
            Pt = self.P_exit[np.ix_(T, T)]
            h[T] = _solve(I - Pt, EL, Pt)
            Yt = self.Y[np.ix_(T, T)]
            F[T] = _solve(I - Yt, EL, Yt)
        self.h = h  # expected calls on a path, from a fresh entry (entry call included)
        self.F = F  # expected calls descending from a fresh run (its own calls included)
        self.after_run = self.P_exit @ h  # expected path calls after a run ends
        self.spawned = self.Y @ F  # expected calls caused by a run's transitions
        # The same split by kind: per run (free fan-out) and per stage (joins).
        self.spawned_run = np.where(self.join, 0.0, self.Y) @ F
        self.spawned_stage = (np.where(self.join, self.Y, 0.0) @ F) * self.stage_width
        self.h[START_ID] = self.after_run[START_ID]
        self.F[START_ID] = self.spawned[START_ID]

    def _compile_projection(self, max_horizon: int) -> None:
        """Cumulative expected calls per role within ``1..max_horizon`` call generations."""
        S = self.n_states
        M = np.zeros((S, S))  # per call: expected next-generation calls by state
        for s in range(2, S):
            EL = self.mean_run[s]
            if EL <= 0:
                continue
            M[s, s] += 1.0 - 1.0 / EL
            M[s] += self.Y[s] / EL
        M[START_ID] = self.Y[START_ID]
        R = np.zeros((S, max(len(self.roles), 1)))
        for s in range(2, S):
            R[s, self.role_of[s]] = 1.0
        cum = np.zeros((max_horizon + 1, S, R.shape[1]))
        power = np.eye(S)
        for k in range(1, max_horizon + 1):
            power = power @ M
            cum[k] = cum[k - 1] + power @ R
        self.projection = cum

    def _compile_surprise(self) -> None:
        """Per-state transition surprise ``-log p(t|s) - H(s)`` for drift detection.

        Raw empirical probabilities, not smoothed ones: a smoothed surprise shifts as counts
        grow, which a change detector would mistake for drift. A target never seen from a
        state gets the surprise of probability ``1 / (n + 1)``. Only informative events
        (a state with several targets, or an unseen target) are monitored.
        """
        S = self.n_states
        n = self.exit_counts.sum(axis=1)
        p = self.P_exit_raw
        with np.errstate(divide="ignore", invalid="ignore"):
            logp = np.where(p > 0, -np.log(np.where(p > 0, p, 1.0)), 0.0)
        H = (p * logp).sum(axis=1)
        self.surprise = logp - H[:, None]
        self.surprise_var = np.maximum((p * logp**2).sum(axis=1) - H**2, 0.0)
        self.surprise_unseen = np.log(n + 1.0) - H
        self.informative = (p > 0).sum(axis=1) >= 2
        logL = np.zeros(S)
        sdL = np.ones(S)
        for s in range(2, S):
            d = self.run_dist[s]
            if d:
                L = np.log(np.array(list(d)))
                w = np.array(list(d.values()))
                logL[s] = float((L * w).sum())
                sdL[s] = max(float(np.sqrt((w * (L - logL[s]) ** 2).sum())), 0.05)
        self.run_log_mean = logL
        self.run_log_sd = sdL

    # -- queries

    def state_id(self, st: State) -> int | None:
        """The id of a state, ``None`` when never observed."""
        return self.index.get(st)

    def hazard_at(self, s: int, n: int) -> float:
        """P(the run of a call at position ``n`` of state ``s`` continues)."""
        hz = self.hazard[s]
        return float(hz[n]) if n < len(hz) else float(self.tail_hazard[s])

    def residual_at(self, s: int, n: int) -> float:
        """Expected further calls of a run whose ``n``-th call has been issued."""
        res = self.residual[s]
        return float(res[n]) if n < len(res) else float(self.tail_residual[s])

    def name(self, s: int) -> str:
        """The role of state ``s`` (``<start>``/``<end>`` for the pseudo-states)."""
        return self.states[s][0]

    def width_range(self, s: int, t: int) -> tuple[int, int]:
        """The central fan-out width range of transitions ``s -> t``."""
        return _trim_range(self.widths.get((s, t), {1: 1.0}), self.prune_threshold)

    def run_range(self, s: int) -> tuple[int, int]:
        """The central run-length range of state ``s``."""
        return _trim_range({k: v for k, v in self.run_dist[s].items()} or {1: 1.0}, self.prune_threshold)

    def role_automaton(self) -> RoleAutomaton:
        """The automaton with one state per role (visits summed), pruned and raw."""
        raw: dict[str, dict[str, float]] = {}
        wid: dict[tuple[str, str], dict[int, float]] = {}
        for (s, t), w in self.widths.items():
            a, b = self.name(s), self.name(t)
            for width, c in w.items():
                raw.setdefault(a, {})[b] = raw.get(a, {}).get(b, 0.0) + c
                d = wid.setdefault((a, b), {})
                d[width] = d.get(width, 0.0) + c
        raw_n = {a: _normalise(row) for a, row in sorted(raw.items())}
        pruned: dict[str, dict[str, float]] = {}
        for a, row in raw_n.items():
            kept = {b: p for b, p in row.items() if p >= self.prune_threshold} or {max(row, key=row.__getitem__): 1.0}
            pruned[a] = _normalise(kept)
        reps: dict[str, dict[int, float]] = {}
        for s in range(2, self.n_states):
            d = reps.setdefault(self.name(s), {})
            for L, p in self.run_dist[s].items():
                d[L] = d.get(L, 0.0) + p * self.run_count[s]
        repeats = {r: {L: float(c / sum(d.values())) for L, c in sorted(d.items())} for r, d in sorted(reps.items()) if d}
        self_loop = {r: float(1.0 - 1.0 / sum(L * p for L, p in d.items())) for r, d in repeats.items()}
        return RoleAutomaton(
            transitions=pruned,
            raw_transitions=raw_n,
            repeats=repeats,
            widths={k: {w: c / sum(v.values()) for w, c in sorted(v.items())} for k, v in sorted(wid.items())},
            self_loop=self_loop,
        )

    def regex(self, min_path_prob: float) -> str:
        """The bounded regular expression of the main paths (memoised)."""
        if self._regex is None:
            from pythia.profiler.regex import summarise

            self._regex = summarise(self, min_path_prob)
        return self._regex
