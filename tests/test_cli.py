"""The ``pythia`` command line: output shape and bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
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


# --------------------------------------------------------------------------- malformed command lines

ROOT = Path(__file__).resolve().parents[1]
SIM = "sim --system vllm --workload {d}/S.yaml --jobs 2 --concurrency 1 --out {d}/o"


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A folder of inputs every row of the table may name: a spec, traces, a run folder, a model."""
    d = tmp_path
    (d / "S.yaml").write_bytes((ROOT / "workloads" / "rag-chain.yaml").read_bytes())
    _trace(d / "t.jsonl")
    (d / "W").mkdir()
    _trace(d / "W" / "a.jsonl")
    (d / "afile").write_text("not a folder\n")
    (d / "adir").mkdir()
    (d / "R").mkdir()  # a run folder as `pythia calibrate` reads it (content never reached)
    for name in ("engine-steps.jsonl", "calls.parquet", "summary.json"):
        (d / "R" / name).write_text(f"{name}\n")
    (d / "eff.yaml").write_text("default:\n  mfu: 0.5\n")
    (d / "model").mkdir()
    (d / "model" / "config.json").write_text("{}\n")
    (d / "sys.yaml").write_text("extends: vllm\n")
    (d / "c.yaml").write_text("pools: {}\n")
    (d / "link.jsonl").symlink_to(d / "t.jsonl")
    return d


def _snapshot(d: Path) -> dict[str, object]:
    """Every path under ``d`` with its bytes (files), its target (links) or ``dir``."""
    snap: dict[str, object] = {}
    for p in sorted(d.rglob("*")):
        key = str(p.relative_to(d))
        if p.is_symlink():
            snap[key] = ("link", os.readlink(p))
        elif p.is_dir():
            snap[key] = "dir"
        else:
            snap[key] = p.read_bytes()
    return snap


