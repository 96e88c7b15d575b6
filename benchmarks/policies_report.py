"""The report of ``bench_policies.py``: markdown tables and figures drawn from its JSON alone."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

OTHERS_EXCLUDED = ("vllm", "oracle")


def fmt(x: Any, d: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{d}f}"


def rx(x: Any) -> str:
    """A ratio as ``1.23x``, or ``n/a``."""
    out = fmt(x, 2)
    return out if out == "n/a" else out + "x"


def _ok(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if "error" not in r and r.get("mean_jct_s") is not None and not math.isnan(r["mean_jct_s"])]


def _level(r: dict[str, Any]) -> float:
    load = r["load"]
    return load["concurrency"] if "concurrency" in load else load["arrival"]["rate"]


def _group(runs: list[dict[str, Any]]) -> dict[tuple, dict[str, dict[int, dict[str, Any]]]]:
    """(kind, name, level, kv_target) -> system -> seed -> run."""
    g: dict[tuple, dict[str, dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for r in _ok(runs):
        g[(r["kind"], r["name"], _level(r), r["kv_target"])][r["system"]][r["seed"]] = r
    return g


def _is_other(system: str) -> bool:
    return system not in OTHERS_EXCLUDED and not system.startswith("pythia")


def best_other(by: dict[str, dict[int, dict[str, Any]]], seed: int) -> dict[str, Any] | None:
    """The baseline with the lowest mean JCT at ``seed`` (vllm, the oracle and pythia's variants excluded)."""
    cands = [runs[seed] for s, runs in by.items() if _is_other(s) and seed in runs]
    return min(cands, key=lambda r: r["mean_jct_s"]) if cands else None


def paired(by: dict[str, dict[int, dict[str, Any]]], num: str, den: str, key: str = "mean_jct_s",
           higher_better: bool = False) -> list[float]:
    """Per seed, ``den``'s metric over ``num``'s (so > 1 means ``num`` is better)."""
    out = []
    for seed, r in by.get(num, {}).items():
        d = by.get(den, {}).get(seed)
        if d is None or not r.get(key) or not d.get(key):
            continue
        out.append(r[key] / d[key] if higher_better else d[key] / r[key])
    return out


def interval(xs: list[float]) -> str:
    """``mean`` with a 95% interval over seeds (t distribution), or the single value."""
    if not xs:
        return "n/a"
    m = statistics.fmean(xs)
    if len(xs) == 1:
        return f"{m:.2f}x (1 seed)"
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78}.get(len(xs), 2.0)
    h = t * statistics.stdev(xs) / math.sqrt(len(xs))
    return f"{m:.2f}x [{m - h:.2f}, {m + h:.2f}] ({len(xs)} seeds)"


def saturation(runs: list[dict[str, Any]], name: str) -> float | None:
    """The smallest concurrency at which vllm's throughput is within 5% of its largest (load cells)."""
    pts = sorted((_level(r), r["output_tokens_per_s"]) for r in _ok(runs)
                 if r["kind"] == "load" and r["name"] == name and r["system"] == "vllm")
    if not pts:
        return None
    top = max(t for _, t in pts)
    return min(c for c, t in pts if t >= 0.95 * top)


