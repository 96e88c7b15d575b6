"""The workflow runtime: releases jobs, issues each call when its dependencies end, records rows.

A call is issued ``gap_s`` after its last dependency ends (after the job starts if it has
none). Jobs start at their open-loop arrival times, or, in a closed loop of concurrency
``N``, ``N`` at a time: the next job starts when one ends. A call that cannot fit a replica's
KV cache is rejected and reported with its job and role; calls depending on it are never
issued, and the job ends (failed) when nothing of it is left in flight.

Calls beyond a pool's context length are clamped, the same way for every system: the
output keeps at most ``context / 8`` tokens (at least 1) and the prompt keeps its first
``context - output`` tokens, so prefixes shared between calls stay shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pythia.sim.cluster import Cluster
from pythia.sim.costmodel import FS_PER_S
from pythia.sim.events import FRONT, ISSUE, JOB, EventQueue
from pythia.sim.request import SimRequest
from pythia.workflow.blocks import sequence_hashes, sequence_hashes_many
from pythia.workflow.clamp import clamp_lengths, cut_segments
from pythia.workflow.trace import Call, Job, Trace, segments

HASH_AHEAD_BLOCKS = 1 << 17  # blocks of upcoming calls hashed together


@dataclass
class JobState:
    """Progress of one started job."""

    index: int
    job: Job
    start_fs: int
    waiting_deps: list[int]
    children: list[list[int]]
    pending: int = 0
    done: int = 0
    failed: bool = False
    end_fs: int = -1
    call_finish: list[int] = field(default_factory=list)


class Runtime:
    """Jobs, their calls and the rows the run writes."""

    def __init__(self, trace: Trace, cluster: Cluster, events: EventQueue) -> None:
        self.trace = trace
        self.cluster = cluster
        self.events = events
        self.block_size = cluster.flags.block_size
        arrival = trace.arrival or {}
        self.closed = arrival.get("process") == "closed"
        self.concurrency = int(arrival.get("concurrency", 1)) if self.closed else 0
        self.time_scale = float(arrival.get("time_scale", 1.0)) if arrival.get("process") == "timestamps" else 1.0
        self.states: dict[int, JobState] = {}
        self.next_job = 0
        self.jobs_ended = 0
        self.next_request_id = 0
        self.call_rows: list[tuple[Any, ...]] = []
        self.job_rows: list[tuple[Any, ...]] = []
        self.rejected: list[dict[str, Any]] = []
        self.clamped = 0
        self.live: dict[int, SimRequest] = {}
        self.predictor = cluster.policies.predictor
        # Jobs in the order they start (arrival time, then index, as their events run): calls
        # are hashed ahead in that order (see _prepare).
        jobs = trace.jobs
        if self.closed:
            self._order = list(range(len(jobs)))
        else:
            self._order = sorted(range(len(jobs)), key=lambda i: (jobs[i].arrival_s or 0.0, i))
        self._order_pos = [0] * len(jobs)
        for p, i in enumerate(self._order):
            self._order_pos[i] = p
        self._prepared_upto = 0
        self._prepared: dict[tuple[int, int], tuple[tuple[int, int, np.ndarray, np.ndarray, bool], np.ndarray]] = {}

    # ------------------------------------------------------------------ jobs

    def start(self) -> None:
        """Schedule the first jobs."""
        jobs = self.trace.jobs
        if self.closed:
            for _ in range(min(self.concurrency, len(jobs))):
                self._start_job(self.next_job, 0)
                self.next_job += 1
        else:
            for i, job in enumerate(jobs):
                t = job.arrival_s if job.arrival_s is not None else 0.0
                self.events.push(round(t * self.time_scale * FS_PER_S), JOB, i)
            self.next_job = len(jobs)

    def on_job_event(self, now: int, index: int) -> None:
        """An open-loop job arrives."""
        self._start_job(index, now)

    def _start_job(self, index: int, now: int) -> None:
        job = self.trace.jobs[index]
        n = len(job.calls)
        children: list[list[int]] = [[] for _ in range(n)]
        for c in job.calls:
            for d in c.deps:
                children[d].append(c.call_id)
        st = JobState(index, job, now, [len(set(c.deps)) for c in job.calls], children, call_finish=[-1] * n)
        self.states[index] = st
        self.predictor.job_started(job.job_id, job.workflow_type, job.workflow_id, now / FS_PER_S, truth=job)
        for c in job.calls:
            if not c.deps:
                self._schedule_issue(st, c, now)

    def _schedule_issue(self, st: JobState, call: Call, now: int) -> None:
        st.pending += 1
        self.events.push(now + round(call.gap_s * FS_PER_S), ISSUE, st.index, call.call_id)

    def _end_job(self, st: JobState, now: int) -> None:
        st.end_fs = now
        self.jobs_ended += 1
        job = st.job
        cp_calls, cp_gap_s = job.critical_path()
        self.job_rows.append((
            job.job_id, job.workflow_type, job.workflow_id, st.start_fs / FS_PER_S, now / FS_PER_S,
            (now - st.start_fs) / FS_PER_S, len(job.calls), st.done, not st.failed, cp_calls, cp_gap_s,
        ))
        del self.states[st.index]
        for c in range(len(job.calls)):  # calls never issued (after a rejection) were hashed ahead
            self._prepared.pop((st.index, c), None)
        self.predictor.job_ended(job.job_id, now / FS_PER_S)
        if self.closed and self.next_job < len(self.trace.jobs):
            self._start_job(self.next_job, now)
            self.next_job += 1

    # ------------------------------------------------------------------ calls

    def _content(self, job: Job, call: Call) -> tuple[int, int, np.ndarray, np.ndarray, bool]:
        """Prompt and output lengths after the context clamp, the segments hashed, and whether it clamped."""
        pool = self.cluster.pool_for(call.model)
        prompt_n, out_n = clamp_lengths(call.input_tokens, call.output_tokens, pool.context_len)
        prompt, output = call.prompt, job.output_segments(call)
        clamped = False
        if (prompt_n, out_n) != (call.input_tokens, max(1, call.output_tokens)):
            clamped = prompt_n + out_n < call.input_tokens + call.output_tokens
            prompt = cut_segments(prompt, prompt_n) if prompt_n < call.input_tokens else prompt
            output = cut_segments(output, out_n) if out_n <= call.output_tokens else output
        if len(prompt) and int(prompt[:, 2].sum()) != prompt_n:
            prompt = segments([(job.uid, 0, prompt_n)])  # a trace without content: unique tokens
        return prompt_n, out_n, prompt, output if out_n <= call.output_tokens else segments([]), clamped

    def _prepare(self, index: int) -> None:
        """Hash the calls of the jobs from the next unhashed one in start order through job ``index``.

        Hashing call by call is dominated by per-call numpy overhead, so the calls of upcoming
        jobs are hashed together, about ``HASH_AHEAD_BLOCKS`` blocks at a time (bounded memory).
        """
        order, jobs, bs = self._order, self.trace.jobs, self.block_size
        pos = self._order_pos[index]
        end, blocks = self._prepared_upto, 0
        keys, contents = [], []
        while end < len(order) and (end <= pos or blocks < HASH_AHEAD_BLOCKS):
            j = order[end]
            job = jobs[j]
            for call in job.calls:
                c = self._content(job, call)
                keys.append((j, call.call_id))
                contents.append(c)
                blocks += (c[0] + c[1]) // bs
            end += 1
        self._prepared_upto = end
        hashes = sequence_hashes_many([(c[2], c[3]) for c in contents], bs)
        for key, c, h in zip(keys, contents, hashes):
            self._prepared[key] = (c, h)

    def on_issue(self, now: int, index: int, call_id: int) -> None:
        """Issue call ``call_id`` of started job ``index``: build the request and route it."""
        st = self.states[index]
        job = st.job
        call = job.calls[call_id]
        pool = self.cluster.pool_for(call.model)
        got = self._prepared.pop((index, call_id), None)
        if got is None and self._order_pos[index] >= self._prepared_upto:
            self._prepare(index)
            got = self._prepared.pop((index, call_id), None)
        if got is None:  # not prepared ahead (issued again): hash it alone
            content = self._content(job, call)
            got = (content, sequence_hashes(content[2], content[3], self.block_size))
        (prompt_n, out_n, prompt, _, clamped), hashes = got
        if clamped:
            self.clamped += 1
        req = SimRequest(
            self.next_request_id, job_id=job.job_id, workflow_type=job.workflow_type,
            workflow_id=job.workflow_id, agent_role=call.agent_role, agent_id=call.agent_id or call.agent_role,
            call_id=call_id, model=call.model, prompt_tokens=prompt_n, output_tokens=out_n,
            block_hashes=hashes, issue_fs=now, ctx=st,
            # What an annotating client or gateway knows at issue time (never the output):
            # the workflow service reads it to follow the job's structure and prompts.
            annotations={"deps": call.deps, "parent": call.parent, "prompt": prompt},
        )
        self.next_request_id += 1
        need = -(-(prompt_n + out_n) // self.block_size)
        capacity = pool.cost.kv_blocks(self.block_size)
        if need > capacity:
            self.rejected.append({
                "job_id": job.job_id, "call_id": call_id, "agent_role": call.agent_role, "model": call.model,
                "pool": pool.name, "reason": f"needs {need} KV blocks, a replica holds {capacity}",
            })
            self._fail(st, req, now)
            return
        self.live[req.request_id] = req
        self.predictor.call_issued(req, now / FS_PER_S)
        self.cluster.submit(req, pool, now)

    def on_front(self, now: int, payload: tuple[SimRequest, Any]) -> None:
        """A front-end hand-over ends: a call reaches its engine queue, or a finished call its client."""
        req, replica = payload
        if replica is None:
            self._delivered(req, now)
        else:
            replica.enqueue(req, now)

    def _fail(self, st: JobState, req: SimRequest, now: int) -> None:
        st.failed = True
        st.pending -= 1
        self._row(req, pool_name=self.cluster.pool_for(req.model).name, status="rejected")
        if st.pending == 0:
            self._end_job(st, now)

    def on_call_finished(self, req: SimRequest, now: int) -> None:
        """A call ended: release its dependants, end the job when nothing of it is left."""
        self.live.pop(req.request_id, None)
        self.predictor.call_finished(req, now / FS_PER_S)
        delay = self.cluster.replicas[req.replica_id].cost.response_out_fs
        if delay:
            # The client reads the last token after the front end's output path.
            st: JobState = req.ctx
            self.events.push(now + delay, FRONT, st.index, req.call_id, (req, None))
        else:
            self._delivered(req, now)

    def _delivered(self, req: SimRequest, now: int) -> None:
        """The client has the whole response of ``req`` at ``now``."""
        st: JobState = req.ctx
        st.done += 1
        st.call_finish[req.call_id] = now
        self._row(req, pool_name=self.cluster.replicas[req.replica_id].pool, status="finished",
                  out_fs=self.cluster.replicas[req.replica_id].cost.response_out_fs)
        for child in st.children[req.call_id]:
            st.waiting_deps[child] -= 1
            if st.waiting_deps[child] == 0:
                self._schedule_issue(st, st.job.calls[child], now)
        st.pending -= 1
        if st.pending == 0:
            self._end_job(st, now)

    def _row(self, req: SimRequest, *, pool_name: str, status: str, out_fs: int = 0) -> None:
        """One call row; first token and finish are when the client reads them (``out_fs`` after the engine)."""
        f = FS_PER_S
        ttft = (req.first_token_fs + out_fs - req.issue_fs) / f if req.first_token_fs >= 0 else float("nan")
        finish = (req.finish_fs + out_fs) / f if req.finish_fs >= 0 else float("nan")
        tpot = ((req.finish_fs - req.first_token_fs) / f / (req.output_tokens - 1)
                if req.finish_fs >= 0 and req.output_tokens > 1 else float("nan"))
        self.call_rows.append((
            req.job_id, req.call_id, req.agent_role, req.agent_id, req.workflow_type, req.model, pool_name,
            req.replica_id, req.issue_fs / f, req.arrival_fs / f,
            (req.sched_fs - req.arrival_fs) / f if req.sched_fs >= 0 else float("nan"), ttft, tpot, finish,
            (finish - req.issue_fs / f) if req.finish_fs >= 0 else float("nan"),
            req.prompt_tokens, req.output_tokens, req.cached_tokens, req.computed_tokens, req.num_preemptions, status,
        ))

    def unfinished(self, now: int) -> list[dict[str, Any]]:
        """Rows and reasons for calls still in flight when the run stops."""
        out = []
        for req in sorted(self.live.values(), key=lambda r: r.request_id):
            st: JobState = req.ctx
            reason = "running when the simulation stopped" if req.num_computed_tokens else "waiting in a queue when the simulation stopped"
            out.append({"job_id": req.job_id, "call_id": req.call_id, "agent_role": req.agent_role,
                        "replica": req.replica_id, "reason": reason})
            self._row(req, pool_name=self.cluster.pool_for(req.model).name, status="unfinished")
            st.failed = True
        return out
