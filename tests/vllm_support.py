"""Helpers for tests that build vLLM's real scheduler on the CPU (no model runs).

A scheduler is built from a ``VllmConfig`` whose ``ModelConfig`` reads the tiny model's
``config.json`` with ``skip_tokenizer_init``, and a KV pool of a few hundred blocks. Steps
are driven with fake ``ModelRunnerOutput``s: every request whose prompt is fully computed
samples one token per step. Every driving loop has a step cap.

Also the hook objects tests load by name (``vllm_support:...``) through the plugin's real
``--additional-config`` route.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import itertools
import os
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from pythia.policy.base import CachePolicy, SchedulingPolicy, WaitingQueue
from pythia.policy.fcfs import FCFS, FCFSQueue
from pythia.serve.adapter import Hooks

SAMPLED_TOKEN = 100
_HASH_READY = False


@contextlib.contextmanager
def serving(launch: Any, log: Path, env: dict[str, str] | None = None, start_timeout_s: float = 300) -> Iterator[Any]:
    """A healthy engine server of ``launch`` whose processes import the test hooks from tests/."""
    from pythia.serve.server import EngineServer

    path = os.pathsep.join(p for p in (str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")) if p)
    server = EngineServer(dataclasses.replace(launch, env={**launch.env, "PYTHONPATH": path, **(env or {})}), log,
                          start_timeout_s=start_timeout_s)
    server.start()
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


def make_scheduler(
    cls: type,
    model_dir: Path,
    *,
    num_blocks: int = 256,
    block_size: int = 16,
    max_num_seqs: int = 16,
    max_num_batched_tokens: int = 256,
    enable_prefix_caching: bool = True,
    pythia: dict[str, Any] | None = None,
    cpu_tier_chunks: int | None = None,
    cpu_tier_policy: str | None = None,
) -> Any:
    """A real vLLM scheduler of class ``cls`` over a KV pool of ``num_blocks`` blocks.

    With ``cpu_tier_chunks``, vLLM's ``OffloadingConnector`` (scheduler side) backs the pool
    with a CPU tier of that many blocks, under ``cpu_tier_policy`` (vLLM's ``lru`` by default,
    or Pythia's ``PythiaHostCachePolicy``); :func:`run_step` completes its transfers at once.
    """
    import torch
    from vllm.config import CacheConfig, DeviceConfig, KVTransferConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    model_config = ModelConfig(model=str(model_dir), skip_tokenizer_init=True, max_model_len=4096, dtype="float32", seed=0)
    scheduler_config = SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=4096,
        is_encoder_decoder=False,
        enable_chunked_prefill=True,
    )
    cache_config = CacheConfig(block_size=block_size, cache_dtype="auto", enable_prefix_caching=enable_prefix_caching)
    kv_transfer = None
    if cpu_tier_chunks is not None:
        from pythia.serve.engines import host_tier_extra_config as connector_extra_config

        # One block of the spec below: K and V, block_size tokens, 1 head of 64 float32 values.
        extra = connector_extra_config(cpu_tier_chunks * 2 * block_size * 64 * 4, cpu_tier_policy or "lru")
        kv_transfer = KVTransferConfig(kv_connector="OffloadingConnector", kv_role="kv_both", kv_connector_extra_config=extra)
    vllm_config = VllmConfig(
        scheduler_config=scheduler_config,
        model_config=model_config,
        cache_config=cache_config,
        device_config=DeviceConfig("cpu"),
        kv_transfer_config=kv_transfer,
        additional_config={"pythia": pythia} if pythia is not None else {},
    )
    kv_cache_config = KVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=[],
        kv_cache_groups=[
            KVCacheGroupSpec(["layer"], FullAttentionSpec(block_size=block_size, num_kv_heads=1, head_size=64, dtype=torch.float32))
        ],
    )
    cache_config.num_gpu_blocks = num_blocks
    return cls(
        vllm_config=vllm_config,
        kv_cache_config=kv_cache_config,
        block_size=block_size,
        log_stats=True,
        structured_output_manager=StructuredOutputManager(vllm_config),
    )


def make_request(
    rid: str,
    prompt: Sequence[int],
    max_tokens: int,
    extra_args: dict[str, Any] | None = None,
    *,
    block_size: int = 16,
    arrival_time: float | None = None,
    priority: int = 0,
) -> Any:
    """A vLLM ``Request`` with block hashes (sha256, as the engine computes them)."""
    global _HASH_READY
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.request import Request

    if not _HASH_READY:
        init_none_hash(sha256)
        _HASH_READY = True
    params = SamplingParams(max_tokens=max_tokens, min_tokens=max_tokens, ignore_eos=True, extra_args=extra_args)
    return Request(
        request_id=rid,
        prompt_token_ids=list(prompt),
        sampling_params=params,
        pooling_params=None,
        arrival_time=arrival_time,
        priority=priority,
        block_hasher=get_request_block_hasher(block_size, sha256),
    )


def annotation(role: str, job: str = "job-0", step: int | None = None, wtype: str = "coding-assistant") -> dict[str, Any]:
    """The ``extra_args`` of an annotated call."""
    out: dict[str, Any] = {"pythia.workflow_type": wtype, "pythia.workflow_id": job, "pythia.agent_role": role}
    if step is not None:
        out["pythia.step"] = step
    return out


def tokens(seed: int, n: int, low: int = 10, high: int = 4000) -> list[int]:
    """``n`` pseudo-random token ids (distinct seeds give prompts sharing no block)."""
    return np.random.default_rng(seed).integers(low, high, size=n).tolist()


@dataclass
class Step:
    """What one scheduler step did."""

    new: list[str]
    new_computed: dict[str, int]
    scheduled: dict[str, int]
    preempted: list[str]
    finished: list[str] = field(default_factory=list)


def run_step(sched: Any) -> Step:
    """One ``schedule()`` plus a fake model output (one token for each request past its prompt)."""
    from vllm.v1.outputs import ModelRunnerOutput

    out = sched.schedule()
    ids = list(out.num_scheduled_tokens)
    sampled = []
    for rid in ids:
        req = sched.requests[rid]
        sampled.append([SAMPLED_TOKEN] if req.num_computed_tokens >= req.num_tokens else [])
    before = set(sched.requests)
    kv_out = _transfers_done(out.kv_connector_metadata)
    if ids or kv_out is not None:
        mro = ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)}, sampled_token_ids=sampled,
                                kv_connector_output=kv_out)
        sched.update_from_output(out, mro)
    return Step(
        new=[r.req_id for r in out.scheduled_new_reqs],
        new_computed={r.req_id: r.num_computed_tokens for r in out.scheduled_new_reqs},
        scheduled=dict(out.num_scheduled_tokens),
        preempted=sorted(out.preempted_req_ids),
        finished=sorted(before - set(sched.requests)),
    )


def _transfers_done(meta: Any) -> Any:
    """A worker stand-in for vLLM's OffloadingConnector: every load and store of the step completes at once."""
    if meta is None or not hasattr(meta, "store_jobs"):
        return None
    from vllm.distributed.kv_transfer.kv_connector.v1.offloading.common import OffloadingWorkerMetadata
    from vllm.v1.outputs import KVConnectorOutput

    done = {jid: 1 for jid in (*meta.load_jobs, *meta.store_jobs)}
    loaded = {job.req_id for job in meta.load_jobs.values()}
    return KVConnectorOutput(finished_recving=loaded or None, kv_connector_worker_meta=OffloadingWorkerMetadata(completed_jobs=done))


def drive(sched: Any, max_steps: int = 2000, on_step: Callable[[Step], None] | None = None) -> list[Step]:
    """Step until no request is left; fails past ``max_steps`` (a bug, not a slow test)."""
    steps: list[Step] = []
    for _ in range(max_steps):
        if not sched.has_requests():  # vLLM's: also while the connector has transfers to report
            return steps
        st = run_step(sched)
        steps.append(st)
        if on_step is not None:
            on_step(st)
    raise AssertionError(f"the scheduler still had requests after {max_steps} steps")


def flood(sched: Any, n: int = 12, blocks: int = 10, block_size: int = 16) -> None:
    """``n`` unannotated calls of ``blocks`` fresh blocks each, driven to the end: they push idle prefixes out."""
    for i in range(n):
        sched.add_request(make_request(f"flood{i}", tokens(100 + i, blocks * block_size), 8, block_size=block_size))
    drive(sched, max_steps=3000)


def computed_at_admission(sched: Any, req: Any, max_steps: int = 100) -> int:
    """Add ``req`` and drive: the tokens the engine did not compute for it (prefix hits, and blocks a
    KV connector loaded), as ``num_computed_tokens`` when it was first scheduled."""
    sched.add_request(req)
    for _ in range(max_steps):
        st = run_step(sched)
        if req.request_id in st.new_computed:
            drive(sched, max_steps=300)
            return st.new_computed[req.request_id]
    raise AssertionError("the call was never admitted")


# --------------------------------------------------------------------------- example policies
# Small policies written as a score, to exercise the host's queue, refresh and victim paths
# with orders a test controls. Pythia's and the baselines' policies live in pythia.policy.


class PriorityQueue(WaitingQueue):
    """A waiting queue ordered by ``(priority, tiebreak)``: lower priority values go first.

    Ties keep vLLM's FCFS semantics: ``add`` puts a call behind every equal-priority call,
    ``prepend`` in front of them (a preempted call resumes first among equals). With a
    constant priority the order is exactly FCFS's. ``refresh`` recomputes every
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


class PriorityScheduling(SchedulingPolicy):
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


# --------------------------------------------------------------------------- hooks loaded by name


class BoostableRoles(PriorityScheduling):
    """Role order with a per-role boost the test changes while calls wait (exercises refresh)."""

    name = "boostable"
    dynamic = True

    def __init__(self) -> None:
        self.rank = {"verifier": 0, "engineer": 1, "planner": 2}
        self.boost: dict[str, float] = {}

    def priority(self, req: Any, now: float) -> float:
        return self.rank.get(req.agent_role, 3) - self.boost.get(req.agent_role, 0.0)


class Aging(PriorityScheduling):
    """Role rank minus waiting time / 10 s: a call waiting long enough overtakes better roles."""

    name = "aging"
    dynamic = True

    def priority(self, req: Any, now: float) -> float:
        rank = {"verifier": 0, "engineer": 1, "planner": 2}.get(req.agent_role, 3)
        return rank - (now - req.arrival_s) / 10.0


class FirstAdmittedVictim(SchedulingPolicy):
    """FCFS queue, but preempt the *earliest* admitted running call (stock vLLM takes the latest)."""

    name = "first-admitted-victim"
    dynamic = False

    def __init__(self) -> None:
        self._queue_cls = FCFSQueue
        self.choices: list[str] = []

    def new_queue(self) -> Any:
        return self._queue_cls()

    def victim(self, running: Sequence[Any], now: float) -> Any:
        self.choices.append(running[0].engine_request_id)
        return running[0]


@dataclass
class PinRoleCache(CachePolicy):
    """Pins the first ``prefix_blocks`` blocks of every finished call of ``role``."""

    role: str = "planner"
    prefix_blocks: int = 4
    name: str = "pin-role"
    finished: list[str] = field(default_factory=list)

    def on_finish(self, req: Any, replica: Any, now: float) -> list[Any]:
        from types import SimpleNamespace

        self.finished.append(req.engine_request_id)
        if req.agent_role != self.role:
            return []
        return [SimpleNamespace(kind="pin", hashes=req.block_hashes[: self.prefix_blocks])]

    def on_tick(self, replicas: Sequence[Any], now: float) -> list[Any]:
        return []


def boostable() -> Hooks:
    """Hooks factory for ``vllm_support:boostable``."""
    return Hooks(scheduling=BoostableRoles(), source="vllm_support:boostable")


def aging() -> Hooks:
    """Hooks factory for ``vllm_support:aging``."""
    return Hooks(scheduling=Aging(), source="vllm_support:aging")


def first_admitted_victim() -> Hooks:
    """Hooks factory for ``vllm_support:first_admitted_victim``."""
    return Hooks(scheduling=FirstAdmittedVictim(), source="vllm_support:first_admitted_victim")


def pin_planner() -> Hooks:
    """Hooks factory for ``vllm_support:pin_planner``: FCFS plus pins of planner prefixes."""
    return Hooks(scheduling=FCFS(), cache=PinRoleCache(), source="vllm_support:pin_planner")


def roles() -> Hooks:
    """Hooks factory for ``vllm_support:roles``: verifier, then engineer, then planner, then the rest."""
    return Hooks(scheduling=RolePriority(["verifier", "engineer", "planner"]), source="vllm_support:roles")


@dataclass
class SegmentPrefixPin(CachePolicy):
    """Pins a prefix named only by its segments: hashes from :func:`pythia.workflow.blocks.block_hashes`.

    The policy never sees the engine's hashes: the host must map the segment-based names to
    the blocks vLLM holds.
    """

    prefix: Any = None  # segments (n, 3) of the prefix to pin after any call finishes
    name: str = "segment-pin"

    def on_finish(self, req: Any, replica: Any, now: float) -> list[Any]:
        from pythia.policy.base import CacheAction
        from pythia.workflow.blocks import block_hashes

        if self.prefix is None:
            return []
        return [CacheAction("pin", replica.replica_id, block_hashes(self.prefix, replica.kv.block_size))]

    def on_tick(self, replicas: Sequence[Any], now: float) -> list[Any]:
        return []


def segment_pin() -> Hooks:
    """Hooks factory for ``vllm_support:segment_pin``: FCFS plus :class:`SegmentPrefixPin`."""
    return Hooks(scheduling=FCFS(), cache=SegmentPrefixPin(), source="vllm_support:segment_pin")


def segment_prompt(segs: Sequence[tuple[int, int, int]], low: int = 10, high: int = 4000) -> tuple[list[int], list[int]]:
    """Token ids of segments (as the replay client builds them) and the flat ``pythia_hint.prompt`` value."""
    from pythia.bench.tokens import TokenSpace

    space = TokenSpace(low, high)
    ids = [int(t) for key, off, n in segs for t in space.ids(key, off, n)]
    return ids, [int(x) for row in segs for x in row]
