"""The ``pythia`` command line: output shape and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pythia.cli import main
from pythia.workflow.trace import Call, Job, Trace, segments, write_trace


def _trace(path: Path) -> Path:
    calls = [
        Call(0, "planner", "m", 100, 20, prompt=segments([(1, 0, 100)]), agent_id="planner"),
        Call(1, "explorer", "m", 50, 10, deps=(0,), prompt=segments([(2, 0, 50)]), agent_id="explorer/0"),
    ]
    write_trace(Trace([Job("j0", "t", "w", calls, arrival_s=0.0)]), path)
    return path


def test_stats_prints_one_json_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workload", "stats", str(_trace(tmp_path / "t.jsonl")), "--compact"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out)
    assert {"jobs": 1, "calls": 2, "input_tokens": 150, "output_tokens": 30, "subagents": 1}.items() <= stats.items()


def test_generate_converts_with_an_arrival_process(tmp_path: Path) -> None:
    src = _trace(tmp_path / "t.jsonl")
    out = tmp_path / "o.jsonl.gz"
    assert main(["workload", "generate", str(src), "--out", str(out), "--rate", "2", "--burstiness", "0.5"]) == 0
    from pythia.workflow.trace import read_trace

    assert read_trace(out).arrival == {"process": "gamma", "rate": 2.0, "burstiness": 0.5}


@pytest.mark.parametrize(
    "content, name, needle",
    [
        ("hello\n", "notes.txt", "unsupported file"),
        ('{"pythia_trace": 1, "arrival": {"process": "closed", "concurrency": 2}}\n{"job_id": 1}\n', "t.jsonl", ":2: field"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(tmp_path: Path, content: str, name: str, needle: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    proc = subprocess.run(
        [sys.executable, "-m", "pythia", "workload", "stats", str(path)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pythia: error: ")
    assert str(path) in lines[0] and needle in lines[0]


def test_missing_path_and_option_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workload", "stats", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["workload", "stats", str(_trace(tmp_path / "t.jsonl")), "--burstiness", "2"]) == 2
    assert "--rate" in capsys.readouterr().err
