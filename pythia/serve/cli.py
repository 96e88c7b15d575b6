"""``pythia serve``: the tiny local model and engine launch commands.

``pythia run`` and ``pythia calibrate`` drive the benchmark harness, so they live in
:mod:`pythia.bench.cli` (serving code never imports :mod:`pythia.bench`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

BACKENDS = ("vllm-cpu", "vllm", "sglang")


def _check_tiny_model_out(out: Path) -> None:
    """Refuse an ``--out`` that is not a new, empty or tiny-model folder: the model replaces the whole folder."""
    from pythia.errors import PythiaInputError
    from pythia.outputs import check_output_path
    from pythia.serve.tiny_model import is_tiny_model

    check_output_path(out, kind="dir", what="option --out")
    if out.is_dir() and not is_tiny_model(out) and any(out.iterdir()):
        raise PythiaInputError(
            f"option --out={out} is a folder holding other files; the tiny model replaces the whole folder, "
            "so give a new or empty folder"
        )


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from pythia.serve.tiny_model import TinyModelSpec, make_tiny_model, tiny_model_info

    _check_tiny_model_out(args.out)
    spec = TinyModelSpec(vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.layers, seed=args.seed)
    out = make_tiny_model(args.out, spec, force=args.force)
    info = tiny_model_info(out)
    print(f"wrote {out}: {info['parameters']:,} parameters, vocabulary {info['vocab_size']}", file=sys.stderr)
    return 0


def _cmd_command(args: argparse.Namespace) -> int:
    from pythia.serve.engines import build_launch, check_launch, engine_flags

    flags = engine_flags(args.system) if args.system else engine_flags(None)
    pc: dict[str, Any] = {"hooks": args.hooks} if args.hooks else {}
    launch = build_launch(args.backend, args.model, args.port, flags, plugin=args.plugin, plugin_config=pc,
                          max_model_len=args.max_model_len, tensor_parallel_size=args.tensor_parallel_size)
    env = " ".join(f"{k}={v}" for k, v in launch.env.items())
    print((env + " " if env else "") + " ".join(_quote(a) for a in launch.argv))
    for note in launch.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.check:
        problems = check_launch(launch)
        for p in problems:
            print(f"pythia: problem: {p}", file=sys.stderr)
        return 1 if problems else 0
    return 0


def _quote(a: str) -> str:
    import shlex

    return shlex.quote(a)


def register(subparsers: Any) -> None:
    """Add ``serve`` to the ``pythia`` command."""
    from pythia.cli import nonneg_int, port_number, positive_int

    sv = subparsers.add_parser("serve", help="engine helpers: the tiny local model, engine launch commands")
    sv_sub = sv.add_subparsers(dest="serve_command", required=True)

    tm = sv_sub.add_parser("tiny-model", help="write a tiny random Llama and a trained BPE tokenizer (no download)")
    tm.add_argument("--out", type=Path, required=True, help="output folder")
    tm.add_argument("--vocab-size", type=positive_int, default=4096)
    tm.add_argument("--hidden-size", type=positive_int, default=128)
    tm.add_argument("--layers", type=positive_int, default=2)
    tm.add_argument("--seed", type=nonneg_int, default=0)
    tm.add_argument("--force", action="store_true", help="rewrite even if the folder holds this model")
    tm.set_defaults(func=_cmd_tiny_model)

    cm = sv_sub.add_parser("command", help="print (and --check) the launch command of one engine server")
    cm.add_argument("--backend", choices=BACKENDS, required=True)
    cm.add_argument("--model", required=True, help="model folder or name")
    cm.add_argument("--system", help="system name (baselines/NAME.yaml) whose engine flags to use")
    cm.add_argument("--port", type=port_number, default=8000)
    cm.add_argument("--plugin", action="store_true", help="load the Pythia scheduler plugin (vLLM)")
    cm.add_argument("--hooks", help="the policies the plugin hosts (system:NAME, default the --system; or module:attr)")
    cm.add_argument("--max-model-len", type=positive_int)
    cm.add_argument("--tensor-parallel-size", type=positive_int, default=1)
    cm.add_argument("--check", action="store_true", help="validate the flags without starting the server")
    cm.set_defaults(func=_cmd_command)
