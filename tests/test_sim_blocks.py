"""Chained block hashes from prompt segments."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pythia.workflow.blocks import block_hashes, merge_segments, sequence_hashes
from pythia.workflow.hashing import mix
from pythia.workflow.trace import segments

seg_lists = st.lists(
    st.tuples(st.integers(1, 5), st.integers(0, 50), st.integers(1, 70)), min_size=1, max_size=8
)


def split_randomly(segs: np.ndarray, cuts: list[int]) -> np.ndarray:
    """The same content with each segment cut into two pieces where a cut falls inside it."""
    rows = []
    for (k, o, t), c in zip(segs.tolist(), cuts + [0] * len(segs)):
        c = c % t
        if c:
            rows += [(k, o, c), (k, o + c, t - c)]
        else:
            rows.append((k, o, t))
    return segments(rows)


@settings(max_examples=50, deadline=None)
@given(seg_lists, st.lists(st.integers(0, 100), max_size=8), st.sampled_from([1, 4, 16]))
def test_representation_does_not_change_hashes(rows, cuts, bs):
    segs = segments(rows)
    assert np.array_equal(block_hashes(segs, bs), block_hashes(split_randomly(segs, cuts), bs))
    assert len(block_hashes(segs, bs)) == int(segs[:, 2].sum()) // bs


@settings(max_examples=50, deadline=None)
@given(seg_lists, st.integers(0, 10_000), st.sampled_from([1, 4, 16]))
def test_a_changed_token_breaks_the_chain_from_its_block(rows, pos, bs):
    segs = segments(rows)
    total = int(segs[:, 2].sum())
    pos = pos % total
    # Replace the token at ``pos`` by a token of another stream.
    out, start = [], 0
    for k, o, t in segs.tolist():
        if start <= pos < start + t:
            i = pos - start
            if i:
                out.append((k, o, i))
            out.append((999, 7, 1))
            if t - i - 1:
                out.append((k, o + i + 1, t - i - 1))
        else:
            out.append((k, o, t))
        start += t
    a, b = block_hashes(segs, bs), block_hashes(segments(out), bs)
    first = pos // bs
    assert np.array_equal(a[:first], b[:first])
    assert not np.any(a[first:] == b[first:])


def test_shared_prefix_shares_hashes_and_output_extends_the_chain():
    system = (42, 0, 100)
    a = block_hashes(segments([system, (1, 0, 60)]), 16)
    b = block_hashes(segments([system, (2, 0, 60)]), 16)
    assert np.array_equal(a[:6], b[:6]) and a[6] != b[6]
    prompt, out = segments([system]), segments([(7, 0, 30)])
    assert np.array_equal(sequence_hashes(prompt, out, 16), block_hashes(segments([system, (7, 0, 30)]), 16))


def test_merge_and_single_piece_content_id():
    segs = segments([(3, 0, 10), (3, 10, 6), (4, 0, 16)])
    assert merge_segments(segs).tolist() == [[3, 0, 16], [4, 0, 16]]
    assert mix(3, 0) == mix(3, 0)  # block ids come from the stable SplitMix64 mix


seq_pairs = st.lists(st.tuples(
    st.lists(st.tuples(st.integers(1, 4), st.integers(0, 40), st.integers(1, 60)), max_size=6),
    st.lists(st.tuples(st.integers(1, 4), st.integers(0, 40), st.integers(1, 60)), max_size=2),
), max_size=8)


@settings(max_examples=100, deadline=None)
@given(seq_pairs, st.sampled_from([1, 4, 16]))
def test_hashing_many_sequences_at_once_equals_one_by_one(pairs, bs):
    from pythia.workflow.blocks import sequence_hashes_many

    seqs = [(segments(p), segments(o)) for p, o in pairs]
    many = sequence_hashes_many(seqs, bs)
    assert len(many) == len(seqs)
    for (p, o), h in zip(seqs, many):
        assert np.array_equal(h, sequence_hashes(p, o, bs))
