"""The narrow, typed views a policy sees of an engine.

A policy never imports the simulator or vLLM. Each host (the simulator, the vLLM scheduler
plugin, the Ray Serve host) hands policies objects that satisfy these protocols: the simulator's
own request and replica objects carry these attributes directly (no copy per step); the
vLLM plugin wraps ``vllm.v1.request.Request`` in a thin adapter.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class RequestView(Protocol):
    """One LLM call inside an engine, with its annotation.

    Attributes:
        request_id: unique within the run.
        job_id / workflow_type / workflow_id / agent_role / agent_id / call_id: the call's
            annotation (the three IDs Pythia receives with every call, plus the call's place).
        prompt_tokens: prompt length.
        num_computed_tokens: tokens whose KV is in the cache (prefill progress + decode).
        num_output_tokens: tokens generated so far.
        arrival_s: when the call reached this engine's waiting queue (seconds).
        num_preemptions: times the call was preempted (and recomputed).
        block_hashes: chained hashes of the full KV blocks of prompt + output.
        annotations: predictions and other hints attached by a host (the Ray Serve ingress) or the runtime
            (empty for an unannotated call); policies must tolerate missing keys.
    """

    request_id: int
    job_id: str
    workflow_type: str
    workflow_id: str
    agent_role: str
    agent_id: str
    call_id: int
    prompt_tokens: int
    num_computed_tokens: int
    num_output_tokens: int
    arrival_s: float
    num_preemptions: int
    block_hashes: np.ndarray
    annotations: dict[str, Any]


@runtime_checkable
class KVView(Protocol):
    """An engine's paged KV cache, counted in blocks.

    ``free_blocks`` counts blocks that hold nothing; ``cached_blocks`` counts blocks that no
    request holds but whose content is kept for prefix reuse (evictable); ``used_blocks``
    counts blocks held by requests or pinned. ``free + cached + used == total_blocks``. A host
    may also offer ``available_blocks`` (free + cached) where it has that sum cheaper than the
    parts (vLLM's pool counts its free queue; telling cached blocks apart takes a scan), and
    ``host_capacity_blocks`` (the size of a host-DRAM tier behind the GPU pool; absent: none).
    """

    block_size: int
    total_blocks: int

    @property
    def free_blocks(self) -> int: ...

    @property
    def cached_blocks(self) -> int: ...

    @property
    def used_blocks(self) -> int: ...

    @property
    def host_blocks(self) -> int: ...

    def cached_prefix_blocks(self, hashes: np.ndarray) -> int:
        """How many leading blocks of the chain ``hashes`` are resident on the GPU."""
        ...


@runtime_checkable
class BlockView(Protocol):
    """One evictable cached block, for policies that rank eviction candidates."""

    block_hash: int
    last_used_s: float


@runtime_checkable
class ReplicaView(Protocol):
    """A model replica as a router or autoscaler sees it.

    Attributes:
        replica_id: unique in the cluster.
        pool: the model pool the replica belongs to.
        state: ``starting`` (model loading), ``up`` or ``draining``.
        num_running / num_waiting: calls in the batch and in the waiting queue.
        kv: the replica's KV cache.
        pending_prefill_tokens: prompt tokens admitted or waiting but not yet computed.
    """

    replica_id: int
    pool: str
    state: str

    @property
    def num_running(self) -> int: ...

    @property
    def num_waiting(self) -> int: ...

    @property
    def kv(self) -> KVView: ...

    @property
    def pending_prefill_tokens(self) -> int: ...

    def running_calls(self) -> Sequence[RequestView]:
        """The calls in the batch (for capacity-aware routing)."""
        ...


@runtime_checkable
class PoolView(Protocol):
    """A model pool as an autoscaler sees it."""

    name: str
    model: str
    min_replicas: int
    max_replicas: int

    @property
    def replicas(self) -> Sequence[ReplicaView]: ...

    @property
    def num_up(self) -> int: ...

    @property
    def num_starting(self) -> int: ...
