"""Prompt-composition templates: what a role's prompt is made of, and the next call's prefix.

Every prompt segment ``(key, offset, tokens)`` of a finished job is classified as

- ``fixed``: a key seen in the prompts of at least ``fixed_min_jobs`` jobs of the workflow
  type (a role's system prompt, tool definitions); only the first ``head_segments`` segments
  of an agent's first prompt are candidates;
- ``history``: the agent instance's whole previous prompt and output, as a prefix of this prompt
  (a continued conversation);
- ``output``: a segment of an earlier call's output, labelled with that call's role;
- ``context``: a key shared by several agent instances of the job and by no other job (the
  task, the repository notes);
- ``history`` also: a key only this instance's earlier prompts held;
- ``fresh``: anything else (new tool results, a new instruction).

Consecutive segments of one kind (and one role, for outputs) form a *slot*; the slot sequence
is the call's *pattern*. A template is the most frequent pattern of a ``(role, variant)``,
where ``variant`` is ``new`` for an agent instance's first call and ``continued`` otherwise,
with the mean tokens and items of each slot. The predicted prompt prefix of a next call
follows its template slot by slot with the running job's own segments (the instance's last
prompt and output, the job's context keys, the latest output of each instance of a role)
and stops at the first slot it cannot know (fresh text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from pythia.workflow.trace import Job

if TYPE_CHECKING:
    from pythia.profiler.running import RunningJob

Segment = tuple[int, int, int]
NEW = "new"
CONTINUED = "continued"
_MAX_PATTERNS = 64
_KEY_PRUNE_AT = 200_000
_KEY_PRUNE_AGE = 2_000  # jobs: a key seen once and not for this long is forgotten


def common_prefix_tokens(a: Sequence[Segment], b: Sequence[Segment]) -> tuple[int, int]:
    """Tokens and whole segments of the longest common prefix of two segment lists."""
    tokens = 0
    for i, (x, y) in enumerate(zip(a, b)):
        if x == y:
            tokens += x[2]
            continue
        if x[0] == y[0] and x[1] == y[1]:
            tokens += min(x[2], y[2])
        return tokens, i
    return tokens, min(len(a), len(b))


@dataclass(frozen=True, slots=True)
class TemplateSlot:
    """One slot of a template.

    Attributes:
        kind: ``fixed``, ``context``, ``output``, ``history`` or ``fresh``.
        label: the producing role for ``output``; the key (hex) for ``fixed``; else empty.
        segment: for ``fixed``, the segment as most often seen.
        mean_tokens: mean tokens of the slot when present.
        mean_items: mean segments of the slot (earlier outputs: calls) when present.
    """

    kind: str
    label: str
    segment: Segment | None
    mean_tokens: float
    mean_items: float


@dataclass(frozen=True, slots=True)
class RoleTemplate:
    """The prompt composition of one role's calls.

    Attributes:
        role / variant: the role and ``new`` (an instance's first call) or ``continued``.
        slots: the modal pattern's slots, in prompt order.
        share: the share of the role's calls of this variant that follow the pattern.
        calls: the (weighted) number of calls it was learned from.
        mean_prompt_tokens: mean prompt length of those calls.
    """

    role: str
    variant: str
    slots: tuple[TemplateSlot, ...]
    share: float
    calls: float
    mean_prompt_tokens: float

    def describe(self) -> str:
        """The pattern as text, e.g. ``fixed(2400) context(680) output:planner(1000) fresh(60)``."""
        parts = []
        for s in self.slots:
            name = f"output:{s.label}" if s.kind == "output" else s.kind
            items = f"x{s.mean_items:.1f}" if s.kind == "output" and abs(s.mean_items - 1) > 0.05 else ""
            parts.append(f"{name}{items}({s.mean_tokens:.0f})")
        return " ".join(parts)


@dataclass(slots=True)
class _PatternAcc:
    count: float = 0.0
    tokens: list[float] = field(default_factory=list)
    items: list[float] = field(default_factory=list)
    fixed_seg: list[dict[Segment, float]] = field(default_factory=list)


@dataclass(slots=True)
class _RoleAcc:
    calls: float = 0.0
    prompt_tokens: float = 0.0
    patterns: dict[tuple[tuple[str, str], ...], _PatternAcc] = field(default_factory=dict)


def _segs(arr: np.ndarray | None) -> list[Segment]:
    return [] if arr is None else [tuple(r) for r in arr.tolist()]  # type: ignore[misc]


class TemplateCounts:
    """Prompt-pattern counts of one workflow type, updated job by job."""

    def __init__(self, fixed_min_jobs: int, head_segments: int) -> None:
        self.fixed_min_jobs = fixed_min_jobs
        self.head_segments = head_segments
        # key -> (ids of distinct jobs whose prompts held it, up to fixed_min_jobs; last job serial).
        # Distinct ids, not occurrences: the same job replayed twice (or two traces reusing
        # job ids) must not turn its context into a fixed instruction.
        self.key_jobs: dict[int, tuple[frozenset[str], int]] = {}
        self.roles: dict[tuple[str, str], _RoleAcc] = {}
        # per role: [weight of re-entries by an existing instance, weight of re-entries]
        self.reuse: dict[str, list[float]] = {}
        self.serial = 0
        self.version = 0
        self._fixed: frozenset[int] | None = None

    def fixed_keys(self) -> frozenset[int]:
        """Keys seen in the prompts of at least ``fixed_min_jobs`` distinct jobs."""
        if self._fixed is None:
            self._fixed = frozenset(k for k, (ids, _) in self.key_jobs.items() if len(ids) >= self.fixed_min_jobs)
        return self._fixed

    def _note_keys(self, job: Job) -> None:
        self.serial += 1
        seen_agents: set[str] = set()
        keys: set[int] = set()
        for c in job.calls:
            a = c.agent_id or c.agent_role
            if a in seen_agents:
                continue
            seen_agents.add(a)
            keys.update(int(k) for k in c.prompt[: self.head_segments, 0].tolist())
        crossed: list[int] = []
        for k in keys:
            e = self.key_jobs.get(k)
            if e is None:
                self.key_jobs[k] = (frozenset((job.job_id,)), self.serial)
            elif len(e[0]) < self.fixed_min_jobs and job.job_id not in e[0]:
                ids = e[0] | {job.job_id}
                self.key_jobs[k] = (ids, self.serial)
                if len(ids) >= self.fixed_min_jobs:  # only then does the fixed set change
                    crossed.append(k)
            else:
                self.key_jobs[k] = (e[0], self.serial)
        if crossed and self._fixed is not None:
            # Keys only ever join the fixed set (ids grow; pruning keeps fixed keys): a new set
            # object with the keys that crossed, as a full recount would give.
            self._fixed = self._fixed | frozenset(crossed)
        if len(self.key_jobs) > _KEY_PRUNE_AT:
            old = self.serial - _KEY_PRUNE_AGE
            self.key_jobs = {
                k: v for k, v in self.key_jobs.items() if len(v[0]) >= self.fixed_min_jobs or v[1] > old
            }

    def add(self, job: Job, weight: float = 1.0) -> None:
        """Learn the prompt patterns of one finished job."""
        self._note_keys(job)
        fixed = self.fixed_keys()
        out_owner: dict[int, int] = {}
        outs = [_segs(job.output_segments(c)) for c in job.calls]
        for i, segs in enumerate(outs):
            for s in segs:
                out_owner.setdefault(s[0], i)
        key_agents: dict[int, set[str]] = {}
        for c in job.calls:
            a = c.agent_id or c.agent_role
            for k in c.prompt[:, 0].tolist():
                st = key_agents.setdefault(k, set())
                if len(st) < 2:
                    st.add(a)
        last_of_agent: dict[str, int] = {}
        agent_keys: dict[str, set[int]] = {}
        roles_seen: set[str] = set()
        for c in job.calls:
            a = c.agent_id or c.agent_role
            prompt = _segs(c.prompt)
            prev = last_of_agent.get(a)
            if (prev is None or (prev not in c.deps and prev != c.parent)) and c.agent_role in roles_seen:
                ru = self.reuse.setdefault(c.agent_role, [0.0, 0.0])
                ru[0] += weight * (prev is not None)
                ru[1] += weight
            roles_seen.add(c.agent_role)
            pattern: list[tuple[str, str]] = []
            tokens: list[float] = []
            items: list[float] = []
            fsegs: list[Segment | None] = []
            start = 0
            if prev is not None:
                # A continued conversation repeats the previous prompt and output whole; a
                # shorter common prefix (the same instructions again) is classified segment by
                # segment instead.
                hist = _segs(job.calls[prev].prompt) + outs[prev]
                tok, nseg = common_prefix_tokens(prompt, hist)
                if nseg == len(hist) and tok == sum(h[2] for h in hist) and tok > 0:
                    pattern.append(("history", ""))
                    tokens.append(float(tok))
                    items.append(float(nseg))
                    fsegs.append(None)
                    start = nseg
            mine = agent_keys.setdefault(a, set())
            for seg in prompt[start:]:
                k = seg[0]
                owner = out_owner.get(k)
                if k in fixed:
                    slot = ("fixed", format(k, "x"))
                elif owner is not None and owner < c.call_id:
                    slot = ("output", job.calls[owner].agent_role)
                elif len(key_agents.get(k, ())) >= 2:
                    slot = ("context", "")
                elif k in mine:
                    slot = ("history", "")
                else:
                    slot = ("fresh", "")
                if pattern and pattern[-1] == slot and slot[0] != "fixed":
                    tokens[-1] += seg[2]
                    items[-1] += 1
                else:
                    pattern.append(slot)
                    tokens.append(float(seg[2]))
                    items.append(1.0)
                    fsegs.append(seg if slot[0] == "fixed" else None)
            mine.update(s[0] for s in prompt)
            last_of_agent[a] = c.call_id
            variant = CONTINUED if prev is not None else NEW
            racc = self.roles.setdefault((c.agent_role, variant), _RoleAcc())
            racc.calls += weight
            racc.prompt_tokens += weight * c.input_tokens
            key = tuple(pattern)
            acc = racc.patterns.get(key)
            if acc is None:
                if len(racc.patterns) >= _MAX_PATTERNS:  # keep the frequent ones
                    drop = min(racc.patterns, key=lambda p: racc.patterns[p].count)
                    del racc.patterns[drop]
                acc = racc.patterns[key] = _PatternAcc(
                    0.0, [0.0] * len(key), [0.0] * len(key), [{} for _ in key]
                )
            acc.count += weight
            for j in range(len(key)):
                acc.tokens[j] += weight * tokens[j]
                acc.items[j] += weight * items[j]
                fs = fsegs[j]
                if fs is not None:
                    acc.fixed_seg[j][fs] = acc.fixed_seg[j].get(fs, 0.0) + weight
        self.version += 1

    def scale(self, keep: float) -> None:
        """Multiply all pattern history by ``keep`` (0 clears it)."""
        if keep <= 0.0:
            self.roles.clear()
            self.reuse.clear()
        else:
            for v in self.reuse.values():
                v[0] *= keep
                v[1] *= keep
            for racc in self.roles.values():
                racc.calls *= keep
                racc.prompt_tokens *= keep
                for acc in racc.patterns.values():
                    acc.count *= keep
                    acc.tokens = [t * keep for t in acc.tokens]
                    acc.items = [t * keep for t in acc.items]
                    for d in acc.fixed_seg:
                        for s in d:
                            d[s] *= keep
        self.version += 1

    def compile(self) -> "CompiledTemplates":
        """The modal template of every ``(role, variant)``."""
        out: dict[tuple[str, str], RoleTemplate] = {}
        for (role, variant), racc in sorted(self.roles.items()):
            if not racc.patterns or racc.calls <= 0:
                continue
            key, acc = max(racc.patterns.items(), key=lambda kv: (kv[1].count, -len(kv[0])))
            if acc.count <= 0:
                continue
            slots = []
            for j, (kind, label) in enumerate(key):
                seg = max(acc.fixed_seg[j], key=acc.fixed_seg[j].__getitem__) if acc.fixed_seg[j] else None
                slots.append(TemplateSlot(kind, label, seg, acc.tokens[j] / acc.count, acc.items[j] / acc.count))
            out[(role, variant)] = RoleTemplate(
                role, variant, tuple(slots), acc.count / racc.calls, racc.calls, racc.prompt_tokens / racc.calls
            )
        reuse = {r: v[0] / v[1] for r, v in self.reuse.items() if v[1] > 0}
        return CompiledTemplates(out, self.fixed_keys(), self.version, reuse)


class CompiledTemplates:
    """The templates of one workflow type, and prompt-prefix prediction for running jobs."""

    def __init__(
        self,
        templates: dict[tuple[str, str], RoleTemplate],
        fixed: frozenset[int],
        version: int,
        reuse: dict[str, float] | None = None,
    ) -> None:
        self.templates = templates
        self.fixed = fixed
        self.version = version
        # per role: share of a role's re-entries (a retry) made by its existing instances
        self.reuse = reuse or {}
        self.context_slots = {
            role: int(round(sum(s.mean_items for s in t.slots if s.kind == "context")))
            for (role, variant), t in templates.items()
            if variant == NEW
        }

    def get(self, role: str, variant: str) -> RoleTemplate | None:
        """The template of ``role`` for an instance's first (``new``) or later call."""
        return self.templates.get((role, variant))

    def predict_prefix(self, job: "RunningJob", role: str, agent_id: str | None) -> list[Segment]:
        """The predicted prompt prefix of the next call of ``role`` by ``agent_id``.

        ``agent_id`` names the instance that calls (one with earlier calls continues its
        conversation); ``None`` means a new instance. Empty when nothing can be predicted.
        """
        prev = job.last_call_of(agent_id) if agent_id is not None else None
        tmpl = self.get(role, CONTINUED if prev is not None else NEW)
        if tmpl is None:
            return []
        out: list[Segment] = []
        have: set[int] = set()  # keys already in the prefix (outputs are never repeated)

        def add(segs: Sequence[Segment]) -> None:
            out.extend(segs)
            have.update(seg[0] for seg in segs)

        ctx_used = 0
        for slot in tmpl.slots:
            if slot.kind == "fixed" and slot.segment is not None:
                add([slot.segment])
            elif slot.kind == "history":
                if prev is None:
                    break
                add(prev.prompt)
                if not prev.finished:  # its output is not known yet
                    break
                add(prev.output)
            elif slot.kind == "context":
                n = max(int(round(slot.mean_items)), 1)
                segs = job.context[ctx_used : ctx_used + n]
                if not segs:
                    break
                add(segs)
                ctx_used += len(segs)
            elif slot.kind == "output":
                for call in job.latest_outputs(slot.label):
                    if call.output and call.output[0][0] not in have:
                        add(call.output)
            else:  # fresh text cannot be predicted
                break
        return out

    def note_prompt(self, job: "RunningJob", role: str, first_of_agent: bool, prompt: list[Segment]) -> list[Segment]:
        """The job-context segments revealed by a newly issued prompt (to extend ``job.context``).

        In an instance's first prompt, the segments after the fixed instructions and before
        the first earlier output are aligned with the template's context slots.
        """
        if not first_of_agent:
            return []
        n = self.context_slots.get(role, 0)
        found: list[Segment] = []
        for seg in prompt:
            if len(found) >= n:
                break
            if seg[0] in self.fixed:
                continue
            if job.is_output_key(seg[0]):
                break
            found.append(seg)
        return found
