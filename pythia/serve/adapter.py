"""The request view an engine host hands Pythia's policies, and how the policies are loaded.

The vLLM scheduler plugin (:mod:`pythia.serve.vllm_scheduler`) is an adapter: every decision
it carries out comes from the policy objects of :mod:`pythia.policy`, the same objects the
simulator hosts (one policy code in every host).

- the scheduling policy (:class:`pythia.policy.base.SchedulingPolicy`) makes the waiting
  queue (whose order is the policy's) and names the preemption victim when KV blocks run out;
- the cache policy (:class:`pythia.policy.base.CachePolicy`) returns cache actions (pin,
  unpin, demote) after a call finishes and at each engine step; the host carries them out on
  vLLM's block pool.

The defaults are the ``vllm`` system's policies (``baselines/vllm.yaml``: FCFS and LRU), which
reproduce stock vLLM exactly. This module imports neither the simulator nor vLLM: the request
view reads a vLLM ``Request`` by attribute, so it is testable without an engine.

Block names. vLLM names a KV block by a hash of its token ids; Pythia's policies name blocks by
hashes of the prompt *segments* (:mod:`pythia.workflow.blocks`), which they can compute for
prompts that do not exist yet (predicted next calls). A client that sends a call's segments as
hints (``pythia_hint.prompt`` and ``pythia_hint.output``, flattened ``[key, offset, tokens]``
rows; the replay client does) lets the view name the request's blocks by segment hashes, and
the host pairs each with the engine hash of the block at the same position. Without them the
view names blocks by the engine hashes themselves (:func:`block_hash_id`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from pythia.errors import PythiaInputError
from pythia.policy.base import SchedulingPolicy
from pythia.policy.fcfs import FCFS
from pythia.policy.lru import LRU
from pythia.workflow.annotation import CallAnnotation
from pythia.workflow.blocks import sequence_hashes

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
        bad_hints: names of hints dropped because their value had the wrong shape.
    """

    annotation: CallAnnotation | None
    hints: dict[str, Any]
    malformed: bool = False
    error: str | None = None
    bad_hints: tuple[str, ...] = ()


def parse_extra_args(extra_args: Mapping[str, Any] | None) -> ParsedAnnotation:
    """Parse ``SamplingParams.extra_args``; never raises (a bad annotation is reported, not fatal).

    Hints a policy reads in a known shape are checked here and dropped when malformed (the
    call is still served and annotated): ``prompt``/``output`` (segments, see
    :func:`segments_hint`), ``deps`` (call ids), ``parent`` and ``call_id`` (a call id) and
    ``last_call`` (the job's final call).
    """
    if not extra_args:
        return ParsedAnnotation(None, {})
    hints: dict[str, Any] = {}
    bad: list[str] = []
    for k, v in extra_args.items():
        if not (isinstance(k, str) and k.startswith(HINT_PREFIX)):
            continue
        name = k[len(HINT_PREFIX):]
        checked = _check_hint(name, v)
        if checked is _BAD:
            bad.append(name)
        else:
            hints[name] = checked
    try:
        ann = CallAnnotation.from_extra_args(extra_args)
    except PythiaInputError as e:
        return ParsedAnnotation(None, hints, malformed=True, error=str(e))
    except (TypeError, AttributeError, ValueError) as e:  # non-string keys and the like
        return ParsedAnnotation(None, hints, malformed=True, error=f"unreadable annotation ({e})")
    if bad:
        return ParsedAnnotation(ann, hints, bad_hints=tuple(bad))
    return ParsedAnnotation(ann, hints)


_BAD = object()


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def segments_hint(value: Any) -> np.ndarray | None:
    """Segments sent flat as ``[key, offset, tokens, key, offset, tokens, ...]``, as an ``(n, 3)`` array.

    ``None`` when the value is not such a list (integers, a multiple of three, offsets and
    token counts non-negative). Keys are 63-bit stream ids (:mod:`pythia.workflow.trace`).
    """
    if not isinstance(value, (list, tuple)) or len(value) % 3 or not all(_is_int(x) for x in value):
        return None
    arr = np.asarray(value, dtype=np.int64).reshape(-1, 3)
    if len(arr) and (arr[:, 1:] < 0).any():
        return None
    return arr


