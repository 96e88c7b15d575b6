"""Chained KV-block hashes of a token sequence given as segments.

An engine with prefix caching (vLLM's automatic prefix caching, SGLang's radix cache) reuses
a KV block only when the *whole* prefix up to and including that block is equal. This module
turns a sequence described by segments (see :mod:`pythia.workflow.trace`) into one 63-bit
hash per full block with exactly that property:

- equal whole-prefix content gives an equal hash (up to 64-bit collisions);
- the representation does not matter: two adjacent segments with the same key and
  contiguous offsets hash the same as the single segment covering both.

Only full blocks get a hash, as in vLLM (a partial tail block is never shared).

How. Segments are first merged into maximal runs of one stream. A block lying inside one
run has the content id ``mix(key, offset)`` of its first token (the block size is fixed for
one engine, so the first token names the whole block). A block straddling run boundaries
folds its pieces with :func:`~pythia.workflow.hashing.mix`; there is at most one such block
per boundary, so this per-block loop is short. The chain ``h_i = H(h_{i-1}, c_i)`` is a
polynomial prefix hash ``S_i = sum_{j<=i} c_j * P^(i-j) mod 2^64`` computed without a loop
as ``P^i * cumsum(c_j * P^-j)`` (``P`` odd, hence invertible modulo ``2^64``), followed by a
SplitMix64 finaliser of ``(S_i, i)`` so that the hash also depends on the block position.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Sequence

import numpy as np

from pythia.workflow.hashing import MASK63, mix

_GOLD = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0x632BE59BD9B4E019)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK63_U = np.uint64(MASK63)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)

# Base of the polynomial chain: an odd 64-bit constant (odd => invertible mod 2^64).
_P = 0xD6E8FEB86659FD93
_P_INV = pow(_P, -1, 1 << 64)
_pow_cache: dict[str, np.ndarray] = {}


def mix_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise :func:`~pythia.workflow.hashing.mix` of two int64/uint64 arrays (63-bit result)."""
    # In place on one buffer: these arrays hold one element per block, and temporaries and
    # per-call overhead (not the arithmetic) dominate. Array products wrap modulo 2^64 silently.
    z = a.astype(np.uint64)
    z *= _GOLD
    z += b.view(np.uint64) if b.dtype == np.int64 else b.astype(np.uint64, copy=False)
    z += _C1
    t = z >> _S30
    z ^= t
    z *= _M1
    np.right_shift(z, _S27, out=t)
    z ^= t
    z *= _M2
    np.right_shift(z, _S31, out=t)
    z ^= t
    z &= _MASK63_U
    return z.view(np.int64)


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``P^i`` and ``P^-i`` mod 2^64 for ``i < n`` (cached and grown by doubling)."""
    have = _pow_cache.get("p")
    if have is None or len(have) < n:
        size = max(1024, 1 << max(0, (n - 1).bit_length()))
        p = np.empty(size, dtype=np.uint64)
        q = np.empty(size, dtype=np.uint64)
        x = y = 1
        # A Python loop once per doubling; the products must wrap modulo 2^64 exactly.
        for i in range(size):
            p[i] = x
            q[i] = y
            x = (x * _P) & 0xFFFFFFFFFFFFFFFF
            y = (y * _P_INV) & 0xFFFFFFFFFFFFFFFF
        _pow_cache["p"], _pow_cache["q"] = p, q
    return _pow_cache["p"][:n], _pow_cache["q"][:n]


def _positions(n: int) -> np.ndarray:
    """``1..n`` as uint64 (a view of a cached, growing array)."""
    have = _pow_cache.get("i")
    if have is None or len(have) < n:
        have = np.arange(1, max(1024, 1 << max(0, n.bit_length())) + 1, dtype=np.uint64)
        _pow_cache["i"] = have
    return have[:n]


def merge_segments(segs: np.ndarray) -> np.ndarray:
    """Merge adjacent segments that continue the same stream (same key, contiguous offsets)."""
    if len(segs) <= 1:
        return segs
    key, off, tok = segs[:, 0], segs[:, 1], segs[:, 2]
    cont = (key[1:] == key[:-1]) & (off[1:] == off[:-1] + tok[:-1])
    if not cont.any():
        return segs
    starts = np.flatnonzero(np.concatenate(([True], ~cont)))
    out = segs[starts].copy()
    out[:, 2] = np.add.reduceat(tok, starts)
    return out


def block_content_ids(segs: np.ndarray, block_size: int) -> np.ndarray:
    """One content id per full block of the sequence ``segs`` (not chained)."""
    segs = merge_segments(np.asarray(segs, dtype=np.int64).reshape(-1, 3))
    if len(segs) == 0:
        return np.empty(0, dtype=np.int64)
    tok = segs[:, 2]
    ends = np.cumsum(tok)
    starts = ends - tok
    n_blocks = int(ends[-1]) // block_size
    if n_blocks == 0:
        return np.empty(0, dtype=np.int64)
    content = np.empty(n_blocks, dtype=np.int64)
    # Blocks inside one run: first full block index and one past the last, per run.
    first = -(-starts // block_size)
    last = np.minimum(ends // block_size, n_blocks)
    count = np.maximum(last - first, 0)
    if count.sum():
        run = np.repeat(np.arange(len(segs)), count)
        blk = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count) + first[run]
        content[blk] = mix_pairs(segs[run, 0], segs[run, 1] + blk * block_size - starts[run])
    # Blocks that straddle a run boundary: fold their pieces one block at a time.
    inner = starts[1:]
    cut = inner % block_size != 0
    if not cut.any():
        return content
    straddle = sorted(set((inner[cut] // block_size).tolist()))
    for b in straddle:
        if b >= n_blocks:
            break
        lo, hi = b * block_size, (b + 1) * block_size
        i = int(np.searchsorted(ends, lo, side="right"))
        h = 0x5EED
        while i < len(segs) and starts[i] < hi:
            a = max(lo, int(starts[i]))
            e = min(hi, int(ends[i]))
            piece_off = int(segs[i, 1]) + a - int(starts[i])
            h = mix(mix(h, int(segs[i, 0])), (piece_off << 20) ^ (e - a))
            i += 1
        content[b] = h
    return content


def chain_hashes(content: np.ndarray) -> np.ndarray:
    """Chained 63-bit hashes: element ``i`` depends on ``content[0..i]`` and on ``i``."""
    n = len(content)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    p, q = _powers(n)
    s = content.astype(np.uint64)
    s *= q
    np.cumsum(s, out=s)
    s *= p
    return mix_pairs(s, _positions(n))


def block_hashes(segs: np.ndarray, block_size: int) -> np.ndarray:
    """Chained hashes of the full blocks of the sequence ``segs`` (shape ``(n, 3)``)."""
    return chain_hashes(block_content_ids(segs, block_size))


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Number of leading blocks two hash chains share.

    Chained hashes agree at block ``i`` only if the whole prefix through ``i`` is equal, so
    this is also the number of blocks of ``a`` that occur anywhere in ``b`` (up to 64-bit
    collisions).
    """
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = a[:n] != b[:n]
    return int(diff.argmax()) if diff.any() else n


