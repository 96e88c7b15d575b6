"""The OpenAI-compatible ingress: annotation in, pool chosen, call forwarded, retried when a replica dies.

``POST /v1/completions`` and ``POST /v1/chat/completions`` (streaming or not) take the same
bodies as vLLM's server. The ingress reads the call's annotation from the body
(``vllm_xargs`` ``pythia.*`` keys, or a ``pythia`` object) and the ``X-Pythia-*`` headers
(:func:`pythia.serve.ray_host.views.parse_call`), counts a malformed one and serves that call
unannotated, picks the call's pool (its role's pool from the workload's models, else the
pool its ``model`` names, else the first pool), reports the call to the workflow-state actor
and sends it to the pool's deployment, whose request router picks the replica.

Faults: a call that fails before its first token (the replica or its engine died, or is not
up yet) is sent again, to whichever replica the router then picks, until
``retry_before_first_token`` attempts or ``retry_deadline_s`` have passed. A call cut
mid-stream is retried once from the start; the tokens the client already has are not sent
twice (greedy decoding gives the same tokens again), so the client sees one whole answer. If
that retry fails too, the stream is broken off without its end, so the client records a
failed call: no call is dropped silently. ``GET /pythia/stats`` returns the counters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from typing import Any, AsyncIterator

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from pythia.serve.engines import CPU_BLOCK_MULTIPLE
from pythia.serve.ray_host.config import NAMESPACE, STATE_ACTOR, HostConfig
from pythia.serve.ray_host.replica import EngineHTTPError, _tokens_in
from pythia.serve.ray_host.views import parse_call

log = logging.getLogger("pythia.serve.ray")
app = FastAPI()


def _normalise(name: str) -> str:
    return name.strip().lower().rstrip("/").rsplit("/", 1)[-1]


def http_error_of(e: BaseException) -> EngineHTTPError | None:
    """The engine's own error status inside a (possibly Ray-wrapped) exception, if it is one."""
    if isinstance(e, EngineHTTPError):
        return e
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, EngineHTTPError) else None


class CallFailed(RuntimeError):
    """A call found no replica to serve it within its attempts."""


class _Outcome:
    """What one call's attempts produced so far."""

    __slots__ = ("replica", "tokens", "usage_tokens", "retries")

    def __init__(self) -> None:
        self.replica: int | None = None
        self.tokens = 0
        self.usage_tokens: int | None = None
        self.retries = 0


def _chunk_info(line: str) -> tuple[int, int | None, bool]:
    """(tokens, completion tokens of a usage block or None, is the end marker) of one SSE line."""
    data = line[5:].strip() if line.startswith("data:") else line.strip()
    if data == "[DONE]":
        return 0, None, True
    try:
        msg = json.loads(data)
    except json.JSONDecodeError:
        return 0, None, False
    usage = msg.get("usage") if isinstance(msg, dict) else None
    n = _tokens_in(msg) if isinstance(msg, dict) else 0
    return n, (int(usage.get("completion_tokens") or 0) if isinstance(usage, dict) else None), False


async def _empty() -> AsyncIterator[Any]:
    return
    yield  # pragma: no cover - makes this an async generator


