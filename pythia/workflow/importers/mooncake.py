"""Mooncake JSON Lines traces (kvcache-ai/Mooncake, ``FAST25-release/traces/``).

One JSON object per line: ``timestamp`` (ms from the start of the trace), ``input_length`` and
``output_length`` (tokens) and ``hash_ids``, one id per 512-token prompt block (the last block
may be partial); equal ids at equal positions mean a shared prefix, and ids are scoped to the
file. Each line becomes one job of one call, released at ``timestamp / 1000`` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pythia import inputs
from pythia.inputs import MAX_SECONDS
from pythia.workflow.hashing import mix, mix_array, stable_key
from pythia.workflow.importers import data_suffix, fail, need_ids, need_int, need_number, read_head
from pythia.workflow.trace import Call, Job, Trace, segments

if TYPE_CHECKING:
    from pythia.workflow.load import LoadOptions

BLOCK_TOKENS = 512
WORKFLOW_TYPE = "mooncake"


def prompt_segments(scope: int, ids: np.ndarray, input_tokens: int, unique_key: int) -> np.ndarray:
    """Segments of a prompt whose ``BLOCK_TOKENS``-token blocks carry ``ids`` (the last may be partial).

    Tokens beyond the last id (a file giving fewer ids than blocks) form one segment unique to
    the request, keyed ``unique_key``.
    """
    n = len(ids)
    rows = np.empty((n, 3), dtype=np.int64)
    rows[:, 0] = mix_array(scope, ids)
    rows[:, 1] = 0
    rows[:, 2] = BLOCK_TOKENS
    covered = n * BLOCK_TOKENS
    if covered > input_tokens:  # the last block is partial
        rows[-1, 2] -= covered - input_tokens
        return rows
    if covered < input_tokens:
        rows = np.vstack([rows, segments([(unique_key, 0, input_tokens - covered)])])
    return rows


@dataclass(frozen=True)
class MooncakeImporter:
    """Importer of Mooncake JSONL traces; every call is made to ``model``."""

    model: str = "default"
    name: str = "mooncake"
    description: str = "Mooncake JSONL (.jsonl)"

    def sniff(self, path: Path) -> bool:
        """A ``.jsonl`` file whose first object has ``input_length`` and ``output_length``."""
        if data_suffix(path) != ".jsonl":
            return False
        head = read_head(path).lstrip()
        return head.startswith("{") and '"input_length"' in head and '"output_length"' in head

    def load(self, path: Path, options: LoadOptions) -> Trace:
        """One job of one call per line; arrivals are the recorded timestamps."""
        path = Path(path)
        scope = stable_key(WORKFLOW_TYPE, path.stem)
        unique = stable_key(WORKFLOW_TYPE, path.stem, "unique")
        jobs: list[Job] = []
        for lineno, line in inputs.iter_lines(path, "Mooncake trace"):
            if not line.strip():
                continue
            jobs.append(self._job(path, lineno, line, len(jobs), scope, unique))
        if not jobs:
            fail(str(path), "the file holds no requests")
        return Trace(
            jobs=jobs,
            arrival={"process": "timestamps", "time_scale": 1.0},
            meta={"format": self.name, "sources": [str(path)]},
        )

    def _job(self, path: Path, lineno: int, line: str, index: int, scope: int, unique: int) -> Job:
        where = f"{path}:{lineno}"
        rec = inputs.parse_json(line, where)
        if not isinstance(rec, dict):
            fail(where, "the line is not a JSON object")
        ts = need_number(rec, "timestamp", where, maximum=MAX_SECONDS * 1000.0)  # milliseconds
        n_in = need_int(rec, "input_length", where)
        n_out = need_int(rec, "output_length", where)
        ids = need_ids(rec, "hash_ids", where)
        blocks = -(-n_in // BLOCK_TOKENS)
        if len(ids) > blocks:
            fail(where, f"field hash_ids has {len(ids)} ids but input_length {n_in} fills only {blocks} blocks of {BLOCK_TOKENS} tokens")
        job_id = f"{path.stem}-{index:06d}"
        call = Call(
            call_id=0,
            agent_role="user",
            agent_id="user",
            model=self.model,
            input_tokens=n_in,
            output_tokens=n_out,
            prompt=prompt_segments(scope, ids, n_in, mix(unique, index)),
        )
        return Job(job_id, WORKFLOW_TYPE, job_id, [call], arrival_s=ts / 1000.0, source=where)


IMPORTER = MooncakeImporter()
