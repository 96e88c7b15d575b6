"""Roofline cost model and cluster presets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pythia.errors import PythiaInputError
from pythia.sim.config import cluster_presets, load_cluster
from pythia.sim.costmodel import CostModel, model_shape

MODELS = ["llama-3.1-8b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b"]


@pytest.fixture(scope="module")
def models():
    out = [CostModel(g, m, tp) for g in ("a100-80gb", "h100-80gb", "h200") for m in MODELS for tp in (1, 2, 4)]
    return out + [CostModel("cpu-2core", "tiny-llama", 1)]


batch = st.lists(st.tuples(st.integers(1, 4096), st.integers(0, 100_000)), min_size=1, max_size=20)


def counts(b):
    tokens = sum(q for q, _ in b)
    pairs = sum(q * c + q * (q + 1) // 2 for q, c in b)
    kv = sum(q + c for q, c in b)
    return tokens, len(b), len(b), pairs, kv


@settings(max_examples=40, deadline=None)
@given(batch, st.integers(0, 19), st.integers(1, 512), st.integers(0, 5000))
def test_iteration_cost_never_falls_when_tokens_grow(models, b, i, more_q, more_c):
    i %= len(b)
    grown = list(b)
    q, c = grown[i]
    grown[i] = (q + more_q, c + more_c)
    bigger = b + [(more_q, more_c)]
    for cm in models:
        base = cm.iteration_fs(*counts(b))
        assert cm.iteration_fs(*counts(grown)) >= base
        assert cm.iteration_fs(*counts(bigger)) >= base


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.integers(0, 2_000_000), st.integers(0, 400))
def test_decode_run_closed_form_equals_the_sum(models, n, ctx0, m):
    for cm in models[::5]:
        run = cm.decode_run(n, ctx0)
        assert run.total(m) == sum(cm.iteration_fs(n, n, n, ctx0 + n * j, ctx0 + n * j) for j in range(1, m + 1))
        budget = run.total(m)
        assert run.steps_within(budget, m + 5) >= m


def test_kv_capacity_is_memory_minus_weights():
    cm = CostModel("a100-80gb", "llama-3.1-8b", 1)
    shape = model_shape("llama-3.1-8b")
    assert 7.9e9 < shape.params < 8.1e9
    expected = (80 * 0.92 - 3.0) * (1 << 30) - shape.params * 2
    assert abs(cm.kv_capacity_tokens - expected / shape.kv_bytes_per_token) < 2
    # Tensor parallelism splits the weights: more room for KV.
    assert CostModel("a100-80gb", "qwen2.5-32b", 2).kv_capacity_tokens > 2 * CostModel("a100-80gb", "qwen2.5-32b", 1).kv_capacity_tokens


def test_presets_and_unknown_names():
    assert {"paper", "llama8b-x8", "long-context", "cpu-tiny"} <= set(cluster_presets())
    paper = load_cluster("paper")
    assert sum(p.replicas * p.tp for p in paper.pools) == 8
    assert paper.pool_for("Qwen/Qwen2.5-14B-Instruct").name == "qwen2.5-14b"
    with pytest.raises(PythiaInputError, match="known: qwen2.5-14b"):
        paper.pool_for("gpt-4o")
    assert load_cluster("llama8b-x8").pool_for("anything").name == "llama-3.1-8b"
    with pytest.raises(PythiaInputError, match="known: .*paper"):
        load_cluster("nope")
    with pytest.raises(PythiaInputError, match="known: .*llama-3.1-8b"):
        CostModel("a100-80gb", "gpt-5")