# (command line, words the error sentence holds, whether argparse adds its usage line)
BAD_COMMAND_LINES = [
    # numbers, refused as they are parsed
    (SIM.replace("--jobs 2", "--jobs x"), "argument --jobs: 'x' is not an integer", True),
    (SIM.replace("--jobs 2", "--jobs 0"), "argument --jobs: '0' must be a positive integer", True),
    (SIM.replace("--jobs 2", "--jobs -3"), "argument --jobs: '-3' must be a positive integer", True),
    (SIM.replace("--jobs 2", "--jobs 2.5"), "argument --jobs: '2.5' is not an integer", True),
    (SIM + " --max-gap-s nan", "argument --max-gap-s: 'nan' is not a finite number", True),
    (SIM + " --max-gap-s -2", "argument --max-gap-s: '-2' must be 0 or more, or -1", True),
    (SIM.replace("--concurrency 1", "--rate inf"), "argument --rate: 'inf' is not a finite number", True),
    (SIM.replace("--concurrency 1", "--rate 0"), "argument --rate: '0' must be greater than 0", True),
    (SIM.replace("--concurrency 1", "--rate=-1"), "argument --rate: '-1' must be greater than 0", True),
    (SIM.replace("--concurrency 1", "--time-scale 0"), "argument --time-scale: '0' must be greater than 0", True),
    (SIM + " --gap-scale -1", "argument --gap-scale: '-1' must be 0 or more", True),
    (SIM + " --gap-scale NaN", "argument --gap-scale: 'NaN' is not a finite number", True),
    (SIM.replace("--concurrency 1", "--concurrency 0"), "argument --concurrency: '0' must be a positive integer", True),
    (SIM.replace("--concurrency 1", "--concurrency two"), "argument --concurrency: 'two' is not an integer", True),
    (SIM + " --seed -1", "argument --seed: '-1' must be 0 or more", True),
    (SIM.replace("--concurrency 1", "--rate 1 --burstiness 0"), "argument --burstiness: '0' must be greater than 0", True),
    (SIM.replace("--concurrency 1", "--rate 1 --waves=-inf"), "argument --waves: '-inf' is not a finite number", True),
    (SIM + " --amplitude 1.5", "argument --amplitude: '1.5' must be between 0 and 1", True),
    (SIM + " --sample-interval-s 0", "argument --sample-interval-s: '0' must be greater than 0", True),
    (SIM + " --max-sim-s=-5", "argument --max-sim-s: '-5' must be greater than 0", True),
    (SIM + " --max-sim-s 1e999", "argument --max-sim-s: '1e999' is not a finite number", True),
    # shape of the command line
    (SIM.replace(" --out {d}/o", ""), "the following arguments are required: --out", True),
    (SIM + " --rate 1", "argument --rate: not allowed with argument --concurrency", True),
    (SIM + " --bogus", "unrecognized arguments: --bogus", True),
    ("workload generate {d}/S.yaml", "the following arguments are required: --out", True),
    ("workload generate {d}/S.yaml --out {d}/o.jsonl --jobs 1e3", "argument --jobs: '1e3' is not an integer", True),
    ("workload stats {d}/t.jsonl --rate NaN", "argument --rate: 'NaN' is not a finite number", True),
    ("simulate", "argument command: invalid choice: 'simulate'", True),
    ("", "the following arguments are required: command", True),
    ("workload", "the following arguments are required: workload_command", True),
    ("run --backend tpu --workload {d}/S.yaml --out {d}/o", "argument --backend: invalid choice: 'tpu'", True),
    ("run --backend vllm-cpu --workload {d}/S.yaml --out {d}/o --max-calls 0", "argument --max-calls: '0' must be a positive", True),
    ("run --backend vllm-cpu --workload {d}/S.yaml --out {d}/o --start-timeout-s nan", "argument --start-timeout-s: 'nan' is not a finite", True),
    ("run --backend vllm-cpu --workload {d}/S.yaml --out {d}/o --tensor-parallel-size 0", "argument --tensor-parallel-size: '0'", True),
    ("run --backend vllm-cpu --workload {d}/S.yaml --out {d}/o --num-blocks -1", "argument --num-blocks: '-1' must be a positive", True),
    ("serve command --backend vllm --model m --port 70000", "argument --port: '70000' is not a port number", True),
    ("serve command --backend vllm --model m --port 0", "argument --port: '0' is not a port number", True),
    ("serve tiny-model --out {d}/m2 --layers 0", "argument --layers: '0' must be a positive integer", True),
    ("serve tiny-model --out {d}/m2 --vocab-size x", "argument --vocab-size: 'x' is not an integer", True),
    ("calibrate {d}/R --model tiny-llama", "the following arguments are required: --gpu", True),
    # output paths, refused before any work
    (SIM.replace("{d}/o", "{d}/afile"), "option --out={d}/afile is an existing file; give a folder", False),
    (SIM.replace("{d}/o", "{d}/afile/run"), "option --out={d}/afile/run cannot be created: {d}/afile is a file", False),
    (SIM.replace("{d}/o", "{d}/S.yaml"), "option --out={d}/S.yaml is also an input of this command", False),
    (SIM.replace("{d}/S.yaml", "{d}/W").replace("{d}/o", "{d}/W"), "option --out={d}/W is also an input", False),
    (SIM.replace("vllm", "{d}/sys.yaml").replace("{d}/o", "{d}/sys.yaml"), "option --out={d}/sys.yaml is also an input", False),
    (SIM.replace("{d}/o", "{d}/c.yaml") + " --cluster {d}/c.yaml", "option --out={d}/c.yaml is also an input", False),
    ("workload generate {d}/S.yaml --out {d}/S.yaml", "option --out={d}/S.yaml is also an input of this command", False),
    ("workload generate {d}/t.jsonl --out {d}/t.jsonl", "option --out={d}/t.jsonl is also an input of this command", False),
    ("workload generate {d}/t.jsonl --out {d}/link.jsonl", "option --out={d}/link.jsonl is also an input", False),
    ("workload generate {d}/W --out {d}/W", "option --out={d}/W is also an input of this command", False),
    ("workload generate {d}/W --out {d}/W/a.jsonl", "option --out={d}/W/a.jsonl is also an input", False),
    ("workload generate {d}/W --out {d}/W/new.jsonl", "is inside the folder {d}/W, which this command reads whole", False),
    ("workload generate {d}/S.yaml --out {d}/adir", "option --out={d}/adir is an existing folder; give a file name", False),
    ("workload generate {d}/S.yaml --out {d}/afile/t.jsonl", "cannot be created: {d}/afile is a file", False),
    ("workload generate {d}/S.yaml --out {d}/o.yaml", "option --out={d}/o.yaml must end in .jsonl or .jsonl.gz", False),
    ("run --backend vllm-cpu --workload {d}/S.yaml --out {d}/afile", "option --out={d}/afile is an existing file", False),
    ("run --backend vllm-cpu --workload {d}/S.yaml --out {d}/S.yaml", "option --out={d}/S.yaml is also an input", False),
    ("run --backend vllm-cpu --workload {d}/W --out {d}/W", "option --out={d}/W is also an input", False),
    ("run --backend vllm --model {d}/model --workload {d}/S.yaml --out {d}/model", "option --out={d}/model is also an input", False),
    ("run --backend vllm --workload {d}/none.yaml --out {d}/o", "{d}/none.yaml: no such file or directory", False),
    (SIM.replace("{d}/S.yaml", "{d}/none.yaml"), "{d}/none.yaml: no such file or directory", False),
    (SIM.replace("{d}/o", "{d}/R").replace("{d}/S.yaml", "{d}/R/summary.json"),
     "option --out={d}/R would overwrite {d}/R/summary.json, an input of this command", False),
    ("run --backend vllm-cpu --workload {d}/S.yaml --out {d}/o --max-model-len 8", "option --max-model-len=8 must be at least 16", False),
    ("run --backend vllm-cpu --model {d}/nope --workload {d}/S.yaml --out {d}/o", "option --model={d}/nope: no such folder", False),
    ("run --backend vllm --workload {d}/S.yaml --out {d}/o", "option --model is required with --backend vllm", False),
    ("calibrate {d}/R --gpu cpu-2core --model tiny-llama --write {d}/R/summary.json",
     "option --write={d}/R/summary.json is also an input of this command", False),
    ("calibrate {d}/R --gpu cpu-2core --model tiny-llama --report {d}/R/calls.parquet",
     "option --report={d}/R/calls.parquet is also an input", False),
    ("calibrate {d}/R --gpu cpu-2core --model tiny-llama --write {d}/eff.yaml --report {d}/eff.yaml",
     "option --report={d}/eff.yaml is the same path as option --write={d}/eff.yaml", False),
    ("calibrate {d}/R --gpu cpu-2core --model tiny-llama --report {d}/adir", "option --report={d}/adir is an existing folder", False),
    ("calibrate {d}/R --gpu cpu-2core --model tiny-llama --write {d}/afile/e.yaml", "cannot be created: {d}/afile is a file", False),
    ("calibrate {d}/R --gpu cpu-2core --model tiny-llama --report {d}/R", "option --report={d}/R is also an input", False),
    ("calibrate {d}/R --gpu warp-drive --model tiny-llama", "unknown GPU 'warp-drive'", False),
    ("serve tiny-model --out {d}/afile", "option --out={d}/afile is an existing file; give a folder", False),
    ("serve tiny-model --out {d}/W", "option --out={d}/W is a folder holding other files", False),
]


