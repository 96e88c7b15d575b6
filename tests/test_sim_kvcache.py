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


ops = st.lists(st.tuples(st.sampled_from(["admit", "free", "pin", "unpin", "demote", "offload", "prefetch"]),
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
