"""Calibration of the simulator's cost profile from a step log, and the front end it adds to the simulator."""

from __future__ import annotations

import json
from typing import Any
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pythia.bench.calibrate import (
    calibrate_run,
    calibrate_runs,
    fifo_delays,
    fit_fifo,
    fit_steps,
    read_step_log,
    write_profile,
)
from pythia.bench.replay import client_request_id
from pythia.errors import PythiaInputError
from pythia.sim.costmodel import CostModel, gpu_spec, model_shape

GPU, MODEL = "cpu-2core", "tiny-llama"


def _flops(T: int, sampled: int, pairs: int) -> float:
    m = model_shape(MODEL)
    return 2.0 * m.layer_params * T + 2.0 * m.vocab * m.hidden * sampled + 4.0 * m.heads * m.head_dim * m.layers * pairs


def _synthetic_steps(rng: np.random.Generator, overhead: float, per_seq: float, mfu: float, n: int = 400,
                     noise: float = 0.0) -> pd.DataFrame:
    """Back-to-back steps whose durations follow the cost model exactly (plus optional noise)."""
    peak = gpu_spec(GPU)["tflops"] * 1e12
    rows, t = [], 100.0
    for _ in range(n):
        S = int(rng.integers(1, 16))
        prefill = rng.random() < 0.2
        T = S + (int(rng.integers(50, 1500)) if prefill else 0)
        pairs = int(rng.integers(S * 100, S * 1500)) + (T - S) * 400
        dur = overhead + per_seq * S + _flops(T, S, pairs) / (peak * mfu)
        dur *= 1.0 + noise * float(rng.standard_normal())
        rows.append({"s": t, "e": t + dur, "S": S, "T": T, "sampled": S, "pairs": pairs, "kv": pairs, "first": [], "done": []})
        t += dur  # back to back: no loop gap
    return pd.DataFrame(rows)


@settings(max_examples=15, deadline=None)
@given(
    overhead=st.floats(0.5e-3, 5e-3), per_seq=st.floats(10e-6, 400e-6), mfu=st.floats(0.2, 2.0),
    seed=st.integers(0, 2**16),
)
def test_fit_recovers_the_coefficients_of_noise_free_steps(overhead: float, per_seq: float, mfu: float, seed: int) -> None:
    steps = _synthetic_steps(np.random.default_rng(seed), overhead, per_seq, mfu)
    fit = fit_steps(steps, GPU, MODEL)
    assert fit["overhead_ms"] == pytest.approx(overhead * 1e3, rel=1e-4)
    assert fit["per_seq_us"] == pytest.approx(per_seq * 1e6, rel=1e-4)
    assert fit["mfu"] == pytest.approx(mfu, rel=1e-4)
    assert fit["median_rel_error"] < 1e-6


def test_fitted_profile_reproduces_the_measured_engine_time() -> None:
    # With noise the coefficients move, but the fit keeps the run's summed step time.
    steps = _synthetic_steps(np.random.default_rng(3), 1.5e-3, 120e-6, 0.6, noise=0.2)
    fit = fit_steps(steps, GPU, MODEL)
    assert min(fit["overhead_ms"], fit["per_seq_us"], fit["mfu"]) >= 0
    assert fit["total_fitted_over_measured"] == pytest.approx(1.0, abs=1e-9)


def test_step_fit_refuses_a_log_without_work() -> None:
    empty = pd.DataFrame(columns=["s", "e", "S", "T", "sampled", "pairs", "kv", "first", "done"])
    with pytest.raises(PythiaInputError, match="at least 10"):
        fit_steps(empty, GPU, MODEL)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0, 5), min_size=1, max_size=40), st.floats(0, 0.05))
def test_fifo_delays_are_a_one_server_queue(issues: list[float], service: float) -> None:
    t = np.sort(np.asarray(issues))
    d = fifo_delays(t, service)
    done = t + d
    assert (d >= service - 1e-12).all()  # every request is served for its full time
    assert (np.diff(done) >= service - 1e-9).all()  # one at a time, in issue order
    # Work-conserving: a request waits exactly as long as the one before it is still being served.
    waits = d - service
    assert waits[0] == pytest.approx(0.0, abs=1e-12)
    assert waits[1:] == pytest.approx(np.maximum(0.0, done[:-1] - t[1:]), abs=1e-9)


