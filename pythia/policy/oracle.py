"""The clairvoyant oracle: Pythia's mechanisms fed the true future (registry name ``oracle``).

:class:`OraclePredictor` is the only predictor that reads ``truth`` (the job's canonical
record) in :meth:`job_started`. It answers Pythia's queries exactly: a call's bound is its
true output length with overflow probability 0, the distance is the true longest chain of
calls still to finish, the upcoming calls are the true next calls with their whole true
prompts, and the projection counts the true calls within the horizon. It bounds what any
prediction can give to the same mechanisms; it does not change the mechanisms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from pythia.policy.pythia_predictor import PythiaPredictor, Upcoming
from pythia.policy.views import RequestView

if TYPE_CHECKING:
    from pythia.workflow.trace import Job


class _Truth:
    """One job's true call graph and its progress."""

    __slots__ = ("job", "children", "issued", "finished", "memo")

    def __init__(self, job: "Job") -> None:
        self.job = job
        self.children: list[list[int]] = [[] for _ in job.calls]
        for c in job.calls:
            for d in set(c.deps):
                self.children[d].append(c.call_id)
        self.issued: set[int] = set()
        self.finished: set[int] = set()
        self.memo: dict[str, Any] = {}


class OraclePredictor(PythiaPredictor):
    """Registry name ``oracle``: exact answers from the job's true record."""

    name = "oracle"

    def __init__(self) -> None:
        super().__init__()
        self.truth: dict[str, _Truth] = {}

    def job_started(self, job_id: str, workflow_type: str, workflow_id: str, now: float,
                    truth: "Job | None" = None) -> None:
        super().job_started(job_id, workflow_type, workflow_id, now)
        if truth is not None:
            self.truth[job_id] = _Truth(truth)

    def call_issued(self, req: RequestView, now: float) -> None:
        super().call_issued(req, now)
        t = self.truth.get(req.job_id)
        if t is not None:
            t.issued.add(req.call_id)
            t.memo.clear()

    def call_finished(self, req: RequestView, now: float) -> None:
        super().call_finished(req, now)
        t = self.truth.get(req.job_id)
        if t is not None:
            t.finished.add(req.call_id)
            t.memo.clear()

    def job_ended(self, job_id: str, now: float) -> None:
        super().job_ended(job_id, now)
        self.truth.pop(job_id, None)

    # queries ---------------------------------------------------------------------

    def warm(self, workflow_type: str) -> bool:
        return True

    def _remaining_depth(self, t: _Truth) -> list[int]:
        """Per call, the longest chain of unfinished calls starting at it (0 when finished)."""
        d = t.memo.get("depth")
        if d is None:
            d = [0] * len(t.job.calls)
            for c in reversed(t.job.calls):  # deps point to earlier calls
                i = c.call_id
                if i not in t.finished:
                    d[i] = 1 + max((d[k] for k in t.children[i]), default=0)
            t.memo["depth"] = d
        return d

    def distance(self, job_id: str) -> float | None:
        t = self.truth.get(job_id)
        if t is None:
            return None
        return float(max(max(self._remaining_depth(t), default=0), 1))

    def bound(self, req: RequestView) -> tuple[int, float] | None:
        t = self.truth.get(req.job_id)
        if t is None or not 0 <= req.call_id < len(t.job.calls):
            return None
        return max(1, t.job.calls[req.call_id].output_tokens), 0.0

    def expected_output(self, req: RequestView) -> float | None:
        b = self.bound(req)
        return None if b is None else float(b[0])

    def upcoming(self, job_id: str) -> Sequence[Upcoming] | None:
        t = self.truth.get(job_id)
        if t is None:
            return None
        up = t.memo.get("upcoming")
        if up is None:
            up = [
                Upcoming(c.agent_role, c.agent_id or c.agent_role, 1.0, c.prompt)
                for c in t.job.calls
                if c.call_id not in t.issued and all(d in t.issued for d in c.deps)
            ]
            t.memo["upcoming"] = up
        return up

    def projection(self, job_id: str, horizon: int) -> dict[str, float] | None:
        t = self.truth.get(job_id)
        if t is None:
            return None
        level = [0] * len(t.job.calls)  # generations from now: 1 = next call
        out: dict[str, float] = {}
        for c in t.job.calls:
            if c.call_id in t.issued:
                continue
            level[c.call_id] = 1 + max((level[d] for d in c.deps), default=0)
            if level[c.call_id] <= horizon:
                out[c.agent_role] = out.get(c.agent_role, 0.0) + 1.0
        return out
