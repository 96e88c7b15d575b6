"""A call inside the simulated engine: the simulator's implementation of ``RequestView``."""

from __future__ import annotations

from typing import Any

import numpy as np


class SimRequest:
    """One call on one replica, with its progress, KV holdings and timestamps (integer fs)."""

    __slots__ = (
        "request_id", "job_id", "workflow_type", "workflow_id", "agent_role", "agent_id", "call_id",
        "model", "prompt_tokens", "output_tokens", "num_output_tokens", "num_computed_tokens",
        "arrival_s", "num_preemptions", "block_hashes", "hlist", "annotations",
        "kv_ref", "kv_priv", "kv_path", "arrival_fs", "issue_fs", "first_token_fs", "finish_fs",
        "cached_tokens", "computed_tokens", "admitted", "sched_fs", "replica_id", "ctx", "background",
        "fronted",
    )

    def __init__(
        self,
        request_id: int,
        *,
        job_id: str,
        workflow_type: str,
        workflow_id: str,
        agent_role: str,
        agent_id: str,
        call_id: int,
        model: str,
        prompt_tokens: int,
        output_tokens: int,
        block_hashes: np.ndarray,
        issue_fs: int,
        annotations: dict[str, Any] | None = None,
        ctx: Any = None,
        background: bool = False,
    ) -> None:
        self.request_id = request_id
        self.job_id = job_id
        self.workflow_type = workflow_type
        self.workflow_id = workflow_id
        self.agent_role = agent_role
        self.agent_id = agent_id
        self.call_id = call_id
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.num_output_tokens = 0
        self.num_computed_tokens = 0
        self.arrival_s = 0.0
        self.num_preemptions = 0
        self.block_hashes = block_hashes
        self.hlist: list[int] = block_hashes.tolist()
        self.annotations = annotations if annotations is not None else {}
        self.kv_ref = 0
        self.kv_priv = 0
        self.kv_path: list[list[Any]] = []  # (extent, cover) pieces held, for the extent-based pool
        self.arrival_fs = issue_fs
        self.issue_fs = issue_fs
        self.fronted = False  # passed its replica's serving front end (see Replica.enqueue)
        self.first_token_fs = -1
        self.finish_fs = -1
        self.cached_tokens = 0
        self.computed_tokens = 0
        self.admitted = False
        self.sched_fs = -1
        self.replica_id = -1
        self.ctx = ctx
        self.background = background

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens (vLLM's ``num_tokens``)."""
        return self.prompt_tokens + self.num_output_tokens

    def __repr__(self) -> str:
        return f"SimRequest({self.job_id}#{self.call_id} {self.agent_role} out={self.num_output_tokens}/{self.output_tokens})"
