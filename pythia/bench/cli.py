"""``pythia run`` (a real run on one engine) and ``pythia calibrate`` (the cost profile it yields).

They live here, not in :mod:`pythia.serve.cli`, because they drive :mod:`pythia.bench`, which
sits above :mod:`pythia.serve`: serving code never imports the benchmark harness.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from pythia.errors import PythiaInputError
from pythia.serve.cli import BACKENDS

# Pythia's Ray Serve host (pythia.serve.ray_host): several replicas per model pool.
RAY_BACKENDS = ("ray-vllm-cpu", "ray-vllm")
# N vLLM-CPU workers behind the Rust vllm-router (cache_aware): the production routing baseline.
ROUTER_BACKENDS = ("vllm-router-cpu",)

TINY_CONTEXT = 4096
MIN_MODEL_LEN = 16


def _model_for(backend: str, model: str | None) -> str:
    """The model folder a run serves: ``--model`` resolved, or the tiny model on ``vllm-cpu``."""
    if model:
        p = Path(model)
        if not p.exists():
            raise PythiaInputError(f"option --model={model}: no such folder")
        return str(p.resolve())
    if backend != "vllm-cpu":
        raise PythiaInputError(f"option --model is required with --backend {backend} (a local model folder)")
    from pythia.serve.tiny_model import default_cache_dir, make_tiny_model

    return str(make_tiny_model(default_cache_dir()))


def _check_run_out(args: argparse.Namespace, extra_writes: tuple[str, ...] = ()) -> None:
    """Refuse a ``--out`` that cannot take the run folder, before the model or the engine starts."""
    from pythia.bench.run import RUN_FOLDER_FILES
    from pythia.cli import workload_inputs
    from pythia.outputs import check_output_path

    inputs, _ = workload_inputs(args.workload)
    if args.model:
        inputs.append(Path(args.model))
    if args.system and Path(args.system).exists():
        inputs.append(Path(args.system))
    check_output_path(args.out, kind="dir", what="option --out", inputs=inputs, writes=RUN_FOLDER_FILES + extra_writes)


def _cmd_run(args: argparse.Namespace) -> int:
    from pythia.bench.run import RunOptions, real_run
    from pythia.cli import load_options_from_args
    from pythia.workflow.load import load_workload

    # Argument checks first, in the order a user fixes them: nothing is loaded or started yet.
    if not args.workload.exists():
        raise PythiaInputError(f"{args.workload}: no such file or directory")
    if args.max_model_len is not None and args.max_model_len < MIN_MODEL_LEN:
        raise PythiaInputError(f"option --max-model-len={args.max_model_len} must be at least {MIN_MODEL_LEN}")
    if args.model and not Path(args.model).exists():
        raise PythiaInputError(f"option --model={args.model}: no such folder")
    if args.workers is not None and args.backend not in ROUTER_BACKENDS:
        raise PythiaInputError(f"option --workers applies to --backend {' or '.join(ROUTER_BACKENDS)} only")
    if args.backend in RAY_BACKENDS:
        return _cmd_ray_run(args)
    if args.backend in ROUTER_BACKENDS:
        return _cmd_router_run(args)
    if not args.model and args.backend != "vllm-cpu":
        raise PythiaInputError(f"option --model is required with --backend {args.backend} (a local model folder)")
    if args.backend == "sglang":
        import importlib.util

        if importlib.util.find_spec("sglang") is None:
            raise PythiaInputError(
                "option --backend sglang: SGLang is not installed here (it serves on GPU hosts only); "
                "`pythia serve command --backend sglang --model M --check` prints and checks its command"
            )
    _check_run_out(args)
    # Gaps are scaled by the replay client as it waits them (RunOptions.gap_scale), not here.
    trace = load_workload(args.workload, dataclasses.replace(load_options_from_args(args), gap_scale=1.0))
    if not trace.jobs:
        raise PythiaInputError(f"{args.workload}: the workload has no jobs")
    model = _model_for(args.backend, args.model)
    max_len = args.max_model_len or (TINY_CONTEXT if args.model is None else None)
    opts = RunOptions(
        backend=args.backend, model=model, out=args.out, system=args.system, plugin=args.plugin, hooks=args.hooks,
        max_model_len=max_len, num_blocks=args.num_blocks, gap_scale=args.gap_scale,
        start_timeout_s=args.start_timeout_s, max_duration_s=args.max_duration_s, max_calls=args.max_calls,
        tensor_parallel_size=args.tensor_parallel_size, extra_engine_args=list(args.engine_arg),
        progress=sys.stderr.isatty(), step_log=args.step_log, warmup=not args.no_warmup,
    )
    from pythia.serve.server import EngineStartError

    try:
        summary = real_run(trace, opts)
    except EngineStartError as e:
        print(f"pythia: error: {e}", file=sys.stderr)
        return 1
    return _report(summary, args.out, ("output_tokens_per_s", "preemptions"))


def _cmd_ray_run(args: argparse.Namespace) -> int:
    """``pythia run --backend ray-vllm-cpu|ray-vllm``: every input checked before Ray or an engine starts."""
    from pythia.bench.ray_run import RayRunOptions, host_config, parse_pool_models, ray_real_run
    from pythia.cli import load_options_from_args
    from pythia.workflow.load import load_workload

    if not args.model and args.backend != "ray-vllm-cpu" and not args.pool_model:
        raise PythiaInputError(f"option --model is required with --backend {args.backend} (a local model folder)")
    _check_run_out(args)
    trace = load_workload(args.workload, dataclasses.replace(load_options_from_args(args), gap_scale=1.0))
    if not trace.jobs:
        raise PythiaInputError(f"{args.workload}: the workload has no jobs")
    opts = RayRunOptions(
        backend=args.backend, model="", out=args.out, cluster=args.cluster, system=args.system, router=args.router,
        autoscaler=args.autoscaler, pool_models=parse_pool_models(args.pool_model), plugin=args.plugin,
        max_model_len=args.max_model_len or (TINY_CONTEXT if args.model is None else None), num_blocks=args.num_blocks,
        gap_scale=args.gap_scale, max_duration_s=args.max_duration_s, max_calls=args.max_calls,
        start_timeout_s=args.start_timeout_s, extra_engine_args=list(args.engine_arg),
        kill_replica_after_s=args.kill_replica_after_s, num_cpus=args.ray_num_cpus, warmup=not args.no_warmup,
        progress=sys.stderr.isatty(),
    )
    host_config(trace, dataclasses.replace(opts, model="-"))  # cluster, pools, names: before anything starts
    opts.model = _model_for("vllm-cpu" if args.backend == "ray-vllm-cpu" else args.backend, args.model) \
        if (args.model or args.backend == "ray-vllm-cpu") else next(iter(opts.pool_models.values()))
    summary = ray_real_run(trace, opts)
    return _report(summary, args.out, ("replicas_used", "replica_restarts", "lost_calls", "calls_per_replica"))


def _cmd_router_run(args: argparse.Namespace) -> int:
    """``pythia run --backend vllm-router-cpu``: worker count and router checked before anything starts."""
    from pythia.bench.router_run import ROUTER_FOLDER_FILES, RouterRunOptions, check_workers, find_router, router_real_run
    from pythia.cli import load_options_from_args
    from pythia.serve.server import EngineStartError
    from pythia.workflow.load import load_workload

    workers = 2 if args.workers is None else args.workers
    check_workers(workers)
    find_router()
    _check_run_out(args, ROUTER_FOLDER_FILES)
    trace = load_workload(args.workload, dataclasses.replace(load_options_from_args(args), gap_scale=1.0))
    if not trace.jobs:
        raise PythiaInputError(f"{args.workload}: the workload has no jobs")
    model = _model_for("vllm-cpu", args.model)
    opts = RouterRunOptions(
        model=model, out=args.out, workers=workers, system=args.system, plugin=args.plugin, hooks=args.hooks,
        max_model_len=args.max_model_len or (TINY_CONTEXT if args.model is None else None), num_blocks=args.num_blocks,
        gap_scale=args.gap_scale, start_timeout_s=args.start_timeout_s, max_duration_s=args.max_duration_s,
        max_calls=args.max_calls, extra_engine_args=list(args.engine_arg), warmup=not args.no_warmup,
        progress=sys.stderr.isatty(),
    )
    try:
        summary = router_real_run(trace, opts)
    except EngineStartError as e:
        print(f"pythia: error: {e}", file=sys.stderr)
        return 1
    return _report(summary, args.out, ("workers", "calls_per_worker"))


def _report(summary: dict[str, Any], out: Path, extra: tuple[str, ...]) -> int:
    """Print a real run's headline figures as one JSON line; status 1 when a call failed or was lost."""
    keys = ("jobs_completed", "calls_completed", "mean_jct_s", "p95_jct_s", "prefix_hit_rate", *extra)
    short = {k: summary.get(k) for k in keys}
    print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in short.items()}))
    print(f"wrote {out}", file=sys.stderr)
    return 0 if summary.get("calls_failed", 0) == 0 and summary.get("lost_calls", 0) == 0 else 1


