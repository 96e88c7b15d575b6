"""Pythia's predictive-capacity routing (registry name ``pythia``).

A replica is *feasible* for a call when the KV its calls may need fits: the sum over its
running calls and the new call of ``prompt + output upper bound`` (tokens already generated
count when they exceed the bound), plus the prompts waiting in its queue, is at most
``capacity * (1 - reserve)``; and the union bound of their overflow probabilities (the
probability that some call outgrows its bound: ``sum_c p_c``) is at most ``epsilon``.
Among feasible replicas the one with the largest *expected* headroom (capacity minus prompts
and expected outputs) wins; replicas within ``tie_band`` of capacity of the best are ties,
broken by cache affinity (the call's prompt blocks already resident,
``KVView.cached_prefix_blocks``). When none is feasible, the largest expected headroom decides
among all replicas, again with affinity among ties.

A call whose workflow type is cold (the profiler has not yet seen ``min_jobs`` of its jobs)
has no bound, so no capacity test to keep affinity from piling calls onto the replicas that hold
a shared prefix: a replica's headroom is then what is not allocated or queued, and its cached
prefix counts as affinity only when it covers ``cold_affinity_min`` of the prompt (the call's
own conversation, not only the instructions every job of its role shares). With
``cold_sticky`` (and, for calls of warm types, ``warm_sticky``), the replica that served the
agent's previous call counts as holding the leading blocks this prompt shares with that
call's prompt even where they left the GPU: the router knows where it sent the
conversation, and the blocks may sit in that replica's host tier (a router that keeps a tree
of what it routed, as SGLang's does, follows a conversation whatever its cache evicted).
For a warm call this acts only among the replicas the capacity test admits; a replica
without a host tier (``KVView.host_capacity_blocks`` absent or 0) gets no such credit, since
what its GPU no longer holds is gone.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np

from pythia.errors import PythiaInputError
from pythia.policy.base import Router
from pythia.policy.pythia_predictor import PythiaPredictor, as_pythia
from pythia.policy.views import ReplicaView, RequestView
from pythia.policy.workflow import Predictor
from pythia.workflow.blocks import common_prefix


class PythiaRouter(Router):
    """Route to the feasible replica with the largest expected headroom, affinity on ties.

    Args:
        epsilon: the largest admissible union bound of overflow probabilities on a replica.
        reserve: share of KV capacity kept out of the feasibility test (blocks of shared
            prefixes, fragmentation).
        tie_band: replicas whose expected headroom is within this share of capacity of the
            best are ties, broken by cache affinity.
        idle_batch: a replica with at most this many running and waiting calls counts as
            about to go idle (reported to the scheduler's unblocking term).
        cold_affinity_min: for a call of a cold workflow type, the share of its prompt a replica's
            cached prefix must cover to count as affinity.
        cold_sticky: for a call of a cold workflow type, the replica that served the agent's
            previous call counts as holding the leading blocks this prompt shares with that call's.
        warm_sticky: the same for a call of a warm workflow type, among the replicas its
            capacity test admits.
    """

    name = "pythia"

    def __init__(self, epsilon: float = 0.2, reserve: float = 0.05, tie_band: float = 0.1, idle_batch: int = 2,
                 cold_affinity_min: float = 0.0, cold_sticky: bool = False, warm_sticky: bool = False) -> None:
        if not 0.0 < epsilon <= 1.0:
            raise PythiaInputError(f"router param epsilon={epsilon!r} must be in (0, 1]")
        if not 0.0 <= reserve < 1.0:
            raise PythiaInputError(f"router param reserve={reserve!r} must be in [0, 1)")
        if not 0.0 <= tie_band <= 1.0:
            raise PythiaInputError(f"router param tie_band={tie_band!r} must be in [0, 1]")
        if not isinstance(idle_batch, int) or idle_batch < 0:
            raise PythiaInputError(f"router param idle_batch={idle_batch!r} must be an integer >= 0")
        if not 0.0 <= cold_affinity_min <= 1.0:
            raise PythiaInputError(f"router param cold_affinity_min={cold_affinity_min!r} must be in [0, 1]")
        for field, v in (("cold_sticky", cold_sticky), ("warm_sticky", warm_sticky)):
            if not isinstance(v, bool):
                raise PythiaInputError(f"router param {field}={v!r} must be true or false")
        self.cold_affinity_min = float(cold_affinity_min)
        self.cold_sticky, self.warm_sticky = cold_sticky, warm_sticky
        self.epsilon, self.reserve, self.tie_band, self.idle_batch = float(epsilon), float(reserve), float(tie_band), idle_batch
        self.pred: PythiaPredictor = as_pythia(None)
        # (job id, agent id) -> (replica id, prompt block hashes) of the agent's last routed
        # call; bounded in agents and in blocks, ended jobs forgotten first, then the oldest.
        self._last: OrderedDict[tuple[str, str], tuple[int, np.ndarray]] = OrderedDict()
        self._tracked_blocks = 0
        self.max_tracked_agents = 65536
        self.max_tracked_blocks = 1 << 21  # 16 MiB of hashes

    def bind(self, predictor: Predictor) -> None:
        """Receive the run's workflow service."""
        self.pred = as_pythia(predictor)

    def load(self, replica: ReplicaView, req: RequestView | None = None) -> tuple[float, float, float] | None:
        """``(bounded tokens, expected tokens, overflow union)`` of the replica's calls (plus
        ``req``); ``None`` when some call has no bound."""
        pred = self.pred
        bounded = expected = union = 0.0
        calls = list(replica.running_calls())
        if req is not None:
            calls.append(req)
        complete = True
        for c in calls:
            b = pred.bound(c)
            e = pred.expected_output(c)
            done = c.num_output_tokens
            if b is None:
                complete = False
                bt = float(done)
            else:
                bt = float(max(b[0], done + 1))
                if done < b[0]:
                    union += b[1]
            et = float(max(e, done + 1)) if e is not None else bt
            bounded += c.prompt_tokens + bt
            expected += c.prompt_tokens + et
        pend = float(replica.pending_prefill_tokens)
        if not complete:
            return None if req is not None else (bounded + pend, expected + pend, union)
        return bounded + pend, expected + pend, union

    def route(self, req: RequestView, replicas: Sequence[ReplicaView], now: float) -> int:
        pred = self.pred
        pool = replicas[0].pool
        pred.note_pool(req.workflow_type, req.agent_role, pool)
        idle = sum(1 for r in replicas if r.num_running + r.num_waiting <= self.idle_batch)
        pred.note_idle(pool, idle / len(replicas))
        cold = not pred.warm(req.workflow_type)
        rows = []
        for i, r in enumerate(replicas):
            kv = r.kv
            cap = float(kv.total_blocks * kv.block_size)
            ld = self.load(r, req)
            if ld is None:  # cold: expected headroom from what is allocated and queued
                used = float((kv.used_blocks) * kv.block_size + r.pending_prefill_tokens + req.prompt_tokens)
                rows.append((i, False, cap - used, cap))
                continue
            bounded, expected, union = ld
            feasible = bounded <= cap * (1.0 - self.reserve) and union <= self.epsilon
            rows.append((i, feasible, cap - expected, cap))
        feas = [row for row in rows if row[1]] or rows
        best = max(row[2] for row in feas)
        ties = [row for row in feas if row[2] >= best - self.tie_band * row[3]]
        hashes = req.block_hashes
        # Where no replica has a host tier the credit never applies: nothing to remember.
        track = (self.cold_sticky or self.warm_sticky) and any(
            getattr(r.kv, "host_capacity_blocks", 0) > 0 for r in replicas)
        if len(ties) == 1:
            if track:
                self._remember(req, replicas[ties[0][0]].replica_id, hashes)
            return ties[0][0]
        prev = self._last.get((req.job_id, req.agent_id)) if (self.cold_sticky if cold else self.warm_sticky) else None
        # The replica that served the agent's previous call holds the blocks the two prompts
        # share, in its host tier where they left the GPU; without a host tier the GPU view
        # is all it holds, and cache affinity already counts that.
        sticky, shared = -1, 0
        if prev is not None and any(r.replica_id == prev[0] and getattr(r.kv, "host_capacity_blocks", 0) > 0
                                    for r in replicas):
            sticky, shared = prev[0], common_prefix(hashes, prev[1])
        # A call of a cold type counts a replica's cached prefix only when it covers
        # cold_affinity_min of the prompt: a short shared prefix (the role's instructions) is
        # cheap to compute again, and following it would pile every new conversation where it
        # happens to sit.
        floor = self.cold_affinity_min * req.prompt_tokens if cold else 0.0

        def affinity(row: tuple[int, bool, float, float]) -> tuple[int, float]:
            r = replicas[row[0]]
            kv = r.kv
            n = kv.cached_prefix_blocks(hashes)
            if r.replica_id == sticky:
                n = max(n, shared)
            return (n if n * kv.block_size >= floor else 0), row[2]

        choice = max(ties, key=affinity)[0]
        if track:
            self._remember(req, replicas[choice].replica_id, hashes)
        return choice

    def _remember(self, req: RequestView, replica_id: int, hashes: Sequence[int]) -> None:
        """Record where the agent's call went; the table stays bounded (ended jobs' agents
        are dropped first, then the oldest)."""
        last = self._last
        key = (req.job_id, req.agent_id)
        chain = np.asarray(hashes, dtype=np.int64)
        old = last.pop(key, None)
        if old is not None:
            self._tracked_blocks -= len(old[1])
        if len(last) >= self.max_tracked_agents or self._tracked_blocks + len(chain) > self.max_tracked_blocks:
            for k in [k for k in last if self.pred.job(k[0]) is None]:
                self._tracked_blocks -= len(last.pop(k)[1])
            while last and (len(last) >= self.max_tracked_agents
                            or self._tracked_blocks + len(chain) > self.max_tracked_blocks):
                self._tracked_blocks -= len(last.popitem(last=False)[1][1])
        last[key] = (replica_id, chain)
        self._tracked_blocks += len(chain)
