"""The workflow service: hosts report every job and call exactly once, in order."""

from __future__ import annotations

from dataclasses import replace

from sim_helpers import chain_trace

from pythia.policy.systems import load_system
from pythia.policy.workflow import JobTracker
from pythia.sim.config import load_cluster
from pythia.sim.run import SimOptions, Simulation


class Recorder(JobTracker):
    """A tracker that logs every hook call."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, str, int]] = []
        self.saw_truth = 0

    def job_started(self, job_id, workflow_type, workflow_id, now, truth=None):  # type: ignore[no-untyped-def]
        super().job_started(job_id, workflow_type, workflow_id, now, truth)
        self.saw_truth += truth is not None
        self.log.append(("start", job_id, -1))

    def call_issued(self, req, now):  # type: ignore[no-untyped-def]
        super().call_issued(req, now)
        self.log.append(("issue", req.job_id, req.call_id))

    def call_finished(self, req, now):  # type: ignore[no-untyped-def]
        assert req.num_output_tokens >= 1
        super().call_finished(req, now)
        self.log.append(("finish", req.job_id, req.call_id))

    def job_ended(self, job_id, now):  # type: ignore[no-untyped-def]
        info = self.job(job_id)
        assert info is not None and not info.in_flight and info.calls_finished == info.calls_issued
        super().job_ended(job_id, now)
        self.log.append(("end", job_id, -1))


def test_every_job_and_call_is_reported_once_in_order() -> None:
    system = load_system("vllm")
    recorder = Recorder()
    policies = replace(system.build(), predictor=recorder)
    Simulation(system, load_cluster("paper"), chain_trace(6, concurrency=3), SimOptions(seed=0), policies=policies).run()
    starts = [e for e in recorder.log if e[0] == "start"]
    assert len(starts) == 6 and recorder.saw_truth == 6
    seen: dict[tuple[str, int], list[str]] = {}
    for kind, job, call in recorder.log:
        seen.setdefault((job, call), []).append(kind)
    for (job, call), kinds in seen.items():
        assert kinds == (["start", "end"] if call < 0 else ["issue", "finish"]), (job, call, kinds)
    for job in {j for _, j, _ in recorder.log}:
        order = [k for k, jj, _ in recorder.log if jj == job]
        assert order[0] == "start" and order[-1] == "end"
    assert recorder.jobs == {}


def test_binding_reaches_policies() -> None:
    class Bound:
        def bind(self, predictor):  # type: ignore[no-untyped-def]
            self.predictor = predictor

    policies = load_system("vllm").build()
    probe = Bound()
    rebuilt = replace(policies, router=probe)  # type: ignore[arg-type]
    assert probe.predictor is rebuilt.predictor
