"""The hooks an engine host calls, and the request view it hands them: no policy lives here.

The vLLM scheduler plugin (:mod:`pythia.serve.vllm_scheduler`) is an adapter: every decision
it carries out comes from two hook objects.

- :class:`SchedulingHooks` makes the waiting queue (whose order is the policy's) and names the
  preemption victim when KV blocks run out;
- :class:`CacheHooks` returns cache actions (pin, unpin, demote) after a call finishes and at
  each engine step; the host carries them out on vLLM's block pool.

These are the shapes of :class:`pythia.policy.base.SchedulingPolicy` and
:class:`pythia.policy.base.CachePolicy`, so the same policy objects run in the simulator and
inside vLLM unchanged. This module imports neither the simulator nor vLLM: the request view
reads a vLLM ``Request`` by attribute, so it is testable without an engine.

Defaults reproduce stock vLLM exactly: :class:`FCFSScheduling` (new calls at the back,
preempted calls at the front, the last admitted call preempted first) and :class:`LRUCache`
(no actions). :class:`PriorityScheduling` turns a ``priority(view, now)`` function into a
queue, for policies that are easiest to write as a score.
"""

from __future__ import annotations

import bisect
import importlib
import itertools
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from pythia.errors import PythiaInputError
from pythia.workflow.annotation import CallAnnotation

HINT_PREFIX = "pythia_hint."
_MASK63 = (1 << 63) - 1


# --------------------------------------------------------------------------- annotation


@dataclass(frozen=True, slots=True)
class ParsedAnnotation:
    """What the host learned from a request's ``extra_args``.

    Attributes:
        annotation: the call annotation, or ``None`` (absent or malformed).
        hints: predictions and other hints (``pythia_hint.<name>`` keys, prefix removed).
        malformed: an annotation was present but invalid; the call is served unannotated.
        error: the reason, when malformed.
    """

    annotation: CallAnnotation | None
    hints: dict[str, Any]
    malformed: bool = False
    error: str | None = None


def parse_extra_args(extra_args: Mapping[str, Any] | None) -> ParsedAnnotation:
    """Parse ``SamplingParams.extra_args``; never raises (a bad annotation is reported, not fatal)."""
    if not extra_args:
        return ParsedAnnotation(None, {})
    hints = {k[len(HINT_PREFIX):]: v for k, v in extra_args.items() if isinstance(k, str) and k.startswith(HINT_PREFIX)}
    try:
        ann = CallAnnotation.from_extra_args(extra_args)
    except PythiaInputError as e:
        return ParsedAnnotation(None, hints, malformed=True, error=str(e))
    except (TypeError, AttributeError, ValueError) as e:  # non-string keys and the like
        return ParsedAnnotation(None, hints, malformed=True, error=f"unreadable annotation ({e})")
    return ParsedAnnotation(ann, hints)


def block_hash_id(block_hash: bytes) -> int:
    """A 63-bit integer naming an engine block hash (its first 8 bytes), as policies expect."""
    return int.from_bytes(bytes(block_hash[:8]), "little") & _MASK63


# --------------------------------------------------------------------------- request view


