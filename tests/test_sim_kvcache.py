"""The KV block pool: conservation under any sequence of operations, hits, pins, demotion, host tier."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pythia.sim.kvcache import KVCache


class Req:
    def __init__(self, hashes: list[int]) -> None:
        self.hlist = hashes
        self.kv_ref = 0
        self.kv_priv = 0


def admit(kv: KVCache, req: Req, tokens: int) -> bool:
    bs = kv.block_size
    limit = (tokens - 1) // bs
    k = kv.match(req.hlist, limit)
    need = -(-tokens // bs) - k
    if need + kv.idle_hits(req.hlist, k) > kv.available():
        return False
    kv.acquire(req, k)
    kv.take(req, need)
    kv.register(req, min(tokens // bs, len(req.hlist)))
    return True


ops = st.lists(st.tuples(st.sampled_from(["admit", "free", "pin", "unpin", "release", "demote", "offload", "prefetch"]),
                         st.integers(0, 5), st.integers(1, 200)), max_size=60)


@settings(max_examples=50, deadline=None)
@given(ops, st.integers(4, 40), st.sampled_from([0, 8]))
def test_blocks_are_conserved(seq, total, host):
    kv = KVCache(total, 4, host_blocks=host)
    # Six requests over three families of shared prefixes.
    chains = [[(r % 3) * 1000 + i for i in range(50)] for r in range(6)]
    live: dict[int, Req] = {}
    for op, r, tokens in seq:
        if op == "admit" and r not in live:
            req = Req(chains[r])
            if admit(kv, req, tokens):
                live[r] = req
        elif op == "free" and r in live:
            kv.free(live.pop(r))
        elif op == "pin":
            kv.pin(chains[r][:3])
        elif op == "unpin":
            kv.unpin(chains[r][:3])
        elif op == "release":
            pinned = sum(kv.pins.values())
            assert kv.release_pins() == pinned and not kv.pins
        elif op == "demote":
            kv.demote(chains[r][:tokens % 7])
        elif op == "offload":
            kv.offload(chains[r][:5])
        else:
            kv.prefetch(chains[r][:5])
        kv.check()
        assert kv.free_blocks + kv.cached_blocks + kv.used_blocks == total
    for req in live.values():
        kv.free(req)
    kv.check()


def test_hits_pins_and_demotion():
    kv = KVCache(10, 4)
    a = Req(list(range(100, 110)))
    assert admit(kv, a, 17)  # 5 blocks, 4 full and registered
    kv.free(a)
    assert kv.cached_blocks == 4 and kv.free_blocks == 6
    b = Req(list(range(100, 110)))
    assert kv.match(b.hlist, 10) == 4
    kv.pin([100, 101])
    assert kv.used_blocks == 2
    kv.demote([103])
    # Needing 5 new blocks evicts the demoted block first, then the LRU ones; pins survive.
    c = Req(list(range(500, 510)))
    assert admit(kv, c, 28)  # 7 blocks: 6 blank + 1 evicted
    assert 103 not in kv.ref and 100 in kv.ref and 101 in kv.ref
    kv.unpin([100, 101])
    kv.check()


def test_host_tier_keeps_evicted_blocks_and_prefetch_restores_them():
    kv = KVCache(4, 4, host_blocks=8)
    a = Req([1, 2, 3, 4])
    assert admit(kv, a, 16)
    kv.free(a)
    b = Req([9, 8, 7, 6])
    assert admit(kv, b, 16)  # evicts a's blocks to the host
    assert kv.host_blocks == 4 and kv.match([1, 2], 2) == 0
    assert kv.host_match([1, 2, 3], 0, 3) == 3
    kv.free(b)
    assert kv.prefetch([1, 2]) == 2 and kv.match([1, 2, 3], 3) == 2
    kv.check()


def _tree_chains() -> list[list[int]]:
    """Eight chains of a prefix tree: hashes are chained, so shared prefixes share hashes."""
    out = []
    for r in range(8):
        chain, h = [], 7
        for i in range(24):
            branch = (r >> (i // 8)) & 1 if i >= 4 else 0  # branch points at blocks 4, 8, 16
            h = (h * 1_000_003 + 17 * i + branch * (i + 1) * 7919) % (1 << 61)
            chain.append(h)
        out.append(chain)
    return out


def naive_match(kv: KVCache, hl: list[int], limit: int) -> int:
    n = 0
    for h in hl[:limit]:
        if h not in kv.ref:
            break
        n += 1
    return n


def random_pool_run(seed: int, total: int, host: int) -> int:
    """400 random operations on a pool; every match checked against a scan. Returns how many
    steps had resident blocks whose prefix was not resident."""
    import random

    rnd = random.Random(seed)
    kv = KVCache(total, 4, host_blocks=host)
    keys: dict[int, float] = {}
    kv.ranker = lambda hashes, times: [(keys.setdefault(h, rnd.random()), t) for h, t in zip(hashes, times)]
    kv.rank_interval_s = 0.0  # re-rank at every eviction: an arbitrary order
    chains = _tree_chains()
    live: dict[int, Req] = {}
    broken_seen = 0
    for step in range(400):
        kv.now_s = float(step)
        op = rnd.choice(["admit", "admit", "free", "pin", "unpin", "demote", "prefetch", "take", "rerank"])
        r, tokens = rnd.randrange(8), rnd.randrange(1, 97)
        chain = chains[r]
        if op == "admit" and r not in live:
            req = Req(chain)
            if admit(kv, req, tokens):
                live[r] = req
        elif op == "free" and r in live:
            kv.free(live.pop(r))
        elif op == "pin":
            kv.pin(chain[: tokens % 12])
        elif op == "unpin":
            kv.unpin(chain[: tokens % 12])
        elif op == "demote":
            kv.demote(chain[tokens % 5: tokens % 5 + 6])
        elif op == "prefetch":
            kv.offload(chain[:8])
            kv.prefetch(chain[: tokens % 16])
        elif op == "take" and r in live:
            kv.take(live[r], min(tokens % 6, kv.available()))
        elif op == "rerank":
            keys.clear()
        kv.check()  # includes the chains' parents, children and broken set
        broken_seen += bool(kv.chains.broken)
        for c in chains:
            for limit in (1, 5, 13, 24):
                assert kv.match(c, limit) == naive_match(kv, c, limit)
            assert kv.cached_prefix_blocks(c) == naive_match(kv, c, len(c))
    for req in live.values():
        kv.free(req)
    kv.check()
    return broken_seen


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(12, 60), st.sampled_from([0, 16]))
def test_prefix_match_by_bisection_equals_the_first_missing_block(seed, total, host):
    """Pins, early release and a reordered eviction leave blocks resident whose prefix is not:
    the bisection over the resident chains must still stop at the first missing block, as a
    block-by-block scan does."""
    random_pool_run(seed, total, host)


def test_the_random_pool_run_reaches_broken_chains():
    assert random_pool_run(1, 30, 0) > 0 and random_pool_run(2, 40, 16) > 0
