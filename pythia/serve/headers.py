"""``X-Pythia-*`` request headers into the call annotation, as ASGI middleware for vLLM's server.

A client or router that cannot set a body field (``extra_body``) sends the annotation as
headers (:data:`pythia.workflow.annotation.HEADERS`). vLLM's OpenAI server loads this class
with ``--middleware pythia.serve.headers.PythiaHeaders`` (``pythia run`` and
:func:`pythia.serve.engines.build_launch` add it whenever the plugin is on); for a JSON POST
carrying such headers it copies their fields into the body's ``vllm_xargs``, where the
scheduler plugin reads them. Fields already in the body win. Anything else passes through
unchanged: no header, another method, a body that is not a JSON object, a body over
``MAX_BODY_BYTES``. The middleware never fails a request; a malformed value reaches the
plugin, which serves the call unannotated and counts it.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from pythia.workflow.annotation import HEADERS, headers_to_extra_args

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024 * 1024
_HEADER_NAMES = {h.encode("latin-1") for h in HEADERS.values()}


class PythiaHeaders:
    """ASGI middleware: ``X-Pythia-*`` headers merged into a JSON body's ``vllm_xargs``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        raw = [(k.lower(), v) for k, v in scope.get("headers") or []]
        found = {k.decode("latin-1"): v.decode("latin-1", "replace") for k, v in raw if k in _HEADER_NAMES}
        if not found:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        messages: list[Message] = []
        while more:
            msg = await receive()
            messages.append(msg)
            if msg.get("type") != "http.request":
                break  # the client went away: hand over what came, as it came
            chunk = msg.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = bool(msg.get("more_body", False))
            if size > MAX_BODY_BYTES:
                break
        body = b"".join(chunks)
        merged = None if more or size > MAX_BODY_BYTES else _merge(body, headers_to_extra_args(found))
        if merged is None:
            replay = iter(messages)

            async def receive_again() -> Message:
                try:
                    return next(replay)
                except StopIteration:
                    return await receive()

            await self.app(scope, receive_again, send)
            return
        headers = [(k, v) for k, v in raw if k != b"content-length"]
        headers.append((b"content-length", str(len(merged)).encode()))
        sent = False

        async def receive_merged() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": merged, "more_body": False}
            return await receive()

        await self.app({**scope, "headers": headers}, receive_merged, send)


def _merge(body: bytes, fields: dict[str, Any]) -> bytes | None:
    """The body with ``fields`` added to its ``vllm_xargs`` (body keys win); ``None`` to leave it."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    xargs = doc.get("vllm_xargs")
    if xargs is None:
        xargs = {}
    if not isinstance(xargs, dict):
        return None
    doc["vllm_xargs"] = {**fields, **xargs}
    return json.dumps(doc).encode()