@pytest.mark.parametrize("line, needle, usage", BAD_COMMAND_LINES, ids=[f"{i:02d}" for i in range(len(BAD_COMMAND_LINES))])
def test_a_malformed_command_line_exits_2_with_one_sentence_and_writes_nothing(
    inputs: Path, capsys: pytest.CaptureFixture[str], line: str, needle: str, usage: bool
) -> None:
    before = _snapshot(inputs)
    argv = line.format(d=inputs).split()
    t0 = time.perf_counter()
    assert main(argv) == 2
    elapsed = time.perf_counter() - t0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    lines = captured.err.strip("\n").split("\n")
    assert len(lines) == (2 if usage else 1), captured.err
    assert re.match(r"pythia( [a-z-]+)*: error: ", lines[0]), lines[0]
    assert needle.format(d=inputs) in lines[0]
    if usage:
        prog = lines[0].split(": error: ")[0]
        assert lines[1].startswith(f"usage: {prog}") and lines[1].endswith(f"(see {prog} --help)")
    assert _snapshot(inputs) == before  # nothing written, every input byte for byte as it was
    assert elapsed < 5.0  # refused before any work (imports included)


def test_the_table_is_large_enough() -> None:
    assert len(BAD_COMMAND_LINES) >= 40


def test_an_existing_file_as_out_stops_a_large_simulation_in_the_first_second(
    inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["workload", "stats", str(inputs / "t.jsonl")])  # warm the imports
    capsys.readouterr()
    t0 = time.perf_counter()
    code = main(["sim", "--system", "vllm", "--workload", str(inputs / "S.yaml"), "--jobs", "100000",
                 "--concurrency", "64", "--out", str(inputs / "afile")])
    assert code == 2 and time.perf_counter() - t0 < 1.0
    assert "is an existing file" in capsys.readouterr().err
    assert (inputs / "afile").read_text() == "not a folder\n"


def test_the_refused_generate_keeps_the_spec_from_a_subprocess(inputs: Path) -> None:
    spec = inputs / "S.yaml"
    before = spec.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "pythia", "workload", "generate", str(spec), "--out", str(spec)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "is also an input" in proc.stderr
    assert spec.read_bytes() == before


def test_help_and_accepted_edge_values(capsys: pytest.CaptureFixture[str]) -> None:
    from pythia.cli import build_parser

    assert main(["sim", "--help"]) == 0
    assert "usage: pythia sim" in capsys.readouterr().out
    args = build_parser().parse_args(["workload", "stats", "x", "--max-gap-s", "-1", "--gap-scale", "0",
                                      "--rate", "1e-3", "--waves", "60", "--amplitude", "0", "--seed", "0"])
    assert (args.max_gap_s, args.gap_scale, args.rate, args.amplitude, args.seed) == (-1.0, 0.0, 1e-3, 0.0, 0)


def test_a_good_run_leaves_only_its_outputs(inputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = inputs / "runs" / "o"
    argv = ["sim", "--system", "vllm", "--workload", str(inputs / "t.jsonl"), "--concurrency", "1",
            "--cluster", "cpu-tiny", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["calls.parquet", "jobs.parquet", "summary.json", "timeseries.parquet"]
    first = json.loads((out / "summary.json").read_text())
    assert main(argv) == 0  # an existing run folder is rewritten in place
    assert json.loads((out / "summary.json").read_text())["calls_completed"] == first["calls_completed"]
    trace = inputs / "g" / "t.jsonl.gz"
    assert main(["workload", "generate", str(inputs / "t.jsonl"), "--rate", "1", "--out", str(trace)]) == 0
    assert sorted(p.name for p in trace.parent.iterdir()) == ["t.jsonl.gz"]
    from pythia.workflow.trace import read_trace

    assert read_trace(trace).arrival["process"] == "poisson"
