"""Output paths checked before work starts, and files written atomically (pythia.outputs)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from pythia.errors import PythiaInputError
from pythia.outputs import (
    TEMP_PREFIX,
    atomic_open,
    atomic_path,
    check_distinct_outputs,
    check_output_path,
    write_atomic,
)
from pythia.results import RUN_FILES, SUMMARY_FILE, write_json, write_parquet, write_run

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


class Boom(RuntimeError):
    pass


# --------------------------------------------------------------------------- check_output_path


def test_a_new_file_in_a_new_folder_is_accepted(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "o.json"
    assert check_output_path(out, kind="file", what="option --out") == out.resolve()
    assert not (tmp_path / "a").exists()  # the check creates nothing


def test_an_existing_file_may_be_replaced(tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    out.write_text("old")
    check_output_path(out, kind="file", what="option --out")
    assert out.read_text() == "old"


def test_an_existing_empty_or_full_folder_may_take_a_run(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    check_output_path(tmp_path / "run", kind="dir", what="option --out", writes=RUN_FILES)


@pytest.mark.parametrize("kind, make, needle", [
    ("dir", "file", "is an existing file; give a folder"),
    ("file", "dir", "is an existing folder; give a file name"),
])
def test_an_existing_thing_of_the_other_kind_is_refused(tmp_path: Path, kind: str, make: str, needle: str) -> None:
    out = tmp_path / "x"
    out.mkdir() if make == "dir" else out.write_text("keep")
    with pytest.raises(PythiaInputError, match=needle) as e:
        check_output_path(out, kind=kind, what="option --out")  # type: ignore[arg-type]
    assert f"option --out={out}" in str(e.value)


def test_a_path_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(PythiaInputError, match=r"cannot be created: .*f is a file, not a folder"):
        check_output_path(tmp_path / "f" / "sub" / "o.json", kind="file", what="option --out")


@pytest.mark.skipif(ROOT_USER, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PythiaInputError, match="not writable"):
            check_output_path(ro / "o.json", kind="file", what="option --out")
        with pytest.raises(PythiaInputError, match="not writable"):
            check_output_path(ro, kind="dir", what="option --out")
    finally:
        ro.chmod(0o755)


def test_a_folder_without_write_permission_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pythia.outputs as outputs

    # As a user without the permission sees it (root passes every access check).
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(PythiaInputError, match=r"cannot be created: the folder .* is not writable"):
        check_output_path(tmp_path / "new" / "o.json", kind="file", what="option --report")
    (tmp_path / "o.json").write_text("x")
    with pytest.raises(PythiaInputError, match=r"cannot be written: the folder .* is not writable"):
        check_output_path(tmp_path / "o.json", kind="file", what="option --report")


def test_the_output_may_not_be_an_input(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("x")
    with pytest.raises(PythiaInputError, match="is also an input of this command;"):
        check_output_path(spec, kind="file", what="option --out", inputs=[spec])
    # the same file through another spelling, a symbolic link and a hard link
    (tmp_path / "d").mkdir()
    for other in (tmp_path / "d" / ".." / "s.yaml", tmp_path / "link.yaml", tmp_path / "hard.yaml"):
        if other.name == "link.yaml":
            other.symlink_to(spec)
        elif other.name == "hard.yaml":
            os.link(spec, other)
        with pytest.raises(PythiaInputError, match=r"is also an input of this command \("):
            check_output_path(other, kind="file", what="option --out", inputs=[spec])


def test_a_run_folder_may_not_overwrite_an_input_inside_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    with pytest.raises(PythiaInputError, match="would overwrite .*summary.json, an input"):
        check_output_path(run, kind="dir", what="option --out", inputs=[run / "summary.json"], writes=RUN_FILES)
    (run / "calls.parquet").mkdir()
    with pytest.raises(PythiaInputError, match="holds a folder named calls.parquet"):
        check_output_path(run, kind="dir", what="option --out", writes=RUN_FILES)


def test_a_file_may_not_be_written_into_a_folder_read_whole(tmp_path: Path) -> None:
    wl = tmp_path / "traces"
    wl.mkdir()
    with pytest.raises(PythiaInputError, match="inside the folder .*reads whole"):
        check_output_path(wl / "new.jsonl", kind="file", what="option --out", inputs=[wl], input_dirs=[wl])
    with pytest.raises(PythiaInputError, match="is also an input"):
        check_output_path(wl, kind="dir", what="option --out", inputs=[wl])
    check_output_path(tmp_path / "elsewhere.jsonl", kind="file", what="option --out", inputs=[wl], input_dirs=[wl])


def test_two_outputs_of_one_command_must_differ(tmp_path: Path) -> None:
    check_distinct_outputs([("option --write", tmp_path / "a"), ("option --report", None)])
    with pytest.raises(PythiaInputError, match="is the same path as option --write"):
        check_distinct_outputs([("option --write", tmp_path / "a"), ("option --report", tmp_path / "." / "a")])


# --------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("data", ["text é\n", b"\x00bytes\xff", pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})],
                         ids=["text", "bytes", "frame"])
def test_write_atomic_writes_each_kind_and_leaves_no_temporary(tmp_path: Path, data: object) -> None:
    out = tmp_path / "sub" / "o.bin"
    write_atomic(out, data)
    if isinstance(data, str):
        assert out.read_text(encoding="utf-8") == data
    elif isinstance(data, bytes):
        assert out.read_bytes() == data
    else:
        pd.testing.assert_frame_equal(pd.read_parquet(out), data)  # type: ignore[arg-type]
    assert _listing(out.parent) == ["o.bin"]


def test_parquet_is_deterministic(tmp_path: Path) -> None:
    df = pd.DataFrame({"a": [1.5, float("nan")], "s": ["x", "y"]})
    write_parquet(df, tmp_path / "1.parquet")
    write_parquet(df, tmp_path / "2.parquet")
    assert (tmp_path / "1.parquet").read_bytes() == (tmp_path / "2.parquet").read_bytes()


def test_a_failure_mid_write_keeps_the_old_file_whole_and_removes_the_temporary(tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    out.write_text("old content\n")
    with pytest.raises(Boom):
        with atomic_open(out) as fh:
            fh.write("new, half")
            raise Boom
    assert out.read_text() == "old content\n"
    assert _listing(tmp_path) == ["o.json"]


def test_a_failing_table_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "calls.parquet"
    write_parquet(pd.DataFrame({"a": [1]}), out)
    before = out.read_bytes()

    def half(table: object, where: object, **kw: object) -> None:
        Path(str(where)).write_bytes(b"PAR1 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", half)
    with pytest.raises(PythiaInputError, match=r"calls.parquet: cannot write the output \(No space left on device\)"):
        write_parquet(pd.DataFrame({"a": [2]}), out)
    assert out.read_bytes() == before
    assert _listing(tmp_path) == ["calls.parquet"]


def test_a_failing_rename_removes_the_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "o.txt"
    out.write_text("old")

    def no_replace(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(PythiaInputError, match="cannot write the output"):
        write_atomic(out, "new")
    assert out.read_text() == "old"
    assert _listing(tmp_path) == ["o.txt"]


def test_atomic_path_keeps_the_suffix_and_cleans_derived_names(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl.gz"
    with atomic_path(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(TEMP_PREFIX) and tmp.name.endswith(".jsonl.gz")
        with gzip.open(tmp, "wt") as fh:
            fh.write("x\n")
    assert gzip.open(out, "rt").read() == "x\n"
    with pytest.raises(Boom):
        with atomic_path(out) as tmp:
            # a writer that itself writes to a name derived from ours, then fails
            Path(str(tmp) + ".tmp").write_text("partial")
            tmp.write_text("partial")
            raise Boom
    assert _listing(tmp_path) == ["t.jsonl.gz"]


def test_names_with_pattern_characters_are_cleaned_too(tmp_path: Path) -> None:
    (tmp_path / "run[1]x").write_text("a neighbour the cleanup must not touch")
    with pytest.raises(Boom):
        with atomic_open(tmp_path / "run[1]") as fh:
            fh.write("half")
            raise Boom
    assert _listing(tmp_path) == ["run[1]x"]


def test_new_files_get_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    write_atomic(tmp_path / "o.txt", "x")
    assert (tmp_path / "o.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_unwritable_parent_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(PythiaInputError, match="cannot write the output"):
        write_atomic(tmp_path / "f" / "o.txt", "x")


# --------------------------------------------------------------------------- run folders


def test_write_run_writes_the_summary_last_and_drops_a_stale_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pythia.results as results

    run = tmp_path / "run"
    run.mkdir()
    (run / SUMMARY_FILE).write_text('{"old": true}\n')
    order: list[str] = []
    real = results.write_atomic

    def spy(path: Path, data: object) -> Path:
        order.append(Path(path).name)
        if Path(path).name == "jobs.parquet":
            assert not (run / SUMMARY_FILE).exists()  # no summary beside a half-new folder
        return real(path, data)

    monkeypatch.setattr(results, "write_atomic", spy)
    df = pd.DataFrame({"a": [1]})
    write_run(run, {"calls.parquet": df, "jobs.parquet": df, "timeseries.parquet": df}, {"x": float("nan")})
    assert order == list(RUN_FILES)
    assert json.loads((run / SUMMARY_FILE).read_text()) == {"x": None}
    assert _listing(run) == sorted(RUN_FILES)


def test_a_failed_table_leaves_no_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pythia.results as results

    run = tmp_path / "run"
    run.mkdir()
    write_json({"old": 1}, run / SUMMARY_FILE)

    def fail(path: Path, data: object) -> Path:
        raise PythiaInputError(f"{path}: cannot write the output (No space left on device)")

    monkeypatch.setattr(results, "write_atomic", fail)
    with pytest.raises(PythiaInputError):
        write_run(run, {"calls.parquet": pd.DataFrame({"a": [1]})}, {"x": 1})
    assert _listing(run) == []  # the stale summary is gone: the folder does not claim to be complete


def test_the_sim_cli_names_the_run_files_as_the_results_schema_does() -> None:
    from pythia.sim import cli

    assert cli.RUN_FILES == RUN_FILES
