"""Cost of ``schedule()``: the Pythia plugin hosting the ``pythia`` system vs stock vLLM, side by side.

Both schedulers are vLLM 0.32's real classes built on the CPU (``tests/vllm_support.py``:
``ModelConfig`` from the tiny model, a KV pool large enough that nothing is preempted, fake
model outputs). The stock one is ``Scheduler`` (what vLLM runs on the CPU); the other is
``PythiaSyncScheduler`` hosting the ``pythia`` system's policies (``baselines/pythia.yaml``:
the profiler predictor, graph-driven priority with aging, predicted-reuse pins).

Both see the same stream of annotated multi-agent calls: 512 waiting and 256 running
(``max_num_seqs``) at every measured step. Output lengths vary, so a few calls finish each
step and the same number of new calls arrive, which keeps the queue moving through the
admission, pop and add paths. Steps alternate between the two schedulers (their order
swapped every step) so machine noise hits both alike; only ``schedule()`` is timed.

The calls carry only the IDs (no prompt hints), so the plugin also learns from vLLM's block
hashes (``pythia/policy/block_memory.py``) as calls finish: that work happens in
``update_from_output`` (where vLLM frees finished requests), which is timed apart and
reported as ``update_ratio_median``.

Target: Pythia's per-step time at most 1.10x stock's. Writes ``results/bench/schedule.json``.
Run: ``python benchmarks/bench_schedule.py [--steps N]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

WAITING, RUNNING = 512, 256
PROMPT, BLOCK = 64, 16
TARGET = 1.10
ROLES = ("planner", "explorer", "engineer", "reviewer")


class Stream:
    """The same deterministic stream of calls for each scheduler (new Request objects per scheduler)."""

    def __init__(self, seed: int = 0) -> None:
        import numpy as np

        self.rng = np.random.default_rng(seed)
        self.shared = self.rng.integers(300, 3000, size=32).tolist()  # a shared instruction prefix
        self.specs: list[tuple[str, list[int], int, dict[str, Any]]] = []

    def spec(self, i: int) -> tuple[str, list[int], int, dict[str, Any]]:
        """Call ``i``: id, prompt, output length, annotation (a job of 4 calls per 4 consecutive ids)."""
        while len(self.specs) <= i:
            k = len(self.specs)
            prompt = self.shared + self.rng.integers(300, 3000, size=PROMPT - 32).tolist()
            out = int(self.rng.integers(40, 400))
            ann = {"pythia.workflow_type": "coding-assistant", "pythia.workflow_id": f"job-{k // 4}",
                   "pythia.agent_role": ROLES[k % 4], "pythia.step": k % 4}
            self.specs.append((f"c{k}", prompt, out, ann))
        return self.specs[i]


def build(cls: type, model_dir: Path, pythia: dict[str, Any] | None) -> Any:
    from vllm_support import make_scheduler

    return make_scheduler(cls, model_dir, num_blocks=8192, block_size=BLOCK, max_num_seqs=RUNNING,
                          max_num_batched_tokens=8192, pythia=pythia)


def add(sched: Any, stream: Stream, i: int) -> None:
    from vllm_support import make_request

    rid, prompt, out, ann = stream.spec(i)
    sched.add_request(make_request(rid, prompt, out, dict(ann), block_size=BLOCK))


def update(sched: Any, out: Any) -> int:
    """Feed one fake model output (one token per request past its prompt); returns how many finished."""
    from vllm.v1.outputs import ModelRunnerOutput

    ids = list(out.num_scheduled_tokens)
    if not ids:
        return 0
    sampled = [[100] if sched.requests[r].num_computed_tokens >= sched.requests[r].num_tokens else [] for r in ids]
    before = len(sched.requests)
    sched.update_from_output(out, ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                                                    sampled_token_ids=sampled))
    return before - len(sched.requests)


def run(steps: int, warmup: int) -> dict[str, Any]:
    from vllm.v1.core.sched.scheduler import Scheduler

    from pythia.serve.tiny_model import make_tiny_model
    from pythia.serve.vllm_scheduler import PythiaSyncScheduler

    tmp = Path(tempfile.mkdtemp(prefix="pythia-bench-schedule-"))
    model_dir = make_tiny_model(tmp / "tiny-model")
    t0 = time.perf_counter()
    scheds = {"stock": build(Scheduler, model_dir, None),
              "pythia": build(PythiaSyncScheduler, model_dir, {"hooks": "system:pythia"})}
    build_s = time.perf_counter() - t0
    stream = Stream()
    issued = {name: 0 for name in scheds}
    times: dict[str, list[float]] = {name: [] for name in scheds}
    upd: dict[str, list[float]] = {name: [] for name in scheds}
    depth: dict[str, list[tuple[int, int]]] = {name: [] for name in scheds}

    def top_up(name: str) -> None:
        s = scheds[name]
        while len(s.requests) < WAITING + RUNNING:
            add(s, stream, issued[name])
            issued[name] += 1

    for name in scheds:
        top_up(name)
    gc.collect()
    order = list(scheds)
    for step in range(warmup + steps):
        for name in order if step % 2 == 0 else order[::-1]:
            s = scheds[name]
            shape = (len(s.waiting), len(s.running))
            t = time.perf_counter_ns()
            out = s.schedule()
            dt = time.perf_counter_ns() - t
            t = time.perf_counter_ns()
            update(s, out)
            du = time.perf_counter_ns() - t
            top_up(name)
            if step >= warmup:
                times[name].append(dt / 1e6)
                upd[name].append(du / 1e6)
                depth[name].append(shape)
    stock, pyth = times["stock"], times["pythia"]
    shapes = depth["pythia"]
    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg_1min_at_start": os.getloadavg()[0]},
        "setup": {"waiting": WAITING, "running": RUNNING, "prompt_tokens": PROMPT, "block_size": BLOCK,
                  "steps": steps, "warmup_steps": warmup, "stock": "vllm Scheduler (0.32.0)",
                  "pythia": "PythiaSyncScheduler hosting system:pythia", "build_s": round(build_s, 2)},
        "shape_at_measured_steps": {"waiting_min": min(w for w, _ in shapes), "running_min": min(r for _, r in shapes)},
        "stock_ms": summarise(stock),
        "pythia_ms": summarise(pyth),
        "ratio_median": statistics.median(pyth) / statistics.median(stock),
        "ratio_mean": statistics.fmean(pyth) / statistics.fmean(stock),
        "ratio_median_of_paired": statistics.median(p / s for p, s in zip(pyth, stock)),
        "target": TARGET,
        "update_stock_ms": summarise(upd["stock"]),
        "update_pythia_ms": summarise(upd["pythia"]),
        "update_ratio_median": statistics.median(upd["pythia"]) / statistics.median(upd["stock"]),
        "learned": scheds["pythia"].stats_dict()["learned"],
        "plugin_stats": {k: v for k, v in scheds["pythia"].stats_dict().items()
                         if k in ("steps", "annotated", "hook_errors", "victim_hook_calls", "preemptions",
                                  "jobs_started", "pins_applied")},
        "per_step_ms": {"stock": [round(x, 4) for x in stock], "pythia": [round(x, 4) for x in pyth]},
    }
    result["meets_target"] = result["ratio_median"] <= TARGET
    return result


def summarise(xs: list[float]) -> dict[str, float]:
    """Median, mean, p10 and p90 of per-step times (ms)."""
    q = statistics.quantiles(xs, n=10)
    return {"median": round(statistics.median(xs), 4), "mean": round(statistics.fmean(xs), 4),
            "p10": round(q[0], 4), "p90": round(q[-1], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "schedule.json")
    args = ap.parse_args()
    res = run(args.steps, args.warmup)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"schedule() per step, {WAITING} waiting + {RUNNING} running: stock {res['stock_ms']['median']:.3f} ms, "
          f"pythia {res['pythia_ms']['median']:.3f} ms (median), ratio {res['ratio_median']:.3f} "
          f"(mean {res['ratio_mean']:.3f}, paired {res['ratio_median_of_paired']:.3f}; target <= {TARGET}); "
          f"update_from_output ratio {res['update_ratio_median']:.3f} (median)")


if __name__ == "__main__":
    main()
