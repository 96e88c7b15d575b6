"""GPU check: the simulator's cost model against measured iteration times of the same model shape.

For one host with PyTorch (and NVML through ``nvidia-ml-py``) but no vLLM and nothing to
download: a decoder of the shape the cost model uses (``pythia/sim/data/models.yaml``; by
default Llama-3.1-8B: 32 layers, hidden 4096, 32 query and 8 KV heads of 128, MLP 14336,
vocabulary 128256, bf16) is built in plain PyTorch with random weights: embedding, per layer
RMSNorm, fused QKV projection, rotary embedding, causal attention with grouped KV heads
(``scaled_dot_product_attention``), output projection, RMSNorm and a SwiGLU MLP, then the
final norm and the LM head on each sequence's last token. It times two iteration kinds:

- **prefill**: ``B`` sequences of ``L`` new tokens, no cached context;
- **decode**: ``B`` sequences of one new token over ``C`` cached tokens each, attending to a
  KV cache (replayed as a CUDA graph on a GPU, as vLLM does; eager where capture fails).

Each shape's batch is counted with the simulator's own ``BatchShape`` and priced by its
``CostModel`` (``--gpu``, ``--model``); the report gives per shape the measured median, the
prediction, the prediction's roofline part (``max(compute, memory)``, without the engine's
per-step and per-sequence overheads, which a bare forward pass does not have) and both
relative errors, the bound the model predicts and the efficiency the measurement implies
(share of peak FLOP/s, of peak memory bandwidth), and per kind the median absolute errors.
The NVML sampler (``pythia.bench.metrics.NvmlSampler``) records the devices while the model
is loaded; without NVML one line says so.

Where the cost model cannot be loaded (a missing package such as ``jsonschema``), the
measurements are written alone and ``--compare DIR`` adds the comparison on another host.

    python benchmarks/gpu_check.py --device cuda                 # the GPU check (benchmarks/gpu_check.sh)
    python benchmarks/gpu_check.py --dry-run --out /tmp/check    # tiny shape on the CPU, seconds

Writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out`` (default
``results/bench/gpu_check/``). Exit status 0, 1 when a shape failed or the deadline cut the
grid, 2 for a bad option.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pythia.sim.costmodel import BatchShape, ModelShape  # noqa: E402

DEFAULT_OUT = ROOT / "results" / "bench" / "gpu_check"
KINDS = ("prefill", "decode")
# The GPU grid: prefill from one short prompt to 8k tokens and batches of prompts; decode from one
# sequence (weight-bound) to 256 (KV reads up to 32 GiB, beside the 16 GB of weights).
GPU_PREFILL = ((1, 512), (1, 2048), (1, 8192), (4, 2048), (8, 1024))
GPU_DECODE = ((1, 1024), (8, 1024), (32, 1024), (64, 2048), (128, 2048), (256, 1024), (16, 8192))
DRY_PREFILL = ((1, 32), (2, 64))
DRY_DECODE = ((1, 64), (4, 64))
# --dry-run: the tiny model of the CPU tests, priced by the cost model's fitted CPU profile.
DRY_RUN = {"device": "cpu", "model": "tiny-llama", "gpu": "cpu-2core", "prefill": DRY_PREFILL, "decode": DRY_DECODE,
           "warmup": 1, "iters": 3, "nvml_interval_s": 0.1, "max_seconds": 60.0, "dry_run": True}


class CheckError(Exception):
    """A bad option or an impossible set-up: one sentence for the user."""


@dataclass(frozen=True)
class CheckConfig:
    """Settings of one check (validated once).

    Attributes:
        device: ``cuda`` or ``cpu``.
        model / gpu: the cost model's model and accelerator names.
        prefill / decode: shapes, ``(batch, new tokens)`` and ``(batch, cached tokens)``.
        warmup / iters: untimed and timed iterations per shape.
        cuda_graph: replay decode steps as CUDA graphs (GPU only).
        nvml_interval_s: NVML sampling period.
        max_seconds: shapes not started by then are skipped (the shell wrapper's hard limit is 8 minutes).
        seed: seeds the random weights and token ids.
        dry_run: the CPU smoke mode (tiny shape, few iterations).
    """

    device: str = "cuda"
    model: str = "llama-3.1-8b"
    gpu: str = "h200"
    prefill: tuple[tuple[int, int], ...] = GPU_PREFILL
    decode: tuple[tuple[int, int], ...] = GPU_DECODE
    warmup: int = 3
    iters: int = 10
    cuda_graph: bool = True
    nvml_interval_s: float = 0.25
    max_seconds: float = 420.0
    seed: int = 0
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.device not in ("cuda", "cpu"):
            raise CheckError(f"option --device={self.device!r} must be cuda or cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise CheckError(f"option --device=cuda: CUDA is not available here (torch {torch.__version__}, "
                             f"{'no GPU visible' if torch.version.cuda else 'a build without CUDA'}); "
                             "use --device cpu or --dry-run")
        if self.warmup < 0 or self.iters < 1:
            raise CheckError(f"options --warmup={self.warmup} and --iters={self.iters} must be >= 0 and >= 1")
        for kind, shapes in (("prefill", self.prefill), ("decode", self.decode)):
            if any(b < 1 or n < 1 for b, n in shapes):
                raise CheckError(f"option --{kind}: every shape BxN needs B >= 1 and N >= 1")
        if self.max_seconds <= 0 or self.nvml_interval_s <= 0:
            raise CheckError("options --max-seconds and --nvml-interval-s must be positive")


def parse_shapes(text: str, option: str) -> tuple[tuple[int, int], ...]:
    """``"1x512,4x2048"`` as ``((1, 512), (4, 2048))``."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            b, n = part.lower().split("x")
            out.append((int(b), int(n)))
        except ValueError:
            raise CheckError(f"option --{option}={text!r}: write shapes as BxN, comma-separated (e.g. 1x512,4x2048)") from None
    return tuple(out)


def load_shape(name: str) -> tuple[ModelShape, str | None]:
    """The model's shape from the cost model's data, and why the cost model itself is unusable (or None)."""
    try:
        from pythia.sim.costmodel import model_shape

        return model_shape(name), None
    except ImportError as e:
        # The comparison needs the validated data (jsonschema); the shape alone is plain YAML.
        import yaml

        models = yaml.safe_load((ROOT / "pythia" / "sim" / "data" / "models.yaml").read_text())
        if name not in models:
            raise CheckError(f"option --model={name!r} is not in pythia/sim/data/models.yaml") from None
        return ModelShape(name=name, **models[name]), f"the cost model cannot be loaded here ({e})"


# --------------------------------------------------------------------------- the model in plain PyTorch


class Decoder:
    """Random-weight decoder of ``shape``: the computation of a Llama-style forward pass, nothing else."""

    def __init__(self, shape: ModelShape, device: torch.device, dtype: torch.dtype, seed: int) -> None:
        self.s, self.device, self.dtype = shape, device, dtype
        gen = torch.Generator(device=device).manual_seed(seed)

        def w(*dims: int) -> torch.Tensor:
            t = torch.empty(*dims, device=device, dtype=dtype)
            return t.normal_(0.0, 0.02, generator=gen)

        h, d = shape.hidden, shape.head_dim
        self.embed = w(shape.vocab, h)
        self.lm_head = w(h, shape.vocab)
        self.layers = [{
            "n1": torch.ones(h, device=device, dtype=dtype), "n2": torch.ones(h, device=device, dtype=dtype),
            "qkv": w(h, (shape.heads + 2 * shape.kv_heads) * d), "o": w(shape.heads * d, h),
            "gate_up": w(h, 2 * shape.intermediate), "down": w(shape.intermediate, h),
        } for _ in range(shape.layers)]
        self.norm = torch.ones(h, device=device, dtype=dtype)
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
        self._inv_freq = inv

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the rotary embedding at ``positions`` (shape ``[..., head_dim / 2]``)."""
        ang = positions.to(torch.float32)[..., None] * self._inv_freq
        return ang.cos().to(self.dtype), ang.sin().to(self.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, kv: list[tuple[torch.Tensor, torch.Tensor]] | None,
                ctx: int) -> torch.Tensor:
        """Logits of each sequence's last token for ``ids`` (``[B, q]``) at ``positions``.

        With ``kv`` (per layer, keys and values ``[B, kv_heads, ctx + q, head_dim]``), the new
        keys and values are written at ``ctx`` and the queries attend to all ``ctx + q``;
        without it the batch is a prefill (causal attention over the new tokens).
        """
        s = self.s
        b, q = ids.shape
        x = self.embed[ids]
        cos, sin = self.rope(positions)
        cos, sin = cos[:, None], sin[:, None]
        split = (s.heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim)
        for i, layer in enumerate(self.layers):
            hdn = F.rms_norm(x, (s.hidden,), layer["n1"])
            qq, kk, vv = (hdn @ layer["qkv"]).split(split, dim=-1)
            qq = self._rotate(qq.view(b, q, s.heads, s.head_dim).transpose(1, 2), cos, sin)
            kk = self._rotate(kk.view(b, q, s.kv_heads, s.head_dim).transpose(1, 2), cos, sin)
            vv = vv.view(b, q, s.kv_heads, s.head_dim).transpose(1, 2)
            if kv is None:
                att = _attention(qq, kk, vv, causal=True)
            else:
                kc, vc = kv[i]
                kc[:, :, ctx:ctx + q] = kk
                vc[:, :, ctx:ctx + q] = vv
                att = _attention(qq, kc, vc, causal=False)
            x = x + att.transpose(1, 2).reshape(b, q, s.heads * s.head_dim) @ layer["o"]
            gate, up = (F.rms_norm(x, (s.hidden,), layer["n2"]) @ layer["gate_up"]).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ layer["down"]
        return F.rms_norm(x[:, -1], (s.hidden,), self.norm) @ self.lm_head


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    try:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    except TypeError:  # a PyTorch before 2.5: repeat the KV heads instead
        rep = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                              is_causal=causal)


# --------------------------------------------------------------------------- measuring


def _timed(fn: Callable[[], Any], cfg: CheckConfig, device: torch.device) -> list[float]:
    """Seconds of each of ``cfg.iters`` calls of ``fn`` after ``cfg.warmup`` untimed ones."""
    for _ in range(cfg.warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(cfg.iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(cfg.iters):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return times


def measure_shape(model: Decoder, cfg: CheckConfig, kind: str, batch: int, n: int, gen: torch.Generator) -> dict[str, Any]:
    """Time one iteration shape; the row holds the batch's cost-model terms and the times."""
    s, dev = model.s, model.device
    bs = BatchShape()
    mode = "eager"
    if kind == "prefill":
        ids = torch.randint(0, s.vocab, (batch, n), device=dev, generator=gen)
        pos = torch.arange(n, device=dev).expand(batch, n)
        for _ in range(batch):
            bs.add(n, 0, True)
        fn: Callable[[], Any] = lambda: model.forward(ids, pos, None, 0)  # noqa: E731
        kv = None
    else:
        ids = torch.randint(0, s.vocab, (batch, 1), device=dev, generator=gen)
        pos = torch.full((batch, 1), n, device=dev)
        kv = [(torch.zeros(batch, s.kv_heads, n + 1, s.head_dim, device=dev, dtype=model.dtype),
               torch.zeros(batch, s.kv_heads, n + 1, s.head_dim, device=dev, dtype=model.dtype)) for _ in model.layers]
        for _ in range(batch):
            bs.add(1, n, True)
        fn = lambda: model.forward(ids, pos, kv, n)  # noqa: E731
        if dev.type == "cuda" and cfg.cuda_graph:
            fn, mode = _graph(fn, dev)
    times = _timed(fn, cfg, dev)
    del kv
    ms = sorted(t * 1e3 for t in times)
    return {"kind": kind, "batch": batch, "new_tokens": n if kind == "prefill" else 1,
            "context_tokens": 0 if kind == "prefill" else n, "mode": mode,
            "seqs": bs.seqs, "tokens": bs.tokens, "sampled": bs.sampled, "pairs": bs.pairs, "kv_read": bs.kv_read,
            "measured_ms": statistics.median(ms), "measured_p10_ms": ms[len(ms) // 10],
            "measured_p90_ms": ms[min(len(ms) - 1, (9 * len(ms)) // 10)], "iters": len(ms)}


def _graph(fn: Callable[[], Any], dev: torch.device) -> tuple[Callable[[], Any], str]:
    """``fn`` captured as a CUDA graph (vLLM replays decode steps so), or ``fn`` itself when capture fails."""
    try:
        stream = torch.cuda.Stream(dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            fn()  # allocations of the first run happen outside the graph
        torch.cuda.current_stream(dev).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay, "cuda-graph"
    except Exception as e:  # noqa: BLE001 - measure eagerly rather than not at all
        print(f"gpu_check: CUDA graph capture failed ({type(e).__name__}: {e}); decode measured eagerly", file=sys.stderr)
        return fn, "eager"


def device_info(dev: torch.device) -> dict[str, Any]:
    """What ran the check."""
    info: dict[str, Any] = {"device": str(dev), "torch": torch.__version__, "python": platform.python_version(),
                            "host_cpus": os.cpu_count()}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count,
                    cuda=torch.version.cuda)
    else:
        info.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


def measure(cfg: CheckConfig, shape: ModelShape) -> dict[str, Any]:
    """Build the model, sample NVML while it is loaded, and time every shape until the deadline."""
    from pythia.bench.metrics import NvmlSampler

    t_start = time.monotonic()
    dev = torch.device(cfg.device)
    dtype = {4: torch.float32, 2: torch.bfloat16}.get(shape.dtype_bytes)
    if dtype is None:
        raise CheckError(f"model {shape.name}: dtype_bytes={shape.dtype_bytes} has no PyTorch dtype here (2 or 4)")
    if dev.type == "cuda":
        need = shape.params * shape.dtype_bytes + max(
            [b * (c + 1) * shape.kv_bytes_per_token for b, c in cfg.decode] or [0])
        free, _ = torch.cuda.mem_get_info(dev)
        if need > 0.9 * free:
            raise CheckError(f"model {shape.name} with the largest decode shape needs {need / 2**30:.1f} GiB; "
                             f"{free / 2**30:.1f} GiB free on {dev}: pass smaller --decode shapes")
    nvml = NvmlSampler(interval_s=cfg.nvml_interval_s, t0=t_start,
                       on_unavailable=lambda msg: print(f"gpu_check: {msg}", file=sys.stderr))
    nvml.start()
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    interrupted = False
    build_s = math.nan
    try:
        with torch.inference_mode():
            model = Decoder(shape, dev, dtype, cfg.seed)
            build_s = time.monotonic() - t_start
            gen = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
            for kind, shapes in (("prefill", cfg.prefill), ("decode", cfg.decode)):
                for b, n in shapes:
                    if time.monotonic() - t_start > cfg.max_seconds:
                        skipped.append({"kind": kind, "batch": b, "n": n, "reason": "deadline"})
                        continue
                    try:
                        row = measure_shape(model, cfg, kind, b, n, gen)
                    except torch.cuda.OutOfMemoryError as e:
                        failed.append({"kind": kind, "batch": b, "n": n, "error": f"OutOfMemoryError: {e}"[:300]})
                        continue
                    finally:
                        if dev.type == "cuda":
                            torch.cuda.empty_cache()
                    rows.append(row)
                    print(f"gpu_check: {kind} {b}x{n}: {row['measured_ms']:.3f} ms ({row['mode']})", file=sys.stderr)
    except KeyboardInterrupt:  # the wrapper's timeout: keep what was measured
        interrupted = True
    finally:
        nvml_rows = nvml.stop()
    return {"device_info": device_info(dev), "model_shape": asdict(shape), "dtype": str(dtype).replace("torch.", ""),
            "build_s": round(build_s, 3), "wall_s": round(time.monotonic() - t_start, 3),
            "rows": rows, "skipped": skipped, "failed": failed, "interrupted": interrupted,
            "nvml": {"available": bool(nvml_rows), "reason": nvml.reason, "rows": nvml_rows,
                     "summary": _nvml_summary(nvml_rows)}}


def _nvml_summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not rows:
        return None
    out: dict[str, Any] = {"samples": len(rows)}
    for col in ("gpu_util", "gpu_mem_used_mib", "gpu_power_w", "gpu_sm_clock_mhz"):
        vals = [r[col] for r in rows if isinstance(r.get(col), (int, float)) and not math.isnan(r[col])]
        if vals:
            out[f"{col}_max"] = max(vals)
            out[f"{col}_median"] = statistics.median(vals)
    return out


# --------------------------------------------------------------------------- comparing


def compare(result: dict[str, Any], gpu: str, model: str) -> dict[str, Any]:
    """Add the cost model's prediction and the relative errors to every row, and a summary per kind."""
    from pythia.sim.costmodel import FS_PER_S, CostModel

    cm = CostModel(gpu, model)
    m = cm.model
    peak_flops = cm.spec["tflops"] * 1e12
    peak_bytes = cm.spec["hbm_tbps"] * 1e12
    for r in result["rows"]:
        pred = cm.iteration_fs(r["tokens"], r["seqs"], r["sampled"], r["pairs"], r["kv_read"])
        roof = pred - cm.overhead - cm.c_seq * r["seqs"]
        compute = cm.c_token * r["tokens"] + cm.c_sampled * r["sampled"] + cm.c_pair * r["pairs"]
        memory = cm.m_weights + cm.m_kv * r["kv_read"]
        measured_s = r["measured_ms"] / 1e3
        flops = 2 * m.layer_params * r["tokens"] + 2 * m.vocab * m.hidden * r["sampled"] + 4 * m.heads * m.head_dim * m.layers * r["pairs"]
        nbytes = m.params * m.dtype_bytes + m.kv_bytes_per_token * r["kv_read"]
        r.update(predicted_ms=pred / FS_PER_S * 1e3, predicted_roofline_ms=roof / FS_PER_S * 1e3,
                 bound="compute" if compute > memory else "memory",
                 rel_error=(pred / FS_PER_S - measured_s) / measured_s,
                 rel_error_roofline=(roof / FS_PER_S - measured_s) / measured_s,
                 implied_mfu=flops / measured_s / peak_flops, implied_mbu=nbytes / measured_s / peak_bytes)
    summary = {}
    for kind in KINDS:
        rows = [r for r in result["rows"] if r["kind"] == kind]
        if rows:
            summary[kind] = {
                "shapes": len(rows),
                "median_abs_rel_error": statistics.median(abs(r["rel_error"]) for r in rows),
                "median_abs_rel_error_roofline": statistics.median(abs(r["rel_error_roofline"]) for r in rows),
                "mean_rel_error": statistics.fmean(r["rel_error"] for r in rows),
                "median_implied_mfu": statistics.median(r["implied_mfu"] for r in rows),
                "median_implied_mbu": statistics.median(r["implied_mbu"] for r in rows),
            }
    result["comparison"] = {"gpu": gpu, "model": model, "efficiency": {k: cm.eff[k] for k in ("mfu", "mbu", "overhead_ms", "per_seq_us")},
                            "per_kind": summary}
    return result


def markdown(result: dict[str, Any]) -> str:
    """The report as a Markdown table."""
    info, cmp_ = result["device_info"], result.get("comparison")
    lines = [f"# GPU check: {result['model_shape']['name']} ({result['dtype']}) on {info.get('name')} ({info['device']})", ""]
    if cmp_ is None:
        lines += [f"No comparison: {result.get('comparison_unavailable')}.", ""]
    else:
        eff = cmp_["efficiency"]
        lines += [f"Cost model: `{cmp_['gpu']}` / `{cmp_['model']}` (mfu {eff['mfu']}, mbu {eff['mbu']}, "
                  f"overhead {eff['overhead_ms']} ms, per sequence {eff['per_seq_us']} us). Relative error = "
                  "(predicted - measured) / measured; *roofline* leaves out the engine's per-step and "
                  "per-sequence overheads, which a bare forward pass does not pay.", "",
                  "| kind | shapes | median abs. error | median abs. error (roofline) | mean error | implied mfu | implied mbu |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for kind, s in cmp_["per_kind"].items():
            lines.append(f"| {kind} | {s['shapes']} | {s['median_abs_rel_error']:.1%} | {s['median_abs_rel_error_roofline']:.1%} "
                         f"| {s['mean_rel_error']:+.1%} | {s['median_implied_mfu']:.3f} | {s['median_implied_mbu']:.3f} |")
        lines.append("")
    lines += ["| kind | batch | new | context | mode | measured ms | predicted ms | roofline ms | error | error (roofline) | bound |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        pred = (f"{r['predicted_ms']:.3f} | {r['predicted_roofline_ms']:.3f} | {r['rel_error']:+.1%} | "
                f"{r['rel_error_roofline']:+.1%} | {r['bound']}") if "predicted_ms" in r else "- | - | - | - | -"
        lines.append(f"| {r['kind']} | {r['batch']} | {r['new_tokens']} | {r['context_tokens']} | {r['mode']} | "
                     f"{r['measured_ms']:.3f} | {pred} |")
    nv = result["nvml"]
    nvml = (", ".join(f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}" for k, v in nv["summary"].items())
            if nv["available"] else f"no rows ({nv['reason']})")
    lines += ["", f"NVML while loaded: {nvml}.",
              f"Skipped: {len(result['skipped'])}, failed: {len(result['failed'])}, interrupted: {result['interrupted']}; "
              f"model built in {result['build_s']} s, whole check {result['wall_s']} s.", ""]
    return "\n".join(lines)


def write(result: dict[str, Any], out: Path) -> None:
    """``gpu_check.json`` and ``gpu_check.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(result))


def config_from_args(a: argparse.Namespace) -> CheckConfig:
    """The check's settings: the GPU grid (or the dry run's tiny CPU set-up), then the options given."""
    given = {
        "device": a.device, "model": a.model, "gpu": a.gpu, "warmup": a.warmup, "iters": a.iters,
        "max_seconds": a.max_seconds, "seed": a.seed,
        "prefill": parse_shapes(a.prefill, "prefill") if a.prefill is not None else None,
        "decode": parse_shapes(a.decode, "decode") if a.decode is not None else None,
        "cuda_graph": False if a.no_cuda_graph else None,
    }
    return CheckConfig(**{**(DRY_RUN if a.dry_run else {}), **{k: v for k, v in given.items() if v is not None}})


def main(argv: list[str] | None = None) -> int:
    """Run the check (or ``--compare`` a measured one); see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny shape, few iterations, on the CPU")
    ap.add_argument("--device", choices=("cuda", "cpu"))
    ap.add_argument("--model", help="a model of pythia/sim/data/models.yaml (default llama-3.1-8b)")
    ap.add_argument("--gpu", help="the cost model's accelerator (default h200)")
    ap.add_argument("--prefill", help="prefill shapes BxL, comma-separated")
    ap.add_argument("--decode", help="decode shapes BxC (C cached tokens), comma-separated")
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--iters", type=int)
    ap.add_argument("--max-seconds", type=float)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--no-cuda-graph", action="store_true", help="time decode steps eagerly on the GPU")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--compare", type=Path, metavar="DIR", help="add the comparison to DIR/gpu_check.json and stop")
    a = ap.parse_args(argv)
    try:
        if a.compare is not None:
            path = a.compare / "gpu_check.json"
            if not path.is_file():
                raise CheckError(f"option --compare: {path} does not exist")
            result = json.loads(path.read_text())
            result.pop("comparison_unavailable", None)
            write(compare(result, a.gpu or result["settings"]["gpu"], a.model or result["settings"]["model"]), a.compare)
            print(f"gpu_check: comparison written to {a.compare}", file=sys.stderr)
            return 0
        cfg = config_from_args(a)
        shape, unusable = load_shape(cfg.model)
        result = {"settings": asdict(cfg), **measure(cfg, shape)}
    except CheckError as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return 2
    if unusable is None:
        result = compare(result, cfg.gpu, cfg.model)
    else:
        result["comparison"] = None
        result["comparison_unavailable"] = unusable
        print(f"gpu_check: {unusable}; measurements written, compare them on a host with the project installed: "
              f"python benchmarks/gpu_check.py --compare {a.out}", file=sys.stderr)
    write(result, a.out)
    for kind, s in (result.get("comparison") or {}).get("per_kind", {}).items():
        print(f"gpu_check: {kind}: median |error| {s['median_abs_rel_error']:.1%} "
              f"(roofline {s['median_abs_rel_error_roofline']:.1%}) over {s['shapes']} shapes", file=sys.stderr)
    print(f"gpu_check: wrote {a.out / 'gpu_check.json'} and gpu_check.md", file=sys.stderr)
    return 1 if result["failed"] or result["skipped"] or result["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
