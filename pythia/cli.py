"""The ``pythia`` command.

Errors a user can cause (a bad trace line, an unknown name, a wrong option) print one
sentence naming the file and the line or field, and exit with status 2; no traceback.
A malformed command line prints argparse's one-sentence error and a one-line usage
(:class:`PythiaArgumentParser`); numbers are checked as they are parsed
(:func:`finite_float`, :func:`positive_float`, :func:`nonneg_float`, :func:`positive_int`,
:func:`nonneg_int`), and output paths are checked before any work starts
(:func:`pythia.outputs.check_output_path`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from pythia import __version__
from pythia.errors import PythiaInputError

# Sub-packages that add their own sub-commands: each module has ``register(subparsers)``.
PLUGIN_COMMANDS = ("pythia.sim.cli", "pythia.serve.cli", "pythia.bench.cli")
TRACE_SUFFIXES = (".jsonl", ".jsonl.gz")


class PythiaArgumentParser(argparse.ArgumentParser):
    """An argument parser whose errors are one sentence and one usage line, exit status 2.

    Sub-parsers are made of the same class (``add_subparsers`` takes the parent's class), so
    every sub-command reports errors the same way.
    """

    def short_usage(self) -> str:
        """``prog`` with its positional and required arguments, the rest as ``[options]``."""
        formatter = self._get_formatter()
        parts = [self.prog]
        optional = False
        for action in self._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if action.option_strings:
                if action.required:
                    metavar = formatter._format_args(action, action.dest.upper())
                    parts.append(f"{action.option_strings[0]} {metavar}".rstrip())
                else:
                    optional = True
            else:
                parts.append(formatter._format_args(action, action.dest))
        if optional:
            parts.append("[options]")
        return " ".join(p for p in parts if p)

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` and a one-line usage, then exit with status 2."""
        message = " ".join(message.split())  # argparse's messages are one sentence; keep them on one line
        self.exit(2, f"{self.prog}: error: {message}\nusage: {self.short_usage()} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- number types
# ``type=`` functions: a bad number stops the command before any work, naming the option.


def finite_float(text: str) -> float:
    """A finite number (no NaN, no infinity)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    """A finite number greater than 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def nonneg_float(text: str) -> float:
    """A finite number, 0 or more."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def fraction(text: str) -> float:
    """A number from 0 to 1."""
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def gap_cap(text: str) -> float:
    """A gap cap in seconds: 0 or more, or -1 to keep recorded gaps as they are."""
    value = finite_float(text)
    if value < 0 and value != -1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more, or -1 to keep the recorded gaps")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    """An integer, 1 or more."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def nonneg_int(text: str) -> int:
    """An integer, 0 or more (a seed)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def port_number(text: str) -> int:
    """A TCP port, 1 to 65535."""
    value = _integer(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1 to 65535)")
    return value


def workload_inputs(path: Path) -> tuple[list[Path], list[Path]]:
    """The paths a workload argument reads: ``(inputs, folders read whole)`` for :func:`check_output_path`.

    A folder's every file is read (not recursing), so each counts as an input.
    """
    if path.is_dir():
        try:
            files = [p for p in path.iterdir() if p.is_file()]
        except OSError:
            files = []
        return [path, *files], [path]
    return [path], []


def add_arrival_options(parser: argparse.ArgumentParser) -> None:
    """The arrival-process options shared by every command that loads a workload."""
    g = parser.add_argument_group("arrival process (default: the workload's own)")
    mx = g.add_mutually_exclusive_group()
    mx.add_argument("--concurrency", type=positive_int, metavar="N", help="closed loop: N jobs in flight")
    mx.add_argument("--rate", type=positive_float, metavar="R", help="open loop: R jobs/s (Poisson)")
    mx.add_argument("--time-scale", type=positive_float, metavar="S", help="the trace's own timestamps times S")
    g.add_argument("--burstiness", type=positive_float, metavar="B", help="with --rate: gamma inter-arrivals of shape B")
    g.add_argument("--waves", type=positive_float, metavar="PERIOD_S", help="with --rate: sinusoidal rate of this period")
    g.add_argument("--amplitude", type=fraction, default=0.8, help="with --waves: relative swing (0..1)")


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
    parser.add_argument("--seed", type=nonneg_int, default=0, help="generator seed (default 0)")
    parser.add_argument("--jobs", type=positive_int, help="jobs to generate from a spec, or first N jobs of a trace")
    parser.add_argument(
        "--max-gap-s",
        type=gap_cap,
        default=60.0,
        help="cap on think/tool gaps of recorded sessions, seconds (default 60; -1 keeps them)",
    )
    parser.add_argument("--gap-scale", type=nonneg_float, default=1.0,
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
    from pythia.outputs import atomic_path, check_output_path
    from pythia.workflow.load import load_workload
    from pythia.workflow.trace import write_trace

    inputs, whole = workload_inputs(args.path)
    check_output_path(args.out, kind="file", what="option --out", inputs=inputs, input_dirs=whole)
    if not str(args.out).endswith(TRACE_SUFFIXES):
        raise PythiaInputError(f"option --out={args.out} must end in .jsonl or .jsonl.gz (a canonical trace)")
    trace = load_workload(args.path, load_options_from_args(args))
    with atomic_path(args.out) as tmp:  # the temporary name keeps the suffix, so .gz still compresses
        write_trace(trace, tmp)
    stats = trace.stats()
    print(
        f"wrote {args.out}: {stats['jobs']} jobs, {stats['calls']} calls, "
        f"{stats['input_tokens']} input and {stats['output_tokens']} output tokens",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, plugin sub-commands included."""
    parser = PythiaArgumentParser(
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or an argument error already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
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
