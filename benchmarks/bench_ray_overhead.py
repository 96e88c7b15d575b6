"""What the Ray Serve host adds to a call: the same calls straight to an engine server and through the ingress.

The engine is the load test's declared FAKE engine (``tests/ray_fake_engine.py``: no model,
a fixed delay per token), so that the difference is the host's own path (HTTP proxy,
ingress, request router and its policy call, replica proxy) and not engine noise. Calls are
sent one at a time (time to first token and to the end) and then 200 at once. Writes
``results/bench/ray_overhead.json``.

    python benchmarks/bench_ray_overhead.py
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from pythia.serve.ray_host.app import RayHost  # noqa: E402
from pythia.serve.ray_host.config import HostConfig, PoolSpec  # noqa: E402
from pythia.serve.server import free_port  # noqa: E402

FAKE = ROOT / "tests" / "ray_fake_engine.py"
BODY = {"model": "fake", "prompt": [1, 2, 3, 4], "max_tokens": 16, "stream": True,
        "vllm_xargs": {"pythia.workflow_type": "bench", "pythia.workflow_id": "w", "pythia.agent_role": "r"}}


async def timed(client: httpx.AsyncClient) -> tuple[float, float]:
    t0 = time.perf_counter()
    first = None
    async with client.stream("POST", "/v1/completions", json=BODY) as resp:
        async for line in resp.aiter_lines():
            if first is None and "token_ids" in line:
                first = time.perf_counter() - t0
    return first or float("nan"), time.perf_counter() - t0


async def measure(url: str, n: int = 50, burst: int = 200) -> dict[str, float]:
    limits = httpx.Limits(max_connections=burst, max_keepalive_connections=burst)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
        for _ in range(5):
            await timed(client)
        seq = [await timed(client) for _ in range(n)]
        t0 = time.perf_counter()
        await asyncio.gather(*(timed(client) for _ in range(burst)))
        wall = time.perf_counter() - t0
    return {"ttft_ms_median": 1e3 * statistics.median(s[0] for s in seq),
            "e2e_ms_median": 1e3 * statistics.median(s[1] for s in seq),
            f"burst_{burst}_wall_s": wall}


def main() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(FAKE), str(port), "0.002"])
    try:
        time.sleep(3.0)
        direct = asyncio.run(measure(f"http://127.0.0.1:{port}"))
    finally:
        proc.terminate()
        proc.wait(10)
    out = {"direct": direct}
    for router in ("round_robin", "pythia"):
        cfg = HostConfig(backend="ray-vllm-cpu", pools=(PoolSpec("p", "fake", replicas=2, max_replicas=2),),
                         system="pythia", router=router, autoscaler="none", http_port=free_port(), plugin=False,
                         num_cpus=2, engine_argv=(sys.executable, str(FAKE), "{port}", "0.002"))
        with RayHost(cfg, "/tmp/pythia-bench-ray") as host:
            out[f"ray_{router}"] = asyncio.run(measure(host.base_url))
            snap = host.snapshot()
            c = snap["counters"]
            out[f"ray_{router}"]["policy_route_us_mean"] = c.get("route_ns", 0) / 1e3 / max(1, c.get("routed", 0))
    for k in ("ray_round_robin", "ray_pythia"):
        out[k]["ttft_overhead_ms"] = out[k]["ttft_ms_median"] - direct["ttft_ms_median"]
    dest = ROOT / "results" / "bench" / "ray_overhead.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
