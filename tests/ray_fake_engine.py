"""A FAKE engine for the Ray Serve load test only: no model, no KV cache, no scheduling.

It speaks just enough of vLLM's OpenAI server for the Ray host to supervise it like a vLLM
server (``/health``, ``/metrics`` with vLLM 0.32's gauge names, ``/v1/completions`` streamed
as server-sent events with one token per chunk and a usage block), so that a load test can
push hundreds of concurrent calls through the real ingress, router, replicas and
workflow-state actor without a CPU engine per replica. Never used to measure serving.

    python tests/ray_fake_engine.py PORT [TOKEN_DELAY_S]
"""

from __future__ import annotations

import asyncio
import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

RUNNING = 0
DONE = 0
DELAY_S = float(sys.argv[2]) if len(sys.argv) > 2 else 0.01


async def health(_: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def metrics(_: Request) -> PlainTextResponse:
    return PlainTextResponse(
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{engine="0"}} {RUNNING}.0\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0"} 0.0\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        f'vllm:kv_cache_usage_perc{{engine="0"}} {min(1.0, RUNNING / 512):.4f}\n'
        "# TYPE vllm:cache_config_info gauge\n"
        'vllm:cache_config_info{block_size="32",engine="0",num_gpu_blocks="512"} 1.0\n'
        "# TYPE vllm:request_success counter\n"
        f'vllm:request_success_total{{engine="0"}} {DONE}.0\n'
    )


async def completions(request: Request) -> StreamingResponse | JSONResponse:
    global RUNNING, DONE
    body = await request.json()
    n = int(body.get("max_tokens") or 1)
    prompt = body.get("prompt")
    p = len(prompt) if isinstance(prompt, list) else 1

    async def gen():
        global RUNNING, DONE
        RUNNING += 1
        try:
            for i in range(n):
                await asyncio.sleep(DELAY_S)
                yield "data: " + json.dumps({"choices": [{"index": 0, "text": "x", "token_ids": [7]}]}) + "\n\n"
            usage = {"prompt_tokens": p, "completion_tokens": n, "prompt_tokens_details": {"cached_tokens": 0}}
            yield "data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"
            DONE += 1
        finally:
            RUNNING -= 1

    if body.get("stream"):
        return StreamingResponse(gen(), media_type="text/event-stream")
    await asyncio.sleep(DELAY_S * n)
    DONE += 1
    return JSONResponse({"choices": [{"index": 0, "text": "x" * n}], "usage": {"prompt_tokens": p, "completion_tokens": n}})


app = Starlette(routes=[Route("/health", health), Route("/metrics", metrics),
                        Route("/v1/completions", completions, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
