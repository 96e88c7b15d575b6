"""Compare the results of two runs of the pipeline on the same config (used by slurm_local.sh).

    python workflow/scripts/compare_runs.py LOCAL_PROJECT SLURM_PROJECT

The simulator is deterministic, so two runs of the same grid must agree wherever the machine
does not show through: every run directory's ``summary.json`` equal except the wall-clock
fields, every run table (calls, jobs, timeseries) byte-equal or at least frame-equal, and the
workload traces and collected tables likewise. Prints one line per kind of file and every
difference; exits 1 on any difference, or when there is nothing to compare.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

import pandas as pd

# Fields that measure the machine rather than the simulation: the run's wall time, the
# simulated-over-wall ratio built from it, and anything clock- or host-like.
VOLATILE = re.compile(r"(^|_)(wall|speedup|timestamp|date|clock|hostname|host|pid)(_|$)|_at$")
RUN_TABLES = ("calls.parquet", "jobs.parquet", "timeseries.parquet")


def _volatile_keys(node: object, prefix: str = "") -> set[str]:
    """Dotted names of the volatile keys anywhere in a JSON document."""
    out: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if VOLATILE.search(str(key)):
                out.add(name)
            else:
                out |= _volatile_keys(value, f"{name}.")
    return out


def _strip(node: object) -> object:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if not VOLATILE.search(str(k))}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _json_diffs(a: object, b: object, where: str = "") -> list[str]:
    """Where two JSON documents differ (exact equality: the same inputs give the same floats)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            name = f"{where}.{key}" if where else str(key)
            if key not in a or key not in b:
                out.append(f"{name}: only in {'the SLURM run' if key not in a else 'the local run'}")
            else:
                out += _json_diffs(a[key], b[key], name)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _json_diffs(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where or '(document)'}: local {a!r} != SLURM {b!r}"]


def _frames(a: Path, b: Path, drop: set[str] | frozenset[str] = frozenset()) -> tuple[str, str | None]:
    """``(how, difference)``: how two parquet files agree ("bytes" or "frame"), or why not."""
    if not drop and a.read_bytes() == b.read_bytes():
        return "bytes", None
    fa, fb = pd.read_parquet(a), pd.read_parquet(b)
    fa = fa.drop(columns=[c for c in fa.columns if c in drop])
    fb = fb.drop(columns=[c for c in fb.columns if c in drop])
    try:
        pd.testing.assert_frame_equal(fa, fb, check_exact=True)
    except AssertionError as e:
        return "", " ".join(str(e).split())[:400]
    return "frame", None


class Report:
    def __init__(self) -> None:
        self.differences: list[str] = []
        self.lines: list[str] = []

    def check(self, kind: str, pairs: list[tuple[str, Path, Path]], compare) -> None:
        """Compare every pair of files of one kind and add one summary line for the kind."""
        counts: dict[str, int] = {}
        for rel, a, b in pairs:
            how, diff = compare(a, b)
            if diff is not None:
                self.differences.append(f"{rel}: {diff}")
            else:
                counts[how] = counts.get(how, 0) + 1
        same = ", ".join(f"{n} {how}-equal" for how, n in sorted(counts.items()))
        bad = len(pairs) - sum(counts.values())
        self.lines.append(f"{kind:<22} {len(pairs):>4} compared" + (f": {same or '0 equal'}" if pairs else "")
                          + (f", {bad} DIFFERENT" if bad else ""))


def _pairs(local: Path, slurm: Path, pattern: str) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Files matching ``pattern`` in both projects, and those found in only one."""
    a = {p.relative_to(local).as_posix() for p in local.glob(pattern) if p.is_file()}
    b = {p.relative_to(slurm).as_posix() for p in slurm.glob(pattern) if p.is_file()}
    only = [f"{r}: only in the local run" for r in sorted(a - b)]
    only += [f"{r}: only in the SLURM run" for r in sorted(b - a)]
    return [(r, local / r, slurm / r) for r in sorted(a & b)], only


def compare(local: Path, slurm: Path) -> int:
    report = Report()
    excluded: set[str] = set()

    summaries, only = _pairs(local, slurm, "results/runs/**/summary.json")
    report.differences += only
    if not summaries:
        report.differences.append("results/runs: no summary.json to compare")

    def summary(a: Path, b: Path) -> tuple[str, str | None]:
        ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
        excluded.update(_volatile_keys(ja) | _volatile_keys(jb))
        diffs = _json_diffs(_strip(ja), _strip(jb))
        if not diffs:
            return "value", None
        return "", "; ".join(diffs[:5]) + (f" (+{len(diffs) - 5} more)" if len(diffs) > 5 else "")

    report.check("summary.json", summaries, summary)
    for table in RUN_TABLES:
        pairs, only = _pairs(local, slurm, f"results/runs/**/{table}")
        report.differences += only
        report.check(table, pairs, _frames)

    # The inputs and outputs around the runs: the workload traces (gzip of JSON lines, compared
    # decompressed), their statistics, and the collected tables without their wall-clock columns.
    traces, only = _pairs(local, slurm, "results/workloads/*.jsonl.gz")
    report.differences += only

    def trace(a: Path, b: Path) -> tuple[str, str | None]:
        if a.read_bytes() == b.read_bytes():
            return "bytes", None
        same = gzip.decompress(a.read_bytes()) == gzip.decompress(b.read_bytes())
        return ("content", None) if same else ("", "decompressed traces differ")

    report.check("workload traces", traces, trace)
    stats, only = _pairs(local, slurm, "results/workloads/stats/*.json")
    report.differences += only

    def plain_json(a: Path, b: Path) -> tuple[str, str | None]:
        diffs = _json_diffs(json.loads(a.read_text()), json.loads(b.read_text()))
        return ("", "; ".join(diffs[:5])) if diffs else ("value", None)

    report.check("workload stats", stats, plain_json)
    tables, only = _pairs(local, slurm, "results/tables/*.parquet")
    report.differences += only

    def table(a: Path, b: Path) -> tuple[str, str | None]:
        cols = set(pd.read_parquet(a).columns) | set(pd.read_parquet(b).columns)
        drop = {c for c in cols if VOLATILE.search(str(c))}
        excluded.update(f"{a.name}:{c}" for c in drop)
        return _frames(a, b, drop)

    report.check("collected tables", tables, table)

    print("comparison of the local run (left) and the SLURM run (right):")
    for line in report.lines:
        print(f"  {line}")
    print(f"  not compared (wall-clock): {', '.join(sorted(excluded)) or 'nothing'}")
    if report.differences:
        print(f"{len(report.differences)} DIFFERENCE(S):")
        for d in report.differences:
            print(f"  {d}")
        return 1
    print("no difference")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(compare(Path(sys.argv[1]), Path(sys.argv[2])))
