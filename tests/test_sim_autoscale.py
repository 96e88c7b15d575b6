"""Autoscaling mechanics of the cluster: cold start before a new replica takes calls, draining on scale-down."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from pythia.policy.base import Autoscaler
from pythia.policy.systems import load_system
from pythia.policy.views import PoolView
from pythia.sim.config import SimOptions, parse_cluster
from pythia.sim.run import SimResult, Simulation
from pythia.workflow.trace import Call, Job, Trace, segments


class StepScaler(Autoscaler):
    """Test-only: ``before`` replicas until ``at_s``, ``after`` from then on, checked every second."""

    name = "step"
    interval_s = 1.0

    def __init__(self, at_s: float, before: int, after: int) -> None:
        self.at_s, self.before, self.after = at_s, before, after

    def target(self, pool: PoolView, now: float) -> int:
        return self.after if now >= self.at_s else self.before


class UpDown(Autoscaler):
    """Test-only: two replicas wanted in [1 s, 3 s), one otherwise."""

    name = "updown"
    interval_s = 1.0

    def target(self, pool: PoolView, now: float) -> int:
        return 2 if 1.0 <= now < 3.0 else 1


def cluster(replicas: int, cold_start_s: float):
    return parse_cluster({"name": "scale", "gpu": "a100-80gb", "default_pool": "p", "cold_start_s": cold_start_s,
                          "pools": {"p": {"model": "qwen2.5-7b", "replicas": replicas, "min_replicas": 1,
                                          "max_replicas": 2}}}, "test")


def stream(n: int, every_s: float, *, prompt: int = 600, output: int = 60) -> Trace:
    """``n`` single-call jobs arriving every ``every_s`` seconds."""
    jobs = [Job(job_id=f"j{i:03d}", workflow_type="t", workflow_id=f"w{i}", arrival_s=i * every_s, calls=[
        Call(call_id=0, agent_role="a", model="m", input_tokens=prompt, output_tokens=output,
             prompt=segments([(100 + i, 0, prompt)]))]) for i in range(n)]
    return Trace(jobs=jobs, arrival={"process": "timestamps", "time_scale": 1.0})


def simulate(trace: Trace, cfg, scaler: Autoscaler, **opts) -> SimResult:
    system = load_system("vllm")
    policies = replace(system.build(), autoscaler=scaler)
    return Simulation(system, cfg, trace, SimOptions(**opts), policies=policies).run()


def test_new_replica_takes_calls_only_after_its_cold_start():
    res = simulate(stream(80, 0.25), cluster(1, cold_start_s=5.0), StepScaler(2.0, 1, 2))
    assert res.summary["calls_completed"] == 80
    calls = res.calls
    on_new = calls[calls["replica"] == 1]
    # Scaled up at the 2 s tick; the model loads for 5 s; only then does round robin use it.
    assert len(on_new) > 10 and on_new["arrival_s"].min() >= 7.0
    assert (calls[(calls["issue_s"] >= 2.0) & (calls["issue_s"] < 7.0)]["replica"] == 0).all()
    pool = res.timeseries[res.timeseries["replica"] == -1].set_index("t_s")
    assert (pool.loc[3.0:6.0, "replicas_starting"] == 1).all() and (pool.loc[3.0:6.0, "replicas_up"] == 1).all()
    assert (pool.loc[7.0:15.0, "replicas_up"] == 2).all() and (pool.loc[7.0:15.0, "replicas_starting"] == 0).all()
    starting = res.timeseries[(res.timeseries["replica"] == 1) & (res.timeseries["t_s"] < 7.0)]
    assert set(starting["state"]) == {"starting"} and (starting["batch_size"] == 0).all()


def test_draining_replica_takes_no_new_calls_and_stops_when_empty():
    # Long outputs keep both replicas busy when the scaler drops to one replica at 4 s.
    res = simulate(stream(60, 0.25, output=1500), cluster(2, cold_start_s=5.0), StepScaler(4.0, 2, 1))
    assert res.summary["calls_completed"] == 60 and res.summary["jobs_completed"] == 60
    ts, calls = res.timeseries, res.calls
    drained = ts[ts["state"] == "draining"]["replica"].unique().tolist()
    assert len(drained) == 1
    gone, kept = drained[0], 1 - drained[0]
    mine = calls[calls["replica"] == gone]
    # Calls it held when draining began finish there; nothing new arrives after 4 s.
    assert mine["arrival_s"].max() < 4.0 and (mine["finish_s"] > 4.0).any()
    assert (calls[calls["arrival_s"] >= 4.0]["replica"] == kept).all()
    # It is removed once its last call ends: no rows for it after that, and never up again.
    last = mine["finish_s"].max()
    rows = ts[ts["replica"] == gone]
    assert rows["t_s"].max() <= last
    # (a sample at 4 s is taken before that second's scaling decision)
    assert set(rows[rows["t_s"] > 4.0]["state"]) == {"draining"}
    pool = ts[ts["replica"] == -1].set_index("t_s")
    assert (pool.loc[4.5:, "replicas_up"] == 1).all()


def test_idle_replica_stops_at_once_and_a_starting_one_is_cancelled():
    # Scale up at 1 s, then down at 3 s, before the cold start ends: the starting replica never comes up.
    res = simulate(stream(30, 0.5), cluster(1, cold_start_s=5.0), UpDown())
    assert res.summary["calls_completed"] == 30
    assert (res.calls["replica"] == 0).all()
    ts = res.timeseries
    assert set(ts[ts["replica"] == 1]["state"]) == {"starting"}
    assert ts[ts["replica"] == 1]["t_s"].max() <= 3.0  # the 3 s sample precedes the 3 s decision


def test_scaling_runs_are_deterministic_and_fast_forward_exact():
    trace = stream(60, 0.25, output=800)
    a = simulate(trace, cluster(2, cold_start_s=2.0), StepScaler(4.0, 2, 1))
    b = simulate(trace, cluster(2, cold_start_s=2.0), StepScaler(4.0, 2, 1), fast_forward=False, kv_index="blocks")
    pd.testing.assert_frame_equal(a.calls, b.calls)
    pd.testing.assert_frame_equal(a.timeseries, b.timeseries)
