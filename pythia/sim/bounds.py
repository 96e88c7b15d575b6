"""A lower bound on each job's completion time, with the simulator's own cost model.

A job's bound is its completion time without contention: every call alone on an idle
replica of its pool, with every prompt prefix it could reuse already cached, tool and think
gaps as in the trace. It is computed with the cost model the simulator charges
(:class:`~pythia.sim.costmodel.CostModel`, integer femtoseconds) and is never above the
job's simulated JCT under any system, scheduler, router, cache policy or load.

Per call, after the context clamp of :mod:`pythia.workflow.clamp` (the call the engine
serves), with ``P`` prompt tokens, ``O`` output tokens (at least 1), block size ``bs``,
token budget ``B`` (``max_num_batched_tokens``) and ``H`` cached prompt tokens:

- **front end**: ``request_service + request_in`` before the engine queue and
  ``response_out`` after the last token (the cost profile's front-end terms);
- **prefill**: prompt positions ``[H, P)`` computed in ``m = ceil((P - H) / B)`` chunks, the
  last one sampling the first token. Any schedule computes them in at least ``m``
  iterations of at most ``B`` tokens, and an iteration costs at least what the call's own
  share costs alone (every coefficient is non-negative), so the time is at least
  ``m * (overhead + per_seq + all-reduce) + all-reduce per token * (P - H)`` plus
  ``max(compute, memory)``: ``compute`` the whole range's matmul, sampling and attention
  work (the same for every split into chunks), ``memory`` ``m`` weight reads plus the KV
  reads of the earliest chunk ends ``m`` chunks of at most ``B`` tokens can have. A sum of
  maxima is at least the maximum of the sums, so this holds for every split into chunks.
  When the range fits one chunk it is exactly that chunk's cost; over several chunks it is
  the cost of running them alone whenever some split keeps every chunk compute-bound (equal
  chunks of at least ``B / 2`` tokens do: on the shipped GPU profiles of the real models a
  chunk is compute-bound from 130 to 270 tokens on), and below the simulator's own split
  (full chunks, then the rest) when that split's short last chunk is memory-bound;
- **decode**: ``O - 1`` iterations of one sequence with context ``P + 1 .. P + O - 1``, each
  the cheapest iteration that can produce that token (one new token over the rest cached).

The job's bound is the longest path through its call graph: a call starts ``gap_s`` after
the last of its dependencies is delivered (the job's start for a root), as the runtime
issues it, and the job ends when its last call is delivered.

**What counts as cached** (``H``, whole blocks, never the block holding the prompt's last
token: a lookup never covers it). Chained block hashes make a cached block reusable only
with its whole prefix, so ``H`` is the longest block-aligned prefix of the call's sequence
(prompt then output, hashed as the runtime hashes it) that some other computation could
have registered before the call is admitted:

- *reusable* (the default): the blocks of any call of another job of the trace (shared
  system prompts and tools, and any job that ran earlier or alongside), and of any call of
  the same job that is not the call itself or one of its descendants (ancestors, siblings,
  parallel branches: the engine registers a block when its computation is scheduled, so a
  sibling admitted in the same iteration already shares it). Descendants are issued only
  after the call is delivered. Everything ever computed is assumed to stay resident;
- *precompute* (``precompute=True``): every prompt block a lookup can reach. A system whose
  cache policy prefills predicted prompts in the background (Pythia's ``precompute``
  action; under the oracle the prediction is the true next prompt, available once the
  call's dependencies are issued) can compute a call's whole prompt on an idle replica
  while its dependencies run and during its gap, so only the last partial block is left.
  The bound of such a system is therefore lower than the others' on the same jobs.

With prefix caching off nothing is cached (``H = 0``). Host-tier hits and prefetched
blocks only bring back what was computed, so they are covered by the reusable set. The
reuse is found by comparing the sequences' runs of segments, which decides exactly what
comparing their chained block hashes decides (see :func:`_reused_tokens`), at a fraction
of the cost: no block is hashed.

One engine detail lies outside the bound: when a call is preempted in the same schedule
that allocated its next chunk, the blocks registered for that chunk stay cached although
they were never computed (the engine registers a block when its computation is scheduled,
as vLLM does), and on readmission the call may reuse them. Only schedulers that preempt a
call already scheduled in the iteration (not FCFS, which preempts the last running call)
can produce it; a run could then beat the bound by at most the prefill of those chunks.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pythia.policy.systems import EngineFlags
from pythia.sim.config import ClusterConfig
from pythia.sim.costmodel import FS_PER_S, CostModel
from pythia.workflow.blocks import merge_segments, mix_pairs, sequence_hashes_many
from pythia.workflow.clamp import clamp_lengths, cut_segments
from pythia.workflow.trace import Call, Job, Trace, segments


# --------------------------------------------------------------------------- one call


def call_content(job: Job, call: Call, context_len: int) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Prompt and output lengths after the context clamp and the segments hashed for caching.

    The same as the simulator's runtime (``Runtime._content``), so the bound sees the calls
    the engine serves and the block hashes it caches them under.
    """
    prompt_n, out_n = clamp_lengths(call.input_tokens, call.output_tokens, context_len)
    prompt, output = call.prompt, job.output_segments(call)
    if (prompt_n, out_n) != (call.input_tokens, max(1, call.output_tokens)):
        prompt = cut_segments(prompt, prompt_n) if prompt_n < call.input_tokens else prompt
        output = cut_segments(output, out_n) if out_n <= call.output_tokens else output
    if len(prompt) and int(prompt[:, 2].sum()) != prompt_n:
        prompt = segments([(job.uid, 0, prompt_n)])  # a trace without content: unique tokens
    return prompt_n, out_n, prompt, output if out_n <= call.output_tokens else segments([])


