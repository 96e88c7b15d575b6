"""Importers of public trace formats into the canonical :class:`~pythia.workflow.trace.Trace`.

An importer is any object with a ``name``, a one-line ``description``, a cheap ``sniff(path)``
(extension plus the first bytes, never the whole file) and ``load(path, options)``. Each format
lives in one module of this package that defines ``IMPORTER``; adding a format is that module
plus one entry in :data:`FORMATS`. ``docs/importers.md`` describes how each format maps to the
canonical trace.

Bad input raises :class:`~pythia.errors.PythiaInputError` with one sentence naming the file and
the line (line formats) or the field (JSON) at fault.
"""

from __future__ import annotations

import gzip
import importlib
import math
import zlib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, runtime_checkable

import numpy as np

from pythia.errors import PythiaInputError
from pythia.inputs import MAX_SECONDS, MAX_TOKENS

if TYPE_CHECKING:  # load.py imports this package lazily; avoid the cycle at run time
    from pythia.workflow.load import LoadOptions
    from pythia.workflow.trace import Trace

# One module per format, in sniffing order; each defines ``IMPORTER``.
FORMATS: tuple[str, ...] = (
    "mooncake",
    "azure",
    "claude_code",
)

HEAD_BYTES = 8192


@runtime_checkable
class Importer(Protocol):
    """What every format module's ``IMPORTER`` provides."""

    name: str
    description: str

    def sniff(self, path: Path) -> bool:
        """True when ``path`` looks like this format (extension and first bytes only)."""
        ...

    def load(self, path: Path, options: LoadOptions) -> Trace:
        """Read ``path`` into a canonical trace; raise :class:`PythiaInputError` on bad input."""
        ...


@lru_cache(maxsize=None)
def importers() -> tuple[Importer, ...]:
    """The registered importers, in sniffing order."""
    return tuple(importlib.import_module(f"{__name__}.{m}").IMPORTER for m in FORMATS)


def detect(path: Path) -> Importer | None:
    """The importer whose format ``path`` is in, or ``None`` when no importer recognises it."""
    path = Path(path)
    if not path.is_file():
        return None
    for imp in importers():
        if imp.sniff(path):
            return imp
    return None


def describe() -> str:
    """A short human list of the supported formats, for error messages."""
    return ", ".join(imp.description for imp in importers())


def get(name: str) -> Importer:
    """The importer called ``name``."""
    for imp in importers():
        if imp.name == name:
            return imp
    known = ", ".join(imp.name for imp in importers())
    raise PythiaInputError(f"trace format {name!r} is unknown; known formats: {known}")


# --------------------------------------------------------------------------- helpers for importers


def read_head(path: Path, size: int = HEAD_BYTES) -> str:
    """The first ``size`` bytes of ``path`` as text (gunzipped; empty when unreadable), without a BOM."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(size)
            if raw[:2] == b"\x1f\x8b":
                fh.seek(0)
                with gzip.GzipFile(fileobj=fh) as gz:
                    raw = gz.read(size)
    except (OSError, EOFError, zlib.error):
        return ""
    return raw.decode("utf-8", errors="replace").lstrip("\ufeff")


def data_suffix(path: Path) -> str:
    """The suffix that names a file's format, looking through a ``.gz`` (``t.jsonl.gz``: ``.jsonl``)."""
    p = Path(path)
    return (p.with_suffix("") if p.suffix == ".gz" else p).suffix.lower()


def fail(where: str, what: str) -> NoReturn:
    """Raise the one-sentence input error ``"<where>: <what>"``."""
    raise PythiaInputError(f"{where}: {what}")


def read_error(path: Path, err: Exception) -> PythiaInputError:
    """The input error for a file that cannot be opened or decoded."""
    reason = getattr(err, "strerror", None) or type(err).__name__
    return PythiaInputError(f"{path}: the file cannot be read ({reason})")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _get(obj: dict[str, Any], key: str, where: str, field: str) -> Any:
    if key not in obj:
        fail(where, f"field {field} is missing")
    return obj[key]


def need_int(
    obj: dict[str, Any], key: str, where: str, field: str | None = None, *, maximum: int = MAX_TOKENS
) -> int:
    """``obj[key]`` as an integer in ``0..maximum`` (a token count by default), or an error naming the field."""
    field = field or key
    value = _get(obj, key, where, field)
    if isinstance(value, bool) or not isinstance(value, int):
        fail(where, f"field {field} must be a non-negative integer, not {_kind(value)} {value!r}")
    if value < 0:
        fail(where, f"field {field} is {value}, a negative length")
    if value > maximum:
        fail(where, f"field {field} is {value}, above the largest the simulator represents ({maximum:,})")
    return value


def need_number(
    obj: dict[str, Any], key: str, where: str, field: str | None = None, *, maximum: float = MAX_SECONDS
) -> float:
    """``obj[key]`` as a finite float in ``0..maximum`` (seconds by default), or an error naming the field."""
    field = field or key
    value = _get(obj, key, where, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        fail(where, f"field {field} must be a finite number, not {_kind(value)} {value!r}")
    if value < 0:
        fail(where, f"field {field} is {value}, a negative time")
    if value > maximum:
        fail(where, f"field {field} is {value}, above the largest the simulator represents ({maximum:g})")
    return float(value)


def opt_number(
    obj: dict[str, Any], key: str, where: str, field: str | None = None, *, maximum: float = MAX_SECONDS
) -> float | None:
    """Like :func:`need_number`, but ``None`` when the field is absent or null."""
    return None if obj.get(key) is None else need_number(obj, key, where, field, maximum=maximum)


def need_str(obj: dict[str, Any], key: str, where: str, field: str | None = None) -> str:
    """``obj[key]`` as a string, or an error naming the field."""
    field = field or key
    value = _get(obj, key, where, field)
    if not isinstance(value, str):
        fail(where, f"field {field} must be a string, not {_kind(value)} {value!r}")
    return value


def need_list(obj: dict[str, Any], key: str, where: str, field: str | None = None) -> list[Any]:
    """``obj[key]`` as a list, or an error naming the field."""
    field = field or key
    value = _get(obj, key, where, field)
    if not isinstance(value, list):
        fail(where, f"field {field} must be a list, not {_kind(value)}")
    return value


def need_ids(obj: dict[str, Any], key: str, where: str, field: str | None = None) -> np.ndarray:
    """``obj[key]`` as an int64 array of block hash ids, or an error naming the field."""
    field = field or key
    value = need_list(obj, key, where, field)
    if not value:
        return np.empty(0, dtype=np.int64)
    try:
        arr = np.array(value)
    except (ValueError, TypeError):
        arr = np.array([], dtype=object)
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or arr.dtype == np.uint64:
        fail(where, f"field {field} must be a list of integer block ids")
    return arr.astype(np.int64, copy=False)


def need_object(value: Any, where: str, field: str) -> dict[str, Any]:
    """``value`` as a JSON object, or an error naming the field."""
    if not isinstance(value, dict):
        fail(where, f"field {field} must be a JSON object, not {_kind(value)}")
    return value
