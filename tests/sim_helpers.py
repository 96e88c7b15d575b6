"""Small canonical traces for the simulator tests."""

from __future__ import annotations

from typing import Any

from pythia.workflow.trace import Call, Job, Trace, segments

SYSTEM_PROMPT = 0x51575


def chain_job(j: int, n_calls: int = 3, *, model: str = "qwen2.5-7b", prompt: int = 1500, output: int = 120,
              gap_s: float = 0.2, shared: int = 1024) -> Job:
    """A sequential job: each call's prompt is the shared system prompt plus job context."""
    calls = []
    for c in range(n_calls):
        p = prompt + 64 * c
        segs = segments([(SYSTEM_PROMPT, 0, shared), (10_000 + j, 0, p - shared)])
        calls.append(Call(call_id=c, agent_role=f"role{c}", model=model, input_tokens=p, output_tokens=output + 7 * c,
                          deps=(c - 1,) if c else (), gap_s=gap_s, prompt=segs))
    return Job(job_id=f"job{j:04d}", workflow_type="chain", workflow_id=f"wf{j}", calls=calls)


def chain_trace(n_jobs: int, *, concurrency: int | None = 8, **kw: Any) -> Trace:
    """``n_jobs`` chain jobs in a closed loop (or released at 1 s intervals when ``concurrency`` is None)."""
    jobs = [chain_job(j, **kw) for j in range(n_jobs)]
    if concurrency is None:
        for j, job in enumerate(jobs):
            job.arrival_s = float(j)
        return Trace(jobs=jobs, arrival={"process": "timestamps", "time_scale": 1.0})
    return Trace(jobs=jobs, arrival={"process": "closed", "concurrency": concurrency})