class EngineRequestView:
    """A :class:`pythia.policy.views.RequestView` over one engine request.

    Engine state (tokens computed, preemptions) is read live from the wrapped request, so a
    view is created once per request and never copied per step. ``request`` is the engine's
    object (a vLLM ``Request``), for the host only.
    """

    __slots__ = (
        "request", "request_id", "engine_request_id", "annotation", "malformed", "annotations",
        "job_id", "workflow_type", "workflow_id", "agent_role", "agent_id", "call_id",
        "client_priority", "admitted", "_hash_len", "_hashes",
    )

    def __init__(self, request: Any, view_id: int, parsed: ParsedAnnotation, client_priority: int = 0) -> None:
        self.request = request
        self.request_id = view_id
        self.engine_request_id = str(request.request_id)
        self.annotation = parsed.annotation
        self.malformed = parsed.malformed
        self.annotations: dict[str, Any] = dict(parsed.hints)
        ann = parsed.annotation
        if ann is not None:
            self.job_id = ann.workflow_id
            self.workflow_type = ann.workflow_type
            self.workflow_id = ann.workflow_id
            self.agent_role = ann.agent_role
            self.agent_id = ann.agent_role
            self.call_id = ann.step if ann.step is not None else -1
            if ann.parent_call_id is not None:
                self.annotations.setdefault("parent_call_id", ann.parent_call_id)
        else:
            # An unannotated call is a job of its own, as a stock engine sees it.
            self.job_id = self.workflow_id = self.engine_request_id
            self.workflow_type = self.agent_role = self.agent_id = ""
            self.call_id = -1
        self.client_priority = client_priority
        self.admitted = False
        self._hash_len = -1
        self._hashes = np.empty(0, dtype=np.int64)

    @property
    def annotated(self) -> bool:
        """True when the call carried a valid annotation."""
        return self.annotation is not None

    @property
    def prompt_tokens(self) -> int:
        """Prompt length."""
        return int(self.request.num_prompt_tokens)

    @property
    def num_computed_tokens(self) -> int:
        """Tokens whose KV is in the cache."""
        return int(self.request.num_computed_tokens)

    @property
    def num_output_tokens(self) -> int:
        """Tokens generated so far."""
        return int(self.request.num_output_tokens)

    @property
    def max_output_tokens(self) -> int:
        """The call's output cap (``max_tokens``)."""
        return int(self.request.max_tokens)

    @property
    def arrival_s(self) -> float:
        """When the engine received the call (wall clock, seconds); hooks get ``now`` on the same clock."""
        return float(self.request.arrival_time)

    @property
    def num_preemptions(self) -> int:
        """Times the engine preempted the call."""
        return int(self.request.num_preemptions)

    @property
    def block_hashes(self) -> np.ndarray:
        """63-bit ids of the chained hashes of the request's full blocks (see :func:`block_hash_id`)."""
        hashes = self.request.block_hashes
        if len(hashes) != self._hash_len:
            # Blocks are only appended, so convert just the new tail.
            old = self._hashes
            start = len(old) if 0 <= self._hash_len <= len(hashes) else 0
            new = np.fromiter((block_hash_id(h) for h in hashes[start:]), dtype=np.int64)
            self._hashes = np.concatenate([old[:start], new]) if start else new
            self._hash_len = len(hashes)
        return self._hashes

    def raw_block_hashes(self) -> list[Any]:
        """The engine's own block hashes (bytes in vLLM), for the host."""
        return list(self.request.block_hashes)

    def __repr__(self) -> str:
        return f"EngineRequestView({self.engine_request_id!r}, role={self.agent_role!r}, job={self.job_id!r})"


# --------------------------------------------------------------------------- hook protocols


@runtime_checkable
class WaitingQueueLike(Protocol):
    """A waiting queue of request views whose order is the policy's (vLLM's ``RequestQueue`` shape)."""

    def add(self, req: Any) -> None: ...
    def prepend(self, req: Any) -> None: ...
    def peek(self) -> Any: ...
    def pop(self) -> Any: ...
    def remove(self, req: Any) -> None: ...
    def refresh(self, now: float) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]: ...


@runtime_checkable
class SchedulingHooks(Protocol):
    """Orders waiting calls and names preemption victims (:class:`pythia.policy.base.SchedulingPolicy`).

    ``dynamic``: the order can change with time alone (aging); the host then calls the queue's
    ``refresh(now)`` before every step.
    """

    name: str
    dynamic: bool

    def new_queue(self) -> WaitingQueueLike:
        """A fresh, empty waiting queue for one engine."""
        ...

    def victim(self, running: Sequence[Any], now: float) -> Any:
        """The running call to preempt when KV blocks run out."""
        ...


@runtime_checkable
class CacheActionLike(Protocol):
    """A cache action (:class:`pythia.policy.base.CacheAction`): ``kind`` and block hash ids."""

    kind: str
    hashes: np.ndarray


@runtime_checkable
class CacheHooks(Protocol):
    """Decides what stays cached beyond LRU (:class:`pythia.policy.base.CachePolicy`).

    The vLLM host carries out ``pin``, ``unpin`` and ``demote``; other kinds (offload,
    prefetch, precompute) are counted as unsupported and skipped.
    """

    name: str

    def on_finish(self, req: Any, replica: Any, now: float) -> Sequence[CacheActionLike]:
        """Actions after a call finished (its blocks just became evictable)."""
        ...

    def on_tick(self, replicas: Sequence[Any], now: float) -> Sequence[CacheActionLike]:
        """Periodic actions, called once per engine step."""
        ...


# --------------------------------------------------------------------------- defaults


