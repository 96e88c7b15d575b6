"""The ``pythia`` command.

Errors a user can cause (a bad trace line, an unknown name, a wrong option) print one
sentence naming the file and the line or field, and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from pythia import __version__
from pythia.errors import PythiaInputError

# Sub-packages that add their own sub-commands: each module has ``register(subparsers)``.
PLUGIN_COMMANDS = ("pythia.sim.cli", "pythia.serve.cli", "pythia.bench.cli")


def add_arrival_options(parser: argparse.ArgumentParser) -> None:
    """The arrival-process options shared by every command that loads a workload."""
    g = parser.add_argument_group("arrival process (default: the workload's own)")
    mx = g.add_mutually_exclusive_group()
    mx.add_argument("--concurrency", type=int, metavar="N", help="closed loop: N jobs in flight")
    mx.add_argument("--rate", type=float, metavar="R", help="open loop: R jobs/s (Poisson)")
    mx.add_argument("--time-scale", type=float, metavar="S", help="the trace's own timestamps times S")
    g.add_argument("--burstiness", type=float, metavar="B", help="with --rate: gamma inter-arrivals of shape B")
    g.add_argument("--waves", type=float, metavar="PERIOD_S", help="with --rate: sinusoidal rate of this period")
    g.add_argument("--amplitude", type=float, default=0.8, help="with --waves: relative swing (0..1)")


def arrival_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """The arrival process the options ask for, or ``None`` to keep the workload's own."""
    if (args.burstiness is not None or args.waves is not None) and args.rate is None:
        raise PythiaInputError("options --burstiness and --waves need --rate")
    if args.concurrency is not None:
        return {"process": "closed", "concurrency": args.concurrency}
    if args.time_scale is not None:
        return {"process": "timestamps", "time_scale": args.time_scale}
    if args.rate is not None:
        if args.waves is not None:
            return {"process": "waves", "rate": args.rate, "period_s": args.waves, "amplitude": args.amplitude}
        if args.burstiness is not None:
            return {"process": "gamma", "rate": args.rate, "burstiness": args.burstiness}
        return {"process": "poisson", "rate": args.rate}
    return None


def add_workload_options(parser: argparse.ArgumentParser) -> None:
    """Options that turn a workload path into a trace (see :class:`LoadOptions`)."""
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--jobs", type=int, help="jobs to generate from a spec, or first N jobs of a trace")
    parser.add_argument(
        "--max-gap-s",
        type=float,
        default=60.0,
        help="cap on think/tool gaps of recorded sessions, seconds (default 60; -1 keeps them)",
    )
    parser.add_argument("--gap-scale", type=float, default=1.0,
                        help="multiply every call's think/tool gap, specs and traces alike (default 1)")
    add_arrival_options(parser)


def load_options_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Build :class:`~pythia.workflow.load.LoadOptions` from parsed options."""
    from pythia.workflow.load import LoadOptions

    return LoadOptions(
        seed=args.seed,
        jobs=args.jobs,
        arrival=arrival_from_args(args),
        max_gap_s=None if args.max_gap_s is not None and args.max_gap_s < 0 else args.max_gap_s,
        gap_scale=args.gap_scale,
    )


def _cmd_workload_stats(args: argparse.Namespace) -> int:
    from pythia.workflow.load import load_workload

    trace = load_workload(args.path, load_options_from_args(args))
    print(json.dumps(trace.stats(), indent=None if args.compact else 2, sort_keys=False))
    return 0


def _cmd_workload_generate(args: argparse.Namespace) -> int:
    from pythia.workflow.load import load_workload
    from pythia.workflow.trace import write_trace

    trace = load_workload(args.path, load_options_from_args(args))
    write_trace(trace, args.out)
    stats = trace.stats()
    print(
        f"wrote {args.out}: {stats['jobs']} jobs, {stats['calls']} calls, "
        f"{stats['input_tokens']} input and {stats['output_tokens']} output tokens",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, plugin sub-commands included."""
    parser = argparse.ArgumentParser(
        prog="pythia",
        description="Pythia: agent-native LLM serving policies, a GPU-cluster simulator, a vLLM "
        "scheduler plugin and the evaluation platform around them.",
    )
    parser.add_argument("--version", action="version", version=f"pythia {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    wl = sub.add_parser("workload", help="inspect, generate and convert workloads")
    wl_sub = wl.add_subparsers(dest="workload_command", required=True)

    st = wl_sub.add_parser(
        "stats", help="print one JSON object of totals for a spec, a trace file or a directory"
    )
    st.add_argument("path", type=Path, help="workflow spec, trace file or directory of traces")
    st.add_argument("--compact", action="store_true", help="print on one line")
    add_workload_options(st)
    st.set_defaults(func=_cmd_workload_stats)

    gen = wl_sub.add_parser(
        "generate", help="write a canonical trace from a spec (or convert any supported trace)"
    )
    gen.add_argument("path", type=Path, help="workflow spec (or any supported workload path)")
    gen.add_argument("--out", type=Path, required=True, help="output .jsonl or .jsonl.gz")
    add_workload_options(gen)
    gen.set_defaults(func=_cmd_workload_generate)

    for module in PLUGIN_COMMANDS:
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as e:
            # a sub-package not installed yet is skipped; a missing dependency of one is a bug
            if e.name is None or not (module + ".").startswith(e.name + "."):
                raise
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except PythiaInputError as e:
        print(f"pythia: error: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("pythia: interrupted; finished outputs are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
