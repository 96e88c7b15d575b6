"""The replay client: drives an OpenAI-compatible engine with a workload and measures it.

For each job of a :class:`~pythia.workflow.trace.Trace` the client issues every call once its
dependencies have finished and its gap (tool or think time, times ``gap_scale``) has passed,
streams the completion to time the first token and the rest, and records one row per call
and per job. Jobs are released by the trace's arrival process: a closed loop (N jobs in
flight, the next starting when one ends) or open-loop arrival times (times the arrival's
``time_scale``).

Each request is a ``/v1/completions`` call whose ``prompt`` is a list of token ids
synthesised from the call's segments (:mod:`pythia.bench.tokens`), asking for exactly the
trace's output length (``max_tokens`` = ``min_tokens``, ``ignore_eos``), and carrying the
call's annotation in ``vllm_xargs``. Calls beyond the model's context are clamped exactly as
the simulator clamps them (:func:`pythia.workflow.clamp.clamp_lengths`).

The tables have the simulator's columns (:data:`pythia.results.CALL_COLUMNS`,
``JOB_COLUMNS``), so analysis code does not care which backend produced them. Every loop
is bounded: at most ``max_calls`` requests, at most ``max_duration_s`` seconds, and only
loopback addresses are accepted.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from pythia.bench.tokens import PromptBuilder, TokenSpace
from pythia.errors import PythiaInputError
from pythia.results import CALL_COLUMNS, JOB_COLUMNS, frame, summarise
from pythia.workflow.annotation import CallAnnotation
from pythia.workflow.clamp import clamp_lengths, cut_segments
from pythia.workflow.hashing import stable_key
from pythia.workflow.trace import Call, Job, Trace

FINISHED, FAILED, SKIPPED, NOT_ISSUED = "finished", "failed", "skipped", "not_issued"
LOOP_WATCH_S = 0.01  # period of the client's event-loop lag probe


def client_request_id(job_id: str, call_id: int) -> str:
    """The request id the client sends for a call; vLLM embeds it in its own request id."""
    return f"pythia-{stable_key('call', job_id, call_id):x}"


def check_loopback(url: str) -> None:
    """Refuse any engine address but the loopback range: runs here never leave the machine."""
    host = urlparse(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise PythiaInputError(f"engine URL {url!r} is not a loopback address; the replay client only targets 127.0.0.1")


@dataclass(frozen=True)
class ReplayOptions:
    """How to replay a workload against one engine.

    Attributes:
        base_url: the engine (``http://127.0.0.1:PORT``).
        model: the served model name (the ``model`` field of each request).
        tokens: the token id range prompts are drawn from.
        gap_scale: multiplies the calls' tool/think gaps (0.5 = tools twice as fast).
        max_context: the model's context; longer calls are clamped as in the simulator.
        annotation_field: the request field carrying the annotation (``vllm_xargs``), or
            ``""`` to send none (engines that reject unknown fields).
        realise_outputs: ask for generated token ids and quote them in later prompts, so that
            earlier outputs hit the prefix cache as they would in the real application.
        request_timeout_s: per-request limit.
        max_duration_s: limit of the whole replay; calls not issued by then are recorded as such.
        max_calls: most requests the replay may send.
        max_connections: HTTP connection pool size.
        pool / replica: written into the call rows.
        progress: show a progress bar on stderr.
    """

    base_url: str
    model: str
    tokens: TokenSpace
    gap_scale: float = 1.0
    max_context: int | None = None
    annotation_field: str = "vllm_xargs"
    realise_outputs: bool = True
    request_timeout_s: float = 600.0
    max_duration_s: float = 3600.0
    max_calls: int = 100_000
    max_connections: int = 256
    pool: str = "default"
    replica: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        check_loopback(self.base_url)
        if self.gap_scale < 0:
            raise PythiaInputError(f"option gap_scale={self.gap_scale} must be non-negative")
        if self.max_duration_s <= 0 or self.max_calls < 1 or self.request_timeout_s <= 0:
            raise PythiaInputError("options max_duration_s, max_calls and request_timeout_s must be positive")


@dataclass
class CallResult:
    """What happened to one call (times in seconds from the start of the replay)."""

    status: str = NOT_ISSUED
    issue_s: float = math.nan
    first_token_s: float = math.nan
    finish_s: float = math.nan
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: float = math.nan
    request_id: str = ""
    error: str = ""
    clamped: bool = False
    annotated: bool = False


@dataclass
class ReplayResult:
    """Tables and summary of one replay."""

    calls: pd.DataFrame
    jobs: pd.DataFrame
    summary: dict[str, Any]
    request_ids: dict[str, tuple[str, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _annotation(job: Job, call: Call) -> CallAnnotation | None:
    try:
        return CallAnnotation(
            workflow_type=job.workflow_type,
            workflow_id=job.workflow_id,
            agent_role=call.agent_role,
            parent_call_id=None if call.parent is None else f"{job.job_id}/{call.parent}",
            step=call.step,
        )
    except PythiaInputError:
        return None  # a trace name the annotation rules reject: the call goes unannotated


class Replayer:
    """One replay of ``trace`` against the engine of ``options`` (use :func:`run_replay`)."""

    def __init__(self, trace: Trace, options: ReplayOptions, arrival: dict[str, Any] | None = None) -> None:
        self.trace = trace
        self.opts = options
        self.arrival = dict(arrival or trace.arrival)
        self.builder = PromptBuilder(options.tokens)
        self.results: dict[tuple[str, int], CallResult] = {}
        self.job_times: dict[str, tuple[float, float]] = {}
        self.jobs_started = 0
        self.calls_sent = 0
        self.errors: list[str] = []
        self.request_ids: dict[str, tuple[str, int]] = {}
        self.loop_lags: list[float] = []
        self.loop_lag_max = (math.nan, 0.0)  # (replay time the worst wake-up began, its lag)
        self._final: dict[str, int | None] = {}
        self._t0 = 0.0
        self._deadline = 0.0
        self._bar: Any = None
        process = self.arrival.get("process")
        if process != "closed" and any(j.arrival_s is None for j in trace.jobs):
            raise PythiaInputError(
                "the workload's jobs have no arrival times; choose a closed loop (--concurrency) or a rate (--rate)"
            )

    def now(self) -> float:
        """Seconds since the replay started."""
        return time.monotonic() - self._t0

    async def run(self) -> None:
        """Release every job and wait for all of them (or the deadline)."""
        # Everything made so far (imports, the trace) is moved out of the collector's sight:
        # a full collection over it stalled the event loop for ~0.5 s in the middle of runs.
        gc.collect()
        gc.freeze()
        try:
            await self._run()
        finally:
            gc.unfreeze()

    async def _run(self) -> None:
        import httpx

        self._t0 = time.monotonic()
        self._deadline = self.opts.max_duration_s
        limits = httpx.Limits(max_connections=self.opts.max_connections, max_keepalive_connections=self.opts.max_connections)
        timeout = httpx.Timeout(self.opts.request_timeout_s, connect=10.0)
        if self.opts.progress:
            from tqdm import tqdm

            self._bar = tqdm(total=len(self.trace.jobs), unit="job", file=sys.stderr, desc="replay")
        async with httpx.AsyncClient(base_url=self.opts.base_url, limits=limits, timeout=timeout) as client:
            self._client = client
            if self.arrival.get("process") == "closed":
                n = max(1, int(self.arrival.get("concurrency", 1)))
                queue = iter(range(len(self.trace.jobs)))
                tasks = [asyncio.create_task(self._closed_worker(queue)) for _ in range(min(n, len(self.trace.jobs)))]
            else:
                scale = float(self.arrival.get("time_scale", 1.0))
                t_first = min(j.arrival_s or 0.0 for j in self.trace.jobs) if self.trace.jobs else 0.0
                tasks = [
                    asyncio.create_task(self._open_job(job, ((job.arrival_s or 0.0) - t_first) * scale))
                    for job in self.trace.jobs
                ]
            watch = asyncio.create_task(self._watch_loop())
            try:
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=self.opts.max_duration_s + 5.0)
            except asyncio.TimeoutError:
                self.errors.append(f"the replay stopped at its {self.opts.max_duration_s:.0f} s limit")
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)
        if self._bar is not None:
            self._bar.close()

    async def _watch_loop(self) -> None:
        """Record how late the client's event loop wakes up: a late loop delays every timestamp it takes."""
        while True:  # cancelled when the replay ends
            t = time.monotonic()
            await asyncio.sleep(LOOP_WATCH_S)
            lag = time.monotonic() - t - LOOP_WATCH_S
            self.loop_lags.append(lag)
            if lag > self.loop_lag_max[1]:
                self.loop_lag_max = (t - self._t0, lag)

    async def _closed_worker(self, queue: Any) -> None:
        for idx in queue:
            if self.now() >= self._deadline:
                return
            await self._run_job(self.trace.jobs[idx])

    async def _open_job(self, job: Job, at_s: float) -> None:
        delay = at_s - self.now()
        if delay > 0:
            await asyncio.sleep(min(delay, max(0.0, self._deadline - self.now())))
        if self.now() >= self._deadline:
            return
        await self._run_job(job)

    async def _run_job(self, job: Job) -> None:
        self.jobs_started += 1
        start = self.now()
        done: dict[int, asyncio.Future[bool]] = {c.call_id: asyncio.get_running_loop().create_future() for c in job.calls}
        try:
            await asyncio.gather(*(self._run_call(job, c, done) for c in job.calls))
        finally:
            self.job_times[job.job_id] = (start, self.now())
            self.builder.forget(int(job.output_segments(c)[0, 0]) for c in job.calls if c.output_tokens > 0)
            if self._bar is not None:
                self._bar.update(1)

    async def _run_call(self, job: Job, call: Call, done: dict[int, "asyncio.Future[bool]"]) -> None:
        res = CallResult()
        self.results[(job.job_id, call.call_id)] = res
        ok = False
        try:
            deps_ok = all(await asyncio.gather(*(done[d] for d in call.deps))) if call.deps else True
            if not deps_ok:
                res.status = SKIPPED
                return
            gap = call.gap_s * self.opts.gap_scale
            if gap > 0:
                await asyncio.sleep(min(gap, max(0.0, self._deadline - self.now())))
            if self.now() >= self._deadline or self.calls_sent >= self.opts.max_calls:
                res.status = NOT_ISSUED
                return
            self.calls_sent += 1
            ok = await self._request(job, call, res)
        finally:
            if not done[call.call_id].done():
                done[call.call_id].set_result(ok)

    def _body(self, job: Job, call: Call, res: CallResult) -> dict[str, Any]:
        prompt_n, out_n = call.input_tokens, call.output_tokens
        segs = call.prompt
        out_segs = job.output_segments(call)
        if self.opts.max_context:
            p2, o2 = clamp_lengths(prompt_n, out_n, self.opts.max_context)
            if (p2, o2) != (prompt_n, max(1, out_n)):
                res.clamped = True
            if p2 < prompt_n:
                segs = cut_segments(segs, p2)
            if o2 < max(1, out_n):
                out_segs = cut_segments(out_segs, o2)
            prompt_n, out_n = p2, o2
        out_n = max(1, out_n)
        ids = self.builder.prompt(segs)
        ids_from_segs = bool(ids)
        if not ids:  # an engine needs at least one prompt token
            ids = self.opts.tokens.ids(stable_key("empty", job.job_id, call.call_id), 0, 1).tolist()
        res.prompt_tokens = len(ids)
        body: dict[str, Any] = {
            "model": self.opts.model,
            "prompt": ids,
            "max_tokens": out_n,
            "min_tokens": out_n,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.opts.realise_outputs:
            body["return_token_ids"] = True
        if self.opts.annotation_field:
            ann = _annotation(job, call)
            if ann is not None:
                body[self.opts.annotation_field] = {**ann.to_extra_args(),
                                                     **self._hints(job, call, segs if ids_from_segs else None, out_segs)}
                res.annotated = True
            # vLLM puts this id inside its own request id: engine-side logs can be joined to the call.
            rid = client_request_id(job.job_id, call.call_id)
            body["request_id"] = rid
            res.request_id = rid
            self.request_ids[rid] = (job.job_id, call.call_id)
        return body

    def _hints(self, job: Job, call: Call, segs: np.ndarray | None, out_segs: np.ndarray) -> dict[str, Any]:
        """``pythia_hint.*`` values of a call: what an annotating client knows at issue time, never the output.

        ``prompt`` and ``output`` are the segments the prompt's token ids were built from and
        the output stream's (flat ``[key, offset, tokens, ...]``): the plugin names the
        request's blocks by the same segment hashes as the simulator and Pythia's predictions
        (see :mod:`pythia.serve.adapter`). ``call_id``, ``deps`` and ``parent`` give the job's
        structure; ``last_call`` marks the job's final call (the plugin then reports the job's
        end once it finishes and nothing else of the job is in the engine).
        """
        hints: dict[str, Any] = {"pythia_hint.call_id": int(call.call_id)}
        if segs is not None and len(segs):
            hints["pythia_hint.prompt"] = np.asarray(segs, dtype=np.int64).reshape(-1).tolist()
            if len(out_segs):
                hints["pythia_hint.output"] = np.asarray(out_segs, dtype=np.int64).reshape(-1).tolist()
        if call.deps:
            hints["pythia_hint.deps"] = [int(d) for d in call.deps]
        if call.parent is not None:
            hints["pythia_hint.parent"] = int(call.parent)
        if call.call_id == self._final_call(job):
            hints["pythia_hint.last_call"] = 1
        return hints

    def _final_call(self, job: Job) -> int | None:
        """The call every other call of ``job`` leads to, if there is one.

        In a DAG every call leads to some sink (a call nothing depends on), so a job with a
        single sink ends with it; a job with several sinks has no final call, and the plugin
        ends it after its idle timeout instead.
        """
        if job.job_id not in self._final:
            needed = {d for c in job.calls for d in c.deps}
            sinks = [c.call_id for c in job.calls if c.call_id not in needed]
            self._final[job.job_id] = sinks[0] if len(sinks) == 1 else None
        return self._final[job.job_id]

    async def _request(self, job: Job, call: Call, res: CallResult) -> bool:
        body = self._body(job, call, res)
        res.issue_s = self.now()
        generated: list[int] = []
        chunks = 0
        try:
            async with self._client.stream("POST", "/v1/completions", json=body) as resp:
                if resp.status_code != 200:
                    text = (await resp.aread()).decode("utf-8", "replace")[:300]
                    raise RuntimeError(f"HTTP {resp.status_code}: {text}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        # Read on to the end of the body: leaving a streamed response early makes
                        # httpx's close wait for other streams on the pool (measured: ~0.6 s).
                        continue
                    msg = json.loads(data)
                    for choice in msg.get("choices") or ():
                        toks = choice.get("token_ids")
                        if toks or choice.get("text"):
                            if math.isnan(res.first_token_s):
                                res.first_token_s = self.now()
                            chunks += 1
                            if toks:
                                generated.extend(toks)
                    usage = msg.get("usage")
                    if usage:
                        res.output_tokens = int(usage.get("completion_tokens") or 0)
                        res.prompt_tokens = int(usage.get("prompt_tokens") or res.prompt_tokens)
                        details = usage.get("prompt_tokens_details") or {}
                        if details.get("cached_tokens") is not None:
                            res.cached_tokens = float(details["cached_tokens"])
        except Exception as e:  # noqa: BLE001 - any transport or protocol failure fails this call only
            res.status = FAILED
            res.error = f"{type(e).__name__}: {e}"[:300]
            res.finish_s = self.now()
            if len(self.errors) < 20:
                self.errors.append(f"job {job.job_id} call {call.call_id}: {res.error}")
            return False
        res.finish_s = self.now()
        if not res.output_tokens:
            res.output_tokens = len(generated) or chunks
        res.status = FINISHED
        if generated and call.output_tokens > 0:
            self.builder.record_output(int(job.output_segments(call)[0, 0]), generated)
        return True

    # ------------------------------------------------------------------ tables

    def tables(self, wall_s: float) -> ReplayResult:
        """Build the call and job tables and the summary."""
        opts = self.opts
        rows = []
        for job in self.trace.jobs:
            for c in job.calls:
                r = self.results.get((job.job_id, c.call_id), CallResult())
                ttft = r.first_token_s - r.issue_s
                tpot = ((r.finish_s - r.first_token_s) / (r.output_tokens - 1)
                        if r.status == FINISHED and r.output_tokens > 1 else math.nan)
                computed = r.prompt_tokens - r.cached_tokens if not math.isnan(r.cached_tokens) else math.nan
                rows.append((
                    job.job_id, c.call_id, c.agent_role, c.agent_id, job.workflow_type, c.model, opts.pool,
                    opts.replica, r.issue_s, r.issue_s, math.nan, ttft, tpot, r.finish_s, r.finish_s - r.issue_s,
                    r.prompt_tokens, r.output_tokens, r.cached_tokens, computed, math.nan, r.status,
                ))
        calls = frame(rows, CALL_COLUMNS)
        job_rows = []
        for job in self.trace.jobs:
            if job.job_id not in self.job_times:
                continue
            start, end = self.job_times[job.job_id]
            statuses = [self.results.get((job.job_id, c.call_id), CallResult()).status for c in job.calls]
            n_done = sum(s == FINISHED for s in statuses)
            depth, gaps = job.critical_path()
            job_rows.append((job.job_id, job.workflow_type, job.workflow_id, start, end, end - start, len(job.calls),
                             n_done, n_done == len(job.calls), depth, gaps * opts.gap_scale))
        jobs = frame(job_rows, JOB_COLUMNS)
        finished = calls[calls["status"] == FINISHED]
        duration = float(np.nanmax(finished["finish_s"])) if len(finished) else 0.0
        summary = summarise(calls, jobs, jobs_submitted=self.jobs_started, simulated_s=duration, wall_s=wall_s)
        # A real run has a duration on the wall clock, not a simulated one.
        summary.pop("simulated_s", None)
        summary.pop("speedup", None)
        summary.update({
            "duration_s": duration,
            "jobs_in_workload": len(self.trace.jobs),
            "calls_sent": self.calls_sent,
            "calls_failed": int((calls["status"] == FAILED).sum()),
            "calls_not_issued": int((calls["status"].isin([NOT_ISSUED, SKIPPED])).sum()),
            "calls_annotated": int(sum(r.annotated for r in self.results.values())),
            "clamped_calls": int(sum(r.clamped for r in self.results.values())),
            "arrival": self.arrival,
            "gap_scale": opts.gap_scale,
            # time.monotonic() at t = 0 of the tables: joins them to engine-side step logs.
            "clock_origin_monotonic_s": self._t0,
            # The client's own health: how late its event loop woke (a loaded client host
            # delays the timestamps it takes; tens of ms here make the run suspect).
            "client_loop_lag_p99_ms": float(np.quantile(self.loop_lags, 0.99) * 1e3) if self.loop_lags else math.nan,
            "client_loop_lag_max_ms": float(max(self.loop_lags) * 1e3) if self.loop_lags else math.nan,
            "client_loop_lag_max_at_s": float(self.loop_lag_max[0]),
            "errors": self.errors[:20],
        })
        return ReplayResult(calls, jobs, summary, dict(self.request_ids), list(self.errors))


# Warm-up batches: (concurrent calls, prompt tokens, output tokens), run in order.
WARMUP_ROUNDS = ((1, 64, 8), (4, 512, 32), (8, 256, 32), (2, 2048, 16), (16, 128, 16))


async def _warm_up(base_url: str, model: str, space: TokenSpace, max_context: int | None) -> int:
    """A few batches of every shape class (short and long prefill, small and large decode batches).

    A fresh engine's first steps of each shape are slower (allocator growth, kernel and cache
    set-up); a benchmark measures the warm engine. Prompts come from a stream key space the
    workloads never use, so the warm-up leaves no prefix the replay could hit.
    """
    import httpx

    sent = 0
    async with httpx.AsyncClient(base_url=base_url, timeout=120.0) as client:
        async def one(key: int, p: int, out: int) -> None:
            body = {"model": model, "prompt": space.ids(key, 0, p).tolist(), "max_tokens": out, "min_tokens": out,
                    "ignore_eos": True, "temperature": 0.0, "stream": True}
            async with client.stream("POST", "/v1/completions", json=body) as resp:
                resp.raise_for_status()
                async for _ in resp.aiter_lines():
                    pass

        for r, (n, p, out) in enumerate(WARMUP_ROUNDS):
            if max_context:
                p = min(p, max(1, max_context - out - 1))
            await asyncio.gather(*(one(stable_key("warm-up", r, i), p, out) for i in range(n)))
            sent += n
    return sent


def warm_up(base_url: str, model: str, space: TokenSpace, max_context: int | None = None) -> int:
    """Run the warm-up batches against an engine; returns the number of requests sent."""
    check_loopback(base_url)
    return asyncio.run(_warm_up(base_url, model, space, max_context))


def run_replay(trace: Trace, options: ReplayOptions, arrival: dict[str, Any] | None = None) -> ReplayResult:
    """Replay ``trace`` against ``options.base_url`` and return the tables (blocks until done)."""
    replayer = Replayer(trace, options, arrival)
    wall0 = time.monotonic()
    asyncio.run(replayer.run())
    return replayer.tables(time.monotonic() - wall0)
