"""Output paths: checked before any work starts, written atomically.

A command that writes a file or a folder checks its output path with
:func:`check_output_path` first, before it loads a workload or starts a simulation or an
engine, so a bad path costs the user a second, not a run: the path must be creatable, must
not be one of the command's own inputs, and must not be an existing thing of the other kind
(a folder where a file goes, a file where a folder goes).

Files are then written through :func:`atomic_path` (or :func:`write_atomic`): into a hidden
temporary name in the same folder, flushed to disk, then renamed over the real name with
``os.replace``. A reader sees the old file or the new one, never half of either, and a
failure removes the temporary file, so no stray ``.tmp`` files remain.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
from pathlib import Path
from typing import IO, Any, Iterator, Literal, Sequence

from pythia.errors import PythiaInputError

OutputKind = Literal["file", "dir"]
# Hidden, so that a workload folder's loader (which skips dot files) never reads one.
TEMP_PREFIX = ".tmp-"


def _resolved(path: Path) -> Path:
    """``path`` made absolute with symbolic links followed (the path need not exist)."""
    return Path(os.path.realpath(os.path.expanduser(path)))


def _file_id(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of an existing path, so hard links compare equal; ``None`` if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class _Inputs:
    """The command's inputs, resolved once, for membership tests by path or by file identity."""

    def __init__(self, inputs: Sequence[str | Path]) -> None:
        self.by_path: dict[Path, str] = {}
        self.by_id: dict[tuple[int, int], str] = {}
        for p in inputs:
            r = _resolved(Path(p))
            self.by_path.setdefault(r, str(p))
            fid = _file_id(r)
            if fid is not None:
                self.by_id.setdefault(fid, str(p))

    def find(self, path: Path) -> str | None:
        """The input (as given) that ``path`` (resolved) names, if any."""
        if path in self.by_path:
            return self.by_path[path]
        fid = _file_id(path)
        return self.by_id.get(fid) if fid is not None else None


def _same(a: Path, b: Path) -> bool:
    """Whether two resolved paths name the same thing (hard links included)."""
    return a == b or (_file_id(a) is not None and _file_id(a) == _file_id(b))


