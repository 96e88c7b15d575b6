"""The Pythia profiler: learns each workflow type from call logs and predicts running jobs.

Engine-agnostic (it never imports the simulator or vLLM): the simulator, the vLLM scheduler
plugin and the gateway all consult one :class:`Profiler`. See ``docs/profiler.md``.

- :class:`Profiler`: ``fit`` / ``observe_job`` / ``observe_output`` to learn;
  ``predict`` (remaining path, expected distance to the end), ``next_calls`` (next roles
  with predicted prompt prefixes), ``output_bound`` (order-statistic bound per role),
  ``projection`` (expected calls per role within a horizon), ``type_stats`` /
  ``type_weights`` (per-type load);
- :class:`ProfilerConfig`: every knob;
- :func:`report`: path-prediction accuracy, bound coverage and prefix accuracy on held-out jobs.
"""

from pythia.profiler.bounds import OutputBound, order_statistic_bound, order_statistic_rank
from pythia.profiler.config import ProfilerConfig
from pythia.profiler.predictor import DriftEvent, JobPrediction, NextCall, NextRole, Profiler, WorkflowModel
from pythia.profiler.report import report
from pythia.profiler.running import RunningJob
from pythia.profiler.stats import TypeStats

__all__ = [
    "DriftEvent",
    "JobPrediction",
    "NextCall",
    "NextRole",
    "OutputBound",
    "Profiler",
    "ProfilerConfig",
    "RunningJob",
    "TypeStats",
    "WorkflowModel",
    "order_statistic_bound",
    "order_statistic_rank",
    "report",
]
