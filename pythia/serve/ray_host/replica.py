"""One replica of a model pool: a Serve deployment replica that supervises one engine server.

The decision (docs/ray-serve.md): each replica starts and supervises a vLLM OpenAI server
process with the Pythia scheduler plugin, launched by :func:`pythia.serve.engines.build_launch`
exactly as ``pythia run --backend vllm-cpu|vllm`` launches it, and forwards calls to it over
loopback HTTP. The engine keeps its own process, event loop and OpenMP threads (the set-up
measured in docs/vllm.md), the plugin and its settings are unchanged, and a crashed engine
is found by Serve's health check and replaced with the replica.

The replica also keeps what its router needs and vLLM's ``/metrics`` does not say: the calls
it is serving (annotation, prompt length, tokens so far) and an estimate of the prefix blocks
its engine holds (the block hashes of the calls it served, in LRU order, bounded by the KV
pool). It publishes both with the engine's counters in ``record_routing_stats`` and reports
them to the workflow-state actor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import ray
from ray import serve

from pythia.serve.engines import EngineLaunch, build_launch
from pythia.serve.ray_host.config import NAMESPACE, STATE_ACTOR, HostConfig, PoolSpec
from pythia.serve.ray_host.engine_metrics import parse_engine_metrics
from pythia.serve.ray_host.views import replica_stats
from pythia.serve.server import EngineServer, free_port, log_tail

log = logging.getLogger("pythia.serve.ray")
# Most recent cached block hashes a replica publishes (its full estimate stays local).
MAX_PUBLISHED_HASHES = 4096
DEFAULT_BLOCK_SIZE = 16


class EngineUnavailable(RuntimeError):
    """The replica's engine is not serving (it died or is not up yet): the call may go elsewhere."""


