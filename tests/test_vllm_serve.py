"""Engine commands, the server process manager, the tiny model, the samplers and the hook adapter (no engine run)."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pythia.bench.metrics import NvmlSampler, PrometheusScraper, engine_row, parse_prometheus
from pythia.errors import PythiaInputError
from pythia.policy.fcfs import FCFS, FCFSQueue
from pythia.policy.lru import LRU
from pythia.serve.adapter import load_hooks, parse_extra_args, segments_hint
from pythia.serve.engines import build_launch, check_launch, engine_flags
from pythia.serve.server import EngineServer, EngineStartError, free_port
from vllm_support import PriorityQueue, PriorityScheduling, RolePriority

# --------------------------------------------------------------------------- engine commands


def test_vllm_cpu_command_carries_the_system_flags_and_the_plugin() -> None:
    launch = build_launch("vllm-cpu", "/models/tiny", 8123, {"enable_prefix_caching": False, "max_num_seqs": 8,
                                                              "max_num_batched_tokens": 512},
                          plugin=True, plugin_config={"hooks": "roles:a,b"}, num_blocks=64)
    argv = launch.argv
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert {k: v for k, v in launch.env.items() if k != "OMP_NUM_THREADS"} == {
        "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    # OpenMP leaves one core to the API server and the client (unless the caller set a count).
    assert "OMP_NUM_THREADS" in os.environ or launch.env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 2) - 1))
    # The model runs in the engine-core process: no worker busy-waited on (docs/decisions.md).
    assert argv[argv.index("--distributed-executor-backend") + 1] == "uni"
    assert argv[argv.index("--block-size") + 1] == "32" and launch.notes  # 16 raised for CPU attention
    assert "--no-enable-prefix-caching" in argv and argv[argv.index("--max-num-seqs") + 1] == "8"
    assert argv[argv.index("--scheduler-cls") + 1] == "pythia.serve.vllm_scheduler.PythiaSyncScheduler"
    assert json.loads(argv[argv.index("--additional-config") + 1]) == {"pythia": {"hooks": "roles:a,b"}}
    assert argv[argv.index("--num-gpu-blocks-override") + 1] == "64"
    assert "--gpu-memory-utilization" not in argv and launch.host == "127.0.0.1"


def test_gpu_commands_use_gpu_flags_and_the_async_plugin() -> None:
    launch = build_launch("vllm", "meta-llama/Llama-3.1-8B-Instruct", 8000, {"gpu_memory_utilization": 0.85},
                          plugin=True, tensor_parallel_size=2)
    argv = launch.argv
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.85"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--block-size") + 1] == "16" and not launch.notes
    assert argv[argv.index("--scheduler-cls") + 1] == "pythia.serve.vllm_scheduler.PythiaVllmScheduler"
    assert not launch.env


def test_sglang_command_maps_the_flags_and_passes_the_check() -> None:
    launch = build_launch("sglang", "Qwen/Qwen2.5-7B-Instruct", 30000, {"enable_prefix_caching": False, "host_kv_gib": 64},
                          tensor_parallel_size=4, max_model_len=32768)
    argv = launch.argv
    assert argv[1:3] == ["-m", "sglang.launch_server"]
    for flag, value in (("--model-path", "Qwen/Qwen2.5-7B-Instruct"), ("--tp-size", "4"), ("--page-size", "16"),
                        ("--max-running-requests", "256"), ("--chunked-prefill-size", "2048"),
                        ("--mem-fraction-static", "0.92"), ("--context-length", "32768"), ("--hicache-size", "64")):
        assert argv[argv.index(flag) + 1] == value
    assert "--disable-radix-cache" in argv and "--enable-hierarchical-cache" in argv
    assert check_launch(launch) == []
    bad = build_launch("sglang", "m", 1, extra_args=["--not-a-flag"])
    assert check_launch(bad) == ["unknown SGLang flag --not-a-flag"]
    with pytest.raises(PythiaInputError, match="vLLM only"):
        build_launch("sglang", "m", 1, plugin=True)


def test_bad_engine_input_is_one_clear_error() -> None:
    with pytest.raises(PythiaInputError, match="--backend='tgi'"):
        build_launch("tgi", "m", 1)
    with pytest.raises(PythiaInputError, match="unknown engine flag.*max_batch"):
        engine_flags({"max_batch": 3})
    with pytest.raises(PythiaInputError, match="port"):
        build_launch("vllm", "m", 0)


def test_system_engine_flags_come_from_its_yaml() -> None:
    pytest.importorskip("pythia.policy.systems")
    flags = engine_flags("vllm")
    assert flags["max_num_seqs"] == 256 and flags["enable_prefix_caching"] is True


def test_vllm_commands_are_checked_by_vllms_own_parser() -> None:
    pytest.importorskip("vllm")
    good = build_launch("vllm", "m", 8000, plugin=True, tensor_parallel_size=2)
    assert check_launch(good) == []
    bad = build_launch("vllm-cpu", "m", 8000, extra_args=["--no-such-flag", "1"])
    problems = check_launch(bad)
    assert len(problems) == 1 and "--no-such-flag" in problems[0]


# --------------------------------------------------------------------------- server process


def _fake_launch(code: str, port: int) -> Any:
    from pythia.serve.engines import EngineLaunch

    return EngineLaunch("vllm-cpu", [sys.executable, "-c", code], {}, "127.0.0.1", port, "m")


def test_a_server_that_dies_gives_one_error_with_its_root_cause(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "print('(APIServer pid=1) WARNING 11-23 23:30:43 [x.py:1] fd limit errors like `OSError: [Errno 24] Too many`')\n"
        "print('(Worker pid=2) ERROR 11-23 23:04:55 [multiproc_executor.py:1063] ValueError: No common block size for 16')\n"
        "print('RuntimeError: Worker failed with error')\n"
        "sys.exit(3)\n"
    )
    srv = EngineServer(_fake_launch(code, free_port()), tmp_path / "engine.log", start_timeout_s=20)
    srv.start()
    with pytest.raises(EngineStartError) as e:
        srv.wait_healthy(poll_s=0.1)
    msg = str(e.value)
    first = msg.splitlines()[0]
    assert "exited with status 3" in first and first.endswith("ValueError: No common block size for 16; log " + str(tmp_path / "engine.log") + ", last lines:")
    assert "engine.log" in msg and not srv.is_running()


def test_a_server_that_never_answers_times_out_and_is_stopped(tmp_path: Path) -> None:
    srv = EngineServer(_fake_launch("import time; time.sleep(60)", free_port()), tmp_path / "e.log", start_timeout_s=1.0)
    with pytest.raises(EngineStartError, match="not healthy after"):
        with srv:
            srv.wait_healthy(poll_s=0.1)
    assert not srv.is_running()


def test_a_healthy_server_is_found_and_its_process_group_stopped(tmp_path: Path) -> None:
    port = free_port()
    code = (
        "import http.server, subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"  # a child, like vLLM's engine core
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'ok')\n"
        f"http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
    )
    with EngineServer(_fake_launch(code, port), tmp_path / "e.log", start_timeout_s=20) as srv:
        assert srv.wait_healthy(poll_s=0.1) < 20
        pgid = srv.proc.pid  # type: ignore[union-attr]
    psutil = pytest.importorskip("psutil")
    alive = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(p.pid)
        except (ProcessLookupError, PermissionError):
            continue
    assert alive == []  # nothing of the group is left running (zombies await their reaper)


def test_only_loopback_servers() -> None:
    from pythia.serve.engines import EngineLaunch

    with pytest.raises(ValueError, match="loopback"):
        EngineServer(EngineLaunch("vllm", ["x"], {}, "0.0.0.0", 1, "m"), "log")


# --------------------------------------------------------------------------- tiny model


def test_tiny_model_is_written_once_and_loads(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from transformers import AutoConfig, AutoTokenizer

    from pythia.serve.tiny_model import make_tiny_model, tiny_model_info

    out = make_tiny_model(tmp_path / "tiny")
    info = tiny_model_info(out)
    assert 1_000_000 < info["parameters"] < 5_000_000
    cfg = AutoConfig.from_pretrained(out)
    assert cfg.architectures == ["LlamaForCausalLM"] and cfg.vocab_size == info["vocab_size"]
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == cfg.vocab_size
    text = tok.apply_chat_template([{"role": "user", "content": "hello there"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>hello there<|end|><|assistant|>"
    assert tok.decode(tok.encode("plain text 42")) == "plain text 42"
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert make_tiny_model(tmp_path / "tiny") == out and (out / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(PythiaInputError, match="tiny model"):
        tiny_model_info(tmp_path)


# --------------------------------------------------------------------------- samplers

METRICS_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 420.0
vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7e+09
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 96.0
vllm:num_preemptions_total{engine="0",model_name="m"} 2.0
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 1.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 6.0
"""