def sequence_hashes(prompt: np.ndarray, output: np.ndarray, block_size: int) -> np.ndarray:
    """Chained block hashes of prompt followed by output, as an engine caches them."""
    if len(output) == 0:
        return block_hashes(prompt, block_size)
    return block_hashes(np.concatenate([prompt, output]), block_size)


def sequence_hashes_many(seqs: Sequence[tuple[np.ndarray, np.ndarray]], block_size: int) -> list[np.ndarray]:
    """:func:`sequence_hashes` of many ``(prompt, output)`` pairs at once (the same values).

    One call costs a few dozen numpy operations whatever the length, so hashing short
    sequences one by one is dominated by per-call overhead; here the work is vectorised
    across sequences (segmented sums restart at each sequence) and only blocks straddling a
    run boundary are folded one at a time, as in :func:`block_content_ids`.
    """
    n_seq = len(seqs)
    if n_seq == 0:
        return []
    parts: list[np.ndarray] = []
    lens = np.empty(n_seq, dtype=np.int64)
    for i, (prompt, output) in enumerate(seqs):
        p = np.asarray(prompt, dtype=np.int64).reshape(-1, 3)
        o = np.asarray(output, dtype=np.int64).reshape(-1, 3)
        parts.append(p)
        parts.append(o)
        lens[i] = len(p) + len(o)
    segs = np.concatenate(parts) if parts else np.empty((0, 3), dtype=np.int64)
    sid = np.repeat(np.arange(n_seq), lens)
    if len(segs) > 1:  # merge_segments within each sequence
        key, off, tok = segs[:, 0], segs[:, 1], segs[:, 2]
        cont = (sid[1:] == sid[:-1]) & (key[1:] == key[:-1]) & (off[1:] == off[:-1] + tok[:-1])
        if cont.any():
            keep = np.flatnonzero(np.concatenate(([True], ~cont)))
            merged = segs[keep].copy()
            merged[:, 2] = np.add.reduceat(tok, keep)
            segs, sid = merged, sid[keep]
    bs = block_size
    tok = segs[:, 2]
    cum = np.concatenate(([0], np.cumsum(tok)))
    seq_lo = np.searchsorted(sid, np.arange(n_seq), side="left")
    seq_hi = np.searchsorted(sid, np.arange(n_seq), side="right")
    nblk = (cum[seq_hi] - cum[seq_lo]) // bs
    boff = np.concatenate(([0], np.cumsum(nblk)))
    total = int(boff[-1])
    content = np.empty(total, dtype=np.int64)
    if total:
        ends = cum[1:] - cum[seq_lo][sid]  # within each sequence
        starts = ends - tok
        first = -(-starts // bs)
        last = np.minimum(ends // bs, nblk[sid])
        count = np.maximum(last - first, 0)
        n_in = int(count.sum())
        if n_in:
            run = np.repeat(np.arange(len(segs)), count)
            blk = np.arange(n_in) - np.repeat(np.cumsum(count) - count, count) + first[run]
            content[boff[sid[run]] + blk] = mix_pairs(segs[run, 0], segs[run, 1] + blk * bs - starts[run])
        cut = np.flatnonzero(starts % bs != 0)  # a sequence's first run starts at 0: never cut
        if len(cut):
            # Few blocks (about one per sequence): plain Python on lists beats numpy scalars.
            keys, offs = segs[:, 0].tolist(), segs[:, 1].tolist()
            st_l, en_l, sid_l = starts.tolist(), ends.tolist(), sid.tolist()
            lo_l, hi_l, nb_l, bo_l = seq_lo.tolist(), seq_hi.tolist(), nblk.tolist(), boff.tolist()
            done: set[tuple[int, int]] = set()
            for j in cut.tolist():
                sq, b = sid_l[j], st_l[j] // bs
                if b >= nb_l[sq] or (sq, b) in done:
                    continue
                done.add((sq, b))
                lo, hi = b * bs, (b + 1) * bs
                i = bisect_right(en_l, lo, lo_l[sq], hi_l[sq])
                end_i = hi_l[sq]
                h = 0x5EED
                while i < end_i and st_l[i] < hi:
                    a = max(lo, st_l[i])
                    e = min(hi, en_l[i])
                    h = mix(mix(h, keys[i]), ((offs[i] + a - st_l[i]) << 20) ^ (e - a))
                    i += 1
                content[bo_l[sq] + b] = h
        # Chain each sequence: P^i * (segmented prefix sums of c_j P^-j), i local to the sequence.
        pos = np.arange(total) - np.repeat(boff[:-1], nblk)
        p, q = _powers(int(nblk.max()))
        x = content.astype(np.uint64)
        x *= q[pos]
        np.cumsum(x, out=x)
        prev = np.concatenate((np.zeros(1, dtype=np.uint64), x))[boff[:-1]]
        x -= np.repeat(prev, nblk)  # wraps modulo 2^64 like the sums themselves
        x *= p[pos]
        content = mix_pairs(x, (pos + 1).astype(np.uint64))
    bo = boff.tolist()
    return [content[bo[i]:bo[i + 1]].copy() for i in range(n_seq)]  # own arrays, as sequence_hashes