def _check_hint(name: str, value: Any) -> Any:
    if name in ("prompt", "output"):
        arr = segments_hint(value)
        return _BAD if arr is None else arr
    if name == "deps":
        vals = value if isinstance(value, (list, tuple)) else [value]
        return tuple(vals) if all(_is_int(x) for x in vals) else _BAD
    if name in ("parent", "call_id"):
        return value if _is_int(value) else _BAD
    if name == "last_call":  # JSON booleans arrive as 0/1
        return bool(value) if _is_int(value) or isinstance(value, bool) else _BAD
    return value


def block_hash_id(block_hash: bytes) -> int:
    """A 63-bit integer naming an engine block hash (its first 8 bytes), as policies expect."""
    return int.from_bytes(bytes(block_hash[:8]), "little") & _MASK63


# --------------------------------------------------------------------------- request view


class EngineRequestView:
    """A :class:`pythia.policy.views.RequestView` over one engine request.

    Engine state (tokens computed, preemptions) is read live from the wrapped request, so a
    view is created once per request and never copied per step. ``request`` is the engine's
    object (a vLLM ``Request``), for the host only.

    ``block_hashes`` are Pythia's names of the request's full blocks: segment hashes when the
    client sent the segments (the simulator's names, which predicted prompts share), else ids
    of the engine's own hashes. :meth:`hash_pairs` pairs them with the engine's hashes.
    """

    __slots__ = (
        "request", "request_id", "engine_request_id", "annotation", "malformed", "annotations",
        "job_id", "workflow_type", "workflow_id", "agent_role", "agent_id", "call_id",
        "client_priority", "admitted", "last_call", "segment_hashes", "indexed", "_hash_len", "_hashes",
    )

    def __init__(self, request: Any, view_id: int, parsed: ParsedAnnotation, client_priority: int = 0,
                 block_size: int | None = None) -> None:
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
            # One instance among parallel agents of the role when the client names it;
            # otherwise the role is the instance (all its calls one conversation).
            self.agent_id = ann.agent_id or ann.agent_role
            step = ann.step if ann.step is not None else -1
            # The trace's call id when the client sent it: deps and parent hints name call ids.
            self.call_id = int(self.annotations.get("call_id", step))
            if ann.parent_call_id is not None:
                self.annotations.setdefault("parent_call_id", ann.parent_call_id)
            if ann.parent_agent_id is not None:
                self.annotations.setdefault("parent_agent_id", ann.parent_agent_id)
        else:
            # An unannotated call is a job of its own, as a stock engine sees it.
            self.job_id = self.workflow_id = self.engine_request_id
            self.workflow_type = self.agent_role = self.agent_id = ""
            self.call_id = -1
        self.client_priority = client_priority
        self.admitted = False
        self.last_call = bool(self.annotations.get("last_call", False))
        self.segment_hashes: np.ndarray | None = None
        prompt = self.annotations.get("prompt")
        if block_size and prompt is not None:
            output = self.annotations.get("output")
            self.segment_hashes = sequence_hashes(prompt, output if output is not None else np.empty((0, 3), np.int64),
                                                  int(block_size))
        self.indexed = 0  # leading engine blocks already paired in the host's hash index
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
        """Pythia's 63-bit names of the request's full blocks (see the class docstring)."""
        if self.segment_hashes is not None:
            return self.segment_hashes
        return self._engine_ids()

    def _engine_ids(self) -> np.ndarray:
        hashes = self.request.block_hashes
        if len(hashes) != self._hash_len:
            # Blocks are only appended, so convert just the new tail.
            old = self._hashes
            start = len(old) if 0 <= self._hash_len <= len(hashes) else 0
            new = np.fromiter((block_hash_id(h) for h in hashes[start:]), dtype=np.int64)
            self._hashes = np.concatenate([old[:start], new]) if start else new
            self._hash_len = len(hashes)
        return self._hashes

    def hash_pairs(self, start: int = 0) -> Iterator[tuple[int, Any]]:
        """``(Pythia name, engine hash)`` of the blocks from position ``start`` the engine has hashed.

        With segment hashes, block ``i``'s name is segment hash ``i``: the client built the
        token ids from the same segments (:mod:`pythia.bench.tokens`), so position ``i`` holds
        the same content in both.
        """
        engine = self.request.block_hashes
        seg = self.segment_hashes
        if seg is None:
            for h in engine[start:]:
                yield block_hash_id(h), h
            return
        for i in range(start, min(len(engine), len(seg))):
            yield int(seg[i]), engine[i]

    def raw_block_hashes(self) -> list[Any]:
        """The engine's own block hashes (bytes in vLLM), for the host."""
        return list(self.request.block_hashes)

    def __repr__(self) -> str:
        return f"EngineRequestView({self.engine_request_id!r}, role={self.agent_role!r}, job={self.job_id!r})"


