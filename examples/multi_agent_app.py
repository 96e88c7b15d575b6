"""A multi-agent application: a planner, parallel workers that use a tool, a reviewer.

Each job is one workflow: the planner splits a task into parts; one worker per part thinks,
calls a (fake) tool that takes 0.5-3 s, reads its result and goes on, as an agent does; the
reviewer reads every worker's answer. Every LLM call is a plain chat completion through the
``openai`` client, with text prompts, and carries only Pythia's annotation: the three IDs
(workflow type, workflow id, agent role) and the agent instance (``agent_id``), in the body
(``with_annotation()``, vLLM's ``vllm_xargs``) or as ``X-Pythia-*`` headers. Nothing else in
it knows about Pythia, so it runs against any OpenAI-compatible endpoint.

Role instructions are the same for every job (as an application's system prompts and tool
descriptions are), and a worker's next call extends its own conversation after a tool gap:
the reuse a serving layer can keep in its prefix cache.

    python examples/multi_agent_app.py --base-url http://127.0.0.1:8000/v1 --model MODEL \\
        --jobs 4 --concurrency 2 --seed 0 --out app.json

It writes one JSON object: the settings, one row per job (JCT), one per call (TTFT, latency,
prompt, output and cached tokens, whether it resumed after a tool call) and a summary. Tool
times and prompts come from ``--seed`` (one generator per job); the model's outputs do not.
Exit status 0 when every job completed, 1 otherwise, 2 for a bad option.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from openai import AsyncOpenAI

from pythia.workflow.annotation import HEADERS, with_annotation

ANNOTATION_MODES = ("body", "headers", "none")

PLANNER = (
    "You are the planner of a small software team. You receive a task and split it into "
    "independent parts that workers can do in parallel. For each part, name the files to "
    "read, the change to make and how to check it. Answer with a numbered list, one part per "
    "line, and nothing else. Keep each part short and concrete."
)
WORKER = (
    "You are a worker of a small software team. You receive the task, the planner's plan and "
    "your part of it. You may use one tool, `search(query)`, which finds code in the "
    "repository and returns matching files with line numbers; to use it, write "
    "SEARCH: <query> on a line of its own and stop. After each tool result, continue from "
    "where you were. When you are done, write DONE: followed by the change you propose, "
    "as a unified diff, and one sentence saying how you checked it."
)
REVIEWER = (
    "You are the reviewer of a small software team. You receive the task and every worker's "
    "proposed change. Check that the changes together do the task, do not conflict and are "
    "tested. Answer APPROVE or REQUEST CHANGES, then list the problems you found, one per line."
)
TASKS = (
    "the CSV importer drops the last row when the file has no trailing newline",
    "requests to the billing service time out under load; add retries with backoff",
    "the date parser accepts February 30; make it reject invalid dates",
    "the cache never evicts; bound it and evict least recently used entries",
    "the CLI prints a traceback for a missing config file; print one clear line instead",
    "the search endpoint is slow on long queries; profile it and fix the hot path",
)
COMPONENTS = ("parser", "storage", "api", "cli", "scheduler", "auth", "metrics", "config")


@dataclass(frozen=True)
class AppConfig:
    """Settings of one run of the application (checked once).

    Attributes:
        base_url: the OpenAI-compatible endpoint (``http://host:port/v1``).
        model: the model name the endpoint serves.
        jobs: how many jobs (workflows) to run.
        concurrency: most jobs in flight at once (a closed loop).
        seed: seeds every job's prompts and tool times.
        workers: parallel workers per job.
        tool_calls: tool calls per worker (each followed by one more LLM call).
        max_tokens: most output tokens per call.
        temperature: sampling temperature.
        annotation: ``body`` (``vllm_xargs``), ``headers`` (``X-Pythia-*``) or ``none``.
        workflow_type: the annotation's workflow type.
        tool_min_s / tool_max_s: range of a tool call's duration.
        result_lines: most lines of one tool result (at least 2; each names a file and line).
        context_lines: lines of the source file each worker is given with its part (0: none),
            the context an agent keeps in its own conversation.
        timeout_s: most seconds one call may take.
        api_key: sent as the bearer token (most local servers ignore it).
    """

    base_url: str
    model: str
    jobs: int = 2
    concurrency: int = 2
    seed: int = 0
    workers: int = 3
    tool_calls: int = 1
    max_tokens: int = 48
    temperature: float = 0.0
    annotation: str = "body"
    workflow_type: str = "plan-work-review"
    tool_min_s: float = 0.5
    tool_max_s: float = 3.0
    result_lines: int = 5
    context_lines: int = 0
    timeout_s: float = 120.0
    api_key: str = field(default="none", repr=False)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"option --base-url={self.base_url!r} must start with http:// or https://")
        for name in ("jobs", "concurrency", "workers", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"option --{name.replace('_', '-')}={getattr(self, name)} must be at least 1")
        if self.result_lines < 2:
            raise ValueError(f"option --result-lines={self.result_lines} must be at least 2")
        if self.context_lines < 0:
            raise ValueError(f"option --context-lines={self.context_lines} must be at least 0")
        if self.tool_calls < 0:
            raise ValueError(f"option --tool-calls={self.tool_calls} must be at least 0")
        if not 0 <= self.tool_min_s <= self.tool_max_s:
            raise ValueError(f"tool times {self.tool_min_s}-{self.tool_max_s} s must satisfy 0 <= min <= max")
        if self.annotation not in ANNOTATION_MODES:
            raise ValueError(f"option --annotation={self.annotation!r} must be one of {', '.join(ANNOTATION_MODES)}")
        if self.timeout_s <= 0:
            raise ValueError(f"option --timeout-s={self.timeout_s} must be positive")


@dataclass(frozen=True)
class JobPlan:
    """What one job will do, fixed by the seed before any call: its task, parts and tool times."""

    index: int
    workflow_id: str
    task: str
    parts: tuple[str, ...]
    tool_s: tuple[tuple[float, ...], ...]  # per worker, per tool call
    tool_results: tuple[tuple[str, ...], ...]
    files: tuple[str, ...] = ()  # per worker, the source it is given (empty: none)


_STATEMENTS = ("if {a} is None:", "return {a}.{b}({c})", "{a} = {b}[{n}]", "for {a} in {b}:", "raise ValueError({c!r})",
               "{a}.append({b})", "def {a}_{b}(self, {c}):", "with open({c!r}) as {a}:", "{a} += {n}", "yield {a}, {b}")
_NAMES = ("row", "rows", "path", "cfg", "item", "buf", "key", "value", "conn", "result", "entry", "cache")


def source_file(rng: np.random.Generator, component: str, lines: int) -> str:
    """``lines`` numbered lines of a made-up Python module of ``component`` (empty for 0)."""
    if lines <= 0:
        return ""
    out = [f"# src/{component}/module_{int(rng.integers(100))}.py"]
    for n in range(1, lines + 1):
        a, b, c = (_NAMES[int(i)] for i in rng.integers(len(_NAMES), size=3))
        stmt = _STATEMENTS[int(rng.integers(len(_STATEMENTS)))].format(a=a, b=b, c=c, n=int(rng.integers(64)))
        out.append(f"{n:4d}  {'    ' * int(rng.integers(3))}{stmt}")
    return "\n".join(out)


def plan_job(cfg: AppConfig, index: int) -> JobPlan:
    """The job ``index`` of a run: the same for the same seed, whatever the endpoint answers."""
    rng = np.random.default_rng([cfg.seed, index])
    task = TASKS[int(rng.integers(len(TASKS)))]
    comps = rng.permutation(len(COMPONENTS))
    parts = tuple(f"the {COMPONENTS[comps[i % len(comps)]]} side of the change" for i in range(cfg.workers))
    tool_s = tuple(tuple(float(x) for x in rng.uniform(cfg.tool_min_s, cfg.tool_max_s, cfg.tool_calls))
                   for _ in range(cfg.workers))
    results = tuple(
        tuple("\n".join(f"src/{COMPONENTS[int(rng.integers(len(COMPONENTS)))]}/module_{int(rng.integers(100))}.py:"
                        f"{int(rng.integers(1, 400))}" for _ in range(int(rng.integers(2, cfg.result_lines + 1))))
              for _ in range(cfg.tool_calls))
        for _ in range(cfg.workers))
    # The files come from a generator of their own, so the rest of a job is the same with or without them.
    frng = np.random.default_rng([cfg.seed, index, 1])
    files = tuple(source_file(frng, COMPONENTS[comps[i % len(comps)]], cfg.context_lines) for i in range(cfg.workers))
    return JobPlan(index, f"job-{cfg.seed}-{index}", task, parts, tool_s, results, files)


@dataclass
class CallRecord:
    """One LLM call as the application saw it (times in seconds from the start of the run)."""

    job: int
    workflow_id: str
    agent_role: str
    agent_id: str
    turn: int
    after_tool: bool
    start_s: float
    ttft_s: float | None = None
    latency_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    error: str | None = None


def annotation_kwargs(cfg: AppConfig, workflow_id: str, role: str, agent_id: str) -> dict[str, Any]:
    """The annotation as the ``openai`` client's ``extra_body`` or ``extra_headers`` (or nothing)."""
    if cfg.annotation == "body":
        return {"extra_body": with_annotation(workflow_type=cfg.workflow_type, workflow_id=workflow_id,
                                              agent_role=role, agent_id=agent_id)}
    if cfg.annotation == "headers":
        return {"extra_headers": {HEADERS["workflow_type"]: cfg.workflow_type, HEADERS["workflow_id"]: workflow_id,
                                  HEADERS["agent_role"]: role, HEADERS["agent_id"]: agent_id}}
    return {}


class App:
    """Runs the jobs of a :class:`AppConfig` against one endpoint and keeps the records."""

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg
        self.client = AsyncOpenAI(base_url=cfg.base_url, api_key=cfg.api_key, timeout=cfg.timeout_s, max_retries=0)
        self.calls: list[CallRecord] = []
        self.jobs: list[dict[str, Any]] = []
        self._t0 = time.perf_counter()

    def _now(self) -> float:
        return time.perf_counter() - self._t0

    async def chat(self, plan: JobPlan, role: str, agent_id: str, messages: list[dict[str, str]],
                   turn: int = 0, after_tool: bool = False) -> str:
        """One streamed chat completion; records its TTFT and usage; raises on failure (after recording it)."""
        rec = CallRecord(plan.index, plan.workflow_id, role, agent_id, turn, after_tool, self._now())
        self.calls.append(rec)
        parts: list[str] = []
        try:
            stream = await self.client.chat.completions.create(
                model=self.cfg.model, messages=messages, max_tokens=self.cfg.max_tokens,  # type: ignore[arg-type]
                temperature=self.cfg.temperature, stream=True, stream_options={"include_usage": True},
                **annotation_kwargs(self.cfg, plan.workflow_id, role, agent_id))
            async for chunk in stream:
                for choice in chunk.choices:
                    if rec.ttft_s is None and (choice.delta.content or choice.finish_reason):
                        rec.ttft_s = self._now() - rec.start_s
                    if choice.delta.content:
                        parts.append(choice.delta.content)
                if chunk.usage is not None:
                    rec.prompt_tokens = chunk.usage.prompt_tokens
                    rec.completion_tokens = chunk.usage.completion_tokens
                    details = chunk.usage.prompt_tokens_details
                    rec.cached_tokens = details.cached_tokens if details is not None else None
        except Exception as e:  # noqa: BLE001 - recorded, then the job stops
            rec.error = f"{type(e).__name__}: {e}"
            raise
        finally:
            rec.latency_s = self._now() - rec.start_s
        return "".join(parts)

    async def worker(self, plan: JobPlan, i: int, task: str, plan_text: str) -> str:
        """A worker's conversation: think, call the tool, wait for it, go on; then answer."""
        agent_id = f"worker/{i}"
        given = f"\n\nThe file to change:\n{plan.files[i]}" if plan.files and plan.files[i] else ""
        messages = [{"role": "system", "content": WORKER},
                    {"role": "user", "content": f"Task: {task}\n\nPlan:\n{plan_text}\n\n"
                                                f"Your part ({i + 1} of {len(plan.parts)}): {plan.parts[i]}.{given}"}]
        for k in range(self.cfg.tool_calls):
            text = await self.chat(plan, "worker", agent_id, messages, turn=k, after_tool=k > 0)
            await asyncio.sleep(plan.tool_s[i][k])  # the tool runs; the agent is idle meanwhile
            messages += [{"role": "assistant", "content": text},
                         {"role": "user", "content": f"search returned:\n{plan.tool_results[i][k]}\n\nContinue."}]
        return await self.chat(plan, "worker", agent_id, messages, turn=self.cfg.tool_calls,
                               after_tool=self.cfg.tool_calls > 0)

    async def job(self, plan: JobPlan) -> None:
        """Planner, then the workers in parallel, then the reviewer; records the job's JCT."""
        start = self._now()
        row: dict[str, Any] = {"job": plan.index, "workflow_id": plan.workflow_id, "start_s": start,
                               "workers": len(plan.parts), "status": "completed"}
        try:
            plan_text = await self.chat(plan, "planner", "planner", [
                {"role": "system", "content": PLANNER}, {"role": "user", "content": f"Task: {plan.task}"}])
            async with asyncio.TaskGroup() as tg:  # one failing worker cancels its siblings
                tasks = [tg.create_task(self.worker(plan, i, plan.task, plan_text)) for i in range(len(plan.parts))]
            answers = "\n\n".join(f"Worker {i + 1} ({plan.parts[i]}):\n{t.result()}" for i, t in enumerate(tasks))
            await self.chat(plan, "reviewer", "reviewer", [
                {"role": "system", "content": REVIEWER},
                {"role": "user", "content": f"Task: {plan.task}\n\nProposed changes:\n\n{answers}"}])
        except Exception as e:  # noqa: BLE001 - one failed job does not stop the others
            errors = getattr(e, "exceptions", [e])
            row["status"] = "failed"
            row["error"] = f"{type(errors[0]).__name__}: {errors[0]}"
        row["end_s"] = self._now()
        row["jct_s"] = row["end_s"] - start
        row["calls"] = sum(1 for c in self.calls if c.job == plan.index)
        self.jobs.append(row)

    async def run(self) -> dict[str, Any]:
        """Every job, at most ``concurrency`` in flight; the report."""
        gate = asyncio.Semaphore(self.cfg.concurrency)

        async def one(j: int) -> None:
            async with gate:
                await self.job(plan_job(self.cfg, j))

        self._t0 = time.perf_counter()
        try:
            await asyncio.gather(*(one(j) for j in range(self.cfg.jobs)))
        finally:
            await self.client.close()
        return self.report(self._now())

    def report(self, wall_s: float) -> dict[str, Any]:
        """Settings, jobs, calls and a summary, as one JSON-ready object."""
        jobs = sorted(self.jobs, key=lambda r: r["job"])
        done = [r["jct_s"] for r in jobs if r["status"] == "completed"]
        ttft = [c.ttft_s for c in self.calls if c.ttft_s is not None and c.error is None]
        resumed = [c.ttft_s for c in self.calls if c.after_tool and c.ttft_s is not None and c.error is None]
        settings = {k: v for k, v in asdict(self.cfg).items() if k != "api_key"}
        return {
            "settings": settings,
            "summary": {
                "jobs": len(jobs), "jobs_completed": len(done), "calls": len(self.calls),
                "calls_failed": sum(1 for c in self.calls if c.error), "wall_s": wall_s,
                "mean_jct_s": float(np.mean(done)) if done else None,
                "mean_ttft_s": float(np.mean(ttft)) if ttft else None,
                "p50_ttft_s": float(np.median(ttft)) if ttft else None,
                "mean_ttft_after_tool_s": float(np.mean(resumed)) if resumed else None,
            },
            "jobs": jobs,
            "calls": [asdict(c) for c in sorted(self.calls, key=lambda c: (c.job, c.start_s))],
        }


def parse_args(argv: list[str] | None = None) -> tuple[AppConfig, Path | None]:
    """The settings from the command line; a bad option exits with status 2 and one line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True, help="the OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--model", required=True, help="the model name the endpoint serves")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=2, help="most jobs in flight")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=3, help="parallel workers per job")
    ap.add_argument("--tool-calls", type=int, default=1, help="tool calls per worker")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--result-lines", type=int, default=5, help="most lines of one tool result (at least 2)")
    ap.add_argument("--context-lines", type=int, default=0, help="lines of source each worker is given (0: none)")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--annotation", choices=ANNOTATION_MODES, default="body",
                    help="body: vllm_xargs (with_annotation); headers: X-Pythia-*; none: no annotation")
    ap.add_argument("--workflow-type", default="plan-work-review")
    ap.add_argument("--timeout-s", type=float, default=120.0)
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--out", type=Path, help="write the JSON report here (default: standard output)")
    a = ap.parse_args(argv)
    try:
        cfg = AppConfig(a.base_url, a.model, a.jobs, a.concurrency, a.seed, a.workers, a.tool_calls, a.max_tokens,
                        a.temperature, a.annotation, a.workflow_type, result_lines=a.result_lines,
                        context_lines=a.context_lines,
                        timeout_s=a.timeout_s, api_key=a.api_key)
    except ValueError as e:
        ap.error(str(e))
    return cfg, a.out


def main(argv: list[str] | None = None) -> int:
    """Run the application; 0 when every job completed."""
    cfg, out = parse_args(argv)
    report = asyncio.run(App(cfg).run())
    text = json.dumps(report, indent=1)
    if out is None:
        print(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        s = report["summary"]
        print(f"{s['jobs_completed']}/{s['jobs']} jobs, {s['calls']} calls, mean JCT {s['mean_jct_s']} s, "
              f"mean TTFT {s['mean_ttft_s']} s -> {out}", file=sys.stderr)
    return 0 if report["summary"]["jobs_completed"] == cfg.jobs else 1


if __name__ == "__main__":
    sys.exit(main())
