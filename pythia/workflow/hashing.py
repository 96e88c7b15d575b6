"""Stable 63-bit content keys.

Prompt content is never stored as text. A prompt is a list of *segments*, each a slice of
a virtual token stream named by a 63-bit key; equal keys mean equal tokens. Keys must be
stable across processes and platforms (Python's ``hash`` is salted per process), so they
come from BLAKE2b for names and from SplitMix64 for mixing integers.
"""

from __future__ import annotations

import hashlib

import numpy as np

MASK63 = (1 << 63) - 1
_MASK64 = (1 << 64) - 1


def stable_key(*parts: object) -> int:
    """A 63-bit key from the string forms of ``parts`` (deterministic across runs)."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\x1f")
    return int.from_bytes(h.digest(), "little") & MASK63


def mix(a: int, b: int) -> int:
    """SplitMix64 finaliser of ``a`` combined with ``b``, reduced to 63 bits."""
    z = (a * 0x9E3779B97F4A7C15 + b + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & MASK63


def mix_array(a: int, b: np.ndarray) -> np.ndarray:
    """Vectorised :func:`mix` of one scalar ``a`` with every element of ``b``."""
    with np.errstate(over="ignore"):
        z = np.uint64((a * 0x9E3779B97F4A7C15) & _MASK64) + b.astype(np.uint64) + np.uint64(
            0x632BE59BD9B4E019
        )
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z & np.uint64(MASK63)).astype(np.int64)
