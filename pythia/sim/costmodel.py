"""Roofline cost of one engine iteration, in integer femtoseconds.

An iteration runs a batch of sequences; each contributes ``q`` new tokens over a context of
``c`` tokens already in its KV cache. Per GPU of a tensor-parallel group (``tp`` GPUs)::

    compute = (2 * P_layers * T + 2 * vocab * hidden * S_sampled + 4 * heads * head_dim * layers * pairs) / tp
              / (peak_flops * mfu)
    memory  = (weight_bytes + kv_bytes_per_token * kv_read) / tp / (hbm_bandwidth * mbu)
    time    = overhead + per_seq * S + max(compute, memory) + allreduce (tp > 1)

with ``T`` the batch's tokens, ``S`` its sequences, ``S_sampled`` those producing a token,
``pairs = sum(q * c + q * (q + 1) / 2)`` the query-key pairs of causal attention and
``kv_read = sum(c + q)`` the KV tokens read. Each coefficient is rounded once to whole
femtoseconds, so an iteration's cost is an exact integer-linear function of the counts
inside each branch of the ``max``: the fast-forward sums many iterations of a steady batch
(decode steps and prefill chunks) in closed form and gets exactly the same total as stepping.

Coefficients: ``data/gpus.yaml`` (peaks), ``data/models.yaml`` (shapes),
``data/efficiency.yaml`` (mfu, mbu, overheads per GPU and model). The same entry carries the
serving front end's per-call costs outside the engine loop: ``request_service_ms`` (the
front end's time per request, served one at a time), ``request_in_ms`` (a further fixed
delay to the engine queue) and ``response_out_ms`` (engine token to client).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from pythia import inputs
from pythia.errors import PythiaInputError

FS_PER_S = 10**15
GIB = 1 << 30


@lru_cache(maxsize=None)
def load_data(name: str) -> dict[str, Any]:
    """One of the shipped data files (``gpus``, ``models``, ``efficiency``), validated by its schema."""
    path = resources.files("pythia.sim").joinpath(f"data/{name}.yaml")
    doc = inputs.parse_yaml(path.read_text(encoding="utf-8"), f"pythia/sim/data/{name}.yaml")
    if not isinstance(doc.value, dict):
        raise PythiaInputError(f"{doc.source}: the file must be a mapping of names to entries")
    return inputs.validate(doc, name)


@dataclass(frozen=True)
class ModelShape:
    """The shape of a decoder-only transformer (fields of its config.json)."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    max_model_len: int
    dtype_bytes: int = 2
    hf_name: str = ""

    @property
    def layer_params(self) -> int:
        """Matmul parameters of the transformer layers (attention projections and MLP)."""
        attn = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attn + mlp)

    @property
    def params(self) -> int:
        """All parameters, embeddings included."""
        emb = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layer_params + emb

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes of one token over all layers (keys and values)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


def model_shape(name: str) -> ModelShape:
    """The shipped shape of model ``name``; unknown names list the known ones."""
    models = load_data("models")
    if name not in models:
        raise PythiaInputError(f"unknown model {name!r}; known: {', '.join(sorted(models))}")
    return ModelShape(name=name, **models[name])


def gpu_spec(name: str) -> dict[str, float]:
    """The shipped spec of accelerator ``name``."""
    gpus = load_data("gpus")
    if name not in gpus:
        raise PythiaInputError(f"unknown GPU {name!r}; known: {', '.join(sorted(gpus))}")
    return dict(gpus[name])


def efficiency(gpu: str, model: str) -> dict[str, float]:
    """Efficiency coefficients of a (GPU, model) pair, falling back to the default entry."""
    eff = load_data("efficiency")
    out = dict(eff["default"])
    out.update(eff.get(f"{gpu}/{model}", {}))
    return out