def test_prometheus_text_is_parsed_into_engine_columns() -> None:
    row = engine_row(parse_prometheus(METRICS_TEXT))
    assert row["num_running"] == 3 and row["num_waiting"] == 1 and row["kv_usage"] == 0.25
    assert row["prefix_cache_queries"] == 420 and row["prefix_cache_hits"] == 96
    assert row["preemptions"] == 2 and row["requests_finished"] == 7
    sg = engine_row(parse_prometheus('sglang:num_running_reqs{tp_rank="0"} 5\nsglang:cache_hit_rate 0.5\n'))
    assert sg["num_running"] == 5 and sg["prefix_hit_rate"] == 0.5


def test_scraper_samples_a_metrics_endpoint_at_an_interval() -> None:
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(METRICS_TEXT.encode())

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        sc = PrometheusScraper(f"http://127.0.0.1:{srv.server_address[1]}/metrics", interval_s=0.05, max_samples=4)
        sc.start()
        sc.join(timeout=5)
        rows = sc.stop()
    finally:
        srv.shutdown()
        srv.server_close()
    assert len(rows) == 5 and all(r["prefix_cache_hits"] == 96 and r["source"] == "engine" for r in rows)
    assert [r["t_s"] for r in rows] == sorted(r["t_s"] for r in rows)