def test_fifo_fit_recovers_service_and_delay() -> None:
    rng = np.random.default_rng(0)
    # Bursts of 1-8 calls issued together, as a fan-out does, with idle time between bursts.
    issue = np.sort(np.concatenate([np.full(int(rng.integers(1, 9)), b * 0.5) for b in range(30)]))
    delay = fifo_delays(issue, 0.008) + 0.003
    service, base, err = fit_fifo(issue, delay)
    assert service == pytest.approx(0.008, abs=1e-4)
    assert base == pytest.approx(0.003, abs=2e-4)
    assert err < 2e-4


def _write_run(tmp: Path) -> Path:
    """A run folder as `pythia run --step-log` writes it, for two calls with known front-end times."""
    steps = _synthetic_steps(np.random.default_rng(1), 1e-3, 100e-6, 0.5, n=40)
    origin = float(steps.at[0, "s"])  # the replay's t = 0 on the monotonic clock
    lines, calls = [], []
    # (issue, engine arrival, step of the first token, last step, first token -> client, last -> client)
    for i, (issue, arrive, first_step, last_step, out_first, out_done) in enumerate(
        [(0.0, 0.010, 2, 10, 0.004, 0.006), (0.001, 0.020, 3, 20, 0.002, 0.004)]
    ):
        rid = f"cmpl-{client_request_id('job-a', i)}-0-abcd"
        lines.append({"add": rid, "t": origin + arrive, "prompt": 100})
        steps.at[first_step, "first"] = [rid]
        steps.at[last_step, "done"] = [rid]
        first = steps.at[first_step, "e"] - origin + out_first
        calls.append({"job_id": "job-a", "call_id": i, "issue_s": issue, "ttft_s": first - issue,
                      "finish_s": steps.at[last_step, "e"] - origin + out_done, "status": "finished"})
    run = tmp / "run"
    run.mkdir()
    with open(run / "engine-steps.jsonl", "w") as fh:
        for x in lines + steps.to_dict("records"):
            fh.write(json.dumps(x) + "\n")
    pd.DataFrame(calls).to_parquet(run / "calls.parquet")
    (run / "summary.json").write_text(json.dumps({"clock_origin_monotonic_s": origin}))
    return run


def test_calibrate_run_joins_client_and_engine_times(tmp_path: Path) -> None:
    run = _write_run(tmp_path)
    res = calibrate_run(run, GPU, MODEL)
    fe = res["frontend"]
    assert fe["calls_joined"] == 2
    assert fe["request_in_mean_ms"] == pytest.approx((10 + 19) / 2, abs=1e-6)
    assert fe["response_out_ms"] == pytest.approx((4 + 6 + 2 + 4) / 4, abs=1e-6)
    prof = res["profile"]
    assert prof["overhead_ms"] == pytest.approx(1.0, rel=1e-4) and prof["mfu"] == pytest.approx(0.5, rel=1e-4)
    # The entry round-trips through an efficiency file and the cost model reads it.
    eff = tmp_path / "efficiency.yaml"
    eff.write_text("default:\n  mfu: 0.5\nother/x:\n  mfu: 0.1\n")
    write_profile(eff, res["key"], prof, "a test run")
    write_profile(eff, res["key"], prof, "a test run")  # replacing, not appending
    text = eff.read_text()
    assert text.count(f"{GPU}/{MODEL}:") == 1 and "other/x:" in text


def test_pooled_runs_fit_like_one_when_they_are_copies(tmp_path: Path) -> None:
    run = _write_run(tmp_path)
    one, two = calibrate_runs([run], GPU, MODEL), calibrate_runs([run, run], GPU, MODEL)
    for k in ("mfu", "overhead_ms", "per_seq_us", "request_service_ms", "request_in_ms", "response_out_ms"):
        assert two["profile"][k] == pytest.approx(one["profile"][k], rel=1e-6, abs=1e-5)
    assert two["frontend"]["calls_joined"] == 2 * one["frontend"]["calls_joined"]
    assert two["steps"]["steps"] == 2 * one["steps"]["steps"]


