"""Per-workflow-type statistics, so a policy can weight types against each other.

A heavy workflow type (many calls, long critical paths) can starve a light one under a
policy that favours short jobs; these accessors let a policy see each type's share of the
load (jobs, calls, output tokens, observed job completion time) and weight accordingly.
"""

from __future__ import annotations

from dataclasses import dataclass

from pythia.workflow.trace import Job

METRICS = ("jobs", "calls", "output_tokens", "input_tokens", "jct")


@dataclass(frozen=True, slots=True)
class TypeStats:
    """What the profiler has seen of one workflow type.

    Attributes:
        workflow_type: the type.
        jobs: jobs observed (weighted: drift resets of the automaton do not change it).
        mean_calls: calls per job.
        mean_output_tokens / mean_input_tokens: tokens per job.
        mean_critical_path_calls: calls on the longest dependency chain of a job.
        mean_critical_path_gap_s: tool/think time summed along that chain.
        mean_jct_s: mean job completion time reported by the host, ``None`` if never reported.
        jct_jobs: jobs with a reported completion time.
    """

    workflow_type: str
    jobs: float
    mean_calls: float
    mean_output_tokens: float
    mean_input_tokens: float
    mean_critical_path_calls: float
    mean_critical_path_gap_s: float
    mean_jct_s: float | None
    jct_jobs: int


class TypeStatsAcc:
    """Running sums behind :class:`TypeStats`."""

    __slots__ = ("jobs", "calls", "out_tok", "in_tok", "cp_calls", "cp_gap", "jct_sum", "jct_n")

    def __init__(self) -> None:
        self.jobs = 0.0
        self.calls = 0.0
        self.out_tok = 0.0
        self.in_tok = 0.0
        self.cp_calls = 0.0
        self.cp_gap = 0.0
        self.jct_sum = 0.0
        self.jct_n = 0

    def add(self, job: Job, jct_s: float | None) -> None:
        """Add one finished job (and its completion time, when the host knows it)."""
        depth: list[int] = []
        gap: list[float] = []
        for c in job.calls:
            preds = set(c.deps)
            if c.parent is not None:
                preds.add(c.parent)
            best = max(preds, key=lambda p: (depth[p], gap[p]), default=None)
            depth.append(1 + (depth[best] if best is not None else 0))
            gap.append(c.gap_s + (gap[best] if best is not None else 0.0))
        self.jobs += 1
        self.calls += len(job.calls)
        self.out_tok += sum(c.output_tokens for c in job.calls)
        self.in_tok += sum(c.input_tokens for c in job.calls)
        if depth:
            end = max(range(len(depth)), key=lambda i: (depth[i], gap[i]))
            self.cp_calls += depth[end]
            self.cp_gap += gap[end]
        if jct_s is not None:
            self.jct_sum += float(jct_s)
            self.jct_n += 1

    def freeze(self, workflow_type: str) -> TypeStats:
        """The current means."""
        n = max(self.jobs, 1e-12)
        return TypeStats(
            workflow_type=workflow_type,
            jobs=self.jobs,
            mean_calls=self.calls / n,
            mean_output_tokens=self.out_tok / n,
            mean_input_tokens=self.in_tok / n,
            mean_critical_path_calls=self.cp_calls / n,
            mean_critical_path_gap_s=self.cp_gap / n,
            mean_jct_s=self.jct_sum / self.jct_n if self.jct_n else None,
            jct_jobs=self.jct_n,
        )

    def total(self, metric: str) -> float | None:
        """The type's total of ``metric`` (``None`` for ``jct`` when never reported)."""
        if metric == "jobs":
            return self.jobs
        if metric == "calls":
            return self.calls
        if metric == "output_tokens":
            return self.out_tok
        if metric == "input_tokens":
            return self.in_tok
        if metric == "jct":
            return self.jct_sum if self.jct_n else None
        raise ValueError(metric)
