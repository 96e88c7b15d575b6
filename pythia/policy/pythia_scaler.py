"""Pythia's phase-predictive autoscaling (registry name ``pythia``).

Every ``interval_s``, each in-flight job is projected ``horizon`` call generations along its
path (``projection``: expected calls per role); roles map to the pools that serve them. A
pool's expected load in tokens is

    L(pool) = sum over roles r of the pool: (calls in flight + projected calls of r)
              * (mean prompt + mean output tokens of r)

and its demand in replicas is ``L / (kv_tokens_per_replica * target_util)``. The GPUs the
system started with (``gpu_budget``: by default the replicas of every pool at the first
tick) are shared out: each pool gets its minimum, the rest goes to the pools in proportion
to their demand, capped by each pool's maximum. A pool nothing reaches within the horizon
(no call in flight, none projected) gets its minimum: it is drained. Scaling up happens as
soon as the projected wave appears (before its calls arrive: the horizon covers the model
load time); scaling down at most one replica per interval and only after ``down_delay_s`` of
lower demand, so a short lull does not throw away warm replicas. While the predictor is cold
the pool keeps its current size.
"""

from __future__ import annotations

import math

from pythia.errors import PythiaInputError
from pythia.policy.base import Autoscaler
from pythia.policy.pythia_predictor import PythiaPredictor, as_pythia
from pythia.policy.views import PoolView
from pythia.policy.workflow import Predictor


class PythiaAutoscaler(Autoscaler):
    """Targets from projected per-pool load within a GPU budget.

    Args:
        interval_s: seconds between decisions.
        horizon: call generations each job is projected ahead (1..16).
        target_util: the share of a replica's KV capacity the projected load should fill.
        down_delay_s: demand must stay lower this long before a replica is released.
        gpu_budget: replicas (TP 1 GPUs) the system may use at once; 0: what it started with.
    """

    name = "pythia"

    def __init__(self, interval_s: float = 15.0, horizon: int = 4, target_util: float = 0.8,
                 down_delay_s: float = 60.0, gpu_budget: int = 0) -> None:
        if not isinstance(interval_s, (int, float)) or interval_s <= 0:
            raise PythiaInputError(f"autoscaler param interval_s={interval_s!r} must be > 0")
        if not isinstance(horizon, int) or not 1 <= horizon <= 16:
            raise PythiaInputError(f"autoscaler param horizon={horizon!r} must be an integer in 1..16")
        if not 0.0 < target_util <= 1.0:
            raise PythiaInputError(f"autoscaler param target_util={target_util!r} must be in (0, 1]")
        if not isinstance(down_delay_s, (int, float)) or down_delay_s < 0:
            raise PythiaInputError(f"autoscaler param down_delay_s={down_delay_s!r} must be >= 0")
        if not isinstance(gpu_budget, int) or gpu_budget < 0:
            raise PythiaInputError(f"autoscaler param gpu_budget={gpu_budget!r} must be an integer >= 0")
        self.interval_s, self.horizon, self.target_util = float(interval_s), horizon, float(target_util)
        self.down_delay_s, self.gpu_budget = float(down_delay_s), gpu_budget
        self.pred: PythiaPredictor = as_pythia(None)
        self.pools: dict[str, PoolView] = {}
        self._targets: dict[str, int] = {}
        self._at = -1.0
        self._low_since: dict[str, float] = {}
        self._ticks = 0

    def bind(self, predictor: Predictor) -> None:
        """Receive the run's workflow service."""
        self.pred = as_pythia(predictor)

    def demand(self) -> dict[str, float] | None:
        """Expected load per pool in replicas; ``None`` while no job has a projection."""
        pred = self.pred
        tokens: dict[str, float] = {}
        any_proj = False
        for job_id, info in pred.jobs.items():
            proj = pred.projection(job_id, self.horizon)
            if proj is None:
                continue
            any_proj = True
            wt = info.workflow_type
            for role, n in proj.items():
                pool = pred.role_pool.get((wt, role))
                if pool is None or n <= 0:
                    continue
                per = (pred.mean_prompt(wt, role) or 0.0) + (pred.mean_output(wt, role) or 0.0)
                tokens[pool] = tokens.get(pool, 0.0) + n * per
        if not any_proj:
            return None
        out = {}
        for name, pool in self.pools.items():
            load = tokens.get(name, 0.0)
            for r in pool.replicas:  # calls in flight now
                if r.state in ("up", "draining"):
                    for c in r.running_calls():
                        load += c.prompt_tokens + c.num_output_tokens
                    load += r.pending_prefill_tokens
            reps = [r for r in pool.replicas]
            cap = reps[0].kv.total_blocks * reps[0].kv.block_size if reps else 1
            out[name] = load / (cap * self.target_util)
        return out

    def _plan(self, now: float) -> None:
        if self.gpu_budget == 0:
            self.gpu_budget = sum(p.num_up + p.num_starting for p in self.pools.values())
        dem = self.demand()
        current = {n: p.num_up + p.num_starting for n, p in self.pools.items()}
        if dem is None:
            self._targets = current
            return
        want = {n: p.min_replicas for n, p in self.pools.items()}
        spare = self.gpu_budget - sum(want.values())
        # Water-filling: one replica at a time to the pool with the most demand per replica.
        while spare > 0:
            cands = [n for n, p in self.pools.items() if want[n] < p.max_replicas and dem.get(n, 0.0) > 0]
            if not cands:
                break
            n = max(cands, key=lambda k: dem[k] / want[k])
            if dem[n] / want[n] <= 1.0 and all(dem[k] <= want[k] for k in cands):
                # Every pool is covered: leave the rest where it is (no churn without need).
                for k in sorted(self.pools, key=lambda k: -dem.get(k, 0.0)):
                    add = min(spare, max(0, min(current[k], self.pools[k].max_replicas) - want[k]))
                    if dem.get(k, 0.0) > 0:  # a pool nothing reaches stays at its minimum
                        want[k] += add
                        spare -= add
                break
            want[n] += 1
            spare -= 1
        targets = {}
        for n in self.pools:
            t = want[n]
            if t < current[n]:
                since = self._low_since.setdefault(n, now)
                t = current[n] - 1 if now - since >= self.down_delay_s else current[n]
                if t > want[n] and now - since >= self.down_delay_s:
                    self._low_since[n] = now
            else:
                self._low_since.pop(n, None)
            targets[n] = t
        # Never exceed the budget: scale-ups wait for the scale-downs that free their GPUs.
        over = sum(targets.values()) - self.gpu_budget
        if over > 0:
            for n in sorted(targets, key=lambda k: targets[k] - current[k], reverse=True):
                cut = min(over, max(0, targets[n] - current[n]))
                targets[n] -= cut
                over -= cut
        self._targets = targets

    def target(self, pool: PoolView, now: float) -> int:
        self.pools[pool.name] = pool
        if now != self._at:
            self._at = now
            if self._ticks > 0:  # the first tick only meets the pools (called one by one)
                self._plan(now)
            self._ticks += 1
        return self._targets.get(pool.name, pool.num_up + pool.num_starting)