def test_calibrate_names_a_missing_step_log(tmp_path: Path) -> None:
    with pytest.raises(PythiaInputError, match="engine-steps.jsonl.*--step-log"):
        calibrate_run(tmp_path, GPU, MODEL)


def test_a_run_folder_without_its_tables_is_named(tmp_path: Path) -> None:
    run = _write_run(tmp_path)
    (run / "calls.parquet").unlink()
    with pytest.raises(PythiaInputError, match="calls.parquet does not exist"):
        calibrate_run(run, GPU, MODEL)
    with pytest.raises(PythiaInputError, match="folder does not exist"):
        write_profile(tmp_path / "nowhere" / "efficiency.yaml", "a/b", {}, "x")


def test_a_malformed_step_log_line_is_named(tmp_path: Path) -> None:
    p = tmp_path / "engine-steps.jsonl"
    p.write_text('{"add": "a", "t": 1.0}\n{"s": 1.0}\n{"add": "b", "t": 2.0}\n')
    with pytest.raises(PythiaInputError, match=r"engine-steps.jsonl:2"):
        read_step_log(p)


def test_cost_model_reads_the_front_end_fields() -> None:
    cm = CostModel(GPU, MODEL)
    assert cm.request_service_fs >= 0 and cm.request_in_fs >= 0 and cm.response_out_fs >= 0


# --------------------------------------------------------------------------- the front end in the simulator


def _fanout_trace(n: int, model: str = MODEL) -> "object":
    from pythia.workflow.trace import Call, Job, Trace, segments

    calls = [Call(call_id=i, agent_role="reader", model=model, input_tokens=200, output_tokens=20, deps=(), gap_s=0.0,
                  prompt=segments([(7000 + i, 0, 200)])) for i in range(n)]
    return Trace(jobs=[Job(job_id="j0", workflow_type="t", workflow_id="w", calls=calls)],
                 arrival={"process": "closed", "concurrency": 1})


def _sim(monkeypatch: pytest.MonkeyPatch, trace: object, front: dict[str, float]) -> pd.DataFrame:
    import pythia.sim.costmodel as cmod
    from pythia.sim.run import SimOptions, run_simulation

    base = cmod.efficiency

    def patched(gpu: str, model: str) -> dict[str, float]:
        return {**base(gpu, model), **front}

    monkeypatch.setattr(cmod, "efficiency", patched)
    res = run_simulation("vllm", trace, cluster="cpu-tiny", options=SimOptions(seed=0, progress=False))
    return res.calls.sort_values("call_id").reset_index(drop=True)


NO_FRONT = {"request_in_ms": 0.0, "response_out_ms": 0.0, "request_service_ms": 0.0}


def test_front_end_delays_add_to_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _sim(monkeypatch, _fanout_trace(1), NO_FRONT)
    fronted = _sim(monkeypatch, _fanout_trace(1), {"request_in_ms": 7.0, "response_out_ms": 3.0, "request_service_ms": 2.0})
    assert fronted.latency_s[0] == pytest.approx(plain.latency_s[0] + 0.012, abs=1e-9)
    assert fronted.ttft_s[0] == pytest.approx(plain.ttft_s[0] + 0.012, abs=1e-9)
    assert fronted.arrival_s[0] == pytest.approx(0.009, abs=1e-9)  # the engine sees it after service + delay


def test_front_end_hands_calls_issued_together_over_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _sim(monkeypatch, _fanout_trace(5), {**NO_FRONT, "request_service_ms": 4.0})
    arrivals = sorted(calls.arrival_s)
    assert arrivals == pytest.approx([0.004 * (i + 1) for i in range(5)], abs=1e-9)
    # With no front end they all arrive at once.
    assert set(_sim(monkeypatch, _fanout_trace(5), NO_FRONT).arrival_s) == {0.0}


