"""Autellix (Luo et al., arXiv 2502.13965): program-level attained service with locality-aware load balancing.

Scheduling. Autellix gives each LLM call the priority of its program's *attained service*
(the service the program's earlier calls received), so short programs are not stuck behind
long ones (least-attained-service at the program level):

- PLAS, for single-threaded programs: the program's total attained service;
- ATLAS, for multi-threaded programs: the attained service along the program's critical
  path, so a call that starts a new thread inherits the longest thread so far rather than
  the sum over all parallel threads. On a sequential program ATLAS equals PLAS.

Priorities are discretised into ``num_queues`` queues (a multi-level queue; within a queue,
first come first served) with exponentially growing boundaries ``first_quantum_tokens *
2**k``; anti-starvation promotes a call to the top queue when its program has spent more
than ``starvation_ratio`` times as long waiting in queues as doing anything else. Service is
counted in tokens (prompt tokens computed plus output tokens generated), the workflow
service's ``attained_tokens``. Under KV pressure the victim is the running call with the
lowest priority (most attained service). Autellix also preempts running calls for waiting
calls of higher priority; a vLLM-style engine preempts only under memory pressure, so here
priorities order admission and choose victims only.

Thread structure. Autellix's front end sees which calls a program issues in parallel. Here
a thread is an agent instance (``agent_id``); a call of a new thread starts from the longest
critical path finished so far (a join), a later call of the same thread continues its own.
:class:`ThreadTracker` (predictor ``autellix``) keeps these program-level facts; it reads
nothing but the calls hosts report.

Load balancing. Autellix routes a program's calls to the engine that served the program
before (its KV is there) unless the call is short (at most ``short_prompt_tokens``, where
prefill is cheap), which goes to the least loaded engine, as does a program's first call.
"""

from __future__ import annotations

import math
from typing import Sequence

from pythia.policy.base import Router, SchedulingPolicy, WaitingQueue
from pythia.policy.baseline_common import KeyedQueue, ProgramHomes, check, least_loaded, positive
from pythia.policy.views import ReplicaView, RequestView
from pythia.policy.workflow import JobTracker, Predictor

MODES = ("atlas", "plas")


class ThreadTracker(JobTracker):
    """Program-level facts plus each call's critical-path attained service (Autellix's ATLAS).

    ``call_cp(request_id)`` is the critical-path service a call inherits when it is issued;
    ``job_wait_s`` the program's accumulated queueing time (reported by the scheduler).
    """

    name = "autellix"

    def __init__(self) -> None:
        super().__init__()
        self.thread_cp: dict[str, dict[str, int]] = {}  # job -> agent_id -> critical path at its latest call end
        self.cp_max: dict[str, int] = {}  # job -> longest critical path finished so far
        self.cp_at_issue: dict[int, int] = {}  # request id -> inherited critical-path service
        self.wait_s: dict[str, float] = {}

    def job_started(self, job_id, workflow_type, workflow_id, now, truth=None) -> None:  # type: ignore[no-untyped-def]
        super().job_started(job_id, workflow_type, workflow_id, now)  # truth is not passed on
        self.thread_cp[job_id] = {}
        self.cp_max[job_id] = 0
        self.wait_s[job_id] = 0.0

    def call_issued(self, req: RequestView, now: float) -> None:
        super().call_issued(req, now)
        threads = self.thread_cp.get(req.job_id)
        if threads is not None:
            self.cp_at_issue[req.request_id] = threads.get(req.agent_id, self.cp_max[req.job_id])

    def call_finished(self, req: RequestView, now: float) -> None:
        super().call_finished(req, now)
        base = self.cp_at_issue.pop(req.request_id, None)
        threads = self.thread_cp.get(req.job_id)
        if base is None or threads is None:
            return
        cp = base + req.prompt_tokens + req.num_output_tokens
        threads[req.agent_id] = cp
        if cp > self.cp_max[req.job_id]:
            self.cp_max[req.job_id] = cp

    def job_ended(self, job_id: str, now: float) -> None:
        super().job_ended(job_id, now)
        self.thread_cp.pop(job_id, None)
        self.cp_max.pop(job_id, None)
        self.wait_s.pop(job_id, None)

    def call_cp(self, request_id: int) -> int | None:
        """Critical-path service inherited by a live call (``None`` if unknown)."""
        return self.cp_at_issue.get(request_id)


