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


def sequence_hashes(prompt: np.ndarray, output: np.ndarray, block_size: int) -> np.ndarray:
    """Chained block hashes of prompt followed by output, as an engine caches them."""
    if len(output) == 0:
        return block_hashes(prompt, block_size)
    return block_hashes(np.concatenate([prompt, output]), block_size)
