"""Engine-agnostic policies: scheduling, cache, routing, scaling (one registry).

Policies see only the views in :mod:`pythia.policy.views`; they never import the simulator
or vLLM, so the same code runs in ``pythia.sim``, the vLLM plugin and the Ray Serve host.
"""

from pythia.policy.base import (
    Autoscaler,
    CacheAction,
    CachePolicy,
    Policies,
    Predictor,
    Router,
    SchedulingPolicy,
    WaitingQueue,
)

__all__ = ["Autoscaler", "CacheAction", "CachePolicy", "Policies", "Predictor", "Router", "SchedulingPolicy", "WaitingQueue"]
