"""System files: ``extends`` resolution, its errors, and policy parameters checked by name."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from pythia.cli import main
from pythia.errors import PythiaInputError
from pythia.policy import registry, systems
from pythia.policy.systems import EngineFlags, known_systems, load_system, parse_system

# pythia.yaml's policies and engine flags as the five variants spelled them out in full before
# they said `extends: pythia`; each variant must resolve to exactly these plus its difference.
PYTHIA_POLICIES = {
    "predictor": ("profiler", {"history": "spec", "history_seeds": [1000, 1001], "history_jobs": 100,
                               "history_dir": "workloads", "online": True, "min_jobs": 20, "quantile": 0.99,
                               "prune_threshold": 0.05, "drift": True, "type_weighting": "load",
                               "type_weight_clip": 2.0}),
    "scheduler": ("pythia", {"w_distance": 1.0, "w_unblock": 0.5, "w_aging": 1.0, "aging_scale_s": 60.0,
                             "refresh_s": 0.5}),
    "cache": ("pythia", {"pin_budget": 0.25, "min_free": 0.15, "pin_min_prob": 0.5, "pin_ttl_s": 300.0,
                         "demote": True, "demote_max_prob": 0.05, "offload": True, "prefetch": True,
                         "precompute": True, "precompute_min_prob": 0.5, "precompute_min_tokens": 256}),
    "router": ("pythia", {"epsilon": 0.2, "reserve": 0.05, "tie_band": 1.0, "idle_batch": 2, "cold_affinity_min": 0.5,
               "cold_sticky": True, "warm_sticky": True}),
    "autoscaler": ("pythia", {"interval_s": 15.0, "horizon": 4, "target_util": 0.8, "down_delay_s": 60.0,
                              "gpu_budget": 0}),
}
PYTHIA_ENGINE = EngineFlags(max_num_batched_tokens=2048, max_num_seqs=256, block_size=16, enable_prefix_caching=True,
                            enable_chunked_prefill=True, long_prefill_token_threshold=0, gpu_memory_utilization=0.92,
                            watermark=0.0, host_kv_gib=64)
VARIANTS = {
    "oracle": ({"predictor": ("oracle", {})}, {}),
    "pythia-no-cache": ({"cache": ("lru", {})}, {"host_kv_gib": 0}),
    "pythia-no-priority": ({"scheduler": ("fcfs", {})}, {}),
    "pythia-no-routing": ({"router": ("round_robin", {})}, {}),
    "pythia-no-scaling": ({"autoscaler": ("none", {})}, {}),
}


@pytest.fixture
def baselines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``baselines/`` of our own, where ``extends`` names are looked up."""
    d = tmp_path / "baselines"
    d.mkdir()
    monkeypatch.setattr(systems, "baselines_dir", lambda: d)
    return d


def _write(d: Path, name: str, text: str) -> Path:
    path = d / f"{name}.yaml"
    path.write_text(text)
    return path


def test_every_baseline_loads_and_its_parameters_fit_the_constructors():
    names = known_systems()
    assert {"vllm", "pythia", *VARIANTS} <= set(names)
    for name in names:
        s = load_system(name)
        assert s.source and s.name == name and s.path == systems.baselines_dir() / f"{name}.yaml"
        for kind, (pname, params) in s.policies.items():
            registry.check_params(registry.resolve(kind, pname), kind, pname, params, where=f"{s.path}: ")


def test_pythia_is_spelled_out_in_full():
    s = load_system("pythia")
    assert s.extends is None and s.policies == PYTHIA_POLICIES and s.engine == PYTHIA_ENGINE


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_resolve_to_what_their_files_said_in_full(name):
    policies, engine = VARIANTS[name]
    s = load_system(name)
    assert s.extends == "pythia" and s.name == name
    assert s.policies == {**PYTHIA_POLICIES, **policies}
    assert s.engine == EngineFlags(**{**asdict(PYTHIA_ENGINE), **engine})


def test_oracle_is_pythia_but_for_the_predictor():
    pythia, oracle = load_system("pythia"), load_system("oracle")
    assert oracle.policies["predictor"] == ("oracle", {})
    assert {k: v for k, v in oracle.policies.items() if k != "predictor"} == {
        k: v for k, v in pythia.policies.items() if k != "predictor"
    }
    assert oracle.engine == pythia.engine
    assert oracle.source != pythia.source and oracle.description != pythia.description  # its own