@serve.ingress(app)
class PythiaIngress:
    """The ingress deployment (see the module docstring).

    Args:
        config: the deployment's settings.
        pools: pool name -> the pool deployment's handle.
    """

    def __init__(self, config: HostConfig, pools: dict[str, Any]) -> None:
        self.config = config
        self.handles = {name: h.options(stream=True) for name, h in pools.items()}
        self.state = ray.get_actor(STATE_ACTOR, namespace=NAMESPACE)
        bs = int(config.engine_flags.get("block_size", 16))
        if config.engine_backend == "vllm-cpu" and bs % CPU_BLOCK_MULTIPLE:
            bs = -(-bs // CPU_BLOCK_MULTIPLE) * CPU_BLOCK_MULTIPLE  # as build_launch raises it
        self.block_size = bs
        self.by_model: dict[str, str] = {}
        for p in config.pools:
            for n in (p.name, p.model, *p.aliases):
                self.by_model.setdefault(_normalise(n), p.name)
        self.counters: Counter[str] = Counter()
        self.in_progress = 0

    # ------------------------------------------------------------------ routes

    @app.get("/health")
    async def health(self) -> Response:
        return Response("ok")

    @app.get("/v1/models")
    async def models(self) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": p.model, "object": "model", "owned_by": p.name}
                                                        for p in self.config.pools]})

    @app.get("/pythia/stats")
    async def stats(self) -> JSONResponse:
        return JSONResponse({**self.counters, "in_progress": self.in_progress})

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._serve(request, "/v1/completions")

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        return await self._serve(request, "/v1/chat/completions")

    # ------------------------------------------------------------------ serving

    def pool_for(self, rec: dict[str, Any]) -> str:
        """The pool of a call: its role's, else the one its model names, else the first."""
        by_role = self.config.role_pools.get((rec["workflow_type"], rec["agent_role"]))
        if by_role is not None:
            return by_role
        return self.by_model.get(_normalise(rec.get("model", "")), self.config.pools[0].name)

    async def _serve(self, request: Request, path: str) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return JSONResponse({"error": {"message": "the request body is not JSON", "type": "BadRequest"}}, 400)
        if not isinstance(body, dict):
            return JSONResponse({"error": {"message": "the request body must be a JSON object", "type": "BadRequest"}}, 400)
        call = parse_call(body, request.headers, self.block_size)
        if call.malformed:
            self.counters["malformed_annotations"] += 1
            self.state.note_malformed.remote()
        rec, fwd = call.record, call.body
        pool = self.pool_for(rec)
        fwd["model"] = self.config.pool(pool).model
        self.counters["accepted"] += 1
        self.counters[f"pool:{pool}"] += 1
        self.in_progress += 1
        self.state.call_issued.remote(rec)
        outcome = _Outcome()
        try:
            first, rest = await self._open(pool, rec, fwd, path, outcome, skip=0)
        except Exception as e:  # noqa: BLE001 - every failure is answered and counted
            self._finish(rec, outcome, ok=False)
            err = http_error_of(e)
            if err is not None:
                return Response(err.text, status_code=err.status, media_type="application/json")
            return JSONResponse({"error": {"message": f"no replica could serve the call: {e}", "type": "Unavailable"}}, 503)
        if not fwd.get("stream"):
            self._finish(rec, outcome, ok=True)
            return Response(first, media_type="application/json")
        return StreamingResponse(self._stream(pool, rec, fwd, path, outcome, first, rest), media_type="text/event-stream")

    async def _open(self, pool: str, rec: dict[str, Any], body: dict[str, Any], path: str, outcome: "_Outcome",
                    skip: int) -> tuple[Any, AsyncIterator[Any]]:
        """Start the call on a replica and return its first content item and the rest.

        Retries failures before the first item (after ``skip`` tokens already delivered, when
        resuming a cut stream). Raises the engine's own HTTP error, or :class:`CallFailed`.
        """
        deadline = time.monotonic() + self.config.retry_deadline_s
        attempt = 0
        while True:
            gen = self.handles[pool].generate.remote(rec, body, path)
            try:
                it = gen.__aiter__()
                meta = await it.__anext__()
                outcome.replica = int(meta["replica"])
                seen = 0
                while True:
                    item = await it.__anext__()
                    if skip and isinstance(item, str):
                        n, usage, done = _chunk_info(item)
                        if not usage and not done and seen < skip:
                            seen += n
                            continue  # the client has these tokens already
                    return item, it
            except StopAsyncIteration:
                return b"", _empty()
            except Exception as e:  # noqa: BLE001
                if http_error_of(e) is not None:
                    raise
                attempt += 1
                self.counters["retries_before_first_token"] += 1
                outcome.retries += 1
                if attempt > self.config.retry_before_first_token or time.monotonic() > deadline:
                    raise CallFailed(f"{attempt} attempts failed, the last with {type(e).__name__}: {e}") from None
                await asyncio.sleep(min(2.0, 0.25 * 2 ** (attempt - 1)))

    async def _stream(self, pool: str, rec: dict[str, Any], body: dict[str, Any], path: str, outcome: "_Outcome",
                      first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        ok = False
        resumed = False
        try:
            item: Any = first
            while True:
                if isinstance(item, str):
                    n, usage, _ = _chunk_info(item)
                    outcome.tokens += n
                    if usage is not None:
                        outcome.usage_tokens = usage
                    yield item.encode()
                elif item:
                    yield item
                try:
                    item = await rest.__anext__()
                except StopAsyncIteration:
                    break
                except Exception as e:  # noqa: BLE001 - a cut stream: retry once from the start
                    if resumed:
                        self.counters["failed_mid_stream"] += 1
                        raise
                    resumed = True
                    self.counters["retries_mid_stream"] += 1
                    outcome.retries += 1
                    log.warning("call %s cut after %d tokens (%s); retrying it once", rec["request_id"], outcome.tokens, e)
                    item, rest = await self._open(pool, rec, body, path, outcome, skip=outcome.tokens)
            ok = True
        finally:
            self._finish(rec, outcome, ok=ok)

    def _finish(self, rec: dict[str, Any], outcome: "_Outcome", ok: bool) -> None:
        self.in_progress -= 1
        self.counters["finished" if ok else "failed_reported"] += 1
        tokens = outcome.usage_tokens if outcome.usage_tokens is not None else outcome.tokens
        self.state.call_finished.remote(str(rec["request_id"]), int(tokens), ok, outcome.replica,
                                        bool(rec.get("last_call")), outcome.retries)