# --------------------------------------------------------------------------- loading


def uses_default_victim(scheduling: Any) -> bool:
    """True when the policy preempts as stock vLLM does (the last admitted call): the host skips building views."""
    return getattr(type(scheduling), "victim", None) is SchedulingPolicy.victim


def is_action_free(cache: Any) -> bool:
    """True when the cache policy never returns actions (plain LRU): the host skips its per-step work."""
    return not cache.acts


@dataclass
class Hooks:
    """The policies one engine hosts.

    ``predictor`` is the run's workflow service (:class:`pythia.policy.workflow.Predictor`),
    when the policies share one: the host reports jobs starting and ending and calls being
    issued and finishing to it.
    """

    scheduling: Any = field(default_factory=FCFS)
    cache: Any = field(default_factory=LRU)
    source: str = "system:vllm"
    predictor: Any = None

    @property
    def is_stock(self) -> bool:
        """True when both policies reproduce stock vLLM (the host takes its fast paths)."""
        return type(self.scheduling) is FCFS and is_action_free(self.cache)


def load_hooks(spec: str | None) -> Hooks:
    """Build the policies named by ``spec``.

    - ``None``, ``""``, ``"fcfs"`` or ``"system:vllm"``: the ``vllm`` system's policies
      (FCFS, LRU: stock vLLM behaviour);
    - ``"system:NAME"``: the policies of ``baselines/NAME.yaml``, built by
      :meth:`pythia.policy.systems.System.build` with its workflow service;
    - ``"module:attr"``: a callable returning a :class:`Hooks` or a
      :class:`pythia.policy.base.Policies`, or an object with ``scheduler``/``cache`` (or
      ``scheduling``/``cache``) attributes, or a scheduling policy.
    """
    from pythia.policy.systems import load_system  # the policy package hosts its own registry

    if not spec or spec == "fcfs":
        spec = "system:vllm"
    kind, _, arg = spec.partition(":")
    if kind == "system":
        return _hooks_from_object(load_system(arg).build(), spec)
    if not arg:
        raise PythiaInputError(f"hooks {spec!r}: expected fcfs, system:NAME or module:attr")
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
        raise PythiaInputError(f"hooks {spec!r}: the object has no scheduling policy (new_queue, victim)")
    for name in ("new_queue", "victim"):
        if not callable(getattr(sched, name, None)):
            raise PythiaInputError(f"hooks {spec!r}: the scheduling policy lacks {name}()")
    if cache is not None:
        for name in ("on_finish", "on_tick"):
            if not callable(getattr(cache, name, None)):
                raise PythiaInputError(f"hooks {spec!r}: the cache policy lacks {name}()")
    return Hooks(scheduling=sched, cache=cache or LRU(), source=spec, predictor=getattr(obj, "predictor", None))