def _check_calibrate_outputs(args: argparse.Namespace) -> None:
    """Refuse ``--write`` and ``--report`` paths that cannot be written or that name an input, before fitting."""
    from pythia.bench.calibrate import RUN_INPUTS
    from pythia.outputs import check_distinct_outputs, check_output_path

    inputs = [*args.runs, *(run / name for run in args.runs for name in RUN_INPUTS)]
    for what, path in (("option --write", args.write), ("option --report", args.report)):
        if path is not None:
            check_output_path(path, kind="file", what=what, inputs=inputs)
    check_distinct_outputs([("option --write", args.write), ("option --report", args.report)])
    if args.write is not None and args.write.is_file():
        try:  # the entry is spliced into the file's text: it must be text
            args.write.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise PythiaInputError(f"option --write={args.write} is not a readable text file ({e})") from None


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from pythia.bench.calibrate import calibrate_runs, profile_yaml, write_profile
    from pythia.sim.costmodel import gpu_spec, model_shape

    _check_calibrate_outputs(args)
    # Unknown names fail here, naming the known ones, before any run folder is read.
    gpu_spec(args.gpu)
    model_shape(args.model)
    res = calibrate_runs(args.runs, args.gpu, args.model)
    source = f"{len(args.runs)} run(s) ({', '.join(r.name for r in args.runs)})"
    st, fe = res["steps"], res["frontend"]
    print(f"engine steps: {st['steps']} fitted, median relative error {100 * st['median_rel_error']:.1f}%, "
          f"fitted/measured time {st['total_fitted_over_measured']:.3f}", file=sys.stderr)
    print(f"front end: {fe['calls_joined']} calls joined; issue->engine mean {fe['request_in_mean_ms']:.1f} ms "
          f"(p90 {fe['request_in_p90_ms']:.1f}), engine->client mean {fe['response_out_ms']:.1f} ms", file=sys.stderr)
    if args.write:
        write_profile(args.write, res["key"], res["profile"], source)
        print(f"wrote {res['key']} into {args.write}", file=sys.stderr)
    else:
        print(profile_yaml(res["key"], res["profile"], source), end="")
    if args.report:
        from pythia.outputs import write_atomic

        write_atomic(args.report, json.dumps(res, indent=1, default=str) + "\n")
    return 0


