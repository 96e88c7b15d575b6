"""Fast-forward of a replica: plan a run of iterations of a steady batch, and materialise it.

After each schedule, :func:`plan` checks whether the batch keeps its shape (every call decodes
or takes a prefill chunk that leaves tokens for later; nothing preempted; the queue's head
stays waiting) and, if so, how many iterations run before a call finishes, a prefill reaches
its last chunk or blocks run out. The run's total cost is closed-form
(:class:`~pythia.sim.costmodel.IterationRun`). :func:`materialize` sets the state stepping
would have after ``m`` of those iterations, with the schedule of the next one done. Both act
on a :class:`~pythia.sim.engine.Replica` ``rep``; :func:`plan` reads the :class:`Iteration` its
last schedule returned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pythia.sim.costmodel import FS_PER_S, BatchShape, IterationRun
from pythia.sim.kvcache import KVCache
from pythia.sim.kvextents import ExtentKVCache
from pythia.sim.request import SimRequest

if TYPE_CHECKING:
    from pythia.sim.engine import Replica


class Iteration:
    """What one schedule started: the tokens per call, the batch's cost terms and what stopped it.

    ``batch`` maps each scheduled call to its new tokens; ``shape`` holds the cost model's
    terms (:class:`~pythia.sim.costmodel.BatchShape`) and ``cost_fs`` the iteration's cost;
    ``preempted`` (some call was preempted), ``blocked`` (admission stopped on KV blocks
    with a call still waiting), ``loaded_tokens`` (tokens loaded from the host tier) and
    ``admitted`` (calls admitted) say how the schedule ended. :func:`plan` reads it.
    """

    __slots__ = ("batch", "shape", "cost_fs", "preempted", "blocked", "loaded_tokens", "admitted")

    def __init__(self, batch: dict[SimRequest, int], shape: BatchShape, cost_fs: int, preempted: bool,
                 blocked: bool, loaded_tokens: int, admitted: int) -> None:
        self.batch, self.shape, self.cost_fs = batch, shape, cost_fs
        self.preempted, self.blocked, self.loaded_tokens, self.admitted = preempted, blocked, loaded_tokens, admitted


class Segment:
    """A planned run of ``k`` iterations of a steady batch starting at ``t0`` (iteration 1 already scheduled).

    Each call of ``batch`` schedules ``q`` tokens every iteration: 1 in decode, a prefill
    chunk that does not reach the end of the known tokens otherwise. Per call, ``c0`` is its
    computed tokens before iteration 1 and ``b0`` the blocks it holds after scheduling it.
    """

    __slots__ = ("t0", "k", "run", "batch", "c0", "q", "b0", "decode", "blank0", "cached0", "used0")

    def __init__(self, t0: int, k: int, run: IterationRun, batch: list[SimRequest], c0: list[int], q: list[int],
                 b0: list[int], decode: list[bool], kv: KVCache | ExtentKVCache) -> None:
        self.t0, self.k, self.run, self.batch = t0, k, run, batch
        self.c0, self.q, self.b0, self.decode = c0, q, b0, decode
        self.blank0, self.cached0, self.used0 = kv.blank, kv.cached_blocks, kv.used_blocks

    def new_blocks(self, j: int, bs: int) -> int:
        """Blocks allocated by the schedules of iterations 2..j."""
        if j <= 1:
            return 0
        n = 0
        for c, q, b in zip(self.c0, self.q, self.b0):
            x = (c + j * q + bs - 1) // bs - b
            if x > 0:
                n += x
        return n


def plan(rep: "Replica", now: int, it: Iteration) -> Segment | None:
    """A fast-forward run if the batch just scheduled keeps its shape for at least two iterations.

    Every scheduled call must either decode (one token, the last known one) or take a
    prefill chunk that leaves tokens for later (so it samples nothing); nothing may have
    been preempted or loaded from the host tier, no background work may wait, and the
    waiting queue's order must be static (a dynamic queue's until its next refresh, see
    ``WaitingQueue.reorders_at``: the run then ends before it). Then the next iterations schedule the same
    tokens per call: calls admitted by this iteration are running next time, ahead of the
    queue, and get the same share of the budget; the budget left for the queue is the
    same, and the admission that stopped this iteration's loop stays impossible (budget
    spent, ``max_num_seqs`` reached, or too few blocks, and blocks only get scarcer).
    That lasts until a call finishes, a prefill reaches its last chunk, or blocks run out.
    """
    sched = it.batch
    if it.preempted or it.loaded_tokens or not sched:
        return None
    if rep.background:
        return None
    dynamic = bool(rep.waiting) and rep.sched.dynamic
    k = 1 << 62
    decode: list[bool] = []
    dpairs = 0
    for req, q in sched.items():
        rem = req.prompt_tokens + req.num_output_tokens - req.num_computed_tokens
        if rem == 1:  # decode: finishes after output_tokens - num_output_tokens samples
            left = req.output_tokens - req.num_output_tokens
            if left < k:
                k = left
            decode.append(True)
        elif rem > q:  # a prefill chunk: the same chunk while more than one chunk is left
            left = (rem - 1) // q
            if left < k:
                k = left
            decode.append(False)
        else:
            return None  # the prompt's last chunk: it samples, the next iteration differs
        dpairs += q * q
        if k < 2:
            return None
    kv, bs = rep.kv_pool, rep.kv_pool.block_size
    batch = list(sched)
    qs = list(sched.values())
    c0 = [r.num_computed_tokens for r in batch]
    b0 = [(c + q + bs - 1) // bs for c, q in zip(c0, qs)]
    sh = it.shape
    run = rep.cost.steady_run(sh.tokens, len(batch), sh.sampled, sh.pairs, dpairs, sh.kv_read, sh.tokens)
    seg = Segment(now, k, run, batch, c0, qs, b0, decode, kv)
    # A time-dependent eviction order must be asked at each iteration: stay within blank blocks then.
    avail = kv.blank if kv.ranker is not None else kv.available()
    if seg.new_blocks(k, bs) > avail:
        lo, hi = 1, k  # largest k with the schedules of iterations 2..k fitting
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if seg.new_blocks(mid, bs) <= avail:
                lo = mid
            else:
                hi = mid - 1
        seg.k = k = lo
        if k < 2:
            return None
    if dynamic:
        # A dynamic queue keeps its order until its next refresh: the run ends with the
        # last iteration scheduled before then (iteration j is scheduled at t0 + total(j - 1)).
        q, run = rep.waiting, seg.run
        lo, hi = 0, k - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if q.reorders_at((now + run.total(mid)) / FS_PER_S):
                hi = mid - 1
            else:
                lo = mid
        if lo + 1 < k:
            seg.k = k = lo + 1
            if k < 2:
                return None
    if not registers_fresh(rep, seg, it.blocked):
        return None
    return seg

def registers_fresh(rep: "Replica", seg: Segment, blocked: bool) -> bool:
    """Whether the blocks the run registers are all new content (no sharing, which would change counts)."""
    kv, bs = rep.kv_pool, rep.kv_pool.block_size
    ranges = []
    k = seg.k
    index = kv.index if isinstance(kv, ExtentKVCache) and kv.caching else None
    for req, c, q in zip(seg.batch, seg.c0, seg.q):
        upto = (c + k * q) // bs
        lo = req.kv_ref
        if upto > lo:
            hl = req.hlist
            if upto > len(hl):
                upto = len(hl)
                if upto <= lo:
                    continue
            if index is not None:  # ExtentKVCache.any_resident, inlined: this runs for every plan
                path = req.kv_path
                if path:
                    e = path[-1][0]
                    if e.res > lo and e.chain[lo] == hl[lo]:
                        return False
                f = index.get(hl[lo])
                if f is not None and f.a == lo:
                    return False
            elif kv.any_resident(req, upto):
                return False
            ranges.append((hl, lo, upto))
    if blocked and ranges:
        # The queue's head stays blocked unless its prefix hit grows: only if the run
        # registers the first block it misses (chained hashes: that very hash at that index).
        head = rep.waiting.peek()
        hl = head.hlist
        limit = min((head.num_tokens - 1) // bs, len(hl))
        k0 = kv.match(hl, limit)
        if k0 < limit:
            h = hl[k0]
            for rl, lo, upto in ranges:
                if lo <= k0 < upto and rl[k0] == h:
                    return False
    if len(ranges) > 1:
        # Two chained ranges share a hash only if one's first hash lies in the other's range.
        firsts = {hl[lo] for hl, lo, _ in ranges}
        if len(firsts) < len(ranges):
            return False
        if index is not None:
            # Extents: had one range's first hash sat inside another range further on, the
            # block before it (held by its call) would be resident inside that other range,
            # so that range's own first block would be resident too: refused above.
            return True
        for hl, lo, upto in ranges:
            if upto - lo > 1 and not firsts.isdisjoint(hl[lo + 1:upto]):
                return False
    return True

def materialize(rep: "Replica", seg: Segment, m: int) -> None:
    """State after ``m`` iterations of ``seg`` and the schedule of iteration ``m + 1``."""
    if m <= 0:
        return
    kv, bs = rep.kv_pool, rep.kv_pool.block_size
    first_end = -1
    m1 = m + 1
    grow = seg.new_blocks(m1, bs)
    if grow > kv.blank:
        kv.make_blank(grow)  # evict once for the whole run: the same oldest blocks, in the same order
    for req, c, q, b, dec in zip(seg.batch, seg.c0, seg.q, seg.b0, seg.decode):
        req.num_computed_tokens = c + m * q
        req.computed_tokens += m * q
        if dec:
            req.num_output_tokens += m
            if req.first_token_fs < 0:  # its first token came from iteration 1
                if first_end < 0:
                    first_end = seg.t0 + seg.run.total(1)
                req.first_token_fs = first_end
        # Blocks of the schedules of iterations 2..m+1 (no registration meets resident
        # content: see registers_fresh). Slots c + (m+1) q never pass the known tokens.
        slots = c + m1 * q
        need = (slots + bs - 1) // bs - b
        if need > 0:
            kv.take(req, need)
        upto = slots // bs
        if upto > req.kv_ref:
            kv.register(req, min(upto, len(req.hlist)))
    if not all(seg.decode):
        rep.ff_prefill_iterations += m
    if rep.check_invariants:
        kv.check()


__all__ = ["Iteration", "Segment", "materialize", "plan", "registers_fresh"]