def prefill_fs(cm: CostModel, cached: int, prompt: int, budget: int) -> int:
    """Least time (fs) to compute prompt positions ``[cached, prompt)`` and sample the first token.

    See the module docstring: ``m`` chunks of at most ``budget`` tokens, the fixed terms of
    each, and the larger of the range's total compute and the least total memory traffic.
    """
    q = prompt - cached
    fixed = cm.overhead + cm.c_seq + cm.ar_fixed
    if q <= 0:  # an empty prompt: one iteration of no tokens samples the first one
        return fixed + max(cm.c_sampled, cm.m_weights)
    m = -(-q // budget)
    pairs = (prompt * (prompt + 1) - cached * (cached + 1)) // 2  # causal query-key pairs of the range
    compute = cm.c_token * q + cm.c_sampled + cm.c_pair * pairs
    # Chunk j (of m) ends no earlier than prompt - (m - j) * budget: the chunks after it hold
    # at most budget tokens each (that end is past cached + j, as q > (m - 1) * budget).
    ends = m * prompt - budget * m * (m - 1) // 2
    memory = m * cm.m_weights + cm.m_kv * ends
    return m * fixed + cm.ar_token * q + max(compute, memory)


def decode_fs(cm: CostModel, prompt: int, output: int) -> int:
    """Time (fs) of the ``output - 1`` decode iterations after the first token, alone in the batch."""
    return cm.decode_run(1, prompt).total(output - 1)


def call_fs(cm: CostModel, cached: int, prompt: int, output: int, budget: int) -> int:
    """Least time (fs) from a call's issue to its client reading the last token."""
    front = cm.request_service_fs + cm.request_in_fs + cm.response_out_fs
    return front + prefill_fs(cm, cached, prompt, budget) + decode_fs(cm, prompt, max(1, output))


# --------------------------------------------------------------------------- cached prefixes


def may_precompute(cache_policy: Any) -> bool:
    """Whether a cache policy may prefill predicted prompts in the background (``precompute`` actions).

    Pythia's cache policy exposes the switch as its ``precompute`` attribute; a policy
    without it emits no such action.
    """
    return bool(getattr(cache_policy, "precompute", False))


def _descendants(job: Job) -> list[int]:
    """Per call, the bit set of its descendants in the job's call graph."""
    desc = [0] * len(job.calls)
    children: list[list[int]] = [[] for _ in job.calls]
    for c in job.calls:
        for d in set(c.deps):
            children[d].append(c.call_id)
    for i in range(len(job.calls) - 1, -1, -1):  # dependencies point to earlier calls
        for k in children[i]:
            desc[i] |= (1 << k) | desc[k]
    return desc


class _Pools:
    """Each trace model's pool name and context length (the name map is looked up once per model)."""

    def __init__(self, cluster_config: ClusterConfig) -> None:
        self.config = cluster_config
        self._memo: dict[str, tuple[str, int]] = {}

    def __call__(self, model: str) -> tuple[str, int]:
        got = self._memo.get(model)
        if got is None:
            pool = self.config.pool_for(model)
            got = self._memo[model] = (pool.name, self.config.context_len(pool))
        return got


_ROOT = 0x5EED  # the (empty) prefix before a sequence's first run


def _reused_tokens(trace: Trace, streams: Sequence[np.ndarray], job_of: np.ndarray, first_of_job: Sequence[int]
                   ) -> np.ndarray:
    """Per sequence, its longest token prefix equal to a prefix of a sequence it may reuse.

    ``streams`` are the calls' sequences (prompt then output) as maximal runs of one stream
    (:func:`~pythia.workflow.blocks.merge_segments`), job by job, call by call; ``job_of``
    gives each one's job index, ``first_of_job`` each job's first sequence. A sequence may
    reuse any sequence of another job, and of its own job any that is neither itself nor a
    descendant.

    Equal hashes of whole blocks mean equal tokens, so comparing runs decides what block
    hashes would. Run ``s`` of a sequence is keyed by its whole prefix before it and its
    first token (stream key and offset). Two sequences with the same key at ``s`` agree up
    to its start and on the shorter of their runs ``s``; if the other's run is at least as
    long, the whole run matches, and the match goes on at ``s + 1`` with the sequences that
    have the same key there (the same run ``s``, then the same first token). So at each run
    the best source is the one with the longest run under the same key, and a sequence's
    match ends at the first run where that is shorter than its own.
    """
    n = len(streams)
    runs = np.array([len(x) for x in streams], dtype=np.int64)
    out = np.zeros(n, dtype=np.int64)
    if not runs.any():
        return out
    flat = np.concatenate([x for x in streams if len(x)])
    key, off, tok = flat[:, 0], flat[:, 1], flat[:, 2]
    seq = np.repeat(np.arange(n), runs)
    first = np.cumsum(runs) - runs  # index of each sequence's first run
    ends = np.cumsum(tok)
    fs = first[seq]
    start = ends - tok - (ends[fs] - tok[fs])  # token position of each run in its sequence
    head = mix_pairs(key, off)
    # The prefix through each run: a chain over whole runs (one "block" per run).
    whole = mix_pairs(head, tok)
    ones = np.ones(len(flat), dtype=np.int64)
    units = np.column_stack([whole, np.zeros(len(flat), dtype=np.int64), ones])
    chains = sequence_hashes_many([(units[f:f + r], units[:0]) for f, r in zip(first.tolist(), runs.tolist())], 1)
    before = np.full(len(flat), _ROOT, dtype=np.int64)  # the prefix before each run
    pos = 0
    for c, r in zip(chains, runs.tolist()):
        if r > 1:
            before[pos + 1:pos + r] = c[:-1]
        pos += r
    gkey = mix_pairs(before, head)
    job = job_of[seq]
    # Another job's longest run under each key: the longest overall, unless it is this job's,
    # then the longest of any other job.
    order = np.lexsort((-tok, gkey))
    g, t, jb = gkey[order], tok[order], job[order]
    new = np.ones(len(g), dtype=bool)
    new[1:] = g[1:] != g[:-1]
    starts = np.flatnonzero(new)
    size = np.diff(np.append(starts, len(g)))
    top_job = np.repeat(jb[starts], size)
    top = np.repeat(t[starts], size)
    other_job = np.where(jb != top_job, t, -1)
    second = np.repeat(np.maximum.reduceat(other_job, starts), size)
    best = np.empty(len(g), dtype=np.int64)
    best[order] = np.where(jb != top_job, top, second)
    # Within a job: the longest run under the key among the calls it may reuse.
    for j, job_ in enumerate(trace.jobs):
        if len(job_.calls) < 2:
            continue
        lo, hi = first_of_job[j], first_of_job[j] + len(job_.calls)
        a, b = int(first[lo]), int(first[hi - 1] + runs[hi - 1])
        if a == b:
            continue
        desc = _descendants(job_)
        groups: dict[int, list[tuple[int, int]]] = {}
        gk, tk, sq = gkey[a:b].tolist(), tok[a:b].tolist(), (seq[a:b] - lo).tolist()
        for x, y, z in zip(gk, tk, sq):
            groups.setdefault(x, []).append((-y, z))
        for v in groups.values():
            v.sort()  # longest run first, then the earliest call (ancestors come first)
        bl = best[a:b].tolist()
        for r, (x, z) in enumerate(zip(gk, sq)):
            mask = desc[z] | (1 << z)
            for neg, c in groups[x]:
                if -neg <= bl[r]:
                    break  # no longer than what another job gives
                if not (mask >> c) & 1:
                    bl[r] = -neg
                    break
        best[a:b] = bl
    # Each sequence's match ends at its first run whose best source is shorter than the run.
    short = best < tok
    idx = np.where(short, np.arange(len(flat)), len(flat))
    nz = runs > 0
    f = first[nz]
    stop = np.minimum.reduceat(idx, f)  # sequences with runs are contiguous in flat, in order
    res = ends[f + runs[nz] - 1] - ends[f] + tok[f]  # whole sequence matched
    cut = stop < len(flat)
    at = stop[cut]
    res[cut] = start[at] + np.maximum(best[at], 0)
    out[nz] = res
    return out


def _job_bound_fs(job: Job, lengths: Sequence[tuple[int, int]], cached_blocks: Sequence[int], pools: _Pools,
                  flags: EngineFlags, cost_models: Mapping[str, CostModel]) -> int:
    """The longest path (fs) through the job's calls, each at its least time after its gap."""
    finish = [0] * len(job.calls)
    bs, budget = flags.block_size, flags.max_num_batched_tokens
    for c in job.calls:
        cm = cost_models[pools(c.model)[0]]
        prompt, output = lengths[c.call_id]
        ready = max((finish[d] for d in c.deps), default=0)
        finish[c.call_id] = ready + round(c.gap_s * FS_PER_S) + call_fs(cm, cached_blocks[c.call_id] * bs, prompt,
                                                                          output, budget)
    return max(finish, default=0)


def cached_prefix_blocks(trace: Trace, cluster_config: ClusterConfig, engine_flags: EngineFlags, *,
                         precompute: bool = False) -> tuple[list[list[tuple[int, int]]], list[list[int]]]:
    """Per job and call, its (prompt, output) lengths after the clamp and the prompt blocks the bound takes as cached.

    Content is reusable across all the trace's jobs (whatever order they run in), so every
    call's reuse is found for the whole trace at once (see the module docstring).
    """
    pools = _Pools(cluster_config)
    bs = engine_flags.block_size
    lengths: list[list[tuple[int, int]]] = []
    streams: list[np.ndarray] = []
    job_of: list[int] = []
    first_of_job: list[int] = []
    reuse = engine_flags.enable_prefix_caching and not precompute
    for j, job in enumerate(trace.jobs):
        first_of_job.append(len(streams))
        lens = []
        for c in job.calls:
            p, o, ps, os_ = call_content(job, c, pools(c.model)[1])
            lens.append((p, o))
            if reuse:
                streams.append(merge_segments(np.concatenate([ps, os_]).astype(np.int64).reshape(-1, 3)))
                job_of.append(j)
        lengths.append(lens)
    tokens = _reused_tokens(trace, streams, np.asarray(job_of, dtype=np.int64), first_of_job).tolist() if reuse else []
    cached = []
    for j, lens in enumerate(lengths):
        limits = [max(0, (p - 1) // bs) for p, _ in lens]  # a lookup never covers the last prompt token's block
        if reuse:
            f = first_of_job[j]
            cached.append([min(tokens[f + i] // bs, m) for i, m in enumerate(limits)])
        elif engine_flags.enable_prefix_caching:
            cached.append(limits)  # precompute: every block a lookup can reach
        else:
            cached.append([0] * len(lens))
    return lengths, cached


def lower_bounds(trace: Trace, cluster_config: ClusterConfig, engine_flags: EngineFlags,
                 cost_models: Mapping[str, CostModel], *, precompute: bool = False) -> list[float]:
    """:func:`lower_bound_jct` (seconds) of every job of ``trace``, in trace order."""
    pools = _Pools(cluster_config)
    lengths, cached = cached_prefix_blocks(trace, cluster_config, engine_flags, precompute=precompute)
    return [_job_bound_fs(job, lengths[j], cached[j], pools, engine_flags, cost_models) / FS_PER_S
            for j, job in enumerate(trace.jobs)]


def lower_bound_jct(job: Job, cluster_config: ClusterConfig, engine_flags: EngineFlags,
                    cost_models: Mapping[str, CostModel], *, trace: Trace | None = None,
                    precompute: bool = False) -> float:
    """The lower bound (seconds) of ``job``'s completion time, as the module docstring defines it.

    Args:
        job: the job, as the simulator receives it (gaps already scaled).
        cluster_config: maps each call's model to its pool.
        engine_flags: the system's engine flags as the simulator runs them (block size
            rounded to the hardware's multiple, as :class:`~pythia.sim.run.Simulation` does).
        cost_models: the cost model of each pool, by pool name.
        trace: the trace the job runs in, whose other jobs' content counts as reusable;
            ``None``: the job alone. :func:`lower_bounds` bounds every job of a trace at once.
        precompute: the system may prefill predicted prompts in the background
            (:func:`may_precompute`): every prompt block a lookup can reach counts as cached.
    """
    if trace is None:
        return lower_bounds(Trace(jobs=[job]), cluster_config, engine_flags, cost_models, precompute=precompute)[0]
    at = next((i for i, x in enumerate(trace.jobs) if x is job), None)
    if at is None:
        raise ValueError(f"job {job.job_id!r} is not one of the trace's jobs")
    return lower_bounds(trace, cluster_config, engine_flags, cost_models, precompute=precompute)[at]


__all__ = ["cached_prefix_blocks", "call_content", "call_fs", "decode_fs", "lower_bound_jct", "lower_bounds",
           "may_precompute", "prefill_fs"]
