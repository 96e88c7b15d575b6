"""The custom autoscaling policy: Serve's controller asks, the system's autoscaler answers.

:class:`PythiaAutoscalingPolicy` is the ``policy_function`` of each pool deployment's
``autoscaling_config`` (a class: Serve builds it with ``policy_kwargs`` and calls it with an
``AutoscalingContext`` every control-loop tick). Every ``interval_s`` (the autoscaler's own
interval, as the simulator ticks it) it asks the workflow-state actor for the pool's target,
which the actor computes with the system's autoscaler (``pythia``, ``reactive``, ``none``)
over the replicas' latest stats and the predictor. The controller's loop must never block,
so the answer is collected on a later tick (``ray.wait`` with no timeout); until the first
answer the current target stands. Serve then applies ``min_replicas``/``max_replicas`` (the
actor clamps to the same bounds).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

from pythia.serve.ray_host.config import NAMESPACE, STATE_ACTOR

log = logging.getLogger("pythia.serve.ray")


class PythiaAutoscalingPolicy:
    """A Serve custom autoscaling policy hosting the system's autoscaler for one pool.

    Args:
        pool: the pool's name.
        interval_s: seconds between decisions.
        state_actor / namespace: the workflow-state actor.
    """

    def __init__(self, pool: str, interval_s: float = 10.0, state_actor: str = STATE_ACTOR,
                 namespace: str = NAMESPACE) -> None:
        if not interval_s > 0:
            raise ValueError(f"autoscaling policy interval_s={interval_s} must be positive")
        self.pool, self.interval_s = pool, float(interval_s)
        self.state_actor, self.namespace = state_actor, namespace
        self._state: Any = None
        self._pending: Any = None
        # The first decision comes one interval after deployment, as the simulator's first tick.
        self._last_ask = time.monotonic()
        self._decision: int | None = None

    def _actor(self) -> Any:
        if self._state is None:
            self._state = ray.get_actor(self.state_actor, namespace=self.namespace)
        return self._state

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        if self._pending is not None:
            ready, _ = ray.wait([self._pending], timeout=0)
            if ready:
                try:
                    self._decision = int(ray.get(ready[0]))
                except Exception as e:  # noqa: BLE001 - keep the current target when the answer failed
                    log.warning("autoscaler of pool %s failed: %s", self.pool, e)
                    self._state = None
                self._pending = None
        now = time.monotonic()
        if self._pending is None and now - self._last_ask >= self.interval_s:
            self._last_ask = now
            try:
                starting = max(0, int(ctx.target_num_replicas) - int(ctx.current_num_replicas))
                running = [getattr(r, "unique_id", str(r)) for r in ctx.running_replicas]
                self._pending = self._actor().target_for.remote(self.pool, running, starting)
            except Exception as e:  # noqa: BLE001
                log.warning("autoscaler of pool %s unreachable: %s", self.pool, e)
                self._state = None
        target = self._decision if self._decision is not None else int(ctx.target_num_replicas)
        return target, {}
