"""Azure LLM inference traces, November 2023 (Azure/AzurePublicDataset, the Splitwise traces).

A CSV file with the header ``TIMESTAMP,ContextTokens,GeneratedTokens``; one row per request.
``TIMESTAMP`` looks like ``2023-11-16 18:17:03.9799600`` (seven fractional digits, finer than
:mod:`datetime` keeps), so it is parsed exactly into integer nanoseconds. Each row becomes one
job of one call released at its time relative to the earliest row (the first row in the
published files). The format carries no sharing information: every prompt is unique content.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pythia import inputs
from pythia.errors import PythiaInputError
from pythia.inputs import MAX_TOKENS
from pythia.workflow.hashing import mix_array, stable_key
from pythia.workflow.importers import data_suffix, fail, read_head
from pythia.workflow.trace import Call, Job, Trace, segments

if TYPE_CHECKING:
    from pythia.workflow.load import LoadOptions

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
WORKFLOW_TYPE = "azure-2023"
_TS = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?")
_NS = 1_000_000_000


def parse_timestamp_ns(text: str) -> int | None:
    """``YYYY-MM-DD HH:MM:SS[.fffffffff]`` as integer nanoseconds since 0001-01-01, or ``None``."""
    m = _TS.fullmatch(text.strip())
    if m is None:
        return None
    y, mo, d, h, mi, s, frac = m.groups()
    try:
        day = dt.date(int(y), int(mo), int(d)).toordinal()
    except ValueError:
        return None
    if int(h) > 23 or int(mi) > 59 or int(s) > 59:
        return None
    secs = day * 86400 + int(h) * 3600 + int(mi) * 60 + int(s)
    return secs * _NS + int((frac or "0").ljust(9, "0"))


def _count(text: str, where: str, column: str) -> int:
    value = text.strip()
    if not value.isdigit():
        if value.startswith("-") and value[1:].isdigit():
            fail(where, f"column {column} is {value}, a negative length")
        fail(where, f"column {column} must be a non-negative integer, not {text!r}")
    if len(value) > 9 or int(value) > MAX_TOKENS:
        fail(where, f"column {column} is {value}, above the largest length the simulator represents ({MAX_TOKENS:,})")
    return int(value)


@dataclass(frozen=True)
class AzureImporter:
    """Importer of Azure LLM inference 2023 CSV traces; every call is made to ``model``."""

    model: str = "default"
    name: str = "azure2023"
    description: str = "Azure LLM inference 2023 CSV (.csv)"

    def sniff(self, path: Path) -> bool:
        """A ``.csv`` file whose header names the three Azure columns."""
        if data_suffix(path) != ".csv":
            return False
        header = read_head(path, 1024).splitlines()[:1]
        names = {c.strip() for c in header[0].split(",")} if header else set()
        return all(c in names for c in COLUMNS)

    def load(self, path: Path, options: LoadOptions) -> Trace:
        """One job of one call per row; arrivals relative to the earliest row."""
        path = Path(path)
        times: list[int] = []
        sizes: list[tuple[int, int]] = []
        lines: list[int] = []
        # The stream is opened, decompressed and decoded by pythia.inputs.
        reader = csv.reader(line for _, line in inputs.iter_lines(path, "Azure trace"))
        try:
            try:
                header = [c.strip() for c in next(reader)]
            except StopIteration:
                fail(f"{path}:1", "the file is empty; expected the header " + ",".join(COLUMNS))
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                fail(f"{path}:1", f"the header has no column {missing[0]} (expected {','.join(COLUMNS)})")
            col = [header.index(c) for c in COLUMNS]
            width = len(header)
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not row or not any(x.strip() for x in row):
                    continue
                if len(row) != width:
                    fail(where, f"the row has {len(row)} fields but the header has {width}")
                ns = parse_timestamp_ns(row[col[0]])
                if ns is None:
                    fail(where, f"column TIMESTAMP {row[col[0]]!r} is not a time like 2023-11-16 18:17:03.9799600")
                times.append(ns)
                sizes.append((_count(row[col[1]], where, COLUMNS[1]), _count(row[col[2]], where, COLUMNS[2])))
                lines.append(reader.line_num)
        except csv.Error as e:
            raise PythiaInputError(f"{path}:{reader.line_num}: the row is not valid CSV ({e})") from None
        if not times:
            fail(str(path), "the file holds no requests")
        t0 = min(times)
        keys = mix_array(stable_key(WORKFLOW_TYPE, path.stem), np.arange(len(times), dtype=np.int64)).tolist()
        jobs: list[Job] = []
        for i, (ns, (n_in, n_out), key, lineno) in enumerate(zip(times, sizes, keys, lines)):
            job_id = f"{path.stem}-{i:06d}"
            call = Call(
                call_id=0,
                agent_role="user",
                agent_id="user",
                model=self.model,
                input_tokens=n_in,
                output_tokens=n_out,
                prompt=segments([(key, 0, n_in)] if n_in else []),
            )
            jobs.append(Job(job_id, WORKFLOW_TYPE, job_id, [call], arrival_s=(ns - t0) / _NS, source=f"{path}:{lineno}"))
        return Trace(
            jobs=jobs,
            arrival={"process": "timestamps", "time_scale": 1.0},
            meta={"format": self.name, "sources": [str(path)]},
        )


IMPORTER = AzureImporter()