class EngineHTTPError(RuntimeError):
    """The engine answered with an error status: the call's own fault, never retried."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status
        self.text = text


def engine_launch(config: HostConfig, pool: PoolSpec, port: int, log_dir: Path, tag: str) -> EngineLaunch:
    """The engine command of one replica: ``build_launch`` as ``pythia run`` calls it, or the declared fake."""
    if config.engine_argv is not None:
        argv = [a.replace("{port}", str(port)) for a in config.engine_argv]
        return EngineLaunch("fake", argv, {}, "127.0.0.1", port, pool.model)
    plugin_config: dict[str, Any] = {}
    if config.plugin:
        plugin_config = {
            "hooks": f"system:{config.system}",
            "stats_path": str(log_dir / f"plugin-stats-{tag}.json"),
            "events_path": str(log_dir / f"plugin-events-{tag}.jsonl"),
            "pool": pool.name,
        }
    return build_launch(
        config.engine_backend, pool.model, port, config.engine_flags, plugin=config.plugin,
        plugin_config=plugin_config, max_model_len=config.max_model_len, num_blocks=pool.num_blocks,
        kv_cache_gib=config.kv_cache_gib, extra_args=list(config.extra_engine_args),
    )


def _tokens_in(msg: dict[str, Any]) -> int:
    """Tokens one streamed chunk carries (token ids when asked for, else one per non-empty choice)."""
    n = 0
    for choice in msg.get("choices") or ():
        ids = choice.get("token_ids")
        if ids:
            n += len(ids)
        elif choice.get("text") or (choice.get("delta") or {}).get("content"):
            n += 1
    return n


class EngineReplica:
    """A Serve replica of one pool: starts its engine, forwards calls, publishes its stats.

    Args:
        config: the deployment's settings.
        pool: the pool this replica serves.
        log_dir: where the engine's log (``engine-<pool>-<n>.log``) and plugin files go.
    """

    async def __init__(self, config: HostConfig, pool: PoolSpec, log_dir: str) -> None:
        self.config, self.pool = config, pool
        self.log_dir = Path(log_dir)
        self.state = ray.get_actor(STATE_ACTOR, namespace=NAMESPACE)
        ctx = serve.get_replica_context()
        self.unique_id = ctx.replica_id.unique_id
        self.replica_id = int(await self.state.allocate_replica.remote(self.unique_id, pool.name))
        tag = f"{pool.name}-{self.replica_id}"
        port = free_port()
        self.launch = engine_launch(config, pool, port, self.log_dir, tag)
        self.server = EngineServer(self.launch, self.log_dir / f"engine-{tag}.log", start_timeout_s=config.start_timeout_s)
        self.server.start()
        self.client = httpx.AsyncClient(base_url=self.launch.base_url, timeout=httpx.Timeout(None, connect=5.0),
                                        limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256))
        self.inflight: dict[str, dict[str, Any]] = {}
        self.cached: OrderedDict[int, None] = OrderedDict()
        self.engine: dict[str, Any] = {}
        self.failed = False
        self.calls_served = 0
        await self._wait_healthy()
        await self._scrape()
        self.state.replica_started.remote(self.replica_id, pool.name)

    async def _wait_healthy(self) -> None:
        t0 = time.monotonic()
        while True:
            if not self.server.is_running():
                raise RuntimeError(f"engine of replica {self.replica_id} exited before it was healthy; log tail:\n"
                                   + log_tail(self.server.log_path))
            try:
                r = await self.client.get(self.launch.health_path, timeout=2.0)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > self.config.start_timeout_s:
                self.server.stop()
                raise RuntimeError(f"engine of replica {self.replica_id} not healthy after "
                                   f"{self.config.start_timeout_s:.0f} s; log {self.server.log_path}")
            await asyncio.sleep(0.5)

    # ------------------------------------------------------------------ serving

    def _touch(self, hashes: Any) -> None:
        for h in (hashes.tolist() if hasattr(hashes, "tolist") else list(hashes)):
            self.cached[int(h)] = None
            self.cached.move_to_end(int(h))
        cap = int(self.engine.get("total_blocks") or 0) or MAX_PUBLISHED_HASHES
        while len(self.cached) > cap:
            self.cached.popitem(last=False)

    def _dead(self, err: BaseException) -> EngineUnavailable:
        if not self.server.is_running() and not self.failed:
            self.failed = True
            code = self.server.proc.poll() if self.server.proc else None
            self.state.replica_failed.remote(self.replica_id, f"engine exited with status {code}")
        return EngineUnavailable(f"replica {self.replica_id}: engine unavailable ({type(err).__name__}: {err})")

    async def generate(self, rec: dict[str, Any], body: dict[str, Any], path: str) -> AsyncIterator[Any]:
        """Forward one call to the engine: yields ``{"replica": id}``, then the response (SSE lines or one JSON body)."""
        if self.failed or not self.server.is_running():
            raise self._dead(RuntimeError("engine process is not running"))
        rid = str(rec["request_id"])
        light = {k: rec[k] for k in ("request_id", "seq", "job_id", "workflow_type", "workflow_id", "agent_role",
                                     "agent_id", "call_id", "prompt_tokens", "hints")}
        light.update(output_tokens=0, arrival_s=time.time())
        self.inflight[rid] = light
        hashes = rec.get("block_hashes")
        prompt_blocks = int(rec["prompt_tokens"]) // int(self.engine.get("block_size") or DEFAULT_BLOCK_SIZE)
        if hashes is not None and len(hashes):
            self._touch(hashes[:prompt_blocks])
        yield {"replica": self.replica_id}
        try:
            if body.get("stream"):
                async with self.client.stream("POST", path, json=body) as resp:
                    if resp.status_code != 200:
                        raise EngineHTTPError(resp.status_code, (await resp.aread()).decode("utf-8", "replace")[:500])
                    async for line in resp.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data != "[DONE]":
                            try:
                                light["output_tokens"] += _tokens_in(json.loads(data))
                            except (json.JSONDecodeError, AttributeError):
                                pass
                        yield line + "\n\n"
            else:
                resp = await self.client.post(path, json=body)
                if resp.status_code != 200:
                    raise EngineHTTPError(resp.status_code, resp.text[:500])
                yield resp.content
            self.calls_served += 1
            if hashes is not None and len(hashes):
                self._touch(hashes)
        except httpx.HTTPError as e:
            raise self._dead(e) from None
        finally:
            self.inflight.pop(rid, None)

    # ------------------------------------------------------------------ stats and health

    async def _scrape(self) -> None:
        try:
            r = await self.client.get(self.launch.metrics_path, timeout=2.0)
            if r.status_code == 200:
                self.engine.update(parse_engine_metrics(r.text))
        except httpx.HTTPError:
            pass

    def stats(self) -> dict[str, Any]:
        """This replica's routing stats (see :func:`pythia.serve.ray_host.views.replica_stats`)."""
        e = self.engine
        recent = list(self.cached)[-MAX_PUBLISHED_HASHES:]
        counters = {k: e[k] for k in ("prefix_cache_queries", "prefix_cache_hits", "preemptions",
                                      "requests_finished", "prompt_tokens", "generation_tokens") if k in e}
        return replica_stats(
            replica_id=self.replica_id, pool=self.pool.name, state="down" if self.failed else "up",
            num_running=int(e.get("num_running", 0)), num_waiting=int(e.get("num_waiting", 0)),
            kv_usage=float(e.get("kv_usage", 0.0)), total_blocks=int(e.get("total_blocks", 0)),
            block_size=int(e.get("block_size", DEFAULT_BLOCK_SIZE)), cached_hashes=recent,
            running=list(self.inflight.values()), t=time.time(), engine_pid=self.server.proc.pid if self.server.proc else None,
            engine_url=self.launch.base_url, calls_served=self.calls_served,
            host_capacity_blocks=int(e.get("host_capacity_blocks", 0)), **counters,
        )

    async def record_routing_stats(self) -> dict[str, Any]:
        """Called by Serve every ``request_routing_stats_period_s``: scrape the engine, publish and report."""
        await self._scrape()
        st = self.stats()
        self.state.report_replica.remote(st)
        return st

    async def check_health(self) -> None:
        """Serve's health check: a replica whose engine exited is unhealthy (Serve replaces it)."""
        if not self.server.is_running():
            self._dead(RuntimeError("engine process exited"))
            raise RuntimeError(f"replica {self.replica_id}: engine exited with status {self.server.proc.poll() if self.server.proc else None}")

    def __del__(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.stop(grace_s=5.0)