def test_extends_resolves_recursively_kind_by_kind_and_flag_by_flag(baselines: Path):
    _write(baselines, "base", """
name: base
description: the parent
source: [parent source]
extra: {note: parent}
policies:
  scheduler: {name: sglang_lpm, params: {max_sorted: 64}}
  router: {name: session_affinity, params: {vnodes: 40}}
engine: {max_num_batched_tokens: 4096, host_kv_gib: 8}
""")
    _write(baselines, "mid", """
name: mid
extends: base
source: mid source
policies:
  router: {name: prefix_aware}
engine: {block_size: 32}
""")
    leaf = _write(baselines, "leaf", """
extends: mid
source: [leaf source]
policies:
  scheduler: fcfs
engine: {host_kv_gib: 0}
""")
    s = load_system(str(leaf))
    assert s.extends == "mid" and s.name == "leaf" and s.path == leaf and load_system(leaf) == s
    assert s.policies["scheduler"] == ("fcfs", {})  # replaced whole: the parent's params are not merged in
    assert s.policies["router"] == ("prefix_aware", {})
    assert s.policies["cache"] == ("lru", {}) and s.policies["predictor"] == ("none", {})  # base's defaults
    assert s.engine == EngineFlags(max_num_batched_tokens=4096, block_size=32, host_kv_gib=0)
    assert s.source == ("leaf source",) and s.description == "" and s.extra == {}  # never inherited
    mid = load_system("mid")
    assert mid.policies["scheduler"] == ("sglang_lpm", {"max_sorted": 64}) and mid.engine.block_size == 32


def test_a_variant_still_needs_its_own_source(baselines: Path):
    _write(baselines, "base", "source: s\n")
    with pytest.raises(PythiaInputError, match="source is required"):
        parse_system({"extends": "base"}, "child.yaml", "child")


def test_unknown_extends_names_the_file_and_the_field(baselines: Path, tmp_path: Path):
    _write(baselines, "base", "source: s\n")
    child = _write(tmp_path, "child", "source: s\nextends: nothing-here\n")
    with pytest.raises(PythiaInputError) as e:
        load_system(str(child))
    msg = str(e.value)
    assert msg.startswith(f"{child}: field extends='nothing-here' names no system") and "known: base" in msg
    with pytest.raises(PythiaInputError, match="field extends='../base' must be the name of a system"):
        parse_system({"source": "s", "extends": "../base"}, "x.yaml", "x")


def test_extends_cycle_is_an_error(baselines: Path):
    _write(baselines, "a", "source: s\nextends: b\n")
    b = _write(baselines, "b", "source: s\nextends: a\n")
    with pytest.raises(PythiaInputError) as e:
        load_system("a")
    assert str(e.value).startswith(f"{b}: field extends='a' makes a cycle (a -> b -> a)")


def test_a_system_cannot_extend_itself(baselines: Path):
    a = _write(baselines, "a", "source: s\nextends: a\n")
    with pytest.raises(PythiaInputError) as e:
        load_system("a")
    assert str(e.value).startswith(f"{a}: field extends='a' makes a cycle (a -> a)")


def test_errors_in_a_parent_name_the_parent(baselines: Path):
    base = _write(baselines, "base", "source: s\nengine: {max_tokens: 1}\n")
    with pytest.raises(PythiaInputError, match=f"^{base}:2: unknown field engine.max_tokens"):
        parse_system({"source": "s", "extends": "base"}, "child.yaml", "child")


def test_bad_extends_from_the_command_line_is_one_sentence_and_status_2(tmp_path: Path, capsys):
    bad = _write(tmp_path, "bad", "source: s\nextends: no-such-system\n")
    status = main(["sim", "--system", str(bad), "--workload", "workloads/coding-assistant.yaml", "--jobs", "1",
                   "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err
    assert err.startswith(f"pythia: error: {bad}: field extends='no-such-system' names no system")


def test_unknown_parameter_names_the_field_and_the_accepted_names():
    # Refused when the file is read, before any run starts.
    with pytest.raises(PythiaInputError) as e:
        parse_system({"source": "s", "policies": {"router": {"name": "session_affinity",
                                                             "params": {"vnode": 10, "seed": 1}}}}, "x.yaml", "x")
    assert str(e.value) == ("x.yaml: field policies.router.params has unknown parameter(s) seed, vnode for router policy "
                            "'session_affinity'; accepted: vnodes")
    with pytest.raises(PythiaInputError, match="policies.cache.params has unknown parameter.* accepted: [(]none[)]"):
        registry.create("cache", "lru", {"pin_budget": 0.5})


def test_params_must_be_a_mapping():
    with pytest.raises(PythiaInputError, match="field policies.cache.params must be a mapping"):
        parse_system({"source": "s", "policies": {"cache": {"name": "lru", "params": [1]}}}, "x.yaml", "x")


def test_bad_values_keep_the_constructors_own_message():
    with pytest.raises(PythiaInputError, match="w_aging"):
        registry.create("scheduler", "pythia", {"w_aging": -1})


class Broken:
    """A policy whose constructor has a bug."""

    def __init__(self, n: int = 1) -> None:
        len(n)  # type: ignore[arg-type]  # a TypeError of ours


def test_a_type_error_inside_a_constructor_is_not_taken_for_bad_input(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(registry.REGISTRY["router"], "broken", f"{__name__}:Broken")
    with pytest.raises(TypeError):
        registry.create("router", "broken", {"n": 2})