def test_nvml_without_a_gpu_says_so_once_and_records_nothing(caplog: pytest.LogCaptureFixture) -> None:
    class NoGpu:
        class NVMLError(Exception):
            pass

        def nvmlInit(self) -> None:  # noqa: N802 (NVML's names)
            raise self.NVMLError("NVML Shared Library Not Found")

    with caplog.at_level(logging.WARNING, logger="pythia.bench"):
        s = NvmlSampler(interval_s=0.01, nvml=NoGpu())
        s.start()
        rows = s.stop()
    assert rows == [] and not s.available
    lines = [r for r in caplog.records if "no GPU metrics" in r.getMessage()]
    assert len(lines) == 1 and "NVML Shared Library Not Found" in lines[0].getMessage()


def test_nvml_sampler_reads_every_device() -> None:
    class FakeNvml:
        NVML_CLOCK_SM = 1

        def nvmlInit(self) -> None: ...  # noqa: N802, E704
        def nvmlShutdown(self) -> None: ...  # noqa: N802, E704
        def nvmlDeviceGetCount(self) -> int: return 2  # noqa: N802, E704
        def nvmlDeviceGetHandleByIndex(self, i: int) -> int: return i  # noqa: N802, E704
        def nvmlDeviceGetUtilizationRates(self, h: int) -> Any: return SimpleNamespace(gpu=50 + h)  # noqa: N802, E704
        def nvmlDeviceGetMemoryInfo(self, h: int) -> Any: return SimpleNamespace(used=2**30, total=80 * 2**30)  # noqa: N802, E704
        def nvmlDeviceGetPowerUsage(self, h: int) -> int: return 250_000  # noqa: N802, E704
        def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int: return 1410  # noqa: N802, E704

    s = NvmlSampler(interval_s=0.01, max_samples=3, nvml=FakeNvml())
    s.start()
    s.join(timeout=5)
    rows = s.stop()
    assert len(rows) == 8  # 3 samples + the final one, 2 devices each
    assert {r["device"] for r in rows} == {0, 1} and rows[0]["gpu_power_w"] == 250.0
    assert rows[1]["gpu_util"] == 51.0 and rows[0]["gpu_mem_total_mib"] == 80 * 1024


def test_real_nvml_on_this_host_never_raises() -> None:
    pytest.importorskip("pynvml")
    s = NvmlSampler(interval_s=0.01, max_samples=2)
    s.start()
    s.stop()


# --------------------------------------------------------------------------- adapter


def _view(role: str, i: int) -> Any:
    return SimpleNamespace(agent_role=role, arrival_s=float(i), name=f"r{i}")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "prepend", "pop", "remove"]), st.integers(0, 50)), max_size=60))
def test_a_constant_priority_queue_orders_exactly_as_fcfs(ops: list[tuple[str, int]]) -> None:
    class Flat(PriorityScheduling):
        def priority(self, req: Any, now: float) -> float:
            return 0.0

    pq, fq = PriorityQueue(Flat()), FCFSQueue()
    ref: deque[Any] = deque()
    n = 0
    for op, k in ops:
        if op in ("add", "prepend"):
            v = _view("x", n)
            n += 1
            getattr(pq, op)(v)
            getattr(fq, op)(v)
            ref.append(v) if op == "add" else ref.appendleft(v)
        elif op == "pop" and ref:
            assert pq.pop() is fq.pop() is ref.popleft()
        elif op == "remove" and ref:
            v = ref[k % len(ref)]
            ref.remove(v)
            pq.remove(v)
            fq.remove(v)
        assert list(pq) == list(fq) == list(ref)
        if ref:
            assert pq.peek() is ref[0]