def _nearest_existing(path: Path) -> Path:
    """The closest ancestor of ``path`` (itself included) that exists."""
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _writable_dir(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def check_output_path(
    path: str | Path,
    *,
    kind: OutputKind,
    what: str,
    inputs: Sequence[str | Path] = (),
    writes: Sequence[str] = (),
    input_dirs: Sequence[str | Path] = (),
) -> Path:
    """Check that ``path`` can take an output, before any work starts; returns it resolved.

    Args:
        path: the output path as the user gave it.
        kind: ``"file"`` for one file, ``"dir"`` for a folder the command writes files into.
        what: how the user named the path, for messages (``"option --out"``).
        inputs: paths the command reads (files or folders); the output may not be one of them.
        writes: with ``kind="dir"``, the names of the files written into the folder; none of
            them may be an input or an existing folder.
        input_dirs: folders read whole (every file in them is an input); with
            ``kind="file"``, the output may not be placed directly inside one, where it
            would be read back as part of the input next time.

    Raises:
        PythiaInputError: one sentence naming ``what``, the path and the fix.
    """
    given = str(path)
    out = _resolved(Path(path))
    label = f"{what}={given}"
    known = _Inputs(inputs)
    shown = known.find(out)
    if shown is not None:
        also = "" if shown == given else f" ({shown})"
        raise PythiaInputError(
            f"{label} is also an input of this command{also}; choose another path so the input is kept"
        )
    if kind == "file":
        for d in input_dirs:
            if _same(out.parent, _resolved(Path(d))):
                raise PythiaInputError(
                    f"{label} is inside the folder {d}, which this command reads whole; "
                    "choose a path outside it so the output is not read back as input"
                )
    else:
        for name in writes:
            target = out / name
            shown = known.find(target)
            if shown is not None:
                raise PythiaInputError(
                    f"{label} would overwrite {shown}, an input of this command, with its {name}; choose another folder"
                )
            if target.is_dir():
                raise PythiaInputError(f"{label} holds a folder named {name} where this command writes a file; "
                                       "remove it or choose another folder")

    if os.path.lexists(out) or out.exists():
        if kind == "dir" and not out.is_dir():
            raise PythiaInputError(
                f"{label} is an existing file; give a folder (the command writes several files into it)"
            )
        if kind == "file" and out.is_dir():
            raise PythiaInputError(f"{label} is an existing folder; give a file name")
        # A file is replaced by renaming, so its folder, not the file, must be writable.
        folder = out if kind == "dir" else out.parent
        if not _writable_dir(folder):
            raise PythiaInputError(f"{label} cannot be written: the folder {folder} is not writable")
        return out
    base = _nearest_existing(out.parent)
    if not base.is_dir():
        raise PythiaInputError(f"{label} cannot be created: {base} is a file, not a folder")
    if not _writable_dir(base):
        raise PythiaInputError(f"{label} cannot be created: the folder {base} is not writable")
    return out


def check_distinct_outputs(outputs: Sequence[tuple[str, str | Path | None]]) -> None:
    """Refuse two outputs of one command that name the same path (``(what, path)`` pairs; ``None`` skipped)."""
    seen: list[tuple[str, str, Path]] = []
    for what, path in outputs:
        if path is None:
            continue
        r = _resolved(Path(path))
        for other_what, other_path, other in seen:
            if _same(r, other):
                raise PythiaInputError(
                    f"{what}={path} is the same path as {other_what}={other_path}; give each output its own file"
                )
        seen.append((what, str(path), r))


def _temp_name(path: Path) -> Path:
    # The real name is kept at the end so that writers that look at the suffix (``.gz``)
    # behave as they would on the real name.
    return path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(4)}-{path.name}")


def _remove_temp(tmp: Path) -> None:
    """Remove ``tmp`` and anything a writer derived from its name (``tmp.name + '.part'``)."""
    with contextlib.suppress(OSError):
        for p in tmp.parent.glob(glob.escape(tmp.name) + "*"):  # the real name may hold [ or *
            with contextlib.suppress(OSError):
                p.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cannot_write(path: Path, e: OSError) -> PythiaInputError:
    return PythiaInputError(f"{path}: cannot write the output ({e.strerror or e})")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed.

    For writers that take a file name (pyarrow, a trace writer). The folder is created if
    needed. ``path`` is never touched until the new content is complete and on disk.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cannot_write(path, e) from None
    tmp = _temp_name(path)
    try:
        yield tmp
        try:
            _fsync(tmp)
            os.replace(tmp, path)
        except OSError as e:
            raise _cannot_write(path, e) from None
    finally:
        _remove_temp(tmp)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: Literal["w", "wb"] = "w", encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; it replaces ``path`` when the block ends without error."""
    with atomic_path(path) as tmp:
        # 0o666 and the umask, as open() gives; O_EXCL: the name is ours alone.
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as e:
            raise _cannot_write(Path(path), e) from None
        with open(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh


def write_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``.

    ``data`` is text (``str``), ``bytes``, or a table (a ``pandas.DataFrame`` or a
    ``pyarrow.Table``), which is written as zstd Parquet without pandas or wall-clock
    metadata, so the same table gives the same bytes.
    """
    path = Path(path)
    if isinstance(data, (str, bytes, bytearray)):
        mode: Literal["w", "wb"] = "w" if isinstance(data, str) else "wb"
        try:
            with atomic_open(path, mode) as fh:
                fh.write(data)
        except OSError as e:  # a full disk, a quota
            raise _cannot_write(path, e) from None
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    table = table.replace_schema_metadata(None)  # no pandas metadata: identical bytes for identical frames
    try:
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
    except OSError as e:
        raise _cannot_write(path, e) from None
    return path
