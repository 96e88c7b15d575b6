"""What an engine's block hashes tell about a workflow, when the client sends only the IDs.

A real application sends its chat messages as text and, at most, the three IDs (workflow
type, workflow id, agent role) and an agent instance. The host still sees, for every call,
the chained hashes the engine computes for each full KV block of the prompt and, once it
finishes, of its output (:attr:`pythia.policy.views.RequestView.block_hashes`: vLLM's
``Request.block_hashes`` in the plugin, the segment chains in the simulator). Because the
hashes are chained, two calls share block ``i`` only if their whole prefix through ``i`` is
equal, so these names alone are enough to learn:

- **the role's instructions**: per ``(workflow type, role)``, the leading blocks that the
  prompts of different jobs share (system prompt, tool descriptions). Learned from one
  prompt per job, over the last ``sample_jobs`` jobs: the longest prefix of a sample that
  at least half of the samples (and at least ``min_jobs`` jobs) carry;
- **the conversation so far**: per ``(job, agent instance)``, the blocks of its last prompt
  plus its output, which its next call extends after a tool gap (the prompt's alone once
  the role's next prompts were seen not to carry the output's tokens as generated: an
  application that sends the answer back as text, which the tokenizer may encode anew);
- **how long an agent stays away**: per ``(workflow type, role)``, the last 64 gaps between a
  call's end and the same agent's next call reaching the engine (its tool time plus the
  client's own), which size how long a pin of its conversation is worth holding;
- **how often a role's call is continued**: per ``(workflow type, role)``, the share of its
  finished calls whose agent's next prompt extended the conversation (beyond the shared
  instructions), as a smoothed estimate ``(continued + 1) / (decided + 2)``. A call is
  decided when its agent issues its next call (continued or not) or when the job ends.

Cold start: conversations act from the first finished call (the continuation estimate starts
at 1/2); the instructions need ``min_jobs`` jobs of the type. Memory is bounded: a job's
conversations are dropped when it ends, and at most ``max_roles`` ``(type, role)`` entries
are kept (least recently updated dropped first).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pythia.workflow.blocks import common_prefix

_EMPTY = np.empty(0, dtype=np.int64)


@dataclass(slots=True)
class _RoleFacts:
    samples: "OrderedDict[str, np.ndarray]" = field(default_factory=OrderedDict)  # job id -> prompt blocks
    shared: np.ndarray = field(default_factory=lambda: _EMPTY)
    continued: int = 0
    decided: int = 0
    outputs_reused: int = 0  # continuations whose next prompt carried the output's blocks too
    gaps: deque = field(default_factory=lambda: deque(maxlen=64))  # seconds from a call's end to its agent's next call


@dataclass(slots=True)
class _Conversation:
    workflow_type: str
    role: str
    blocks: np.ndarray
    prompt_blocks: int
    in_flight: int = 0
    finished_s: float | None = None


class BlockMemory:
    """Learns role instructions, conversations and continuation rates from block names.

    Args:
        sample_jobs: prompts (one per job) kept per role to find its shared instructions.
        min_jobs: jobs that must share a prefix before it counts as the role's instructions.
        extend_share: a next prompt continues a conversation when it reuses at least this
            share of the conversation's blocks beyond the role's instructions.
        max_roles: most ``(workflow type, role)`` entries kept.
    """

    def __init__(self, sample_jobs: int = 8, min_jobs: int = 2, extend_share: float = 0.5,
                 max_roles: int = 4096) -> None:
        self.sample_jobs = max(2, int(sample_jobs))
        self.min_jobs = max(2, int(min_jobs))
        self.extend_share = float(extend_share)
        self.max_roles = max(1, int(max_roles))
        self.block_size: int | None = None
        self._roles: "OrderedDict[tuple[str, str], _RoleFacts]" = OrderedDict()
        self._conv: dict[str, dict[str, _Conversation]] = {}  # job id -> agent id -> conversation
        self._type_gaps: "OrderedDict[str, deque]" = OrderedDict()  # every role's gaps, per workflow type
        self.observed_calls = 0

    # -- hooks (called by the predictor and the cache policy)

    def call_issued(self, job_id: str, workflow_type: str, role: str, agent_id: str, now: float | None = None) -> None:
        """An agent's call entered the engine: its conversation is in use, not idle (and its gap is learned)."""
        c = self._conv.get(job_id, {}).get(agent_id)
        if c is not None:
            if c.in_flight <= 0 and c.finished_s is not None and now is not None:
                gap = max(0.0, now - c.finished_s)
                self._facts(c.workflow_type, c.role).gaps.append(gap)
                pooled = self._type_gaps.get(c.workflow_type)
                if pooled is None:
                    pooled = self._type_gaps[c.workflow_type] = deque(maxlen=256)
                    while len(self._type_gaps) > self.max_roles:
                        self._type_gaps.popitem(last=False)
                pooled.append(gap)
            c.in_flight += 1

    def observe(self, req: Any, block_size: int, now: float | None = None) -> None:
        """Learn from a finished call: its prompt's blocks and its whole conversation so far."""
        self.block_size = int(block_size)
        names = np.asarray(req.block_hashes, dtype=np.int64)
        n_prompt = min(len(names), int(req.prompt_tokens) // self.block_size)
        n_all = min(len(names), (int(req.prompt_tokens) + int(req.num_output_tokens)) // self.block_size)
        prompt, conv = names[:n_prompt], names[:n_all]
        wt, role, agent, job = req.workflow_type, req.agent_role, req.agent_id, req.job_id
        self.observed_calls += 1
        agents = self._conv.setdefault(job, {})
        prev = agents.get(agent)
        if prev is not None:
            # The agent's previous call is decided: continued when this prompt carries its
            # conversation on (beyond the instructions every job of the role shares).
            facts = self._facts(prev.workflow_type, prev.role)
            base = common_prefix(prev.blocks, facts.shared) if len(facts.shared) else 0
            beyond = len(prev.blocks) - base
            reused = common_prefix(prompt, prev.blocks) - base
            facts.decided += 1
            if beyond > 0 and reused >= self.extend_share * beyond:
                facts.continued += 1
                if base + reused > prev.prompt_blocks:
                    facts.outputs_reused += 1
        facts = self._facts(wt, role)
        if job not in facts.samples and len(prompt):
            facts.samples[job] = prompt
            while len(facts.samples) > self.sample_jobs:
                facts.samples.popitem(last=False)
            facts.shared = self._shared(facts)
        in_flight = max(0, prev.in_flight - 1) if prev is not None else 0
        agents[agent] = _Conversation(wt, role, conv, len(prompt), in_flight, now)

    def job_ended(self, job_id: str) -> None:
        """Forget the job; its agents' last calls were not continued."""
        for c in self._conv.pop(job_id, {}).values():
            facts = self._roles.get((c.workflow_type, c.role))
            if facts is not None:
                facts.decided += 1

    # -- queries

    def conversation(self, job_id: str, agent_id: str) -> np.ndarray:
        """The blocks of the agent's last prompt and output (empty when unknown).

        Without the output's blocks when the role's next prompts were seen to carry the
        output re-encoded differently (an application that sends the output back as text,
        re-tokenized): at least two continuations, fewer than half reusing output blocks.
        """
        c = self._conv.get(job_id, {}).get(agent_id)
        return _EMPTY if c is None else self._reusable(c)

    def idle_agents(self, job_id: str) -> list[tuple[str, str, np.ndarray]]:
        """``(agent id, role, conversation)`` of the job's agents with no call in the engine."""
        return [(a, c.role, self._reusable(c)) for a, c in self._conv.get(job_id, {}).items() if c.in_flight <= 0]

    def _reusable(self, c: _Conversation) -> np.ndarray:
        facts = self._roles.get((c.workflow_type, c.role))
        if facts is not None and facts.continued >= 2 and 2 * facts.outputs_reused < facts.continued:
            return c.blocks[: c.prompt_blocks]
        return c.blocks

    def instructions(self, workflow_type: str, role: str) -> np.ndarray:
        """The role's shared leading blocks (empty until ``min_jobs`` jobs share them)."""
        facts = self._roles.get((workflow_type, role))
        return _EMPTY if facts is None else facts.shared

    def shared_blocks(self, workflow_type: str, role: str, blocks: np.ndarray) -> int:
        """How many leading blocks of ``blocks`` are the role's shared instructions."""
        shared = self.instructions(workflow_type, role)
        return common_prefix(np.asarray(blocks, dtype=np.int64), shared) if len(shared) else 0

    def continue_probability(self, workflow_type: str, role: str) -> float:
        """Smoothed share of the role's calls whose agent called again extending the conversation."""
        facts = self._roles.get((workflow_type, role))
        if facts is None:
            return 0.5
        return (facts.continued + 1.0) / (facts.decided + 2.0)

    def gap_s(self, workflow_type: str, role: str, q: float = 0.9, min_samples: int = 3) -> float | None:
        """The ``q`` quantile of the role's gaps between a call's end and its agent's next call.

        A role with fewer than ``min_samples`` gaps (one whose agents have not come back yet)
        gets its workflow type's, pooled over roles; ``None`` when the type has too few too.
        """
        facts = self._roles.get((workflow_type, role))
        gaps = facts.gaps if facts is not None and len(facts.gaps) >= min_samples else self._type_gaps.get(workflow_type)
        if gaps is None or len(gaps) < min_samples:
            return None
        return float(np.quantile(np.fromiter(gaps, dtype=float), q))

    def describe(self) -> dict[str, Any]:
        """Counts of what was learned (for metrics and reports)."""
        return {
            "observed_calls": self.observed_calls,
            "roles": len(self._roles),
            "roles_with_instructions": sum(1 for f in self._roles.values() if len(f.shared)),
            "instruction_blocks": int(sum(len(f.shared) for f in self._roles.values())),
            "live_jobs": len(self._conv),
            "conversations": sum(len(a) for a in self._conv.values()),
        }

    # -- internals

    def _facts(self, workflow_type: str, role: str) -> _RoleFacts:
        key = (workflow_type, role)
        facts = self._roles.get(key)
        if facts is None:
            facts = self._roles[key] = _RoleFacts()
            while len(self._roles) > self.max_roles:
                self._roles.popitem(last=False)
        else:
            self._roles.move_to_end(key)
        return facts

    def _shared(self, facts: _RoleFacts) -> np.ndarray:
        """The longest prefix of a sample that half the samples (and ``min_jobs``) carry."""
        samples = list(facts.samples.values())
        need = max(self.min_jobs, -(-len(samples) // 2))
        if len(samples) < need:
            return _EMPTY
        best, best_len = _EMPTY, 0
        for cand in reversed(samples):  # the newest first: it wins ties
            # Common prefix with each sample (itself included), longest first: the need-th
            # longest is carried by at least need samples.
            lens = sorted((common_prefix(cand, s) for s in samples), reverse=True)
            if lens[need - 1] > best_len:
                best, best_len = cand, lens[need - 1]
        return best[:best_len]