class AutellixScheduler(SchedulingPolicy):
    """PLAS/ATLAS priorities in discretised queues with anti-starvation (see the module docstring).

    Args:
        mode: ``atlas`` (critical-path service; equals PLAS on sequential programs) or ``plas``
            (total program service).
        num_queues: number of priority queues.
        first_quantum_tokens: upper bound of the first queue; each next queue doubles it.
        starvation_ratio: promote a call to the top queue when its program's queueing time
            exceeds this multiple of the program's other elapsed time.
    """

    name = "autellix"
    dynamic = True  # service grows and waits age while calls wait

    def __init__(self, mode: str = "atlas", num_queues: int = 10, first_quantum_tokens: int = 4096,
                 starvation_ratio: float = 2.0) -> None:
        check(mode in MODES, self.name, "mode", f"{mode!r} is unknown; known: {', '.join(MODES)}")
        self.mode = mode
        self.num_queues = positive(self.name, "num_queues", num_queues, integer=True)
        self.first_quantum_tokens = positive(self.name, "first_quantum_tokens", first_quantum_tokens, integer=True)
        self.starvation_ratio = positive(self.name, "starvation_ratio", starvation_ratio)
        self.predictor: Predictor | None = None
        self._queued_at: dict[int, float] = {}

    def bind(self, predictor: Predictor) -> None:
        """Use the run's workflow service (``ThreadTracker`` adds the critical path)."""
        self.predictor = predictor

    def service(self, req: RequestView) -> int:
        """The call's attained service under the chosen mode (tokens)."""
        p = self.predictor
        if p is None:
            return 0
        if self.mode == "atlas" and isinstance(p, ThreadTracker):
            cp = p.call_cp(req.request_id)
            if cp is not None:
                return cp
        info = p.job(req.job_id)
        return info.attained_tokens if info is not None else 0

    def queue_of(self, service_tokens: int) -> int:
        """The discretised priority queue (0 = highest) of an attained service."""
        if service_tokens < self.first_quantum_tokens:
            return 0
        k = int(math.log2(service_tokens / self.first_quantum_tokens)) + 1
        return min(k, self.num_queues - 1)

    def starving(self, req: RequestView, now: float) -> bool:
        """Autellix's anti-starvation test on the call's program."""
        p = self.predictor
        info = p.job(req.job_id) if p is not None else None
        if info is None:
            return False
        waited = now - req.arrival_s
        if isinstance(p, ThreadTracker):
            waited += p.wait_s.get(req.job_id, 0.0)
        other = max(now - info.start_s - waited, 1e-9)
        return waited > self.starvation_ratio * other

    def key(self, req: RequestView, now: float) -> tuple:
        """Sort key: (queue, arrival) with starving calls in queue 0."""
        q = 0 if self.starving(req, now) else self.queue_of(self.service(req))
        return (q, req.arrival_s)

    def new_queue(self) -> WaitingQueue:
        return _AutellixQueue(self)

    def victim(self, running: Sequence[RequestView], now: float) -> RequestView:
        # Lowest priority: the most attained service; the latest arrival among equals.
        return max(reversed(running), key=lambda r: (self.queue_of(self.service(r) + r.num_computed_tokens), r.arrival_s))


class _AutellixQueue(KeyedQueue):
    """Keyed queue that reports each call's queueing time to the program's wait total."""

    __slots__ = ("policy",)

    def __init__(self, policy: AutellixScheduler) -> None:
        super().__init__(policy.key)
        self.policy = policy

    def pop(self) -> RequestView:
        req = super().pop()
        p = self.policy.predictor
        if isinstance(p, ThreadTracker) and req.job_id in p.wait_s:
            p.wait_s[req.job_id] += max(0.0, self._now - req.arrival_s)
        return req


class AutellixRouter(Router):
    """Locality-aware load balancing: a program's long calls stay where its KV is.

    Args:
        short_prompt_tokens: calls with at most this many prompt tokens go to the least
            loaded replica (Autellix: 2048).
    """

    name = "autellix_locality"

    def __init__(self, short_prompt_tokens: int = 2048) -> None:
        self.short_prompt_tokens = positive(self.name, "short_prompt_tokens", short_prompt_tokens,
                                            integer=True, allow_zero=True)
        self.homes = ProgramHomes()  # each program's replica of its latest long call
        self.predictor: Predictor | None = None

    def bind(self, predictor: Predictor) -> None:
        """Used to forget the placements of ended programs."""
        self.predictor = predictor

    def route(self, req: RequestView, replicas: Sequence[ReplicaView], now: float) -> int:
        homes = self.homes
        key = homes.key(req, replicas, self.predictor)
        if req.prompt_tokens > self.short_prompt_tokens:
            j = homes.index(key, replicas)
            if j is not None:
                return j
        i = least_loaded(replicas)
        if req.prompt_tokens > self.short_prompt_tokens or key not in homes.home:
            homes.home[key] = replicas[i].replica_id
        return i
