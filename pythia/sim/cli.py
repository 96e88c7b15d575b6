"""The ``pythia sim`` sub-command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


# The files of a run folder (pythia.results.RUN_FILES, named here so the check before a run
# imports nothing heavy; tests keep the two equal).
RUN_FILES = ("calls.parquet", "jobs.parquet", "timeseries.parquet", "summary.json")


def _path_inputs(name: str | None) -> list[Path]:
    """A ``--system`` or ``--cluster`` value that names an existing file (a name is not a path)."""
    if name and Path(name).exists():
        return [Path(name)]
    return []


def _cmd_sim(args: argparse.Namespace) -> int:
    from pythia.cli import arrival_from_args, workload_inputs
    from pythia.outputs import check_output_path

    # Before anything is loaded or imported: a bad --out must not cost a run.
    inputs, _ = workload_inputs(args.workload)
    inputs += _path_inputs(args.system) + _path_inputs(args.cluster)
    check_output_path(args.out, kind="dir", what="option --out", inputs=inputs, writes=RUN_FILES)

    from pythia.results import RUN_TABLES, write_run
    from pythia.sim.config import SimOptions
    from pythia.sim.run import run_simulation

    options = SimOptions(
        seed=args.seed,
        fast_forward=not args.no_fast_forward,
        sample_interval_s=args.sample_interval_s,
        progress=None if not args.no_progress else False,
        max_sim_s=args.max_sim_s,
    )
    result = run_simulation(
        args.system,
        args.workload,
        cluster=args.cluster,
        arrival=arrival_from_args(args),
        seed=args.seed,
        jobs=args.jobs,
        max_gap_s=None if args.max_gap_s is not None and args.max_gap_s < 0 else args.max_gap_s,
        gap_scale=args.gap_scale,
        options=options,
    )
    tables = dict(zip(RUN_TABLES, (result.calls, result.jobs, result.timeseries)))
    write_run(args.out, tables, result.summary)
    s = result.summary
    keys = ("jobs_completed", "calls_completed", "mean_jct_s", "p95_jct_s", "output_tokens_per_s",
            "prefix_hit_rate", "preemptions", "simulated_s", "wall_s")
    print(json.dumps({k: s[k] for k in keys}))
    if s["rejected_calls"] or s["unfinished_calls"]:
        print(f"pythia sim: {len(s['rejected_calls'])} call(s) rejected and {len(s['unfinished_calls'])} "
              f"unfinished; see {Path(args.out) / 'summary.json'}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``pythia sim`` to the main parser's sub-commands."""
    from pythia.cli import add_workload_options, positive_float

    p = subparsers.add_parser(
        "sim",
        help="simulate a system serving a workload on a GPU cluster",
        description="Discrete-event simulation of a system (a YAML in baselines/) serving a workload "
        "(spec, trace file or directory) on a cluster; writes calls/jobs/timeseries parquet and summary.json.",
    )
    p.add_argument("--system", required=True, help="system name (a file stem in baselines/) or a YAML path")
    p.add_argument("--workload", required=True, type=Path, help="workflow spec, trace file or directory")
    p.add_argument("--cluster", default=None, help="cluster preset name or YAML path (default: paper)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--no-fast-forward", action="store_true", help="step every iteration (same results, slower)")
    p.add_argument("--sample-interval-s", type=positive_float, default=1.0,
                   help="time-series period in seconds (default 1)")
    p.add_argument("--max-sim-s", type=positive_float, default=None, help="stop the simulated clock here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_workload_options(p)
    p.set_defaults(func=_cmd_sim)
