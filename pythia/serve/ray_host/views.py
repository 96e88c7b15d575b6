"""Policy views built from what the Ray host sees: a call's annotation and replicas' stats.

The policies of :mod:`pythia.policy` see an engine through the protocols of
:mod:`pythia.policy.views`. Here they are filled from plain data that crosses process
boundaries: a call as the ingress parsed it (:func:`call_record`, a dict) and a replica as it
reports itself in ``record_routing_stats`` (:func:`replica_stats`, a dict). No Ray import, so
the adapters are tested without Ray.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from pythia.errors import PythiaInputError
from pythia.serve.adapter import HINT_PREFIX, parse_extra_args
from pythia.workflow.annotation import PREFIX, headers_to_extra_args
from pythia.workflow.blocks import sequence_hashes

_EMPTY = np.empty(0, dtype=np.int64)
_SEQ = itertools.count(1)


# --------------------------------------------------------------------------- calls


@dataclass(frozen=True)
class IngressCall:
    """What the ingress learned from one request: its record for the policies, and the body to forward.

    Attributes:
        record: the call as :func:`call_view` reads it (plain data: crosses to the router
            and the workflow-state actor).
        body: the request body to forward to the engine (the annotation in ``vllm_xargs``,
            where the plugin reads it).
        malformed: an annotation was present but invalid (the call is served unannotated).
    """

    record: dict[str, Any]
    body: dict[str, Any]
    malformed: bool = False


def prompt_length(body: Mapping[str, Any]) -> int:
    """Prompt tokens of a completions or chat body: token ids counted, text estimated (4 bytes a token)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, str):
        return max(1, len(prompt.encode()) // 4)
    msgs = body.get("messages")
    if isinstance(msgs, list):
        n = 0
        for m in msgs:
            content = m.get("content") if isinstance(m, Mapping) else None
            if isinstance(content, str):
                n += len(content.encode())
            elif isinstance(content, list):
                n += sum(len(str(p.get("text", "")).encode()) for p in content if isinstance(p, Mapping))
        return max(1, n // 4)
    return 1


def parse_call(body: Mapping[str, Any], headers: Mapping[str, str], block_size: int) -> IngressCall:
    """The call a request carries: annotation from the body (``vllm_xargs`` or ``pythia``) and ``X-Pythia-*`` headers.

    Body fields win over headers, as in :class:`pythia.serve.headers.PythiaHeaders`. A
    malformed annotation never fails the call: it is served unannotated (a job of its own)
    and reported as malformed. Never raises on a body that is a mapping.
    """
    out = dict(body)
    xargs: dict[str, Any] = {}
    raw = out.get("vllm_xargs")
    malformed = False
    if isinstance(raw, Mapping):
        xargs.update(raw)
    elif raw is not None:
        malformed = True
        out.pop("vllm_xargs", None)
    nested = out.pop("pythia", None)
    if isinstance(nested, Mapping):
        xargs.update({PREFIX + str(k): v for k, v in nested.items()})
    elif nested is not None:
        malformed = True
    for k, v in headers_to_extra_args(headers).items():
        xargs.setdefault(k, v)
    parsed = parse_extra_args(xargs)
    malformed = malformed or parsed.malformed
    if parsed.annotation is None and malformed:
        # Served unannotated: the engine's plugin must not see the bad fields either.
        xargs = {k: v for k, v in xargs.items() if not (isinstance(k, str) and k.startswith(PREFIX))}
    if xargs:
        out["vllm_xargs"] = xargs
    else:
        out.pop("vllm_xargs", None)
    request_id = str(out.get("request_id") or f"pythia-ray-{uuid.uuid4().hex[:16]}")
    ann = parsed.annotation
    hints = parsed.hints
    prompt_tokens = prompt_length(out)
    hashes = _EMPTY
    prompt = hints.get("prompt")
    if prompt is not None:
        output = hints.get("output")
        hashes = sequence_hashes(prompt, output if output is not None else np.empty((0, 3), np.int64), block_size)
    record: dict[str, Any] = {
        "request_id": request_id,
        "seq": next(_SEQ),
        "annotated": ann is not None,
        "job_id": ann.workflow_id if ann else request_id,
        "workflow_type": ann.workflow_type if ann else "",
        "workflow_id": ann.workflow_id if ann else request_id,
        "agent_role": ann.agent_role if ann else "",
        "agent_id": (ann.agent_id or ann.agent_role) if ann else "",
        "call_id": int(hints.get("call_id", ann.step if ann and ann.step is not None else -1)),
        "prompt_tokens": int(prompt_tokens),
        "max_tokens": int(out.get("max_tokens") or out.get("max_completion_tokens") or 0),
        "block_hashes": hashes,
        "last_call": bool(hints.get("last_call", False)),
        "hints": {k: v for k, v in hints.items() if k in ("deps", "parent", "call_id")},
        "model": str(out.get("model", "")),
    }
    return IngressCall(record, out, malformed)


class CallView:
    """A :class:`pythia.policy.views.RequestView` over a call record (see :func:`parse_call`)."""

    __slots__ = ("request_id", "job_id", "workflow_type", "workflow_id", "agent_role", "agent_id", "call_id",
                 "prompt_tokens", "num_computed_tokens", "num_output_tokens", "arrival_s", "num_preemptions",
                 "block_hashes", "annotations", "key")

    def __init__(self, rec: Mapping[str, Any], arrival_s: float = 0.0, output_tokens: int = 0) -> None:
        self.key = str(rec["request_id"])
        self.request_id = int(rec.get("seq", 0))
        self.job_id = str(rec["job_id"])
        self.workflow_type = str(rec["workflow_type"])
        self.workflow_id = str(rec["workflow_id"])
        self.agent_role = str(rec["agent_role"])
        self.agent_id = str(rec["agent_id"])
        self.call_id = int(rec["call_id"])
        self.prompt_tokens = int(rec["prompt_tokens"])
        self.num_output_tokens = int(output_tokens)
        self.num_computed_tokens = self.prompt_tokens + self.num_output_tokens if output_tokens else 0
        self.arrival_s = float(arrival_s)
        self.num_preemptions = 0
        hashes = rec.get("block_hashes")
        self.block_hashes = np.asarray(hashes if hashes is not None else _EMPTY, dtype=np.int64)
        self.annotations = dict(rec.get("hints") or {})


# --------------------------------------------------------------------------- replicas


def replica_stats(*, replica_id: int, pool: str, state: str, num_running: int, num_waiting: int,
                  kv_usage: float, total_blocks: int, block_size: int, cached_hashes: Sequence[int] = (),
                  running: Sequence[Mapping[str, Any]] = (), t: float = 0.0, **extra: Any) -> dict[str, Any]:
    """A replica's routing stats as it publishes them (``record_routing_stats``); checks the fields."""
    if state not in ("starting", "up", "draining", "down"):
        raise PythiaInputError(f"replica state {state!r} is not one of starting, up, draining, down")
    if total_blocks < 0 or block_size < 1:
        raise PythiaInputError(f"replica {replica_id}: total_blocks={total_blocks} and block_size={block_size} out of range")
    return {"replica_id": int(replica_id), "pool": pool, "state": state, "num_running": int(num_running),
            "num_waiting": int(num_waiting), "kv_usage": float(kv_usage), "total_blocks": int(total_blocks),
            "block_size": int(block_size), "cached_hashes": [int(h) for h in cached_hashes],
            "running": [dict(r) for r in running], "t": float(t), **extra}


class StatsKV:
    """A :class:`pythia.policy.views.KVView` from a replica's reported usage and cached prefix hashes.

    ``used_blocks`` is the engine's reported usage; blocks not used count as free, except
    those the host saw filled with a prefix that was not evicted since (``cached_hashes``,
    the replica's estimate of vLLM's LRU prefix cache), which count as cached.
    ``host_capacity_blocks`` is the CPU KV tier the replica's engine reports (0: none).
    """

    __slots__ = ("block_size", "total_blocks", "host_capacity_blocks", "_used", "_cached", "_prefix_for")

    def __init__(self, stats: Mapping[str, Any], prefix_for: tuple[np.ndarray, int] | None = None,
                 cached_set: frozenset[int] | None = None) -> None:
        self.block_size = int(stats["block_size"])
        self.total_blocks = int(stats["total_blocks"])
        self.host_capacity_blocks = int(stats.get("host_capacity_blocks") or 0)
        self._used = min(self.total_blocks, int(round(float(stats["kv_usage"]) * self.total_blocks)))
        if cached_set is not None:  # the caller's set of the same stats (built once per report)
            self._cached = cached_set
        else:
            cached = stats.get("cached_hashes")
            self._cached = frozenset(int(h) for h in cached) if cached is not None else frozenset()
        # (hashes, count): the router's precomputed answer for the routed call's chain.
        self._prefix_for = prefix_for

    @property
    def used_blocks(self) -> int:
        return self._used

    @property
    def cached_blocks(self) -> int:
        return max(0, min(len(self._cached), self.total_blocks - self._used))

    @property
    def free_blocks(self) -> int:
        return self.total_blocks - self._used - self.cached_blocks

    @property
    def host_blocks(self) -> int:
        return 0

    def cached_prefix_blocks(self, hashes: np.ndarray) -> int:
        """Leading blocks of ``hashes`` the replica holds (as far as its host has seen them)."""
        if self._prefix_for is not None and self._prefix_for[0] is hashes:
            return self._prefix_for[1]
        return cached_prefix(self._cached, hashes)


def cached_prefix(cached: frozenset[int] | set[int], hashes: np.ndarray) -> int:
    """How many leading entries of the chain ``hashes`` are in ``cached``."""
    n = 0
    for h in np.asarray(hashes, dtype=np.int64).tolist():
        if h not in cached:
            break
        n += 1
    return n


class StatsReplica:
    """A :class:`pythia.policy.views.ReplicaView` from reported stats, plus the calls routed since.

    ``routed`` are calls this host sent to the replica after the stats were taken: they count
    as waiting, and their prompts as pending prefill, so that a burst between two reports
    does not pile onto one replica.
    """

    __slots__ = ("replica_id", "pool", "state", "_stats", "_kv", "_running", "_routed")

    def __init__(self, stats: Mapping[str, Any], routed: Sequence[Mapping[str, Any]] = (),
                 prefix_for: tuple[np.ndarray, int] | None = None, cached_set: frozenset[int] | None = None) -> None:
        self.replica_id = int(stats["replica_id"])
        self.pool = str(stats["pool"])
        self.state = "up" if stats["state"] == "up" else str(stats["state"])
        self._stats = stats
        self._kv = StatsKV(stats, prefix_for, cached_set)
        self._running = [CallView(r, float(r.get("arrival_s", 0.0)), int(r.get("output_tokens", 0)))
                         for r in stats.get("running", ())]
        self._routed = [CallView(r) for r in routed]

    @property
    def num_running(self) -> int:
        return int(self._stats["num_running"])

    @property
    def num_waiting(self) -> int:
        return int(self._stats["num_waiting"]) + len(self._routed)

    @property
    def kv(self) -> StatsKV:
        return self._kv

    @property
    def pending_prefill_tokens(self) -> int:
        waiting = [c for c in self._running if c.num_output_tokens == 0]
        return sum(c.prompt_tokens for c in waiting) + sum(c.prompt_tokens for c in self._routed)

    def running_calls(self) -> Sequence[CallView]:
        """The calls in the replica (as its host proxies them), then those routed since its report."""
        return [c for c in self._running if c.num_output_tokens > 0]


@dataclass
class StatsPool:
    """A :class:`pythia.policy.views.PoolView` from the replicas' latest reports."""

    name: str
    model: str
    min_replicas: int
    max_replicas: int
    replica_views: list[StatsReplica] = field(default_factory=list)
    starting: int = 0

    @property
    def replicas(self) -> Sequence[StatsReplica]:
        return self.replica_views

    @property
    def num_up(self) -> int:
        return sum(1 for r in self.replica_views if r.state == "up")

    @property
    def num_starting(self) -> int:
        return self.starting + sum(1 for r in self.replica_views if r.state == "starting")


__all__ = ["CallView", "HINT_PREFIX", "IngressCall", "StatsKV", "StatsPool", "StatsReplica", "cached_prefix",
           "parse_call", "prompt_length", "replica_stats"]
