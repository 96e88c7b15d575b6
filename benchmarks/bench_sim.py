"""Simulator speed: every system at peak load, the Mooncake replay, scaling and memory.

    python benchmarks/bench_sim.py [--label after] [--rev REV] [--cells coding-assistant-c64,claude-code-c12]
                                   [--systems vllm,pythia,...] [--repeat 3] [--sizes 1000,...,100000]
                                   [--skip-cells] [--skip-mooncake] [--skip-scaling]

Each run is a fresh single-threaded subprocess pinned to one core; ``wall_s`` is what the run
reports (first event to finished tables, trace loading excluded).

- **cells**: every system in ``baselines/`` on the saturated cells (coding-assistant at 64
  jobs in flight, seed 11, the spec's default 64 jobs, ``paper`` cluster; the first 12
  Claude Code sessions at 12 in flight on ``long-context``). Within one invocation, each
  system's wall time is divided by ``vllm``'s on the same cell (target <= 2.0) and its
  simulated time by its wall time (target >= 1000). The systems of a cell run interleaved
  with ``vllm`` (``vllm`` first and last), and ``vllm``'s reference is the mean of its runs.
- **mooncake**: the replay of ``mooncake/conversation_trace.jsonl`` (12,031 requests) on
  ``llama8b-x8`` with ``vllm`` (target >= 2000x real time; fastest of ``--repeat``, as
  timing tools report, since other processes only ever add time);
- **scaling**: wall time from 1k to 100k calls (copies of the trace shifted by its span with
  fresh content keys) for ``vllm`` and ``pythia``, with the fitted exponent of
  ``wall ~ calls^b`` (target <= 1.05) and the peak resident memory.

``--rev REV`` measures the code of a git revision instead of the working tree (a temporary
worktree; label ``before`` unless ``--label`` is given), so the table can show before and
after per system. Results of each label are merged into ``results/bench/sim_speed.json``
and the table ``results/bench/sim_speed.md``. The traces are found at ``$PYTHIA_TRACES``
or ``../shared/traces`` beside the project root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRACE = "mooncake/conversation_trace.jsonl"
OUT = ROOT / "results" / "bench" / "sim_speed.json"

# The saturated cells: name -> run_simulation arguments ({traces} is the traces directory).
CELLS: dict[str, dict] = {
    "coding-assistant-c64": {"workload": "workloads/coding-assistant.yaml", "concurrency": 64, "seed": 11,
                             "jobs": None, "cluster": None},
    "claude-code-c12": {"workload": "{traces}/claude-code", "concurrency": 12, "seed": 0, "jobs": 12,
                        "cluster": "long-context"},
}
TARGETS = {"wall_ratio_to_vllm": 2.0, "cell_speedup": 1000, "mooncake_speedup": 2000, "scaling_exponent": 1.05,
           "peak_rss_mib_100k": 2048}


def traces_dir() -> Path:
    env = os.environ.get("PYTHIA_TRACES")
    return Path(env) if env else ROOT.parent / "shared" / "traces"


def scaled_trace(n_calls: int):  # type: ignore[no-untyped-def]
    """The first ``n_calls`` requests of the trace, repeated and shifted in time when more are asked."""
    from pythia.workflow.load import load_workload
    from pythia.workflow.trace import Trace

    base = load_workload(traces_dir() / TRACE)
    jobs = base.jobs
    span = max(j.arrival_s or 0.0 for j in jobs) + 1.0
    out = []
    copy = 0
    while len(out) < n_calls:
        salt = np.int64(copy * 0x9E3779B97F4A7C1)
        for j in jobs:
            if len(out) >= n_calls:
                break
            if copy == 0:
                out.append(j)
                continue
            calls = []
            for c in j.calls:
                prompt = c.prompt.copy()
                prompt[:, 0] ^= salt  # a copy has its own content: no hits across copies
                calls.append(replace(c, prompt=prompt))
            out.append(replace(j, job_id=f"{j.job_id}+{copy}", workflow_id=f"{j.workflow_id}+{copy}",
                               arrival_s=(j.arrival_s or 0.0) + copy * span, calls=calls))
        copy += 1
    return Trace(jobs=out, arrival=base.arrival, meta=base.meta)


def _figures(res, cpu_s: float, load_s: float) -> dict:  # type: ignore[no-untyped-def]
    s = res.summary
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "calls": int(s["calls_submitted"]), "calls_completed": int(s["calls_completed"]),
        "simulated_s": s["simulated_s"], "wall_s": s["wall_s"], "speedup": s["simulated_s"] / s["wall_s"],
        "cpu_s": cpu_s, "load_s": load_s, "iterations": s["iterations"],
        "fast_forwarded_iterations": s["fast_forwarded_iterations"],
        "peak_rss_mib": rss_kib / 1024, "mean_jct_s": s["mean_jct_s"], "prefix_hit_rate": s["prefix_hit_rate"],
        "preemptions": s["preemptions"],
    }


def one_mooncake(n_calls: int, system: str) -> dict:
    """Run one size of the Mooncake replay in this process and return its figures."""
    from pythia.sim.config import SimOptions
    from pythia.sim.run import run_simulation

    t0 = time.perf_counter()
    trace = scaled_trace(n_calls)
    load_s = time.perf_counter() - t0
    cpu0 = time.process_time()
    res = run_simulation(system, trace, cluster="llama8b-x8", options=SimOptions(progress=False))
    return {"system": system, **_figures(res, time.process_time() - cpu0, load_s)}


def one_cell(cell: str, system: str) -> dict:
    """Run one system on one saturated cell in this process and return its figures."""
    from pythia.sim.config import SimOptions
    from pythia.sim.run import run_simulation
    from pythia.workflow.load import LoadOptions, load_workload

    c = CELLS[cell]
    wl = c["workload"].format(traces=traces_dir())
    path = Path(wl) if Path(wl).is_absolute() else ROOT / wl
    t0 = time.perf_counter()
    trace = load_workload(path, LoadOptions(seed=c["seed"], jobs=c["jobs"],
                                            arrival={"process": "closed", "concurrency": c["concurrency"]}))
    load_s = time.perf_counter() - t0
    cpu0 = time.process_time()
    res = run_simulation(system, trace, cluster=c["cluster"], seed=c["seed"],
                         options=SimOptions(seed=c["seed"], progress=False))
    return {"system": system, **_figures(res, time.process_time() - cpu0, load_s)}


def spawn(code_root: Path, args: list[str], timeout_s: float) -> dict:
    """Run this script's ``args`` with the package at ``code_root``, single-threaded, on one core."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(code_root), PYTHIA_TRACES=str(traces_dir()))
    cmd = [sys.executable, __file__, *args]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"timed_out": True, "wall_s": float("nan"), "timeout_s": timeout_s}
    except subprocess.CalledProcessError as e:
        return {"failed": True, "wall_s": float("nan"), "stderr_tail": e.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def known_systems(code_root: Path) -> list[str]:
    """System names in ``baselines/`` of the measured code, ``vllm`` first."""
    names = sorted(p.stem for p in (code_root / "baselines").glob("*.yaml"))
    return ["vllm"] + [n for n in names if n != "vllm"]


def run_cells(code_root: Path, cells: list[str], systems: list[str] | None, timeout_s: float) -> dict:
    out: dict = {}
    for cell in cells:
        names = systems or known_systems(code_root)
        names = ["vllm"] + [n for n in names if n != "vllm"]
        rows: dict = {}
        vllm_walls = []
        for name in names:
            r = spawn(code_root, ["--one-cell", cell, "--system", name], timeout_s)
            print(f"  {cell} {name}: {r.get('wall_s', float('nan')):.2f} s wall", file=sys.stderr, flush=True)
            if name == "vllm":
                vllm_walls.append(r["wall_s"])
            rows[name] = r
        r = spawn(code_root, ["--one-cell", cell, "--system", "vllm"], timeout_s)  # vllm again, at the end
        vllm_walls.append(r["wall_s"])
        ref = float(np.mean(vllm_walls))
        for name, r in rows.items():
            r["wall_ratio_to_vllm"] = r["wall_s"] / ref
        out[cell] = {"vllm_wall_s_runs": vllm_walls, "vllm_wall_s": ref, "systems": rows, **CELLS[cell]}
    return out


def run_mooncake(code_root: Path, repeat: int, sizes: list[int] | None, timeout_s: float) -> dict:
    runs = [spawn(code_root, ["--one-mooncake", "12031", "--system", "vllm"], timeout_s) for _ in range(max(1, repeat))]
    walls = [r["wall_s"] for r in runs]
    replay = dict(min(runs, key=lambda r: r["wall_s"]))
    replay.update({"runs": len(runs), "wall_s_runs": walls,
                   "speedup_median": replay["simulated_s"] / float(np.median(walls))})
    result: dict = {"replay": {"trace": TRACE, "cluster": "llama8b-x8", **replay}}
    if sizes:
        scaling = {}
        for system in ("vllm", "pythia"):
            rs = [spawn(code_root, ["--one-mooncake", str(n), "--system", system], timeout_s) for n in sizes]
            ok = [r for r in rs if np.isfinite(r.get("wall_s", float("nan")))]
            b = float(np.polyfit(np.log([r["calls"] for r in ok]), np.log([r["wall_s"] for r in ok]), 1)[0]) if len(ok) > 1 else float("nan")
            scaling[system] = {"runs": rs, "fitted_exponent": b}
        result["scaling"] = scaling
    return result


def table(result: dict) -> str:
    """The Markdown table: per cell and system, wall time and its ratio to vllm, before and after."""
    labels = [k for k in ("before", "after") if k in result.get("labels", {})] + sorted(
        k for k in result.get("labels", {}) if k not in ("before", "after"))
    lines = ["# Simulator speed", "", "Written by `python benchmarks/bench_sim.py`; ratios are to `vllm` on the same "
             "cell within one invocation (target <= 2.0); `x real` is simulated over wall time (target >= 1000).", ""]
    for label in labels:
        rev = result["labels"][label].get("code", "")
        lines.append(f"- `{label}`: {rev} (the last invocation; each section names the code it measured)")
    cells = sorted({c for lab in labels for c in result["labels"][lab].get("cells", {})})
    for cell in cells:
        codes = [f"`{lab}`: {result['labels'][lab]['cells'][cell].get('code', result['labels'][lab].get('code', ''))}"
                 for lab in labels if cell in result["labels"][lab].get("cells", {})]
        lines += ["", f"## {cell}", "", "Code: " + "; ".join(codes) + ".", "", "| system | " + " | ".join(f"{lab} wall s | {lab} / vllm | {lab} x real" for lab in labels) + " |",
                  "|---|" + "---:|" * (3 * len(labels))]
        names: list[str] = []
        for lab in labels:
            for n in result["labels"][lab].get("cells", {}).get(cell, {}).get("systems", {}):
                if n not in names:
                    names.append(n)
        for n in names:
            row = [n]
            for lab in labels:
                r = result["labels"][lab].get("cells", {}).get(cell, {}).get("systems", {}).get(n)
                if r is None:
                    row += ["", "", ""]
                elif r.get("timed_out"):
                    row += [f"> {r['timeout_s']:.0f}", "", ""]
                else:
                    row += [f"{r['wall_s']:.2f}", f"{r['wall_ratio_to_vllm']:.2f}", f"{r['speedup']:.0f}"]
            lines.append("| " + " | ".join(row) + " |")
    mc = [(lab, result["labels"][lab]["mooncake"]) for lab in labels if "mooncake" in result["labels"][lab]]
    if mc:
        codes = [f"`{lab}`: {m.get('code', result['labels'][lab].get('code', ''))}" for lab, m in mc]
        lines += ["", "## Mooncake conversation trace, llama8b-x8, vllm", "", "Code: " + "; ".join(codes) + ".", "",
                  "| label | x real (fastest) | x real (median) | exponent vllm | exponent pythia | peak RSS at largest (MiB) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for lab, m in mc:
            sc = m.get("scaling", {})
            ev = sc.get("vllm", {}).get("fitted_exponent", float("nan"))
            ep = sc.get("pythia", {}).get("fitted_exponent", float("nan"))
            rss = max((r.get("peak_rss_mib", 0) for s in sc.values() for r in s["runs"]), default=float("nan"))
            lines.append(f"| {lab} | {m['replay']['speedup']:.0f} | {m['replay']['speedup_median']:.0f} | {ev:.3f} | {ep:.3f} | {rss:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one-cell", help=argparse.SUPPRESS)
    ap.add_argument("--one-mooncake", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--system", default="vllm", help=argparse.SUPPRESS)
    ap.add_argument("--label", help="results label (default: after, or before with --rev)")
    ap.add_argument("--rev", help="measure the code of this git revision (a temporary worktree)")
    ap.add_argument("--cells", default=",".join(CELLS), help="saturated cells to run (default: all)")
    ap.add_argument("--systems", help="systems to run on the cells (default: every system in baselines/)")
    ap.add_argument("--repeat", type=int, default=3, help="Mooncake replay runs; the fastest gives speedup (default 3)")
    ap.add_argument("--sizes", default="1000,3000,10000,30000,100000")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds one run may take (default 1800)")
    ap.add_argument("--skip-cells", action="store_true")
    ap.add_argument("--skip-mooncake", action="store_true")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--render", action="store_true", help="only rewrite the .md table from the JSON")
    args = ap.parse_args()
    if args.render:
        text = table(json.loads(args.out.read_text()))
        args.out.with_suffix(".md").write_text(text)
        print(text)
        return 0
    if args.one_cell:
        print(json.dumps(one_cell(args.one_cell, args.system)))
        return 0
    if args.one_mooncake:
        print(json.dumps(one_mooncake(args.one_mooncake, args.system)))
        return 0
    cells = [c for c in args.cells.split(",") if c]
    bad = [c for c in cells if c not in CELLS]
    if bad:
        print(f"bench_sim: unknown cell {bad[0]!r}; known: {', '.join(CELLS)}", file=sys.stderr)
        return 2
    if not (traces_dir() / TRACE).is_file():
        print(f"bench_sim: {traces_dir() / TRACE} not found; set PYTHIA_TRACES", file=sys.stderr)
        return 2
    label = args.label or ("before" if args.rev else "after")
    tmp = None
    code_root = ROOT
    code = "the working tree"
    if args.rev:
        tmp = Path(tempfile.mkdtemp(prefix="bench-sim-"))
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tmp / "tree"), args.rev],
                       check=True, capture_output=True)
        code_root = tmp / "tree"
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.rev], check=True,
                             capture_output=True, text=True).stdout.strip()
        code = f"revision {sha}"
    try:
        entry: dict = {"code": code, "load_avg_1min_at_start": os.getloadavg()[0]}
        if not args.skip_cells:
            systems = [s for s in args.systems.split(",") if s] if args.systems else None
            entry["cells"] = run_cells(code_root, cells, systems, args.timeout)
            for c in entry["cells"].values():
                c["code"] = code
        if not args.skip_mooncake:
            sizes = None if args.skip_scaling else [int(x) for x in args.sizes.split(",")]
            entry["mooncake"] = run_mooncake(code_root, args.repeat, sizes, args.timeout)
            entry["mooncake"]["code"] = code
    finally:
        if tmp is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "tree")], capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)
    result: dict = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if "labels" not in result:  # an older file layout: start afresh
        result = {}
    result["machine"] = {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                         "cpus": os.cpu_count()}
    result["targets"] = TARGETS
    labels = result.setdefault("labels", {})
    old = labels.get(label, {})
    for key in ("cells", "mooncake"):  # a partial rerun keeps what it did not measure
        if key in entry and key == "cells" and "cells" in old:
            old["cells"].update(entry["cells"])
            entry["cells"] = old["cells"]
        elif key not in entry and key in old:
            entry[key] = old[key]
    labels[label] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((args.out, json.dumps(result, indent=2) + "\n"), (args.out.with_suffix(".md"), table(result))):
        part = path.with_name(path.name + ".tmp")
        part.write_text(text)
        part.replace(path)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