def test_cpu_profile_raises_the_block_size_as_the_real_launch_does() -> None:
    from pythia.policy.systems import load_system
    from pythia.serve.engines import build_launch
    from pythia.sim.config import SimOptions, load_cluster
    from pythia.sim.run import Simulation

    system = load_system("vllm")
    assert system.engine.block_size == 16
    sim = Simulation(system, load_cluster("cpu-tiny"), _fanout_trace(1), SimOptions(seed=0, progress=False))
    launch = build_launch("vllm-cpu", "/models/tiny", 8000, None)
    assert sim.cluster.flags.block_size == int(launch.argv[launch.argv.index("--block-size") + 1]) == 32
    # GPU clusters keep the system's block size.
    gpu = Simulation(system, load_cluster("llama8b-x8"), _fanout_trace(1, "llama-3.1-8b"), SimOptions(seed=0, progress=False))
    assert gpu.cluster.flags.block_size == 16


def _break_summary(run: Path, text: str) -> None:
    (run / "summary.json").write_text(text)


def _break_calls(run: Path, change: str) -> None:
    calls = pd.read_parquet(run / "calls.parquet")
    if change == "drop-ttft":
        calls = calls.drop(columns="ttft_s")
    elif change == "text-issue":
        calls["issue_s"] = calls["issue_s"].astype(str)
    elif change == "inf-finish":
        calls.loc[0, "finish_s"] = float("inf")
    calls.to_parquet(run / "calls.parquet")


def _break_log(run: Path, line: str) -> None:
    text = (run / "engine-steps.jsonl").read_text().splitlines(keepends=True)
    text.insert(3, line + "\n")
    (run / "engine-steps.jsonl").write_text("".join(text))


# Malformed calibration runs: each row breaks one file of a good run folder.
CALIBRATION_CASES = [
    ("summary-not-json", lambda r: _break_summary(r, "{"), "summary.json", "not valid JSON"),
    ("summary-nan-origin", lambda r: _break_summary(r, '{"clock_origin_monotonic_s": NaN}'), "summary.json", "NaN"),
    ("summary-a-list", lambda r: _break_summary(r, "[1]"), "summary.json", "JSON object"),
    ("summary-string-origin", lambda r: _break_summary(r, '{"clock_origin_monotonic_s": "0"}'), "summary.json", "must be a number"),
    ("summary-no-origin", lambda r: _break_summary(r, "{}"), "summary.json", "clock_origin_monotonic_s"),
    ("calls-not-parquet", lambda r: (r / "calls.parquet").write_text("x"), "calls.parquet", "Parquet"),
    ("calls-missing-column", lambda r: _break_calls(r, "drop-ttft"), "calls.parquet", "ttft_s"),
    ("calls-text-column", lambda r: _break_calls(r, "text-issue"), "calls.parquet", "issue_s"),
    ("calls-infinite", lambda r: _break_calls(r, "inf-finish"), "calls.parquet", "infinite"),
    ("log-bad-record", lambda r: _break_log(r, '{"s": 1.0}'), "engine-steps.jsonl:4", "step-log record"),
    ("log-nan", lambda r: _break_log(r, '{"add": "x", "t": NaN}'), "engine-steps.jsonl:4", "NaN"),
    ("log-not-utf8", lambda r: (r / "engine-steps.jsonl").write_bytes(b'{"add": "\xff", "t": 1}\n' * 3), "engine-steps.jsonl", "UTF-8"),
]


@pytest.mark.parametrize("case, breaks, file, needle", CALIBRATION_CASES, ids=[c[0] for c in CALIBRATION_CASES])
def test_malformed_calibration_run(tmp_path: Path, case: str, breaks: Any, file: str, needle: str) -> None:
    run = _write_run(tmp_path)
    breaks(run)
    with pytest.raises(PythiaInputError) as e:
        calibrate_run(run, GPU, MODEL)
    msg = str(e.value)
    assert "\n" not in msg and file in msg and needle in msg, msg
