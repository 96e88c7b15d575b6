"""Property tests: every loader, fed mutated or random documents, loads or says why.

Each example starts from a valid file of one format (or from a random JSON/YAML value), mutates
it (bytes flipped, spans cut or repeated, tokens that break parsers inserted, values replaced
by random ones) and loads it. The only allowed outcomes are a clean load and a
:class:`PythiaInputError` with a one-line message; any other exception, or a load slower than
the deadline, fails the example.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pythia.errors import PythiaInputError
from test_malformed import AZURE_OK, CLAUDE_OK, CLUSTER, MOONCAKE_OK, SPEC, SYSTEM, _job, _trace

DEADLINE_MS = 5000
FUZZ = settings(max_examples=int(__import__("os").environ.get("PYTHIA_FUZZ_EXAMPLES", "60")), deadline=DEADLINE_MS, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                              HealthCheck.too_slow])

TOKENS = [b"[", b"]", b"{", b"}", b'"', b":", b": ", b",", b"\n", b"\t", b"  ", b"- ", b"NaN", b"Infinity", b"-Infinity",
          b"1e999", b".nan", b".inf", b"-1", b"0", b"99999999999999999999", b"null", b"true", b'"false"', b"&a ", b"*a",
          b"!!binary", b"2024-01-01", b"\xff", b"\x00", b"\xef\xbb\xbf", b"#", b"'", b"|", b">", b"%YAML 1.1\n", b"---\n"]


def _loaders() -> dict[str, tuple[str, bytes, Callable[[Path], Any]]]:
    from pythia.policy.systems import load_system
    from pythia.sim.config import load_cluster
    from pythia.workflow.importers import get
    from pythia.workflow.load import LoadOptions
    from pythia.workflow.spec import load_spec
    from pythia.workflow.trace import read_trace

    mooncake = "".join(json.dumps(r) + "\n" for r in (MOONCAKE_OK, {**MOONCAKE_OK, "timestamp": 5}))
    return {
        "spec": ("spec.yaml", SPEC.encode(), load_spec),
        "trace": ("t.jsonl", _trace(_job(), _job(job_id="j1")).encode(), read_trace),
        "trace-gz": ("t.jsonl.gz", gzip.compress(_trace(_job()).encode(), mtime=0), read_trace),
        "mooncake": ("m.jsonl", mooncake.encode(), lambda p: get("mooncake").load(p, LoadOptions())),
        "azure": ("a.csv", (AZURE_OK + "2023-11-16 18:17:05.0,7,2\n").encode(), lambda p: get("azure2023").load(p, LoadOptions())),
        "claude-code": ("s.json", json.dumps(CLAUDE_OK).encode(), lambda p: get("claude-code").load(p, LoadOptions())),
        "system": ("mine.yaml", SYSTEM.encode(), lambda p: load_system(p).build()),
        "cluster": ("cluster.yaml", CLUSTER.encode(), load_cluster),
    }


LOADERS = _loaders()


def _load(tmp: Path, name: str, data: bytes, load: Callable[[Path], Any]) -> None:
    path = tmp / name
    path.write_bytes(data)
    try:
        load(path)
    except PythiaInputError as e:
        assert "\n" not in str(e), str(e)
        assert str(e), "an empty message"


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "repeat", "insert", "truncate"]))
        i = draw(st.integers(0, max(0, len(out) - 1)))
        if op == "flip" and out:
            out[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del out[i : i + draw(st.integers(1, 40))]
        elif op == "repeat":
            out[i:i] = out[i : i + draw(st.integers(1, 60))] * draw(st.integers(1, 5))
        elif op == "insert":
            out[i:i] = draw(st.sampled_from(TOKENS)) * draw(st.integers(1, 3))
        else:
            out = out[: draw(st.integers(0, len(out)))]
    return bytes(out)


@FUZZ
@given(data=st.data(), kind=st.sampled_from(sorted(LOADERS)))
def test_mutated_files_load_or_say_why(tmp_path: Path, data: st.DataObject, kind: str) -> None:
    name, good, load = LOADERS[kind]
    _load(tmp_path, name, data.draw(mutated(good)), load)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=25,
)


def _replace_random(value: Any, draw: st.DrawFn) -> Any:
    """``value`` with one node (chosen at random) replaced by a random JSON value."""
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        return {**value, key: _replace_random(value[key], draw)}
    if isinstance(value, list) and value and draw(st.booleans()):
        i = draw(st.integers(0, len(value) - 1))
        return [*value[:i], _replace_random(value[i], draw), *value[i + 1 :]]
    return draw(JSON_VALUES)


STRUCTURED = {
    "spec": lambda: yaml.safe_load(SPEC),
    "system": lambda: yaml.safe_load(SYSTEM),
    "cluster": lambda: yaml.safe_load(CLUSTER),
    "claude-code": lambda: json.loads(json.dumps(CLAUDE_OK)),
    "trace": lambda: _job(),
    "mooncake": lambda: dict(MOONCAKE_OK),
}


@FUZZ
@given(data=st.data(), kind=st.sampled_from(sorted(STRUCTURED)))
def test_documents_with_a_random_value_load_or_say_why(tmp_path: Path, data: st.DataObject, kind: str) -> None:
    doc = _replace_random(STRUCTURED[kind](), data.draw)
    name, _, load = LOADERS[kind]
    if kind == "trace":
        text = _trace(doc)
    elif kind == "mooncake":
        text = json.dumps(doc) + "\n"
    elif name.endswith(".json"):
        text = json.dumps(doc)  # NaN and Infinity are written as JSON extensions, which must be refused
    else:
        text = yaml.safe_dump(doc, allow_unicode=True)
    _load(tmp_path, name, text.encode(), load)


@FUZZ
@given(value=JSON_VALUES, kind=st.sampled_from(sorted(LOADERS)))
def test_random_documents_load_or_say_why(tmp_path: Path, value: Any, kind: str) -> None:
    name, _, load = LOADERS[kind]
    if name.endswith((".yaml", ".csv")):
        text = yaml.safe_dump(value, allow_unicode=True)
    else:
        text = json.dumps(value)
    data = text.encode()
    _load(tmp_path, name, gzip.compress(data, mtime=0) if name.endswith(".gz") else data, load)
