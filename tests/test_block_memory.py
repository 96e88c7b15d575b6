"""Learning from block names alone (no prompt segments): what is learned, when it acts, what is forgotten."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pythia.errors import PythiaInputError
from pythia.policy.block_memory import BlockMemory
from pythia.policy.pythia_cache import PythiaCache
from pythia.policy.pythia_predictor import ProfilerPredictor, PythiaPredictor
from pythia.workflow.blocks import common_prefix
from tests.test_policy_pythia import KV, Rep, Req

BS = 16


def _blocks(*parts: tuple[int, int]) -> np.ndarray:
    """A chain of block names: ``(stream, n)`` parts; names depend on every earlier part (as chained hashes do)."""
    out, h = [], 0
    for stream, n in parts:
        for i in range(n):
            h = (h * 1_000_003 + stream * 7919 + i + 1) % (1 << 62)
            out.append(h)
    return np.asarray(out, dtype=np.int64)


def _call(job: str, agent: str, blocks: np.ndarray, prompt_blocks: int, role: str = "w", rid: int = 0) -> Req:
    """A finished call whose prompt is the first ``prompt_blocks`` blocks (the rest its output)."""
    return Req(rid, job_id=job, workflow_id=job, agent_role=role, agent_id=agent, prompt_tokens=prompt_blocks * BS,
               num_output_tokens=(len(blocks) - prompt_blocks) * BS, block_hashes=blocks)


def test_role_instructions_need_two_jobs_and_are_the_shared_prefix() -> None:
    mem = BlockMemory()
    a = _blocks((1, 6), (100, 4))  # instructions: stream 1 (6 blocks), then job a's task
    b = _blocks((1, 6), (200, 5))
    mem.observe(_call("a", "w", a, len(a)), BS)
    assert not len(mem.instructions("t", "w"))  # one job: nothing is shared yet
    mem.observe(_call("b", "w", b, len(b)), BS)
    assert mem.instructions("t", "w").tolist() == a[:6].tolist()
    assert mem.shared_blocks("t", "w", b) == 6
    # A third job of another variant does not erase what most jobs share.
    mem.observe(_call("c", "w", _blocks((9, 3)), 3), BS)
    assert mem.instructions("t", "w").tolist() == a[:6].tolist()


def test_conversation_is_prompt_plus_output_and_continuations_are_counted() -> None:
    mem = BlockMemory()
    first = _blocks((1, 4), (100, 3), (101, 2))  # 7 prompt blocks, 2 output blocks
    mem.observe(_call("a", "w1", first, 7), BS)
    assert mem.conversation("a", "w1").tolist() == first.tolist()
    assert mem.continue_probability("t", "w") == 0.5  # nothing decided yet
    assert [x[0] for x in mem.idle_agents("a")] == ["w1"]
    mem.call_issued("a", "t", "w", "w1")
    assert mem.idle_agents("a") == []  # its next call is in the engine: not idle
    nxt = np.concatenate([first, _blocks((5, 3))])  # extends the conversation after a tool result
    mem.observe(_call("a", "w1", nxt, len(nxt) - 1), BS)
    assert mem.continue_probability("t", "w") == pytest.approx(2 / 3)
    assert [x[0] for x in mem.idle_agents("a")] == ["w1"]
    mem.job_ended("a")
    assert mem.conversation("a", "w1").size == 0 and mem.describe()["conversations"] == 0
    assert mem.continue_probability("t", "w") == pytest.approx(2 / 4)  # the last call was not continued


def test_a_new_prompt_that_keeps_only_the_instructions_is_not_a_continuation() -> None:
    mem = BlockMemory()
    for j in ("x", "y"):
        mem.observe(_call(j, "r", _blocks((1, 6), (ord(j), 4)), 10), BS)
    mem.observe(_call("a", "w", _blocks((1, 6), (100, 4)), 8), BS)
    mem.observe(_call("a", "w", _blocks((1, 6), (300, 4)), 8), BS)  # same instructions, fresh task
    assert mem.continue_probability("t", "w") == pytest.approx(1 / 3)


def test_memory_stays_bounded() -> None:
    mem = BlockMemory(max_roles=5)
    for j in range(200):
        mem.observe(_call(f"j{j}", "w", _blocks((1, 4), (j + 10, 2)), 6, role=f"r{j % 20}"), BS)
        mem.job_ended(f"j{j}")
    d = mem.describe()
    assert d["roles"] == 5 and d["live_jobs"] == 0 and d["conversations"] == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(1, 6)), min_size=2, max_size=12))
def test_instructions_are_a_prefix_that_enough_sampled_jobs_share(jobs: list[tuple[int, int]]) -> None:
    mem = BlockMemory(sample_jobs=8, min_jobs=2)
    prompts = []
    for j, (shared_len, tail) in enumerate(jobs):
        p = _blocks((1, shared_len), (1000 + j, tail))
        prompts.append(p)
        mem.observe(_call(f"j{j}", "w", p, len(p)), BS)
    got = mem.instructions("t", "w")
    sample = prompts[-8:]
    if len(got):
        assert any(common_prefix(got, p) == len(got) for p in sample)  # a prefix of a sampled prompt
        carriers = sum(1 for p in sample if common_prefix(p, got) == len(got))
        assert carriers >= max(2, -(-len(sample) // 2))


# --------------------------------------------------------------------------- the cache policy on block names


def _cache(pred: PythiaPredictor | None = None, **kw: object) -> tuple[PythiaCache, PythiaPredictor]:
    pred = pred or PythiaPredictor()  # cold: never warm
    cache = PythiaCache(**kw)  # type: ignore[arg-type]
    cache.bind(pred)
    return cache, pred


def test_an_unhinted_call_pins_its_idle_conversation_while_the_model_is_cold() -> None:
    cache, pred = _cache()
    pred.job_started("a", "t", "a", 0.0)
    blocks = _blocks((1, 4), (100, 6))
    kv = KV(resident=set(blocks.tolist()), free_blocks=900, cached_blocks=100)
    req = _call("a", "w1", blocks, 8)
    acts = cache.on_finish(req, Rep(0, kv=kv), 1.0)
    pins = [a for a in acts if a.kind == "pin"]
    assert pins and pins[0].hashes.tolist() == blocks.tolist()
    assert not [a for a in acts if a.kind == "demote"]  # instructions unknown: nothing released early
    # When the job ends, its pins go at the next tick and its conversations are forgotten.
    pred.job_ended("a", 2.0)
    unpins = [a for a in cache.on_tick([Rep(0, kv=kv)], 3.0) if a.kind == "unpin"]
    assert unpins and sorted(unpins[0].hashes.tolist()) == sorted(blocks.tolist())
    assert pred.block_memory.describe()["live_jobs"] == 0


def test_block_path_is_off_for_hinted_calls_ended_jobs_and_when_disabled() -> None:
    blocks = _blocks((1, 4), (100, 6))
    kv = KV(resident=set(blocks.tolist()))
    cache, pred = _cache(from_blocks=False)
    pred.job_started("a", "t", "a", 0.0)
    assert cache.on_finish(_call("a", "w1", blocks, 8), Rep(0, kv=kv), 1.0) == []
    cache, pred = _cache()
    assert cache.on_finish(_call("gone", "w1", blocks, 8), Rep(0, kv=kv), 1.0) == []  # not a live job
    assert pred.block_memory.describe()["live_jobs"] == 0
    hinted = _call("a", "w1", blocks, 8)
    hinted.annotations["prompt"] = np.asarray([[5, 0, 128]], dtype=np.int64)
    pred.job_started("a", "t", "a", 0.0)
    assert cache.on_finish(hinted, Rep(0, kv=kv), 1.0) == []  # hinted and cold: plain LRU, as before
    with pytest.raises(PythiaInputError, match="from_blocks"):
        PythiaCache(from_blocks="yes")  # type: ignore[arg-type]


def test_learned_instructions_bound_early_release() -> None:
    cache, pred = _cache()
    for j in ("x", "y"):
        pred.job_started(j, "t", j, 0.0)
        cache.on_finish(_call(j, "w", _blocks((1, 5), (ord(j), 3)), 8), Rep(0), 1.0)
    # A role whose calls are never continued: after enough decided calls its conversations are
    # predicted dead, so the blocks past the instructions are released early and nothing is pinned.
    for j in range(25):
        pred.job_started(f"d{j}", "t", f"d{j}", 0.0)
        cache.on_finish(_call(f"d{j}", "w", _blocks((1, 5), (500 + j, 3)), 8), Rep(0), 1.0)
        pred.job_ended(f"d{j}", 1.0)
    assert pred.block_memory.continue_probability("t", "w") < cache.demote_max_prob
    pred.job_started("z", "t", "z", 0.0)
    b = _blocks((1, 5), (900, 4))
    acts = cache.on_finish(_call("z", "w", b, 8), Rep(0, kv=KV(resident=set(b.tolist()))), 2.0)
    assert not [a for a in acts if a.kind == "pin"]
    demoted = [a for a in acts if a.kind == "demote"]
    assert demoted and demoted[0].hashes.tolist() == b[5:].tolist()


def test_profiler_without_hints_reads_only_the_ids() -> None:
    with pytest.raises(PythiaInputError, match="hints"):
        ProfilerPredictor(history="none", hints="no")  # type: ignore[arg-type]
    pred = ProfilerPredictor(history="none", hints=False)
    pred.job_started("a", "t", "a", 0.0)
    req = Req(0, job_id="a", workflow_id="a", call_id=3,
              annotations={"prompt": np.asarray([[7, 0, 100]]), "deps": (1,), "parent": 1})
    pred.call_issued(req, 0.0)
    rc = pred.running["a"].calls[3]
    assert rc.prompt == [] and rc.deps == () and rc.parent is None
    assert pred.prompt(req) is None and pred.describe()["hints"] is False


def test_a_tight_pin_budget_goes_to_each_agents_own_blocks_first() -> None:
    # Two idle workers of one job share the instructions and the task (6 blocks); each has
    # 4 blocks of its own. A budget of 10 blocks takes both own tails before the shared head.
    cache, pred = _cache(pin_budget=0.01, min_free=0.0)
    pred.job_started("a", "t", "a", 0.0)
    w1 = _blocks((1, 6), (100, 4))
    w2 = np.concatenate([w1[:6], _blocks((1, 6), (200, 4))[6:]])
    kv = KV(total_blocks=1000, resident=set(w1.tolist()) | set(w2.tolist()))
    cache.on_finish(_call("a", "w1", w1, 8, rid=1), Rep(0, kv=kv), 1.0)
    acts = cache.on_finish(_call("a", "w2", w2, 8, rid=2), Rep(0, kv=kv), 2.0)
    pinned = set(cache.pins[0]["a"][1])
    assert len(pinned) == 10
    assert set(w1[6:].tolist()) <= pinned and set(w2[6:].tolist()) <= pinned
    assert [a.kind for a in acts if a.kind in ("pin", "unpin")]


def test_outputs_re_encoded_by_the_client_are_not_predicted() -> None:
    # The next prompt carries the previous prompt but not the output's blocks (the client sent
    # the answer back as text, tokenized anew): after two such continuations only the prompt
    # part of a conversation is predicted.
    mem = BlockMemory()
    prev = None
    for k in range(3):
        prompt = _blocks((1, 4), (100, 3 + 2 * k)) if prev is None else np.concatenate([prev[:-1], _blocks((50 + k, 2))])
        conv = np.concatenate([prompt, _blocks((900 + k, 2))[-1:]])  # one output block of its own
        mem.observe(_call("a", "w1", conv, len(prompt)), BS)
        prev = conv
    assert len(mem.conversation("a", "w1")) == len(prev) - 1


def test_pins_on_block_names_are_held_about_as_long_as_the_agents_stay_away() -> None:
    cache, pred = _cache()
    mem = pred.block_memory
    pred.job_started("a", "t", "a", 0.0)
    t = 0.0
    blocks = _blocks((1, 4), (100, 2))
    for k in range(4):  # the worker comes back 2 s after each of its calls
        mem.call_issued("a", "t", "w", "w1", t)
        blocks = np.concatenate([blocks, _blocks((200 + k, 2))])
        t += 1.0
        cache.on_finish(_call("a", "w1", blocks, len(blocks) - 1), Rep(0, kv=KV(resident=set(blocks.tolist()))), t)
        t += 2.0
    assert mem.gap_s("t", "w") == pytest.approx(2.0)
    assert cache._ttl[(0, "a")] == pytest.approx(4.0)  # twice the 90th percentile gap
    rep = Rep(0, kv=KV(resident=set(blocks.tolist())))
    assert not [a for a in cache.on_tick([rep], t + 1.0) if a.kind == "unpin"]  # within the hold time
    assert [a for a in cache.on_tick([rep], t + 5.0) if a.kind == "unpin"]  # the agent did not come back
    assert cache.pin_count(0) == 0


def test_a_role_never_seen_coming_back_gets_its_types_gaps() -> None:
    mem = BlockMemory()
    assert mem.gap_s("t", "planner") is None
    for k in range(3):
        mem.observe(_call(f"j{k}", "w1", _blocks((1, 4), (k, 2)), 5), BS, now=10.0 * k)
        mem.call_issued(f"j{k}", "t", "w", "w1", now=10.0 * k + 3.0)
    assert mem.gap_s("t", "w") == pytest.approx(3.0)
    assert mem.gap_s("t", "planner") == pytest.approx(3.0)  # pooled over the type's roles
    assert mem.gap_s("other", "planner") is None


def test_a_new_conversation_takes_the_budget_from_overdue_pins_of_another_job() -> None:
    cache, pred = _cache(pin_budget=0.012, min_free=0.0)  # 12 blocks of 1000
    mem = pred.block_memory
    for j in ("old", "new"):
        pred.job_started(j, "t", j, 0.0)
    for k in range(3):  # the role's agents come back 1 s after a call
        mem.observe(_call("g", "w9", _blocks((7, 2), (k, 1)), 2), BS, now=10.0 * k)
        mem.call_issued("g", "t", "w", "w9", now=10.0 * k + 1.0)
    old = _blocks((1, 2), (100, 8))
    new = _blocks((1, 2), (200, 8))
    kv = KV(total_blocks=1000, resident=set(old.tolist()) | set(new.tolist()))
    cache.on_finish(_call("old", "w1", old, 10), Rep(0, kv=kv), 100.0)
    assert cache.pin_count(0) == 10
    # Soon after, the old job's agent may still come back: the new conversation gets what is left.
    cache.on_finish(_call("new", "w1", new, 10), Rep(0, kv=kv), 100.5)
    assert len(cache.pins[0]["old"][1]) == 10 and len(cache.pins[0]["new"][1]) == 2
    # Past the role's gap the old job is overdue: its pins yield to the conversation just used.
    acts = cache.on_finish(_call("new", "w1", new, 10), Rep(0, kv=kv), 102.0)
    assert "old" not in cache.pins[0] and len(cache.pins[0]["new"][1]) == 10
    assert any(a.kind == "unpin" and set(a.hashes.tolist()) == set(old.tolist()) for a in acts)
