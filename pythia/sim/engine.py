"""One replica's engine, following vLLM V1's scheduler (``vllm/v1/core/sched/scheduler.py``).

Each iteration (``schedule``):

1. running calls first, in order: each gets ``num_tokens - num_computed_tokens`` new tokens
   (its remaining prefill chunk, or 1 in decode) within the token budget
   ``max_num_batched_tokens``; when its KV blocks cannot be allocated, the scheduling
   policy names a victim, which is preempted by recompute (blocks freed, progress reset,
   back to the front of the waiting queue) until the allocation succeeds or the call
   itself was the victim;
2. if nothing was preempted, waiting calls in the policy's order while the budget lasts and
   fewer than ``max_num_seqs`` run: a prefix-cache lookup (hits stop at the first missing
   block, never covering the last token), host-tier hits loaded over PCIe, admission only if
   the whole sequence fits the free blocks (vLLM's ``scheduler_reserve_full_isl``), chunked
   prefill of what remains;
3. the iteration's cost comes from the cost model; its results (a token per call whose
   known tokens are all computed; first token, finish) apply when it ends.

Fast-forward: when an iteration is decode-only for every running call and nothing in the
queue could be admitted before the batch changes, the engine plans ``k`` identical-shaped
iterations at once (until the first call finishes, or just before the pool would run out of
blocks), with their total cost in closed form. An arrival or an observer (a router reading
loads) in the middle cuts the plan at the last iteration boundary, so every observable state
is the one stepping would give.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from pythia.policy.base import Policies
from pythia.policy.systems import EngineFlags
from pythia.sim.costmodel import FS_PER_S, BatchShape, CostModel
from pythia.sim.fastforward import Iteration, Segment, materialize, plan
from pythia.sim.kvcache import KVCache
from pythia.sim.kvextents import ExtentKVCache
from pythia.sim.request import SimRequest


class ReplicaHost(Protocol):
    """What a replica needs from whoever runs it (the cluster): the clock and three services.

    The replica never reaches further into its host; it asks for events and reports
    finished calls through these, so it can run under any event loop (tests use a stub).
    """

    now: int  # the current simulated time (fs)

    def schedule_step(self, replica: "Replica", t: int, version: int) -> None:
        """Deliver ``replica.on_step_event(t, version)`` at ``t`` (the end of its iteration or run)."""

    def schedule_front(self, t: int, req: SimRequest, replica: "Replica") -> None:
        """Deliver ``replica.enqueue(req, t)`` at ``t`` (the front end handed the call over)."""

    def call_finished(self, replica: "Replica", req: SimRequest, now: int) -> None:
        """``req`` produced its last token on ``replica`` at ``now``."""


class ReplicaKV:
    """A replica's KV pool as policies see it (``KVView``): every count and lookup first cuts
    a fast-forward run at the current time, so it is the one stepping would give; sizes
    never change and are read directly."""

    __slots__ = ("_rep", "block_size", "total_blocks", "host_capacity_blocks")

    def __init__(self, rep: "Replica") -> None:
        self._rep = rep
        self.block_size = rep.kv_pool.block_size
        self.total_blocks = rep.kv_pool.total_blocks
        self.host_capacity_blocks = rep.kv_pool.host_cap

    def _pool(self) -> KVCache | ExtentKVCache:
        self._rep.sync()
        return self._rep.kv_pool

    @property
    def free_blocks(self) -> int:
        return self._pool().free_blocks

    @property
    def cached_blocks(self) -> int:
        return self._pool().cached_blocks

    @property
    def used_blocks(self) -> int:
        return self._pool().used_blocks

    @property
    def host_blocks(self) -> int:
        return self._pool().host_blocks

    def cached_prefix_blocks(self, hashes: Any) -> int:
        """Leading blocks of the chain ``hashes`` resident on the GPU."""
        return self._pool().cached_prefix_blocks(hashes)


class Replica:
    """A model replica: waiting queue, running batch, KV cache and the iteration loop."""

    def __init__(self, replica_id: int, pool: str, cost: CostModel, flags: EngineFlags, policies: Policies,
                 host: ReplicaHost, *, fast_forward: bool = True, state: str = "up", kv_index: str = "auto") -> None:
        self.replica_id = replica_id
        self.pool = pool
        self.state = state
        self.cost = cost
        self.flags = flags
        self.sched = policies.scheduler
        self.cache_policy = policies.cache
        self.host = host
        self.fast_forward = fast_forward
        bs = flags.block_size
        host_blocks = int(flags.host_kv_gib * (1 << 30) // (cost.model.kv_bytes_per_token * bs)) if flags.host_kv_gib else 0
        plain = policies.cache.plain_lru and not host_blocks
        self.kv_pool: KVCache | ExtentKVCache
        if plain and kv_index != "blocks":
            # No cache action can ever reach this pool: the extent-based pool gives the same results faster.
            self.kv_pool = ExtentKVCache(cost.kv_blocks(bs), bs, caching=flags.enable_prefix_caching)
        else:
            self.kv_pool = KVCache(cost.kv_blocks(bs), bs, caching=flags.enable_prefix_caching, host_blocks=host_blocks)
            if policies.cache.reorders_eviction:
                self.kv_pool.ranker = self._rank_eviction
        self.waiting = self.sched.new_queue()
        self.running: list[SimRequest] = []
        self.background: list[SimRequest] = []
        self.inflight: dict[SimRequest, int] = {}
        self.front_free_fs = 0  # when the front end is free to take the next request
        self.busy = False
        self.end_fs = 0
        self.version = 0
        self.seg: Segment | None = None
        self.kv_view = ReplicaKV(self)
        self.waiting.attach(self)  # queues ordered by this replica's cache state (SGLang's lpm) read its KV view
        self.watermark_blocks = int(flags.watermark * self.kv_pool.total_blocks)
        self.max_model_len = cost.model.max_model_len
        # Counters for the summary.
        self.iterations = 0
        self.ff_iterations = 0
        self.ff_prefill_iterations = 0  # of which some call took a prefill chunk
        self.preemptions = 0
        self.pins_yielded = 0  # pins released so that a blocked call could be admitted
        self.only_preempted = False  # the last step preempted and scheduled nothing
        self.precompute_yielded = 0  # paused precompute runs whose blocks were released for one
        self.busy_fs = 0
        self.check_invariants = False

    # ------------------------------------------------------------------ views (ReplicaView)

    @property
    def kv(self) -> "ReplicaKV":
        """The KV pool as a policy sees it (``KVView``); the engine itself uses ``kv_pool``."""
        return self.kv_view

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def pending_prefill_tokens(self) -> int:
        self.sync()
        pend = sum(r.num_tokens - r.num_computed_tokens for r in self.waiting)
        return pend + sum(r.num_tokens - r.num_computed_tokens - 1 for r in self.running if r.num_computed_tokens < r.num_tokens - 1)

    def running_calls(self) -> Sequence[SimRequest]:
        self.sync()
        return tuple(self.running)

    # ------------------------------------------------------------------ arrivals

    def enqueue(self, req: SimRequest, now: int) -> None:
        """A call routed here at ``now`` passes the serving front end, then reaches the waiting queue.

        The front end (the replica's API server) handles one request at a time for
        ``request_service`` and hands it over ``request_in`` later (both from the cost
        profile, zero unless calibrated): calls issued together reach the engine staggered,
        as they do in a real server.
        """
        cost = self.cost
        if not req.fronted and (cost.request_in_fs or cost.request_service_fs):
            req.fronted = True
            done = max(self.front_free_fs, now) + cost.request_service_fs
            self.front_free_fs = done
            self.host.schedule_front(done + cost.request_in_fs, req, self)
            return
        req.fronted = True
        req.arrival_fs = now
        req.arrival_s = now / FS_PER_S
        req.replica_id = self.replica_id
        waiting = self.waiting
        if self.seg is not None and len(waiting):
            head = waiting.peek()
            waiting.add(req)
            if waiting.peek() is head:
                # Queued behind a head the planned run already keeps waiting (static order):
                # no boundary of the run changes, so the run goes on uncut.
                return
            self.sync(now)
        else:
            self.sync(now)
            waiting.add(req)
        if not self.busy:
            self._boundary(now)

    def add_background(self, req: SimRequest, now: int) -> None:
        """Queue a background prefill (precompute) run only when no call waits."""
        self.sync(now)
        req.arrival_fs = now
        req.replica_id = self.replica_id
        self.background.append(req)
        if not self.busy:
            self._boundary(now)

    # ------------------------------------------------------------------ the iteration loop

    def on_step_event(self, now: int, version: int) -> None:
        """The in-flight iteration (or the last of a fast-forward run) ends at ``now``."""
        if version != self.version:
            return  # superseded by a cut of the fast-forward run
        if self.seg is not None:
            seg, self.seg = self.seg, None
            self._materialize(seg, seg.k - 1)
            self.ff_iterations += seg.k - 1
        self._apply(now)
        self._boundary(now)

    def _boundary(self, now: int) -> None:
        it = self._schedule(now)
        while it is None and self.only_preempted:
            # The step preempted the call it was placing and scheduled nothing (vLLM stops its
            # running loop there). vLLM's engine calls the scheduler again at once, and so do
            # we: each such step removes a running call, so this ends.
            it = self._schedule(now)
        if it is None:
            self.busy = False
            self.inflight = {}
            return
        self.busy = True
        self.iterations += 1
        seg = plan(self, now, it) if self.fast_forward else None
        self.version += 1
        if seg is not None:
            self.seg = seg
            self.end_fs = now + seg.run.total(seg.k)
        else:
            self.end_fs = now + it.cost_fs
        self.busy_fs += self.end_fs - now
        self.host.schedule_step(self, self.end_fs, self.version)

    def _apply(self, now: int) -> None:
        """Apply the results of the iteration that just ended."""
        finished: list[SimRequest] = []
        for req, n in self.inflight.items():
            c = req.num_computed_tokens = req.num_computed_tokens + n
            if c >= req.prompt_tokens + req.num_output_tokens:
                if req.background:
                    finished.append(req)
                    continue
                req.num_output_tokens += 1
                if req.first_token_fs < 0:
                    req.first_token_fs = now
                if req.num_output_tokens >= req.output_tokens:
                    finished.append(req)
        self.inflight = {}
        if finished:
            self.kv_pool.now_s = now / FS_PER_S
            for req in finished:
                req.finish_fs = now
                if req.background:
                    self.background.remove(req)
                else:
                    self.running.remove(req)
                self.kv_pool.free(req)
            for req in finished:
                if not req.background:
                    self.host.call_finished(self, req, now)
        if self.check_invariants:
            self.kv_pool.check()

    def _alloc(self, req: SimRequest, n_new: int) -> bool:
        """vLLM's ``allocate_slots`` for ``n_new`` more tokens; registers newly full blocks."""
        bs = self.kv_pool.block_size
        slots = req.num_computed_tokens + n_new
        need = -(-slots // bs) - req.kv_ref - req.kv_priv
        kv = self.kv_pool
        if need > 0:
            if need > kv.available():
                return False
            kv.take(req, need)
        upto = min(slots, req.num_tokens) // bs
        if upto > req.kv_ref:
            kv.register(req, min(upto, len(req.hlist)))
        return True

    def _preempt(self, victim: SimRequest, now: int) -> None:
        self.kv_pool.now_s = now / FS_PER_S
        self.kv_pool.free(victim)
        victim.num_computed_tokens = 0
        victim.num_preemptions += 1
        self.preemptions += 1
        self.waiting.prepend(victim)

    def _yield_speculative(self, running: list[SimRequest], now: int) -> bool:
        """Release pins and paused precompute when the waiting head cannot be admitted and no call runs.

        Nothing would ever free blocks then: pins and a precompute stopped half way (it runs
        only while no call waits) would hold the head, and the replica, forever. Both are
        predictions and a waiting call is real work, so they yield, as the vLLM plugin
        releases its pins under memory pressure (docs/simulator.md, KV cache). A precompute's
        full blocks stay cached, so it resumes from them later. Returns whether anything was
        released.
        """
        if running:
            return False
        kv = self.kv_pool
        kv.now_s = now / FS_PER_S
        released = False
        for req in self.background:
            if req.kv_ref or req.kv_priv:
                kv.free(req)
                req.num_computed_tokens = 0
                self.precompute_yielded += 1
                released = True
        if getattr(kv, "pins", None):
            self.pins_yielded += kv.release_pins()
            released = True
        return released

    def _schedule(self, now: int) -> Iteration | None:
        """One call of the scheduler: the iteration it starts (also left in ``self.inflight``), or ``None`` if idle."""
        flags, kv, bs = self.flags, self.kv_pool, self.kv_pool.block_size
        budget = flags.max_num_batched_tokens
        threshold = flags.long_prefill_token_threshold
        running = self.running
        n_eligible = len(running) + len(self.waiting)
        if n_eligible <= 1:
            threshold = 0  # nobody to starve (as vLLM)
        sched: dict[SimRequest, int] = {}
        preempted = False
        shape = BatchShape()  # the batch's cost terms, summed as calls are scheduled
        add = shape.add
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            c = req.num_computed_tokens
            n_new = req.prompt_tokens + req.num_output_tokens - c
            if n_new == 1 and (c + 1) % bs > 1:
                # A decode step inside a block: no new block, no newly full block.
                sched[req] = 1
                budget -= 1
                add(1, c, True)
                req.computed_tokens += 1
                i += 1
                continue
            if 0 < threshold < n_new:
                n_new = threshold
            if n_new > budget:
                n_new = budget
            if n_new <= 0:
                i += 1
                continue
            ok = self._alloc(req, n_new)
            while not ok:
                victim = self.sched.victim(running, now / FS_PER_S)
                vi = running.index(victim)
                del running[vi]
                if vi < i:
                    i -= 1
                restored = sched.pop(victim, None)
                if restored is not None:
                    budget += restored
                    cv = victim.num_computed_tokens
                    shape.remove(restored, cv, cv + restored >= victim.prompt_tokens + victim.num_output_tokens)
                    victim.computed_tokens -= restored
                self._preempt(victim, now)
                preempted = True
                if victim is req:
                    break
                ok = self._alloc(req, n_new)
            if not ok:
                break
            sched[req] = n_new
            budget -= n_new
            add(n_new, c, c + n_new >= req.prompt_tokens + req.num_output_tokens)
            req.computed_tokens += n_new
            i += 1
        admitted = 0
        load_tokens = 0
        if not preempted and self.waiting:
            if self.sched.dynamic:
                self.waiting.refresh(now / FS_PER_S)
            waiting = self.waiting
            while budget > 0 and waiting and len(running) < flags.max_num_seqs:
                req = waiting.peek()
                nt = req.num_tokens
                limit = (nt - 1) // bs
                hl = req.hlist
                k = kv.match(hl, limit)
                required = -(-nt // bs) - k
                if running:
                    required += self.watermark_blocks
                avail = kv.available()
                if required > avail:
                    if self._yield_speculative(running, now):
                        continue  # the head is looked at again with those blocks evictable
                    break  # taking idle hit blocks only adds to it: the head stays blocked
                h2 = kv.host_match(hl, k, limit)
                hit = (k + h2) * bs
                n_new = nt - hit
                if 0 < threshold < n_new:
                    n_new = threshold
                if n_new > budget:
                    if not flags.enable_chunked_prefill:
                        break
                    n_new = budget
                required += kv.idle_hits(hl, k)
                if required > avail:
                    if self._yield_speculative(running, now):
                        continue
                    break
                waiting.pop()
                kv.acquire(req, k)
                if h2:
                    kv.take(req, h2)
                    kv.register(req, k + h2)
                    load_tokens += h2 * bs
                req.num_computed_tokens = hit
                if not self._alloc(req, n_new):  # cannot fail: the whole sequence fitted
                    raise RuntimeError("admission allocation failed after the full-sequence check")
                if not req.admitted:
                    req.admitted = True
                    req.sched_fs = now
                    req.cached_tokens = min(hit, req.prompt_tokens)
                running.append(req)
                sched[req] = n_new
                budget -= n_new
                add(n_new, hit, hit + n_new >= nt)
                req.computed_tokens += n_new
                admitted += 1
        # The admission loop stopped on blocks (not budget, queue or max_num_seqs) with a call still waiting.
        blocked = budget > 0 and bool(self.waiting) and len(running) < flags.max_num_seqs
        # Precompute runs only on an idle replica (no call running or waiting): a background
        # prefill chunk in a batch with decodes would slow every running call's next token.
        if budget > 0 and self.background and not self.waiting and not running and not preempted:
            for req in self.background:
                if budget <= 0:
                    break
                if req not in sched and req.num_computed_tokens < req.num_tokens:
                    if req.num_computed_tokens == 0 and req.kv_ref == 0 and req.kv_priv == 0:
                        limit = (req.num_tokens - 1) // bs
                        k = kv.match(req.hlist, limit)
                        if -(-req.num_tokens // bs) - k + kv.idle_hits(req.hlist, k) > kv.available():
                            continue
                        kv.acquire(req, k)
                        req.num_computed_tokens = k * bs
                    c = req.num_computed_tokens
                    n_new = min(req.num_tokens - c, budget)
                    if self._alloc(req, n_new):
                        sched[req] = n_new
                        budget -= n_new
                        add(n_new, c, c + n_new >= req.num_tokens)
                        req.computed_tokens += n_new
        self.inflight = sched
        self.only_preempted = preempted and not sched
        if not sched:
            return None
        cost = self.cost.batch_fs(shape)
        if load_tokens:
            cost += load_tokens * self.cost.pcie_fs_per_token
        return Iteration(sched, shape, cost, preempted, blocked, load_tokens, admitted)

    # ------------------------------------------------------------------ fast-forward

    def _materialize(self, seg: Segment, m: int) -> None:
        materialize(self, seg, m)

    def sync(self, now: int | None = None) -> None:
        """Cut a fast-forward run at the last iteration boundary at or before ``now``."""
        seg = self.seg
        if seg is None:
            return
        if now is None:
            now = self.host.now
        m = seg.run.steps_within(now - seg.t0, seg.k - 1)
        self.seg = None
        self._materialize(seg, m)
        self.ff_iterations += m
        self.version += 1
        old_end = self.end_fs
        self.end_fs = seg.t0 + seg.run.total(m + 1)
        self.busy_fs += self.end_fs - old_end
        self.host.schedule_step(self, self.end_fs, self.version)

    def peek_counts(self, now: int) -> tuple[int, int, int, int, int]:
        """(batch size, queue length, KV used, cached, free) at ``now`` without cutting a run."""
        seg, kv = self.seg, self.kv_pool
        if seg is None:
            return len(self.inflight), len(self.waiting), kv.used_blocks, kv.cached_blocks, kv.blank
        m = seg.run.steps_within(now - seg.t0, seg.k - 1)
        grow = seg.new_blocks(m + 1, kv.block_size)
        from_blank = min(grow, seg.blank0)
        return len(seg.batch), len(self.waiting), seg.used0 + grow, seg.cached0 - (grow - from_blank), seg.blank0 - from_blank

    # ------------------------------------------------------------------ cache policy hooks

    def _rank_eviction(self, hashes: list[int], last_used: list[float]) -> list[Any]:
        return self.cache_policy.eviction_keys(hashes, last_used, self.host.now / FS_PER_S)

    def is_idle(self) -> bool:
        """No call running or waiting (a draining replica can stop)."""
        return not self.running and not len(self.waiting) and not self.background and not self.busy

    def describe(self) -> dict[str, Any]:
        """Counters of this replica for the summary."""
        return {
            "replica": self.replica_id,
            "pool": self.pool,
            "iterations": self.iterations + self.ff_iterations,
            "fast_forwarded_iterations": self.ff_iterations,
            "fast_forwarded_prefill_iterations": self.ff_prefill_iterations,
            "preemptions": self.preemptions,
            "pins_yielded": self.pins_yielded,
            "precompute_yielded": self.precompute_yielded,
            "kv_blocks": self.kv_pool.total_blocks,
            "evictions": self.kv_pool.evictions,
            "busy_s": self.busy_fs / FS_PER_S,
        }


__all__ = ["Iteration", "Replica", "ReplicaHost", "ReplicaKV", "Segment"]
