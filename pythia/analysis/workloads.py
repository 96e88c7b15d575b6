"""The workload summary table of the pipeline (``results/workloads/summary.{json,md}``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

COLUMNS = ("jobs", "calls", "input_tokens", "output_tokens", "subagents")


def summarise(stats_files: Sequence[str | Path], out_json: str | Path, out_md: str | Path) -> list[dict[str, Any]]:
    """Collect ``pythia workload stats`` outputs into one JSON list and one Markdown table.

    A stats file is named after its workload: ``<name>.json`` for a generated spec trace,
    ``trace-<name>.json`` for a folder of public traces.
    """
    rows: list[dict[str, Any]] = []
    for f in stats_files:
        f = Path(f)
        kind, name = ("trace", f.stem[len("trace-"):]) if f.stem.startswith("trace-") else ("spec", f.stem)
        rows.append({"workload": name, "kind": kind, **json.loads(f.read_text())})
    Path(out_json).write_text(json.dumps(rows, indent=2) + "\n")
    head = "| workload | kind | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |\n"
    head += "|---|---|" + "---:|" * len(COLUMNS) + "\n"
    body = "".join(
        f"| {r['workload']} | {r['kind']} | " + " | ".join(str(r[c]) for c in COLUMNS) + " |\n" for r in rows
    )
    Path(out_md).write_text(head + body)
    return rows
