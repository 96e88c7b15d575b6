"""No autoscaling: every pool keeps the replica count the cluster config gives it."""

from __future__ import annotations

from pythia.policy.base import Autoscaler
from pythia.policy.views import PoolView


class NoScaling(Autoscaler):
    """Target = the pool's configured (minimum) replica count, always."""

    name = "none"
    enabled = False

    def target(self, pool: PoolView, now: float) -> int:
        return pool.min_replicas