def test_priority_queue_orders_by_priority_then_fcfs_and_refreshes() -> None:
    pol = RolePriority(["verifier", "engineer", "planner"])
    q = pol.new_queue()
    views = [_view(r, i) for i, r in enumerate(["planner", "engineer", "other", "verifier", "engineer"])]
    for v in views:
        q.add(v)
    assert [v.name for v in q] == ["r3", "r1", "r4", "r0", "r2"]
    q.prepend(_view("engineer", 9))  # a preempted engineer resumes first among engineers
    assert [v.name for v in q][:3] == ["r3", "r9", "r1"]
    pol.rank["planner"] = -1
    q.refresh(0.0)
    assert q.peek().name == "r0"
    assert pol.victim([views[3], views[0], views[1]], 0.0) is views[1]  # the worst priority (now the engineer)


def test_annotation_parsing_never_raises() -> None:
    ok = parse_extra_args({"pythia.workflow_type": "w", "pythia.workflow_id": "j", "pythia.agent_role": "r",
                           "pythia_hint.output_tokens": 120, "kv_transfer_params": None})
    assert ok.annotation is not None and ok.hints == {"output_tokens": 120} and not ok.malformed
    assert parse_extra_args(None).annotation is None and not parse_extra_args({}).malformed
    hinted = parse_extra_args({"pythia.workflow_type": "w", "pythia.workflow_id": "j", "pythia.agent_role": "r",
                               "pythia_hint.prompt": [5, 0, 64, 7, 3, 10], "pythia_hint.deps": [0, 1],
                               "pythia_hint.last_call": 1, "pythia_hint.output": [1, 2]})
    assert hinted.annotation is not None and hinted.bad_hints == ("output",)
    assert hinted.hints["prompt"].tolist() == [[5, 0, 64], [7, 3, 10]] and hinted.hints["deps"] == (0, 1)
    assert hinted.hints["last_call"] is True and "output" not in hinted.hints
    assert segments_hint([1, -1, 2]) is None and segments_hint("x") is None and segments_hint([]).shape == (0, 3)
    for bad in ({"pythia.agent_role": "r"}, {"pythia.workflow_type": "w w", "pythia.workflow_id": "j",
                                            "pythia.agent_role": "r"}, {"pythia.step": -1}, {1: 2, "pythia.x": 1}):
        p = parse_extra_args(bad)  # type: ignore[arg-type]
        assert p.malformed and p.annotation is None and p.error


def test_hooks_are_loaded_by_name() -> None:
    # The default is the vllm system's own policy objects (pythia.policy), not a copy of them.
    default = load_hooks(None)
    assert type(default.scheduling) is FCFS and type(default.cache) is LRU and default.is_stock
    assert default.source == "system:vllm" and default.predictor is not None and load_hooks("fcfs").is_stock
    h = load_hooks("vllm_support:roles")
    assert isinstance(h.scheduling, RolePriority) and not h.is_stock
    with pytest.raises(PythiaInputError, match="cannot import"):
        load_hooks("no_such_module_xyz:thing")
    with pytest.raises(PythiaInputError, match="unknown|no system|not found"):
        load_hooks("system:no_such_system")
    with pytest.raises(PythiaInputError, match="expected fcfs"):
        load_hooks("whatever")


def test_system_policies_are_hosted_through_the_same_hooks() -> None:
    pytest.importorskip("pythia.policy.systems")
    h = load_hooks("system:vllm")
    assert callable(h.scheduling.new_queue) and callable(h.scheduling.victim) and callable(h.cache.on_finish)
    q = h.scheduling.new_queue()
    a, b = _view("x", 0), _view("y", 1)
    q.add(a)
    q.add(b)
    assert q.pop() is a


def test_plugin_entry_point_checks_the_vllm_version(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from pythia.serve import plugin

    fake = SimpleNamespace(__version__="0.31.2")
    monkeypatch.setitem(sys.modules, "vllm", fake)
    with caplog.at_level(logging.WARNING, logger="vllm.plugins.pythia"):
        plugin.register()
    assert any("0.31.2" in r.getMessage() for r in caplog.records)