def register(subparsers: Any) -> None:
    """Add ``run`` and ``calibrate`` to the ``pythia`` command."""
    from pythia.cli import add_workload_options, positive_float, positive_int

    rn = subparsers.add_parser(
        "run", help="start one engine with a system's flags, replay a workload against it, write the run tables",
        description="Start one engine replica, wait for health, replay the workload, stop it; writes "
        "calls/jobs/timeseries parquet and summary.json as the simulator does.",
    )
    rn.add_argument("--backend", choices=BACKENDS + RAY_BACKENDS + ROUTER_BACKENDS, required=True,
                    help="one engine (vllm-cpu, vllm, sglang), Pythia's Ray Serve host (ray-vllm-cpu, ray-vllm), "
                    "or vLLM-CPU workers behind the Rust vllm-router (vllm-router-cpu)")
    rn.add_argument("--system", default="vllm", help="system name (baselines/NAME.yaml), default vllm")
    rn.add_argument("--workload", type=Path, required=True, help="workflow spec, trace file or directory")
    rn.add_argument("--model", help="local model folder (vllm-cpu default: the tiny model, generated once)")
    rn.add_argument("--out", type=Path, required=True, help="run folder")
    plug = rn.add_mutually_exclusive_group()
    plug.add_argument("--plugin", dest="plugin", action="store_true", default=None,
                      help="load the Pythia scheduler plugin (default: when the system's policies are not stock)")
    plug.add_argument("--no-plugin", dest="plugin", action="store_false")
    rn.add_argument("--hooks", help="the plugin's hooks (default system:NAME)")
    rn.add_argument("--max-model-len", type=positive_int, help=f"context length (tiny model default {TINY_CONTEXT}); longer calls are clamped")
    rn.add_argument("--num-blocks", type=positive_int, help="force the KV pool to this many blocks")
    rn.add_argument("--start-timeout-s", type=positive_float, default=300.0)
    rn.add_argument("--max-duration-s", type=positive_float, default=3600.0, help="stop issuing calls after this long")
    rn.add_argument("--max-calls", type=positive_int, default=100_000, help="most requests to send")
    rn.add_argument("--tensor-parallel-size", type=positive_int, default=1)
    rn.add_argument("--engine-arg", action="append", default=[], metavar="ARG",
                    help="an extra engine argument, repeatable (e.g. --engine-arg=--enforce-eager)")
    rn.add_argument("--no-warmup", action="store_true",
                    help="skip the warm-up batches sent before the replay (they are never in the tables)")
    rn.add_argument("--step-log", action="store_true",
                    help="record the engine's step times and batch shapes into engine-steps.jsonl (loads the plugin; "
                    "with --system vllm it schedules as stock vLLM); what `pythia calibrate` fits")
    ray_opts = rn.add_argument_group("Ray Serve host (--backend ray-vllm-cpu|ray-vllm)")
    ray_opts.add_argument("--cluster", help="cluster preset or YAML file of the pools (default cpu-pools on ray-vllm-cpu)")
    ray_opts.add_argument("--router", help="in place of the system's router: a system's (its parameters: pythia, "
                          "sglang, ...) or a registry policy's with its defaults (round_robin, prefix_aware, ...)")
    ray_opts.add_argument("--autoscaler", help="in place of the system's autoscaler: a system's (its parameters) or a "
                          "registry policy's with its defaults (pythia, reactive, none)")
    ray_opts.add_argument("--pool-model", action="append", default=[], metavar="POOL=DIR",
                          help="the model folder of one pool (repeatable; others serve --model)")
    ray_opts.add_argument("--kill-replica-after-s", type=positive_float, metavar="S",
                          help="fault injection: kill one replica's engine this long into the replay")
    ray_opts.add_argument("--ray-num-cpus", type=positive_int, default=4, help="logical CPUs of a local Ray (default 4)")
    router_opts = rn.add_argument_group("vllm-router baseline (--backend vllm-router-cpu)")
    router_opts.add_argument("--workers", type=int, metavar="N",
                             help="vLLM-CPU servers behind the router, cache_aware policy (default 2)")
    add_workload_options(rn)
    rn.set_defaults(func=_cmd_run)

    cal = subparsers.add_parser(
        "calibrate", help="fit the simulator's cost profile from a run recorded with `pythia run --step-log`",
        description="Fit a (GPU, model) entry of the simulator's efficiency table from a real run's own "
        "engine step times and its client/engine timing; prints the YAML entry or writes it into a file.",
    )
    cal.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run folder(s) of `pythia run --step-log`, pooled")
    cal.add_argument("--gpu", required=True, help="accelerator name of the simulator's data (e.g. h100-80gb, cpu-2core)")
    cal.add_argument("--model", required=True, help="model name of the simulator's data (e.g. llama-3.1-8b, tiny-llama)")
    cal.add_argument("--write", type=Path, metavar="EFFICIENCY_YAML",
                     help="replace the entry in this file (e.g. pythia/sim/data/efficiency.yaml) instead of printing it")
    cal.add_argument("--report", type=Path, help="also write the fit report (coefficients and errors) as JSON")
    cal.set_defaults(func=_cmd_calibrate)
