"""A bounded regular expression summarising an automaton's main paths.

Notation (see ``docs/profiler.md``)::

    planner explorer<3,4>{3,24} engineer<3,6>{2,16} reviewer verifier (engineer<3,6>{2,16} reviewer verifier){0,2}

- ``role`` is one stage of the workflow: calls of that role;
- ``<a,b>`` after a role: the stage runs ``a`` to ``b`` parallel instances (fan-out width);
  absent when always 1; ``<a>`` when always ``a``;
- ``{a,b}`` after a role (and after ``<..>``): each instance makes ``a`` to ``b`` consecutive
  calls (its repetition count); absent when always 1;
- ``( x | y ){m,n}``: ``m`` to ``n`` further passes through any of the loop bodies ``x``, ``y``
  (retry loops), in any order;
- ``( x | y )`` without a count: exactly one of the alternatives.

Ranges are the central ``1 - prune_threshold`` of the observed distribution (rarer values
are left out, as rare transitions are pruned). Paths are enumerated best-first from
``<start>`` over the pruned automaton, keeping those at least ``min_path_prob`` likely.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pythia.profiler.pfa import CompiledPFA

MAX_PATHS = 48
MAX_DEPTH = 64


@dataclass(slots=True)
class Token:
    """One stage of a path: a role with its width and repetition ranges."""

    role: str
    width: tuple[int, int]
    runs: tuple[int, int]

    def merge(self, other: "Token") -> None:
        """Widen the ranges to cover ``other`` (same role)."""
        self.width = (min(self.width[0], other.width[0]), max(self.width[1], other.width[1]))
        self.runs = (min(self.runs[0], other.runs[0]), max(self.runs[1], other.runs[1]))

    def __str__(self) -> str:
        out = self.role
        for (lo, hi), (op, cl) in ((self.width, "<>"), (self.runs, "{}")):
            if (lo, hi) != (1, 1):
                out += f"{op}{lo}{cl}" if lo == hi else f"{op}{lo},{hi}{cl}"
        return out


def best_paths(pfa: "CompiledPFA", min_path_prob: float) -> list[tuple[float, list[Token]]]:
    """The most likely complete paths from ``<start>`` to ``<end>``, best first."""
    from pythia.profiler.pfa import END_ID, START_ID

    heap: list[tuple[float, int, int, tuple[int, ...]]] = [(-1.0, 0, START_ID, ())]
    done: list[tuple[float, tuple[int, ...]]] = []
    tie = 0
    while heap and len(done) < MAX_PATHS:
        negp, _, s, seq = heapq.heappop(heap)
        if s == END_ID:
            done.append((-negp, seq))
            continue
        if len(seq) >= MAX_DEPTH:
            continue
        for t in range(pfa.n_states):
            q = pfa.P_exit[s, t]
            if q <= 0 or -negp * q < min_path_prob:
                continue
            tie += 1
            heapq.heappush(heap, (negp * q, tie, t, seq + ((s << 16) | t,)))
    out: list[tuple[float, list[Token]]] = []
    for p, seq in done:
        toks = []
        for code in seq:
            s, t = code >> 16, code & 0xFFFF
            if t == END_ID:
                continue
            toks.append(Token(pfa.name(t), pfa.width_range(s, t), pfa.run_range(t)))
        out.append((p, toks))
    return out


def _same(a: list[Token], b: list[Token]) -> bool:
    return len(a) == len(b) and all(x.role == y.role for x, y in zip(a, b))


def _parse(rem: list[Token], blocks: list[list[Token]]) -> list[int] | None:
    """Split ``rem`` into a sequence of ``blocks`` (by role), or ``None``."""
    memo: dict[int, list[int] | None] = {}

    def go(i: int) -> list[int] | None:
        if i == len(rem):
            return []
        if i in memo:
            return memo[i]
        memo[i] = None
        for b, blk in enumerate(blocks):
            if _same(rem[i : i + len(blk)], blk):
                tail = go(i + len(blk))
                if tail is not None:
                    memo[i] = [b, *tail]
                    break
        return memo[i]

    return go(0)


def _fmt(tokens: list[Token]) -> str:
    return " ".join(str(t) for t in tokens)


def compress(paths: list[list[Token]]) -> str:
    """A bounded regular expression matching every path in ``paths``."""
    if not paths:
        return ""
    base = min(paths, key=len)
    base = [Token(t.role, t.width, t.runs) for t in base]
    if all(_same(p[: len(base)], base) for p in paths):
        for p in paths:
            for a, b in zip(base, p):
                a.merge(b)
        blocks: list[list[Token]] = []
        reps = 0
        for rem in sorted((p[len(base) :] for p in paths if len(p) > len(base)), key=len):
            parsed = _parse(rem, blocks)
            if parsed is None:
                blocks.append([Token(t.role, t.width, t.runs) for t in rem])
                parsed = [len(blocks) - 1]
            else:  # widen the blocks' ranges to the occurrences just parsed
                i = 0
                for b in parsed:
                    for tok, occ in zip(blocks[b], rem[i : i + len(blocks[b])]):
                        tok.merge(occ)
                    i += len(blocks[b])
            reps = max(reps, len(parsed))
        if not blocks:
            return _fmt(base)
        body = " | ".join(_fmt(b) for b in blocks)
        return f"{_fmt(base)} ({body}){{0,{reps}}}" if reps > 1 else f"{_fmt(base)} ({body}){{0,1}}"
    # Paths diverge before the shortest one ends: common prefix, alternatives, common suffix.
    pre = 0
    while all(len(p) > pre and p[pre].role == paths[0][pre].role for p in paths):
        pre += 1
    suf = 0
    while all(len(p) - pre > suf and p[len(p) - 1 - suf].role == paths[0][len(paths[0]) - 1 - suf].role for p in paths):
        suf += 1
    alts: list[str] = []
    for p in paths:
        mid = _fmt(p[pre : len(p) - suf]) or "()"
        if mid not in alts:
            alts.append(mid)
    parts = [_fmt(paths[0][:pre]), f"({' | '.join(alts)})", _fmt(paths[0][len(paths[0]) - suf :])]
    return " ".join(x for x in parts if x)


def summarise(pfa: "CompiledPFA", min_path_prob: float) -> str:
    """The bounded regular expression of ``pfa``'s paths at least ``min_path_prob`` likely."""
    return compress([toks for _, toks in best_paths(pfa, min_path_prob)])