def _system_table(by: dict[str, dict[int, dict[str, Any]]], seed: int) -> list[str]:
    v, o = by.get("vllm", {}).get(seed), by.get("oracle", {}).get(seed)
    lines = ["| system | mean JCT s | P95 JCT s | out tok/s | goodput jobs/h | stretch | prefix hit | preempt | queue s | lost | mean JCT vs vllm | vs oracle |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = sorted((runs[seed] for runs in by.values() if seed in runs), key=lambda r: r["mean_jct_s"])
    for r in rows:
        rv = v["mean_jct_s"] / r["mean_jct_s"] if v else float("nan")
        ro = r["mean_jct_s"] / o["mean_jct_s"] if o else float("nan")
        gp = r.get("goodput_jobs_per_s")
        lines.append(
            f"| {r['system']} | {fmt(r['mean_jct_s'])} | {fmt(r['p95_jct_s'])} | {fmt(r['output_tokens_per_s'])} | "
            f"{fmt(gp * 3600 if gp is not None else None, 1)} | {fmt(r.get('jct_stretch'), 2)} | {fmt(r['prefix_hit_rate'], 3)} | "
            f"{r['preemptions']} | {fmt(r.get('mean_queue_s'), 1)} | {r['calls_lost']} | {rx(rv)} | {rx(ro)} |")
    lb = next((r.get("mean_lower_bound_jct_s") for r in rows if r.get("mean_lower_bound_jct_s")), None)
    lines.append(f"| lower bound | {fmt(lb)} | | | | 1.00 | | | | | {rx(v['mean_jct_s'] / lb if v and lb else None)} | "
                 f"{rx(lb / o['mean_jct_s'] if o and lb else None)} |")
    return lines


def _targets(by: dict[str, dict[int, dict[str, Any]]], targets: dict[str, float]) -> list[str]:
    seeds = sorted(by.get("pythia", {}))
    rows = []

    def check(name: str, got: list[float], goal: float, oracle: list[float] | None = None, bound: list[float] | None = None,
              lower_is_better: bool = False) -> None:
        if not got:
            return
        m = statistics.fmean(got)
        ok = m <= goal if lower_is_better else m >= goal
        ref = ""
        if oracle:
            ref += f"oracle {statistics.fmean(oracle):.2f}x"
        if bound:
            ref += f"{'; ' if ref else ''}lower bound {statistics.fmean(bound):.2f}x"
        rows.append(f"| {name} | {interval(got)} | {goal}x | {'yes' if ok else 'no'} | {ref or '-'} |")

    def vs(num: str, key: str = "mean_jct_s", higher: bool = False) -> list[float]:
        return paired(by, num, "vllm", key, higher)

    bound = [by["vllm"][s]["mean_jct_s"] / by["vllm"][s]["mean_lower_bound_jct_s"] for s in seeds
             if s in by.get("vllm", {}) and by["vllm"][s].get("mean_lower_bound_jct_s")]
    check("mean JCT lower than vllm", vs("pythia"), targets["mean_jct"], vs("oracle"), bound)
    check("P95 JCT lower than vllm", vs("pythia", "p95_jct_s"), targets["p95_jct"], vs("oracle", "p95_jct_s"))
    check("output throughput over vllm", vs("pythia", "output_tokens_per_s", True), targets["throughput"],
          vs("oracle", "output_tokens_per_s", True))
    best = []
    names = set()
    for s in seeds:
        b = best_other(by, s)
        if b is not None:
            best.append(b["mean_jct_s"] / by["pythia"][s]["mean_jct_s"])
            names.add(b["system"])
    oracle_best = [best_other(by, s)["mean_jct_s"] / by["oracle"][s]["mean_jct_s"] for s in seeds
                   if s in by.get("oracle", {}) and best_other(by, s) is not None]
    check(f"mean JCT better than the best other baseline ({', '.join(sorted(names))})", best, targets["vs_best"], oracle_best)
    gap = [by["pythia"][s]["mean_jct_s"] / by["oracle"][s]["mean_jct_s"] for s in seeds if s in by.get("oracle", {})]
    check("mean JCT within the oracle's", gap, targets["oracle_gap"], lower_is_better=True)
    if not rows:
        return []
    return ["", "| target (pythia) | measured, paired per seed | goal | met | the oracle / the lower bound |",
            "|---|---|---|---|---|"] + rows


def render(out: dict[str, Any]) -> str:
    runs = out["runs"]
    g = _group(runs)
    lines = ["# Policies across regimes", "",
             "Simulated `paper` cluster (8x A100-80GB; Qwen2.5 3B/7B/14B pools: 2, 3, 3 replicas) unless a cell names "
             f"another. Evaluation seeds {out['eval_seeds']}; knobs chosen on {out['dev_seeds']}; Pythia's warm-start history "
             f"from {out['history_seeds']}. Jobs per closed-loop run: 3 x concurrency. {len(_ok(runs))} runs; their wall "
             f"times sum to {sum(r.get('wall_s', 0.0) for r in {r['key']: r for r in runs}.values()):.0f} s (2 workers, shared machine). "
             "Produced by `python benchmarks/bench_policies.py`; every figure below is in `policies.json`.", "",
             "Regime of a cell: offered load (concurrency over the concurrency where vllm's throughput plateaus) and "
             "`kv_working_set_ratio` (peak summed KV of live agents, idle ones in a tool gap included, over the bottleneck "
             "pool's KV capacity; docs/simulator.md). Ratios are paired per seed; `lower bound` is the mean of each job's "
             "JCT alone on an idle cluster with every reachable prefix cached.", ""]
    # Load sweeps.
    for name in sorted({k[1] for k in g if k[0] == "load"}):
        sat = saturation(runs, name)
        levels = sorted(k[2] for k in g if k[0] == "load" and k[1] == name)
        systems = sorted({s for k in g if k[0] == "load" and k[1] == name for s in g[k]},
                         key=lambda s: (s != "vllm", s != "pythia", s != "oracle", s))
        lines += [f"## {name}: load sweep (closed loop, seed 0)", "",
                  f"vllm's throughput plateaus from {fmt(sat, 0)} jobs in flight (within 5% of its largest).", "",
                  "| in flight | load / saturation | working-set ratio | lower bound s | " + " | ".join(systems) + " | pythia vs vllm | pythia vs best other |",
                  "|" + "---|" * (len(systems) + 6)]
        for c in levels:
            by = g[("load", name, c, None)]
            v = by.get("vllm", {}).get(0)
            p = by.get("pythia", {}).get(0)
            b = best_other(by, 0)
            cells = [fmt(by[s][0]["mean_jct_s"]) if 0 in by.get(s, {}) else "n/a" for s in systems]
            lines.append(f"| {c:g} | {fmt(c / sat if sat else None, 2)} | {fmt(v['kv_working_set_ratio'] if v else None, 2)} | "
                         f"{fmt(v['mean_lower_bound_jct_s'] if v else None)} | " + " | ".join(cells) +
                         f" | {rx(v['mean_jct_s'] / p['mean_jct_s'] if v and p else None)} | "
                         f"{rx(b['mean_jct_s'] / p['mean_jct_s'] if b and p else None)} ({b['system'] if b else '-'}) |")
        lines.append("")
    # KV-pressure sweeps.
    for name in sorted({k[1] for k in g if k[0] == "kv"}):
        keys = sorted((k for k in g if k[0] == "kv" and k[1] == name), key=lambda k: k[3])
        systems = sorted({s for k in keys for s in g[k]}, key=lambda s: (s != "vllm", s != "pythia", s != "oracle", s))
        c = keys[0][2]
        lines += [f"## {name}: KV-pressure sweep at {c:g} in flight (seed 0)", "",
                  "Every pool's `kv_cache_tokens` scaled so that vllm's natural working-set ratio becomes the target; "
                  "every system of a row gets the same budget.", "",
                  "| target ratio | measured (vllm) | " + " | ".join(systems) + " | pythia vs vllm | pythia vs best other | oracle vs vllm |",
                  "|" + "---|" * (len(systems) + 5)]
        for k in keys:
            by = g[k]
            v, p, o = (by.get(s, {}).get(0) for s in ("vllm", "pythia", "oracle"))
            b = best_other(by, 0)
            cells = [fmt(by[s][0]["mean_jct_s"]) if 0 in by.get(s, {}) else "n/a" for s in systems]
            lines.append(f"| {k[3]:g} | {fmt(v['kv_working_set_ratio'] if v else None, 2)} | " + " | ".join(cells) +
                         f" | {rx(v['mean_jct_s'] / p['mean_jct_s'] if v and p else None)} | "
                         f"{rx(b['mean_jct_s'] / p['mean_jct_s'] if b and p else None)} | "
                         f"{rx(v['mean_jct_s'] / o['mean_jct_s'] if v and o else None)} |")
        lines.append("")
    # Headline, trace and bursty cells: the full table.
    for kind, title in (("headline", "saturated, KV-oversubscribed cell"), ("trace", "Claude Code sessions"),
                        ("bursty", "bursty open loop")):
        for k in sorted((k for k in g if k[0] == kind), key=lambda k: (k[1], k[2], -1.0 if k[3] is None else k[3])):
            by = g[k]
            seeds = sorted({s for runs in by.values() for s in runs})
            v0 = by.get("vllm", {}).get(seeds[0]) if seeds else None
            load = f"{k[2]:g} in flight" if kind != "bursty" else f"gamma arrivals at {k[2]:g} jobs/s, burstiness 0.25"
            kv = f", KV pool set to working-set ratio {k[3]:g}" if k[3] is not None else ""
            lines += [f"## {k[1]}: {title} ({load}{kv})", "",
                      f"Measured working-set ratio (vllm, seed {seeds[0] if seeds else '-'}): "
                      f"{fmt(v0['kv_working_set_ratio'] if v0 else None, 2)}; seeds {seeds}.", ""]
            lines += _system_table(by, seeds[0]) if seeds else []
            lost = sorted(f"{s} (seed {seed}: {r['calls_lost']} calls, {r['jobs_submitted'] - r['jobs_completed']} jobs)"
                          for s, rs in by.items() for seed, r in rs.items() if r.get("calls_lost"))
            if lost:
                lines += ["", "**Not a valid comparison for the runs that lost calls**: " + "; ".join(lost)
                          + ". A lost call ends its job unfinished, and mean JCT covers finished jobs only, so those "
                          "rows (and the targets below where they enter) understate their JCT."]
            if kind == "bursty":
                lines += ["", "| system | GPU-seconds | cold-start replica-s | mean JCT s |", "|---|---|---|---|"]
                for s, rs in sorted(by.items()):
                    r = rs[seeds[0]]
                    lines.append(f"| {s} | {fmt(r.get('gpu_seconds'), 0)} | {fmt(r.get('cold_start_replica_s'), 0)} | {fmt(r['mean_jct_s'])} |")
            lines += _targets(by, out["targets"])
            # paired(pythia, s): s's mean JCT over pythia's, per seed.
            abl = [(s, paired(by, "pythia", s)) for s in by if s.startswith("pythia-no-")]
            if abl:
                lines += ["", "Ablations (mean JCT relative to pythia, seed 0; > 1: the mechanism helps): " + ", ".join(
                    f"{s} {statistics.fmean(x):.2f}" for s, x in sorted(abl) if x)]
            lines.append("")
    # The no-regression rule over every cell.
    worst = None
    for k, by in g.items():
        for seed, p in by.get("pythia", {}).items():
            v = by.get("vllm", {}).get(seed)
            if v:
                r = p["mean_jct_s"] / v["mean_jct_s"]
                if worst is None or r > worst[0]:
                    worst = (r, k, seed)
    if worst:
        k = worst[1]
        lines += ["## No cell worse than vllm", "",
                  f"Largest pythia / vllm mean JCT over every cell and seed: {worst[0]:.3f} ({k[0]} {k[1]} at {k[2]:g}"
                  f"{', kv ' + format(k[3], 'g') if k[3] is not None else ''}, seed {worst[2]}); the rule is at most 1.02: "
                  f"{'met' if worst[0] <= 1.02 else 'not met'}.", ""]
    errors = [r for r in runs if "error" in r]
    if errors:
        lines += ["## Runs that failed", ""] + [f"- {r['key']}: {r['error'][:160]}" for r in errors] + [""]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- figures


def figures(out: dict[str, Any], dest: Path) -> list[Path]:
    """The regime map, JCT and throughput against load with the lower bound, and goodput."""
    from pythia.analysis.style import setup_matplotlib, style

    setup_matplotlib()
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    def style_of(system: str) -> dict[str, Any]:
        colour, marker = style(system)
        return {"color": colour, "marker": marker, "markersize": 4, "linewidth": 1.2}

    runs = out["runs"]
    g = _group(runs)
    paths: list[Path] = []
    names = sorted({k[1] for k in g if k[0] in ("load", "kv")})
    # Regime map: every cell of the load and KV sweeps at its (load / saturation, working-set
    # ratio), coloured by pythia's gain over vllm and over the best other baseline.
    if names:
        fig, axes = plt.subplots(len(names), 2, figsize=(7.0, 2.8 * len(names)), squeeze=False)
        for i, name in enumerate(names):
            sat = saturation(runs, name) or 1.0
            pts = []
            for k, by in g.items():
                if k[1] != name or k[0] not in ("load", "kv"):
                    continue
                v, p, b = by.get("vllm", {}).get(0), by.get("pythia", {}).get(0), best_other(by, 0)
                if v and p:
                    pts.append((k[2] / sat, v["kv_working_set_ratio"], v["mean_jct_s"] / p["mean_jct_s"],
                                b["mean_jct_s"] / p["mean_jct_s"] if b else float("nan")))
            for j, (label, idx) in enumerate((("pythia vs vllm", 2), ("pythia vs best other baseline", 3))):
                ax = axes[i][j]
                xs, ys, cs = [p[0] for p in pts], [p[1] for p in pts], [p[idx] for p in pts]
                # 1.0 (no gain) is the neutral colour; blue: pythia lower, red: pythia higher.
                norm = TwoSlopeNorm(vcenter=1.0, vmin=0.5, vmax=max(1.5, max(cs, default=1.5)))
                sc = ax.scatter(xs, ys, c=cs, cmap="RdBu", norm=norm, s=60, edgecolors="k")
                for x, y, c in zip(xs, ys, cs):
                    ax.annotate(f"{c:.2f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
                ax.set_xscale("log")
                ticks = sorted(set(xs))
                ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
                ax.minorticks_off()
                ax.margins(x=0.15, y=0.1)
                ax.set_xlabel("offered load / saturation")
                ax.set_ylabel("KV working-set ratio")
                ax.set_title(f"{name}: {label} (mean JCT)")
                fig.colorbar(sc, ax=ax, label="x lower mean JCT")
        fig.tight_layout()
        paths += _save(fig, dest / "policies_regime_map")
        plt.close(fig)
    # JCT, throughput and goodput against load, with the lower bound.
    loads = sorted({k[1] for k in g if k[0] == "load"})
    if loads:
        fig, axes = plt.subplots(len(loads), 3, figsize=(10.0, 2.8 * len(loads)), squeeze=False)
        for i, name in enumerate(loads):
            keys = sorted((k for k in g if k[0] == "load" and k[1] == name), key=lambda k: k[2])
            systems = sorted({s for k in keys for s in g[k]})
            for s in systems:
                xs = [k[2] for k in keys if 0 in g[k].get(s, {})]
                rs = [g[k][s][0] for k in keys if 0 in g[k].get(s, {})]
                st = style_of(s)
                for j, metric, scale in ((0, "mean_jct_s", 1.0), (1, "output_tokens_per_s", 1.0), (2, "goodput_jobs_per_s", 3600.0)):
                    axes[i][j].plot(xs, [r[metric] * scale if r.get(metric) is not None else float("nan") for r in rs],
                                    label=s, **st)
            lb = [(k[2], next((r.get("mean_lower_bound_jct_s") for r in (g[k][s][0] for s in g[k] if 0 in g[k][s]))
                              if g[k] else None, None)) for k in keys]
            axes[i][0].plot([x for x, _ in lb], [y for _, y in lb], "k--", label="lower bound")
            for j, (ylab, title) in enumerate((("mean JCT (s)", "mean JCT"), ("output tokens/s", "throughput"),
                                               ("jobs/hour within 2x bound", "goodput"))):
                ax = axes[i][j]
                ax.set_xscale("log", base=2)
                ax.set_xlabel("jobs in flight")
                ax.set_ylabel(ylab)
                ax.set_title(f"{name}: {title}")
            axes[i][0].set_yscale("log")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        paths += _save(fig, dest / "policies_load")
        plt.close(fig)
    return paths


def _save(fig: Any, stem: Path) -> list[Path]:
    out = []
    for ext in ("png", "pdf"):
        p = stem.with_suffix(f".{ext}")
        fig.savefig(p, dpi=300 if ext == "png" else None)
        out.append(p)
    return out