class CostModel:
    """Iteration cost and KV capacity of one replica (a model on ``tp`` GPUs of one kind)."""

    def __init__(self, gpu: str, model: str, tp: int = 1, *, gpu_memory_utilization: float = 0.92,
                 max_num_batched_tokens: int = 2048, kv_cache_tokens: int = 0) -> None:
        if tp not in (1, 2, 4, 8):
            raise PythiaInputError(f"tensor parallel size {tp} must be 1, 2, 4 or 8")
        self.gpu, self.model, self.tp = gpu, model_shape(model), tp
        spec, eff = gpu_spec(gpu), efficiency(gpu, model)
        self.spec, self.eff = spec, eff
        m = self.model
        fs_per_flop = FS_PER_S / (spec["tflops"] * 1e12 * eff["mfu"]) / tp
        fs_per_byte = FS_PER_S / (spec["hbm_tbps"] * 1e12 * eff["mbu"]) / tp
        self.c_token = round(2 * m.layer_params * fs_per_flop)
        self.c_sampled = round(2 * m.vocab * m.hidden * fs_per_flop)
        self.c_pair = round(4 * m.heads * m.head_dim * m.layers * fs_per_flop)
        self.m_weights = round(m.params * m.dtype_bytes * fs_per_byte)
        self.m_kv = round(m.kv_bytes_per_token * fs_per_byte)
        self.overhead = round(eff["overhead_ms"] * 1e-3 * FS_PER_S)
        self.c_seq = round(eff["per_seq_us"] * 1e-6 * FS_PER_S)
        self.request_in_fs = round(float(eff.get("request_in_ms", 0.0)) * 1e-3 * FS_PER_S)
        self.request_service_fs = round(float(eff.get("request_service_ms", 0.0)) * 1e-3 * FS_PER_S)
        self.response_out_fs = round(float(eff.get("response_out_ms", 0.0)) * 1e-3 * FS_PER_S)
        if tp > 1:
            link = spec["link_gbps"] * 1e9
            self.ar_fixed = round(2 * m.layers * eff["allreduce_us"] * 1e-6 * FS_PER_S)
            # Ring all-reduce moves 2 (tp-1)/tp of the activations per GPU, twice per layer.
            self.ar_token = round(2 * m.layers * m.hidden * m.dtype_bytes * 2 * (tp - 1) / tp / link * FS_PER_S)
        else:
            self.ar_fixed = self.ar_token = 0
        pcie = spec["pcie_gbps"] * 1e9
        # Each rank loads its own shard of a token's KV over its own link, in parallel.
        self.pcie_fs_per_token = round(m.kv_bytes_per_token / tp / pcie * FS_PER_S)
        if "kv_cache_gib" in spec:
            kv_bytes = spec["kv_cache_gib"] * GIB * tp
        else:
            per_gpu = spec["memory_gib"] * GIB * gpu_memory_utilization - m.params * m.dtype_bytes / tp - eff["activation_gib"] * GIB
            kv_bytes = per_gpu * tp
        self.kv_capacity_tokens = max(0, int(kv_bytes // m.kv_bytes_per_token))
        self.kv_memory_tokens = self.kv_capacity_tokens  # what memory leaves, before any budget
        if kv_cache_tokens:
            # A KV budget (the KV-pressure knob): what vLLM's --num-gpu-blocks-override sets.
            # Above what memory holds it models a device with more memory; iteration costs are
            # unchanged either way.
            self.kv_capacity_tokens = kv_cache_tokens

    def kv_blocks(self, block_size: int) -> int:
        """KV blocks a replica holds: (memory * utilisation - weights - activation reserve) / block bytes."""
        return self.kv_capacity_tokens // block_size

    def batch_fs(self, shape: "BatchShape") -> int:
        """Cost of one iteration of the batch ``shape`` in femtoseconds."""
        return self.iteration_fs(shape.tokens, shape.seqs, shape.sampled, shape.pairs, shape.kv_read)

    def iteration_fs(self, tokens: int, seqs: int, sampled: int, pairs: int, kv_read: int) -> int:
        """Cost of one iteration in femtoseconds (see the module docstring for the terms)."""
        compute = self.c_token * tokens + self.c_sampled * sampled + self.c_pair * pairs
        memory = self.m_weights + self.m_kv * kv_read
        cost = self.overhead + self.c_seq * seqs + (compute if compute > memory else memory)
        if self.ar_fixed:
            cost += self.ar_fixed + self.ar_token * tokens
        return cost

    def decode_run(self, n: int, ctx0: int) -> "IterationRun":
        """Closed-form costs of consecutive decode-only iterations of ``n`` sequences.

        ``ctx0`` is the batch's total context before the first iteration; iteration ``j``
        (from 1) has ``pairs = kv_read = ctx0 + n * j``.
        """
        return IterationRun(self, n, n, n, ctx0 + n, n, ctx0 + n, n)

    def steady_run(self, tokens: int, seqs: int, sampled: int, pairs1: int, dpairs: int, kv1: int,
                   dkv: int) -> "IterationRun":
        """Closed-form costs of consecutive iterations whose batch keeps its shape.

        Every call schedules the same number of tokens ``q`` each iteration (1 in decode, a
        prefill chunk otherwise), so its context grows by ``q``: iteration ``j`` (from 1) has
        ``pairs = pairs1 + dpairs * (j - 1)`` (``dpairs = sum q^2``) and
        ``kv_read = kv1 + dkv * (j - 1)`` (``dkv = sum q``).
        """
        return IterationRun(self, tokens, seqs, sampled, pairs1, dpairs, kv1, dkv)


class BatchShape:
    """The cost model's terms of one iteration's batch, summed call by call as it is scheduled.

    A call that computes ``q`` new tokens on top of ``c`` cached ones adds one sequence,
    ``q`` tokens, ``q * c + q * (q + 1) / 2`` query-key pairs of causal attention and
    ``c + q`` KV tokens read, and one sampled sequence when its step reaches its last known
    token. The simulator's engine and the vLLM plugin's step log both count a batch with it.
    """

    __slots__ = ("seqs", "tokens", "sampled", "pairs", "kv_read")

    def __init__(self) -> None:
        self.seqs = self.tokens = self.sampled = self.pairs = self.kv_read = 0

    def add(self, q: int, c: int, samples: bool) -> None:
        """Count a call scheduling ``q`` tokens after ``c`` computed ones."""
        self.seqs += 1
        self.tokens += q
        self.pairs += q * c + q * (q + 1) // 2
        self.kv_read += c + q
        if samples:
            self.sampled += 1

    def remove(self, q: int, c: int, samples: bool) -> None:
        """Take back :meth:`add` (a call preempted after it was scheduled)."""
        self.seqs -= 1
        self.tokens -= q
        self.pairs -= q * c + q * (q + 1) // 2
        self.kv_read -= c + q
        if samples:
            self.sampled -= 1


class IterationRun:
    """Cumulative cost of ``m`` iterations of a steady batch, exact in integers.

    Iteration ``j`` costs ``max(p1 + q1 * j, p2 + q2 * j)`` (compute and memory branches,
    the common terms folded in), so the sum splits at the crossover into two arithmetic series.
    """

    __slots__ = ("p1", "q1", "p2", "q2")

    def __init__(self, cm: CostModel, tokens: int, seqs: int, sampled: int, pairs1: int, dpairs: int, kv1: int,
                 dkv: int) -> None:
        common = cm.overhead + cm.c_seq * seqs + (cm.ar_fixed + cm.ar_token * tokens if cm.ar_fixed else 0)
        self.p1 = common + cm.c_token * tokens + cm.c_sampled * sampled + cm.c_pair * (pairs1 - dpairs)
        self.q1 = cm.c_pair * dpairs
        self.p2 = common + cm.m_weights + cm.m_kv * (kv1 - dkv)
        self.q2 = cm.m_kv * dkv

    def cost(self, j: int) -> int:
        """Cost of iteration ``j`` (from 1)."""
        a, b = self.p1 + self.q1 * j, self.p2 + self.q2 * j
        return a if a > b else b

    @staticmethod
    def _series(p: int, q: int, lo: int, hi: int) -> int:
        if hi < lo:
            return 0
        return (hi - lo + 1) * p + q * (hi * (hi + 1) - (lo - 1) * lo) // 2

    def total(self, m: int) -> int:
        """Sum of the costs of iterations ``1..m``."""
        if m <= 0:
            return 0
        dp, dq = self.p1 - self.p2, self.q1 - self.q2
        # Iteration j uses the compute branch when dp + dq * j > 0 (ties take memory, as cost() does).
        if dq == 0:
            lo_c, hi_c = (1, m) if dp > 0 else (1, 0)
        elif dq > 0:
            lo_c, hi_c = max(1, (-dp) // dq + 1), m
        else:
            lo_c, hi_c = 1, min(m, (dp - 1) // (-dq))
        if hi_c < lo_c:
            return self._series(self.p2, self.q2, 1, m)
        return (
            self._series(self.p1, self.q1, lo_c, hi_c)
            + self._series(self.p2, self.q2, 1, lo_c - 1)
            + self._series(self.p2, self.q2, hi_c + 1, m)
        )

    def steps_within(self, budget: int, limit: int) -> int:
        """The largest ``m <= limit`` with ``total(m) <= budget`` (binary search)."""
        lo, hi = 0, limit
        if hi > 0 and budget >= 0:
            # Costs never fall with j (q1, q2 >= 0): budget // cost(hi) <= m <= budget // cost(1).
            c1 = self.cost(1)
            if c1 > 0 and budget // c1 < hi:
                hi = budget // c1
            ch = self.cost(hi) if hi > 0 else 0
            if ch > 0:
                lo = min(hi, budget // ch)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.total(mid) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo


DecodeRun = IterationRun  # the decode-only case of a steady run
