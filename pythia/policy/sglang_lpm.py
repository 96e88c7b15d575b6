"""SGLang's longest-prefix-match scheduling (``--schedule-policy lpm``).

Before each prefill batch SGLang matches every waiting request against its radix cache and
sorts the waiting queue by the matched prefix length, longest first (a stable sort, so equal
matches keep their order). When more than 128 requests wait it skips the matching and keeps
the queue as it is (FCFS for the new arrivals), because matching every request each step
costs too much. Preemption (SGLang's retraction) takes the request that has decoded the
least and has the longest prompt; the engine model here keeps vLLM's last-admitted victim,
which the scheduling policy can only name, so :meth:`SGLangLPM.victim` returns the running
call with the fewest output tokens (longest prompt on ties).

The queue needs the replica's KV view to match prefixes: a host hands it over by calling
``attach(replica)`` once after :meth:`SGLangLPM.new_queue`. A queue never attached orders
calls first-come first-served.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from pythia.policy.base import SchedulingPolicy, WaitingQueue
from pythia.policy.baseline_common import positive
from pythia.policy.views import ReplicaView, RequestView


class LPMQueue(WaitingQueue):
    """Waiting calls sorted by their cached prompt prefix on this replica, longest first."""

    __slots__ = ("_q", "_replica", "max_sorted")

    def __init__(self, max_sorted: int = 128) -> None:
        self._q: list[RequestView] = []
        self._replica: ReplicaView | None = None
        self.max_sorted = max_sorted

    def attach(self, replica: ReplicaView) -> None:
        """The replica whose KV cache the prefix matches read."""
        self._replica = replica

    def matched_blocks(self, req: RequestView) -> int:
        """Leading prompt blocks of ``req`` resident in the attached replica's cache."""
        if self._replica is None:
            return 0
        kv = self._replica.kv
        limit = (req.prompt_tokens - 1) // kv.block_size  # the last prompt token is always computed
        return kv.cached_prefix_blocks(req.block_hashes[:limit]) if limit > 0 else 0

    def add(self, req: RequestView) -> None:
        self._q.append(req)

    def prepend(self, req: RequestView) -> None:
        self._q.insert(0, req)

    def peek(self) -> RequestView:
        return self._q[0]

    def pop(self) -> RequestView:
        return self._q.pop(0)

    def remove(self, req: RequestView) -> None:
        self._q.remove(req)

    def refresh(self, now: float) -> None:
        if self._replica is None or len(self._q) > self.max_sorted or len(self._q) < 2:
            return
        match = self.matched_blocks
        self._q.sort(key=lambda r: -match(r))

    def __len__(self) -> int:
        return len(self._q)

    def __iter__(self) -> Iterator[RequestView]:
        return iter(self._q)


class SGLangLPM(SchedulingPolicy):
    """Longest cached prefix first, re-sorted every iteration (the cache changes as calls run).

    Args:
        max_sorted: above this many waiting calls the queue is not re-sorted (SGLang: 128).
    """

    name = "sglang_lpm"
    dynamic = True  # the order follows the cache, which changes every iteration

    def __init__(self, max_sorted: int = 128) -> None:
        self.max_sorted = positive(self.name, "max_sorted", max_sorted, integer=True)

    def new_queue(self) -> WaitingQueue:
        return LPMQueue(self.max_sorted)

    def victim(self, running: Sequence[RequestView], now: float) -> RequestView:
        # SGLang retracts the request with the fewest decoded tokens, longest prompt first.
        return min(reversed(running), key=lambda r: (r.num_output_tokens, -r.prompt_tokens))