class FCFSQueue:
    """vLLM's FCFS order: a deque, new calls at the back, preempted calls at the front."""

    __slots__ = ("_q",)

    def __init__(self) -> None:
        self._q: deque[Any] = deque()

    def add(self, req: Any) -> None:
        """Enqueue at the back."""
        self._q.append(req)

    def prepend(self, req: Any) -> None:
        """Put back at the front (a preempted or skipped call)."""
        self._q.appendleft(req)

    def peek(self) -> Any:
        """The front call."""
        if not self._q:
            raise IndexError("peek from an empty queue")
        return self._q[0]

    def pop(self) -> Any:
        """Remove and return the front call."""
        return self._q.popleft()

    def remove(self, req: Any) -> None:
        """Remove one call."""
        self._q.remove(req)

    def refresh(self, now: float) -> None:
        """FCFS never reorders."""

    def __len__(self) -> int:
        return len(self._q)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._q)


class FCFSScheduling:
    """Stock vLLM scheduling: arrival order; preempt the most recently admitted running call."""

    name = "fcfs"
    dynamic = False
    is_stock = True  # lets the host skip building views for the victim choice

    def new_queue(self) -> FCFSQueue:
        """An empty FCFS queue."""
        return FCFSQueue()

    def victim(self, running: Sequence[Any], now: float) -> Any:
        """The last admitted running call (vLLM's ``running[-1]``)."""
        return running[-1]


class LRUCache:
    """Stock vLLM prefix caching: no pins, no demotions; the pool's LRU order decides."""

    name = "lru"
    is_stock = True

    def on_finish(self, req: Any, replica: Any, now: float) -> Sequence[CacheActionLike]:
        """No action."""
        return ()

    def on_tick(self, replicas: Sequence[Any], now: float) -> Sequence[CacheActionLike]:
        """No action."""
        return ()


class PriorityQueue:
    """A waiting queue ordered by ``(priority, tiebreak)``: lower priority values go first.

    Ties keep vLLM's FCFS semantics: ``add`` puts a call behind every equal-priority call,
    ``prepend`` in front of them (a preempted call resumes first among equals). With a
    constant priority the order is exactly :class:`FCFSQueue`'s. ``refresh`` recomputes every
    priority (aging) and re-sorts; it is called each step when the policy is dynamic.
    """

    __slots__ = ("_policy", "_items", "_keys", "_back", "_front", "_now")

    def __init__(self, policy: "PriorityScheduling") -> None:
        self._policy = policy
        # Sorted by descending key so that the front of the queue is the list's end (O(1) pop).
        self._items: list[Any] = []
        self._keys: dict[int, tuple[float, int]] = {}
        self._back = itertools.count(1)
        self._front = itertools.count(-1, -1)
        self._now = 0.0

    def _neg(self, req: Any) -> tuple[float, int]:
        p, t = self._keys[id(req)]
        return (-p, -t)

    def _insert(self, req: Any, tiebreak: int) -> None:
        self._keys[id(req)] = (float(self._policy.priority(req, self._now)), tiebreak)
        bisect.insort(self._items, req, key=self._neg)

    def add(self, req: Any) -> None:
        """Enqueue behind every call of equal priority."""
        self._insert(req, next(self._back))

    def prepend(self, req: Any) -> None:
        """Enqueue in front of every call of equal priority."""
        self._insert(req, next(self._front))

    def peek(self) -> Any:
        """The call with the lowest priority value."""
        if not self._items:
            raise IndexError("peek from an empty queue")
        return self._items[-1]

    def pop(self) -> Any:
        """Remove and return :meth:`peek`'s call."""
        req = self._items.pop()
        del self._keys[id(req)]
        return req

    def remove(self, req: Any) -> None:
        """Remove one call."""
        for i in range(len(self._items) - 1, -1, -1):
            if self._items[i] is req:
                del self._items[i]
                del self._keys[id(req)]
                return
        raise ValueError("request not in queue")

    def refresh(self, now: float) -> None:
        """Recompute every priority at ``now`` and re-sort."""
        self._now = now
        prio = self._policy.priority
        for req in self._items:
            self._keys[id(req)] = (float(prio(req, now)), self._keys[id(req)][1])
        self._items.sort(key=self._neg)

    def priority_of(self, req: Any) -> float:
        """The priority value the queue holds for ``req``."""
        return self._keys[id(req)][0]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Any]:
        return reversed(self._items)


