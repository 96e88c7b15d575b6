"""The state of one running job, as the profiler sees it: calls issued, finished, and their content.

A host (the simulator, the vLLM plugin, a gateway) creates one :class:`RunningJob` per job
with :meth:`~pythia.profiler.predictor.Profiler.begin_job` and reports each call as it is
issued and as it finishes. The object keeps what predictions need, incrementally: each call's
automaton place, the *leaves* (calls no issued call depends on yet: the frontier from which
the rest of the job will grow), the latest call of each agent instance and the job's context
segments. Its ``version`` changes with every update, so predictions can be memoised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from pythia.profiler.pfa import CallPlace, place_call, predecessors
from pythia.workflow.trace import Call, Job, segments

Segment = tuple[int, int, int]


@dataclass(slots=True)
class RunningCall:
    """One call of a running job."""

    call_id: int
    role: str
    agent_id: str
    preds: tuple[int, ...]
    place: CallPlace
    prompt: list[Segment]
    input_tokens: int
    model: str = ""
    gap_s: float = 0.0
    deps: tuple[int, ...] = ()
    parent: int | None = None
    first_of_agent: bool = True
    finished: bool = False
    output_tokens: int = 0
    output: list[Segment] = field(default_factory=list)


class RunningJob:
    """A job in flight: the calls seen so far and the frontier predictions start from."""

    def __init__(self, job_id: str, workflow_type: str, workflow_id: str | None, max_unroll: int) -> None:
        self.job_id = job_id
        self.workflow_type = workflow_type
        self.workflow_id = workflow_id or job_id
        self.max_unroll = max_unroll
        self.calls: dict[int, RunningCall] = {}
        self.leaves: dict[int, None] = {}  # ordered set
        self.context: list[Segment] = []
        self.version = 0
        self.memo: dict[Any, Any] = {}
        self._places: dict[int, CallPlace] = {}
        self._agents: dict[int, str] = {}
        self._last_of_agent: dict[str, int] = {}
        self._role_agents: dict[str, list[str]] = {}
        self._output_keys: set[int] = set()
        self._context_keys: set[int] = set()
        self._key_agent: dict[int, str] = {}
        self.scanned = 0  # calls already scanned for context segments
        self.scanned_fixed: frozenset[int] | None = None

    # -- updates

    def issue(
        self,
        call_id: int,
        agent_role: str,
        *,
        agent_id: str = "",
        deps: Iterable[int] = (),
        parent: int | None = None,
        prompt: np.ndarray | list[Segment] | None = None,
        input_tokens: int | None = None,
        model: str = "",
        gap_s: float = 0.0,
    ) -> RunningCall:
        """Record a newly issued call (its dependencies must have been issued before)."""
        agent = agent_id or agent_role
        deps = tuple(int(d) for d in deps)
        preds = tuple(p for p in predecessors(deps, parent) if p in self.calls)
        place = place_call(agent_role, agent, preds, self._places, self._agents, self.max_unroll)
        segs: list[Segment] = (
            [] if prompt is None else [tuple(r) for r in np.asarray(prompt).reshape(-1, 3).tolist()]  # type: ignore[misc]
        )
        n_in = input_tokens if input_tokens is not None else sum(s[2] for s in segs)
        rc = RunningCall(
            call_id, agent_role, agent, preds, place, segs, int(n_in), model, gap_s, deps, parent,
            first_of_agent=agent not in self._last_of_agent,
        )
        self.calls[call_id] = rc
        self._places[call_id] = place
        self._agents[call_id] = agent
        for p in preds:
            self.leaves.pop(p, None)
        self.leaves[call_id] = None
        if agent not in self._last_of_agent:
            self._role_agents.setdefault(agent_role, []).append(agent)
        self._last_of_agent[agent] = call_id
        self.version += 1
        return rc

    def finish(self, call_id: int, output_tokens: int, output: np.ndarray | list[Segment] | None = None) -> RunningCall:
        """Record that a call finished with ``output_tokens`` tokens (and its output segments)."""
        rc = self.calls[call_id]
        rc.finished = True
        rc.output_tokens = int(output_tokens)
        if output is None:
            from pythia.workflow.hashing import stable_key

            # the same unique stream as Job.output_segments for a call without explicit output
            rc.output = [(stable_key("out", self.job_id, call_id), 0, rc.output_tokens)] if output_tokens > 0 else []
        else:
            rc.output = [tuple(r) for r in np.asarray(output).reshape(-1, 3).tolist()]  # type: ignore[misc]
        self._output_keys.update(s[0] for s in rc.output)
        self.version += 1
        return rc

    def issue_call(self, call: Call) -> RunningCall:
        """:meth:`issue` from a trace :class:`~pythia.workflow.trace.Call`."""
        return self.issue(
            call.call_id, call.agent_role, agent_id=call.agent_id, deps=call.deps, parent=call.parent,
            prompt=call.prompt, input_tokens=call.input_tokens, model=call.model, gap_s=call.gap_s,
        )

    def finish_call(self, call: Call, job: Job) -> RunningCall:
        """:meth:`finish` from a trace call of ``job`` (its true output)."""
        return self.finish(call.call_id, call.output_tokens, job.output_segments(call))

    # -- reads

    def last_call_of(self, agent_id: str) -> RunningCall | None:
        """The latest call of an agent instance, ``None`` when it has none."""
        i = self._last_of_agent.get(agent_id)
        return None if i is None else self.calls[i]

    def agents_of(self, role: str) -> list[str]:
        """The instances of ``role`` in order of first call."""
        return self._role_agents.get(role, [])

    def latest_outputs(self, role: str) -> list[RunningCall]:
        """The latest finished call of each instance of ``role``, in instance order."""
        out = []
        for a in self._role_agents.get(role, []):
            i = self._last_of_agent[a]
            rc = self.calls[i]
            if not rc.finished:  # the instance's previous finished call
                j = rc.place.continues
                rc = self.calls[j] if j is not None else rc
            if rc.finished:
                out.append(rc)
        return out

    def is_output_key(self, key: int) -> bool:
        """Whether ``key`` names the output of a finished call of this job."""
        return key in self._output_keys

    def scan_context(self, fixed: frozenset[int], from_template: Any) -> None:
        """Extend :attr:`context` from prompts issued since the last scan.

        A segment is job context when the template aligns it with a context slot of an
        instance's first prompt, or when a second agent instance's prompt repeats a key that
        is neither fixed nor an earlier output.
        """
        if self.scanned_fixed is not fixed:
            self.scanned = 0
            self.context = []
            self._context_keys = set()
            self._key_agent = {}
            self.scanned_fixed = fixed
        ids = sorted(self.calls)
        for i in ids[self.scanned :]:
            rc = self.calls[i]
            for seg in from_template(self, rc.role, rc.first_of_agent, rc.prompt):
                if seg[0] not in self._context_keys:
                    self._context_keys.add(seg[0])
                    self.context.append(seg)
            for seg in rc.prompt:
                k = seg[0]
                if k in fixed or k in self._output_keys:
                    continue
                a = self._key_agent.setdefault(k, rc.agent_id)
                if a != rc.agent_id and k not in self._context_keys:
                    self._context_keys.add(k)
                    self.context.append(seg)
        self.scanned = len(ids)

    def to_job(self) -> Job:
        """The job as a canonical trace job (for learning from it when it ends)."""
        calls = []
        ids = sorted(self.calls)
        remap = {old: new for new, old in enumerate(ids)}
        for old in ids:
            rc = self.calls[old]
            out = rc.output if rc.finished else []
            calls.append(
                Call(
                    call_id=remap[old],
                    agent_role=rc.role,
                    model=rc.model,
                    input_tokens=rc.input_tokens,
                    output_tokens=rc.output_tokens if rc.finished else 0,
                    deps=tuple(remap[d] for d in rc.deps if d in remap),
                    gap_s=rc.gap_s,
                    prompt=segments(rc.prompt),
                    output=segments(out) if out else None,
                    step=remap[old],
                    parent=remap.get(rc.parent) if rc.parent is not None else None,
                    agent_id=rc.agent_id,
                )
            )
        return Job(job_id=self.job_id, workflow_type=self.workflow_type, workflow_id=self.workflow_id, calls=calls)
