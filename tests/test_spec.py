"""Workflow specs: the shipped specs load; bad specs give one sentence naming file and field."""

from __future__ import annotations

import hashlib
import json
import math
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pythia.errors import PythiaInputError
from pythia.workflow.spec import END, Dist, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "workloads").glob("*.yaml"))

GOOD = """\
name: tiny
concurrency: 4
context_tokens: {dist: lognormal, median: 100, sigma: 0.5, min: 10, max: 400}
roles:
  planner:
    model: m-large
    system_tokens: 50
    output_tokens: {dist: lognormal, median: 80, sigma: 0.5, max: 300}
  worker:
    model: m-small
    system_tokens: 30
    fresh_tokens: {dist: uniform, low: 5, high: 50}
    output_tokens: 40
    max_input_tokens: 2000
  checker:
    model: m-small
    output_tokens: {dist: normal, mean: 20, std: 5, min: 1}
steps:
  plan:
    role: planner
    prompt: [system, context]
    next:
      - to: work
  work:
    role: worker
    parallel: {dist: uniform, low: 2, high: 3}
    calls: {dist: uniform, low: 1, high: 4}
    gap_between: {dist: lognormal, median: 2, sigma: 0.5, max: 30}
    prompt: [system, context, {outputs: [planner, checker]}, history, fresh]
    next:
      - to: check
  check:
    role: checker
    gap_before: 1.5
    prompt: [system, {outputs: [worker]}]
    next:
      - {to: work, p: 0.3, max_traversals: 2}
      - {to: end, p: 0.7}
"""


def _write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(PythiaInputError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message and "Traceback" not in message
    return message


# --------------------------------------------------------------------------- good specs


def test_schema_is_valid_draft_2020_12() -> None:
    text = resources.files("pythia.workflow").joinpath("schemas/spec.schema.json").read_text()
    jsonschema.Draft202012Validator.check_schema(json.loads(text))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_spec_loads(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem  # the file name is the workflow type
    assert spec.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert spec.start in spec.steps
    for step in spec.steps.values():
        assert step.role in spec.roles


def test_the_five_workloads_are_shipped() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"coding-assistant", "deep-research", "metagpt-software-company", "rag-chain", "chat"} <= names


def test_coding_assistant_shape() -> None:
    spec = load_spec(ROOT / "workloads" / "coding-assistant.yaml")
    assert list(spec.steps) == ["plan", "explore", "implement", "review", "verify"]
    assert spec.steps["explore"].parallel.int_bounds(1) == (1, None)  # no clamps: the range is low..high
    assert (spec.steps["explore"].parallel.low, spec.steps["explore"].parallel.high) == (3, 4)
    assert (spec.steps["implement"].parallel.low, spec.steps["implement"].parallel.high) == (3, 6)
    retry = spec.steps["verify"].next[0]
    assert retry.to == "implement" and retry.max_traversals == 2
    assert all(r.max_input_tokens is not None and r.max_input_tokens <= 32768 for r in spec.roles.values())


def test_good_spec_fields(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, GOOD))
    assert spec.name == "tiny" and spec.concurrency == 4 and spec.start == "plan"
    work = spec.steps["work"]
    assert [p.kind for p in work.prompt] == ["system", "context", "outputs", "history", "fresh"]
    assert work.output_roles == ("planner", "checker")
    assert work.fresh_tokens.kind == "uniform"  # inherited from the role
    assert spec.steps["check"].gap_before == Dist.constant(1.5)
    assert [e.to for e in spec.steps["check"].next] == ["work", END]
    assert spec.roles["checker"].fresh_tokens == Dist.constant(0)


def test_defaults(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, "name: d\nroles: {a: {model: m, output_tokens: 5}}\nsteps: {s: {role: a}}\n"))
    step = spec.steps["s"]
    assert spec.concurrency == 8 and spec.context_tokens == Dist.constant(0)
    assert [p.kind for p in step.prompt] == ["system", "context", "history", "fresh"]
    assert step.parallel == Dist.constant(1) and step.calls == Dist.constant(1) and step.next == ()


def test_parse_spec_hashes_content() -> None:
    import yaml

    raw = yaml.safe_load(GOOD)
    a, b = parse_spec(raw), parse_spec(yaml.safe_load(GOOD))
    assert a.sha256 == b.sha256
    raw["concurrency"] = 5
    assert parse_spec(raw).sha256 != a.sha256


# --------------------------------------------------------------------------- bad specs

# One row per mistake in tests/test_malformed.py (SPEC_CASES); the line-number checks stay here.


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    msg = _error(tmp_path, GOOD.replace("{dist: uniform, low: 2, high: 3}", "{dist: uniform, low: 2, high: 3"))
    line = GOOD.splitlines().index("    parallel: {dist: uniform, low: 2, high: 3}") + 1
    assert "YAML syntax error" in msg
    assert any(f":{n}:" in msg for n in (line, line + 1)), msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PythiaInputError, match="no such workflow spec"):
        load_spec(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- distributions


def test_uniform_integer_draws_hit_both_ends() -> None:
    d = Dist("uniform", low=3, high=4)
    rng = np.random.default_rng(0)
    assert {d.sample_int(rng, 1) for _ in range(200)} == {3, 4}


def test_lognormal_median() -> None:
    d = Dist("lognormal", median=240, sigma=0.8)
    rng = np.random.default_rng(1)
    xs = [d.sample_int(rng) for _ in range(4000)]
    assert abs(float(np.median(xs)) - 240) < 15


_bound = st.one_of(st.none(), st.floats(0, 500, allow_nan=False))


@settings(max_examples=50, deadline=None)
@given(
    kind=st.sampled_from(["constant", "uniform", "normal", "lognormal"]),
    a=st.floats(0, 400),
    b=st.floats(0, 400),
    spread=st.floats(0, 2),
    lo=_bound,
    hi=_bound,
    floor=st.sampled_from([0, 1]),
    seed=st.integers(0, 2**32),
)
def test_draws_respect_clamps(
    kind: str, a: float, b: float, spread: float, lo: float | None, hi: float | None, floor: int, seed: int
) -> None:
    # Only distributions that validation accepts: ordered clamps with an integer between them.
    assume(lo is None or hi is None or lo <= hi)
    assume(hi is None or math.floor(hi) >= max(floor, math.ceil(lo or 0)))
    low, high = sorted((math.floor(a), math.floor(b)))
    d = Dist(
        kind, value=a, low=low, high=high, mean=a, std=spread * 50, median=max(a, 1.0), sigma=spread, min=lo, max=hi
    )
    rng = np.random.default_rng(seed)
    lo_i, hi_i = d.int_bounds(floor)
    for _ in range(20):
        x = d.sample_int(rng, floor)
        assert isinstance(x, int) and lo_i <= x and (hi_i is None or x <= hi_i)
        y = d.sample(rng)
        assert y >= 0.0 and (lo is None or y >= lo) and (hi is None or y <= hi)