class PriorityScheduling(ABC):
    """Scheduling written as a score: lower ``priority(view, now)`` is served first.

    The victim is the running call with the highest priority value; ties go to the most
    recently admitted, as in vLLM.
    """

    name: str = "priority"
    dynamic: bool = False

    @abstractmethod
    def priority(self, req: Any, now: float) -> float:
        """The priority value of a waiting or running call (lower first)."""

    def new_queue(self) -> PriorityQueue:
        """An empty queue ordered by :meth:`priority`."""
        return PriorityQueue(self)

    def victim(self, running: Sequence[Any], now: float) -> Any:
        """The running call with the highest priority value (the latest admitted among ties)."""
        best_i, best_p = len(running) - 1, float("-inf")
        for i in range(len(running) - 1, -1, -1):
            p = float(self.priority(running[i], now))
            if p > best_p:
                best_i, best_p = i, p
        return running[best_i]


class RolePriority(PriorityScheduling):
    """A static example policy: agent roles in a given order, unannotated calls last.

    It exists to exercise the host (tests, examples); Pythia's own policies live in
    :mod:`pythia.policy`.
    """

    name = "role-priority"

    def __init__(self, roles: Sequence[str]) -> None:
        self.rank = {r: i for i, r in enumerate(roles)}

    def priority(self, req: Any, now: float) -> float:
        """The role's position in ``roles``; unknown roles after every listed one."""
        return float(self.rank.get(req.agent_role, len(self.rank)))


# --------------------------------------------------------------------------- loading


@dataclass
class Hooks:
    """The hooks one engine uses.

    ``predictor`` is the run's workflow service (:class:`pythia.policy.workflow.Predictor`),
    when the policies share one: the host reports jobs starting and calls being issued and
    finishing to it.
    """

    scheduling: Any = field(default_factory=FCFSScheduling)
    cache: Any = field(default_factory=LRUCache)
    source: str = "fcfs"
    predictor: Any = None

    @property
    def is_stock(self) -> bool:
        """True when both hooks reproduce stock vLLM (the host takes its fast paths)."""
        return bool(getattr(self.scheduling, "is_stock", False) and getattr(self.cache, "is_stock", False))


def load_hooks(spec: str | None) -> Hooks:
    """Build the hooks named by ``spec``.

    - ``None``, ``""`` or ``"fcfs"``: stock vLLM behaviour;
    - ``"roles:a,b,c"``: :class:`RolePriority` over those roles;
    - ``"system:NAME"``: the scheduler and cache policies of ``baselines/NAME.yaml``;
    - ``"module:attr"``: a callable returning a :class:`Hooks`, or an object with
      ``scheduler``/``cache`` (or ``scheduling``/``cache``) attributes, or a scheduling hook.
    """
    if not spec or spec == "fcfs":
        return Hooks()
    kind, _, arg = spec.partition(":")
    if kind == "roles":
        roles = [r for r in arg.split(",") if r]
        if not roles:
            raise PythiaInputError(f"hooks {spec!r}: name at least one role after 'roles:'")
        return Hooks(scheduling=RolePriority(roles), source=spec)
    if kind == "system":
        from pythia.policy.systems import load_system  # the policy package hosts its own registry

        policies = load_system(arg).build()
        return _hooks_from_object(policies, spec)
    if not arg:
        raise PythiaInputError(f"hooks {spec!r}: expected fcfs, roles:A,B, system:NAME or module:attr")
    try:
        target = getattr(importlib.import_module(kind), arg)
    except (ImportError, AttributeError) as e:
        raise PythiaInputError(f"hooks {spec!r}: cannot import ({e})") from None
    obj = target() if callable(target) and not isinstance(target, type) else target
    if isinstance(obj, type):
        obj = obj()
    return _hooks_from_object(obj, spec)


def _hooks_from_object(obj: Any, spec: str) -> Hooks:
    if isinstance(obj, Hooks):
        return obj
    sched = getattr(obj, "scheduling", None) or getattr(obj, "scheduler", None)
    cache = getattr(obj, "cache", None)
    if sched is None and hasattr(obj, "new_queue"):
        sched = obj
    if sched is None:
        raise PythiaInputError(f"hooks {spec!r}: the object has no scheduling hooks (new_queue, victim)")
    for name in ("new_queue", "victim"):
        if not callable(getattr(sched, name, None)):
            raise PythiaInputError(f"hooks {spec!r}: scheduling hooks lack {name}()")
    if cache is not None:
        for name in ("on_finish", "on_tick"):
            if not callable(getattr(cache, name, None)):
                raise PythiaInputError(f"hooks {spec!r}: cache hooks lack {name}()")
    return Hooks(scheduling=sched, cache=cache or LRUCache(), source=spec, predictor=getattr(obj, "predictor", None))
