"""Pythia's cache retention by predicted reuse (registry name ``pythia``), as LRU-pool actions.

When a call of job ``J`` finishes on replica ``R`` (``on_finish``):

- **pin** the resident leading blocks of the predicted prompt prefixes of ``J``'s next calls
  (probability >= ``pin_min_prob``): the next roles' fixed instructions and the job's
  context and outputs. Pins of one job on one replica are replaced by the new prediction
  (**unpin** what is no longer predicted). A replica's pins never exceed ``pin_budget`` of
  its blocks, and no pin is taken when it would leave less than ``min_free`` of the blocks
  free or evictable, so pins never starve admission;
- **demote** (release early) the finished call's blocks that no predicted next prompt of the
  job contains and that are not shared instructions (a segment key seen in several jobs);
- **offload** the pinned prefixes to host DRAM (a copy survives eviction when the engine
  has a host tier).

Periodically (``on_tick``): unpin the pins of ended jobs and pins older than ``pin_ttl_s``;
under pressure (free + evictable below ``min_free``) unpin the oldest; **prefetch** host
blocks of predicted prefixes back to a replica with room; on an idle replica **precompute**
an uncached predicted prefix of a next call of a role the replica's pool serves.

While the predictor is cold nothing happens for hinted calls: plain LRU.

Calls without prompt segments (a plain application's: only the IDs) are followed by the
engine's block names instead (:mod:`pythia.policy.block_memory`): the predicted next calls'
prefixes are the blocks of their agents' conversations and their roles' learned
instructions, and the same pin, unpin and demote rules apply. That path acts from the first
finished call, before the workflow model is warm (cold: every idle agent of the job, with
the learned probability that its role's calls are continued).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pythia.errors import PythiaInputError
from pythia.policy.base import CacheAction, CachePolicy
from pythia.policy.pythia_predictor import PythiaPredictor, Upcoming, as_pythia
from pythia.policy.views import ReplicaView, RequestView
from pythia.policy.workflow import Predictor
from pythia.workflow.blocks import block_hashes, common_prefix, sequence_hashes_many


def _available(kv: object) -> int:
    """Free plus evictable blocks: what admission can take (a host may offer it without a scan)."""
    avail = getattr(kv, "available_blocks", None)
    return int(avail) if avail is not None else kv.free_blocks + kv.cached_blocks  # type: ignore[attr-defined]


class PythiaCache(CachePolicy):
    """Pin predicted reuse, release predicted non-reuse early, prefetch and precompute.

    Args:
        pin_budget: the largest share of a replica's blocks pinned at once.
        min_free: share of blocks that must stay free or evictable after pinning; below it
            pins are released, oldest first.
        pin_min_prob: next calls at least this likely have their prefixes pinned.
        pin_ttl_s: a pin not renewed for this long is released (the predicted call did not come).
        demote: release a finished call's unpredicted blocks early.
        demote_max_prob: blocks are demoted only when the job's predicted next calls that
            contain them have summed probability below this (predicted reuse is low).
        offload: copy pinned prefixes to host DRAM.
        prefetch: load host blocks of predicted prefixes back when a replica has room.
        precompute: compute an uncached predicted prefix on an idle replica.
        precompute_min_prob: only next calls at least this likely are precomputed.
        precompute_min_tokens: shorter uncached remainders are not worth a background prefill.
        from_blocks: follow calls that carry no prompt segments by the engine's block names
            (:mod:`pythia.policy.block_memory`): pin an idle agent's conversation and a
            predicted new instance's role instructions; ``False``: such calls get plain LRU.
    """

    name = "pythia"

    def __init__(self, pin_budget: float = 0.25, min_free: float = 0.15, pin_min_prob: float = 0.5,
                 pin_ttl_s: float = 300.0, demote: bool = True, demote_max_prob: float = 0.05,
                 offload: bool = True, prefetch: bool = True, precompute: bool = True,
                 precompute_min_prob: float = 0.5, precompute_min_tokens: int = 256,
                 from_blocks: bool = True) -> None:
        for field, v, lo, hi in (("pin_budget", pin_budget, 0.0, 1.0), ("min_free", min_free, 0.0, 1.0),
                                 ("pin_min_prob", pin_min_prob, 0.0, 1.0), ("demote_max_prob", demote_max_prob, 0.0, 1.0),
                                 ("precompute_min_prob", precompute_min_prob, 0.0, 1.0)):
            if not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise PythiaInputError(f"cache param {field}={v!r} must be in [{lo}, {hi}]")
        if not isinstance(pin_ttl_s, (int, float)) or pin_ttl_s <= 0:
            raise PythiaInputError(f"cache param pin_ttl_s={pin_ttl_s!r} must be > 0")
        if not isinstance(precompute_min_tokens, int) or precompute_min_tokens < 0:
            raise PythiaInputError(f"cache param precompute_min_tokens={precompute_min_tokens!r} must be an integer >= 0")
        self.pin_budget, self.min_free, self.pin_min_prob = float(pin_budget), float(min_free), float(pin_min_prob)
        self.pin_ttl_s, self.demote, self.demote_max_prob = float(pin_ttl_s), bool(demote), float(demote_max_prob)
        self.offload, self.prefetch, self.precompute = bool(offload), bool(prefetch), bool(precompute)
        self.precompute_min_prob, self.precompute_min_tokens = float(precompute_min_prob), precompute_min_tokens
        if not isinstance(from_blocks, bool):
            raise PythiaInputError(f"cache param from_blocks={from_blocks!r} must be true or false")
        self.from_blocks = from_blocks
        self.pred: PythiaPredictor = as_pythia(None)
        # replica id -> {(job id): (pin time, hashes)}; a hash pinned by two jobs is pinned twice
        self.pins: dict[int, dict[str, tuple[float, list[int]]]] = {}
        self.pinned_blocks: dict[int, int] = {}
        self._ttl: dict[tuple[int, str], float] = {}  # (replica, job) -> hold time of pins taken on block names
        self._expiry: dict[int, float] = {}  # replica -> no pin there outlives its hold time before this
        self._ended_seen = -1
        self._precomputed: set[tuple[str, int, int]] = set()
        self._hash_memo: dict[tuple[object, ...], np.ndarray] = {}
        self._memo_cap = 4096

    def bind(self, predictor: Predictor) -> None:
        """Receive the run's workflow service."""
        self.pred = as_pythia(predictor)

    # helpers -----------------------------------------------------------------------

    @staticmethod
    def _memo_key(job_id: str, u: Upcoming, block_size: int) -> tuple[object, ...]:
        return (job_id, u.role, u.agent_id, len(u.prefix), int(u.prefix[:, 2].sum()), block_size)

    def _hashes(self, job_id: str, u: Upcoming, block_size: int) -> np.ndarray:
        """Block hashes of a predicted prefix (memoised: predictions repeat between calls)."""
        key = self._memo_key(job_id, u, block_size)
        h = self._hash_memo.get(key)
        if h is None:
            h = self._hash_memo[key] = block_hashes(u.prefix, block_size)
        return h

    def _prefixes(self, job_id: str, block_size: int) -> list[tuple[Upcoming, np.ndarray]]:
        up = [u for u in self.pred.upcoming(job_id) or () if len(u.prefix)]
        memo = self._hash_memo
        keys = [self._memo_key(job_id, u, block_size) for u in up]
        miss = [(k, u) for k, u in zip(keys, up) if k not in memo]
        if miss:  # hashed together: one vectorised pass instead of one per prefix (same values)
            empty = np.empty((0, 3), dtype=np.int64)
            for (k, _), h in zip(miss, sequence_hashes_many([(u.prefix, empty) for _, u in miss], block_size)):
                memo.setdefault(k, h)
        return [(u, memo[k]) for k, u in zip(keys, up)]

    def _gap_ttl(self, workflow_type: str, spans: list[tuple[Upcoming, np.ndarray, int, int]]) -> float:
        """How long pins taken on block names are held: twice the longest 90th-percentile gap of the
        predicted calls' roles (at least 1 s), at most ``pin_ttl_s``; ``pin_ttl_s`` until 3 gaps were seen."""
        mem = self.pred.block_memory
        gaps = [g for u, *_ in spans if (g := mem.gap_s(workflow_type, u.role)) is not None]
        if len(gaps) < len(spans) or not gaps:
            return self.pin_ttl_s
        return min(self.pin_ttl_s, max(1.0, 2.0 * max(gaps)))

    def _release_overdue(self, rid: int, job_id: str, need: int, now: float, out: list[CacheAction]) -> int:
        """Free up to ``need`` pinned blocks on ``rid`` from other jobs whose agents are overdue.

        A job's pins taken on block names are overdue once it has been idle for longer than
        half their hold time (the 90th-percentile gap of its roles): its agents are less likely
        to come back than the conversation that was just used. Oldest first; returns the
        blocks released.
        """
        jobs = self.pins.get(rid, {})
        freed = 0
        for j in sorted((j for j in jobs if j != job_id and (rid, j) in self._ttl), key=lambda j: jobs[j][0]):
            if freed >= need:
                break
            t, hashes = jobs[j]
            if now - t <= self._ttl[(rid, j)] / 2:
                break  # the rest are more recent still
            freed += len(hashes)
            self._unpin_job(rid, j, out)
        return freed

    def _unpin_job(self, rid: int, job_id: str, out: list[CacheAction]) -> None:
        self._ttl.pop((rid, job_id), None)
        got = self.pins.get(rid, {}).pop(job_id, None)
        if got is not None and got[1]:
            self.pinned_blocks[rid] -= len(got[1])
            out.append(CacheAction("unpin", rid, np.asarray(got[1], dtype=np.int64)))

    def pin_count(self, rid: int) -> int:
        """Blocks this policy holds pinned on replica ``rid``."""
        return self.pinned_blocks.get(rid, 0)

    # hooks --------------------------------------------------------------------------

    def on_finish(self, req: RequestView, replica: ReplicaView, now: float) -> list[CacheAction]:
        pred = self.pred
        pred.note_pool(req.workflow_type, req.agent_role, replica.pool)
        kv, rid = replica.kv, replica.replica_id
        bs = kv.block_size
        hinted = pred.prompt(req) is not None
        if not hinted and self.from_blocks and req.workflow_type and pred.job(req.job_id) is not None:
            # No prompt segments: follow the job by the engine's block names (a live job only,
            # so that an ended job's conversations are never kept).
            pred.block_memory.observe(req, bs, now)
            prefixes = pred.upcoming_blocks(req.job_id, req.workflow_type)
        elif not hinted or not pred.warm(req.workflow_type):
            return []
        else:
            prefixes = self._prefixes(req.job_id, bs)
        out: list[CacheAction] = []
        # Pin: leading resident blocks of likely next prompts, within budget and free share.
        # Only the difference with the job's current pins is applied (most blocks stay).
        want: dict[int, None] = {}
        seen: list[tuple[np.ndarray, int]] = []
        spans: list[tuple[Upcoming, np.ndarray, int, int]] = []
        for u, h in prefixes:
            if u.probability >= self.pin_min_prob:
                n = kv.cached_prefix_blocks(h)
                # Chains: the blocks of h already wanted are its leading blocks shared with
                # an earlier prefix (within that prefix's resident part).
                c = max((min(common_prefix(h, g), m) for g, m in seen), default=0)
                if n > c:
                    spans.append((u, h, c, n))
                seen.append((h, n))
        if hinted:
            for _, h, c, n in spans:
                want.update(dict.fromkeys(h[c:n].tolist()))
        else:
            want = self._own_blocks_first(req.workflow_type, spans, seen)
        old = self.pins.get(rid, {}).pop(req.job_id, (now, []))[1]
        self.pinned_blocks[rid] = self.pin_count(rid) - len(old)
        old_set = set(old)
        budget = int(self.pin_budget * kv.total_blocks) - self.pin_count(rid)
        if not hinted and len(want) > budget:
            budget += self._release_overdue(rid, req.job_id, len(want) - budget, now, out)
        room = _available(kv) + len(old) - int(self.min_free * kv.total_blocks)
        take = list(want)[: max(0, min(budget, room))]
        take_set = set(take)
        drop = [x for x in old if x not in take_set]
        add = [x for x in take if x not in old_set]
        if drop:
            out.append(CacheAction("unpin", rid, np.asarray(drop, dtype=np.int64)))
        if take:
            self.pins.setdefault(rid, {})[req.job_id] = (now, take)
            self.pinned_blocks[rid] = self.pin_count(rid) + len(take)
            if not hinted:
                self._ttl[(rid, req.job_id)] = self._gap_ttl(req.workflow_type, spans)
            hold = self._ttl.get((rid, req.job_id), self.pin_ttl_s)
            self._expiry[rid] = min(self._expiry.get(rid, float("inf")), now + hold)
        else:
            self._ttl.pop((rid, req.job_id), None)
        if add:
            arr = np.asarray(add, dtype=np.int64)
            out.append(CacheAction("pin", rid, arr))
            if self.offload:
                out.append(CacheAction("offload", rid, arr))
        # Demote: the finished call's blocks no likely next prompt of the job contains. Hashes
        # are chained, so the call's blocks a prefix contains are exactly the leading blocks
        # the two chains share: the reuse of block i sums the probabilities of the prefixes
        # whose common part with the call's chain goes past i.
        if self.demote:
            full = req.block_hashes
            start = self._shared_blocks(req, bs) if hinted else self._shared_by_names(req)
            hs = full[start:]
            reuse = np.zeros(len(hs))
            for u, h in prefixes:
                m = common_prefix(full, h) - start
                if m > 0:
                    reuse[:m] += u.probability
            low = hs[reuse < self.demote_max_prob]
            if len(low):
                out.append(CacheAction("demote", rid, low))
        return out

    def _shared_blocks(self, req: RequestView, block_size: int) -> int:
        """Leading blocks of the call's prompt made of instructions shared across jobs."""
        segs = self.pred.prompt(req)
        if segs is None:
            return len(req.block_hashes)  # unknown content: never release early
        shared = self.pred.shared_keys
        tokens = 0
        for key, _, n in segs.tolist():
            if key not in shared:
                break
            tokens += n
        return tokens // block_size

    def _own_blocks_first(self, workflow_type: str, spans: list[tuple[Upcoming, np.ndarray, int, int]],
                          seen: list[tuple[np.ndarray, int]]) -> dict[int, None]:
        """Blocks to pin, each conversation's own blocks before the leading blocks it shares.

        A budget too small for every predicted prefix is best spent where LRU loses blocks:
        an idle agent's own tail. The leading blocks it shares with the role's instructions
        or with another predicted call of the job are read by other calls and stay warm
        without a pin; they come after every own tail.
        """
        mem = self.pred.block_memory
        tails: dict[int, None] = {}
        heads: dict[int, None] = {}
        for u, h, c, n in spans:
            shared = mem.shared_blocks(workflow_type, u.role, h)
            for g, m in seen:
                if g is not h:
                    shared = max(shared, min(common_prefix(h, g), m))
            own = min(max(c, shared), n)
            tails.update(dict.fromkeys(h[own:n].tolist()))
            heads.update(dict.fromkeys(h[c:own].tolist()))
        tails.update(heads)
        return tails

    def _shared_by_names(self, req: RequestView) -> int:
        """Leading blocks of the call that are its role's learned instructions (all when unknown)."""
        mem = self.pred.block_memory
        if not len(mem.instructions(req.workflow_type, req.agent_role)):
            return len(req.block_hashes)  # instructions not learned yet: never release early
        return mem.shared_blocks(req.workflow_type, req.agent_role, req.block_hashes)

    def on_tick(self, replicas: Sequence[ReplicaView], now: float) -> list[CacheAction]:
        pred = self.pred
        out: list[CacheAction] = []
        by_pool: dict[str, list[ReplicaView]] = {}
        for r in replicas:
            by_pool.setdefault(r.pool, []).append(r)
        for pool, rs in by_pool.items():
            pred.note_idle(pool, sum(1 for r in rs if r.num_running + r.num_waiting <= 2) / len(rs))
        live = {r.replica_id: r for r in replicas}
        if len(self._hash_memo) > self._memo_cap:  # forget prefixes of ended jobs
            self._hash_memo = {k: v for k, v in self._hash_memo.items() if pred.job(str(k[0])) is not None}
            self._precomputed = {k for k in self._precomputed if pred.job(k[0]) is not None}
            self._memo_cap = max(4096, 2 * len(self._hash_memo))
        ended = pred.jobs_ended_count
        rescan = ended != self._ended_seen
        self._ended_seen = ended
        for rid in list(self.pins):
            jobs = self.pins[rid]
            r = live.get(rid)
            # Only when a job ended or a pin may have outlived its hold time (the scan is
            # per pinned job; a loaded engine ticks every step).
            if rescan or now > self._expiry.get(rid, -1.0):
                ttl = self._ttl
                for job_id in [j for j, (t, _) in jobs.items()
                               if pred.job(j) is None or now - t > ttl.get((rid, j), self.pin_ttl_s)]:
                    self._unpin_job(rid, job_id, out)
                self._expiry[rid] = min((t + ttl.get((rid, j), self.pin_ttl_s) for j, (t, _) in jobs.items()),
                                        default=float("inf"))
            if r is not None:
                kv = r.kv
                floor = int(self.min_free * kv.total_blocks)
                # Pressure: free + evictable below the floor; release the oldest pins first.
                avail = _available(kv) + sum(len(a.hashes) for a in out if a.replica_id == rid and a.kind == "unpin")
                if avail < floor:
                    for job_id in sorted(jobs, key=lambda j: jobs[j][0]):
                        if avail >= floor:
                            break
                        avail += len(jobs[job_id][1])
                        self._unpin_job(rid, job_id, out)
        if self.prefetch or self.precompute:
            out.extend(self._warm_ahead(replicas))
        return out

    def _warm_ahead(self, replicas: Sequence[ReplicaView]) -> list[CacheAction]:
        """Prefetch host blocks and precompute uncached predicted prefixes on idle replicas."""
        pred = self.pred
        idle = [r for r in replicas if r.state == "up" and r.num_running == 0 and r.num_waiting == 0]
        if not idle:
            return []
        out: list[CacheAction] = []
        busy: set[int] = set()
        for job_id, info in list(pred.jobs.items()):
            if not pred.warm(info.workflow_type):
                continue
            for u in pred.upcoming(job_id) or ():
                if u.probability < self.precompute_min_prob or not len(u.prefix):
                    continue
                pool = pred.role_pool.get((info.workflow_type, u.role))
                cands = [r for r in idle if r.pool == pool and r.replica_id not in busy]
                if not cands:
                    continue
                r = cands[0]
                key = (job_id, r.replica_id, int(u.prefix[:, 2].sum()))
                if key in self._precomputed:
                    continue
                self._precomputed.add(key)
                h = self._hashes(job_id, u, r.kv.block_size)
                if any(x.kv.cached_prefix_blocks(h) >= len(h) for x in replicas if x.pool == pool):
                    continue  # already resident somewhere the router can send the call
                busy.add(r.replica_id)
                if self.prefetch:
                    out.append(CacheAction("prefetch", r.replica_id, h))
                missing = (len(h) - r.kv.cached_prefix_blocks(h)) * r.kv.block_size
                if self.precompute and missing >= self.precompute_min_tokens:
                    out.append(CacheAction("precompute", r.replica_id, segments=u.prefix))
            if len(busy) == len(idle):
                break
        return out
