"""One validation path for every file Pythia reads.

Every loader (workflow specs, canonical and public traces, system, cluster, GPU, model and
efficiency YAML, calibration runs, the pipeline's config) reads its file through this module,
so the same rules hold everywhere:

- bytes: the file exists and is a file; gzip (by name or by magic bytes) is decompressed and a
  truncated or corrupt stream is named as such; text is UTF-8 (a leading BOM is dropped) and the
  first undecodable byte is reported with its line;
- size and shape: a document read whole is at most :data:`MAX_DOCUMENT_BYTES`, nests at most
  :data:`MAX_DEPTH` levels, and a YAML document's aliases expand to at most
  :data:`MAX_YAML_NODES` nodes (a few hundred bytes of nested aliases can otherwise expand to
  billions of nodes);
- values: JSON's ``NaN``/``Infinity`` and numbers that overflow to infinity are refused, and so
  are YAML's ``.nan``/``.inf``, keys that are not strings, repeated keys and YAML-only scalar
  types (dates, binary); nothing is coerced (a quoted ``"false"`` stays a string and fails a
  boolean field's schema);
- structure: a JSON schema (draft 2020-12) from ``pythia/workflow/schemas/`` gives types,
  ranges, enumerations and unknown keys, and the error names the file, the line (YAML) and the
  field.

Errors are :class:`~pythia.errors.PythiaInputError`: one sentence, exit status 2. The limits
are stated in ``docs/inputs-and-outputs.md``.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pythia.errors import PythiaInputError

MAX_DOCUMENT_BYTES = 64 << 20
"""Largest YAML or JSON document read whole (after decompression): 64 MiB."""
MAX_RECORD_BYTES = 64 << 20
"""Largest single line of a JSON Lines or CSV file: 64 MiB."""
MAX_DEPTH = 64
"""Deepest nesting of mappings and lists in any document or record."""
MAX_YAML_NODES = 1_000_000
"""Most nodes a YAML document may hold once its aliases are expanded."""

# Ranges the simulator represents exactly; the schemas use the same figures.
MAX_TOKENS = 1 << 24
"""Most tokens in one call's prompt or output (16,777,216: above every served context)."""
MAX_KEY = (1 << 63) - 1
"""Largest segment key or block hash (int64)."""
MAX_SECONDS = 1e9
"""Longest time (an arrival, a gap, a duration), in seconds: about 31 years."""
MAX_FANOUT = 4096
"""Most parallel instances of one step, or sub-agents of one parent."""
MAX_CALLS_PER_JOB = 100_000
"""Most calls in one job."""

GZIP_MAGIC = b"\x1f\x8b"
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_YAML11_EXPONENT = re.compile(r"^[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+$")  # 1e3: a string to PyYAML


def _fail(where: str, message: str) -> PythiaInputError:
    return PythiaInputError(f"{where}: {message}")


# --------------------------------------------------------------------------- bytes and text


def _decompress(data: bytes, where: str, limit: int) -> bytes:
    """Gunzip ``data`` (every member), refusing more than ``limit`` bytes of output."""
    out = bytearray()
    while data:
        d = zlib.decompressobj(wbits=31)
        try:
            out += d.decompress(data, limit + 1 - len(out))
        except zlib.error as e:
            raise _fail(where, f"not a valid gzip stream ({e})") from None
        if len(out) > limit:
            raise _fail(where, f"decompresses to more than {limit >> 20} MiB, the most a document may hold")
        if not d.eof:
            raise _fail(where, "the gzip stream is truncated (the file ends before the compressed data does)")
        data = d.unused_data.lstrip(b"\0")
    return bytes(out)


def read_bytes(path: str | Path, what: str, *, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The bytes of the file ``path`` (gunzipped when it is gzip), at most ``limit`` of them.

    ``what`` names the file's role for messages (``"workflow spec"``, ``"system file"``).
    """
    path = Path(path)
    if path.is_dir():
        raise _fail(str(path), f"is a directory, not a {what}")
    try:
        size = path.stat().st_size
        if size > limit and path.suffix != ".gz":
            raise _fail(str(path), f"the {what} is {size >> 20} MiB; the most a document may hold is {limit >> 20} MiB")
        data = path.read_bytes()
    except FileNotFoundError:
        raise _fail(str(path), f"no such {what}") from None
    except OSError as e:
        raise _fail(str(path), f"cannot read the {what} ({e.strerror or e})") from None
    if data[:2] == GZIP_MAGIC or path.suffix == ".gz":
        if data[:2] != GZIP_MAGIC:
            raise _fail(str(path), f"the name ends in .gz but the {what} is not gzip-compressed")
        data = _decompress(data, str(path), limit)
    if len(data) > limit:
        raise _fail(str(path), f"the {what} is {len(data) >> 20} MiB; the most a document may hold is {limit >> 20} MiB")
    return data


def decode_text(data: bytes, where: str, what: str) -> str:
    """``data`` as UTF-8 text (a BOM dropped); the first bad byte is reported with its line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise _fail(f"{where}:{line}", f"the {what} is not UTF-8 text (byte 0x{data[e.start]:02x})") from None
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path: str | Path, what: str, *, limit: int = MAX_DOCUMENT_BYTES) -> str:
    """The UTF-8 text of the file ``path`` (gunzipped when it is gzip)."""
    return decode_text(read_bytes(path, what, limit=limit), str(path), what)


def iter_lines(path: str | Path, what: str, *, start: int = 1) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a text file read as a stream (gzip or plain, UTF-8).

    Truncated gzip, bad UTF-8 and lines over :data:`MAX_RECORD_BYTES` raise
    :class:`PythiaInputError` naming the line.
    """
    path = Path(path)
    if path.is_dir():
        raise _fail(str(path), f"is a directory, not a {what}")
    try:
        raw = open(path, "rb")
    except FileNotFoundError:
        raise _fail(str(path), f"no such {what}") from None
    except OSError as e:
        raise _fail(str(path), f"cannot read the {what} ({e.strerror or e})") from None
    lineno = start - 1
    with raw:
        magic = raw.read(2)
        raw.seek(0)
        if path.suffix == ".gz" and magic != GZIP_MAGIC:
            raise _fail(str(path), f"the name ends in .gz but the {what} is not gzip-compressed")
        fh: Any = gzip.GzipFile(fileobj=raw, mode="rb") if magic == GZIP_MAGIC else raw
        try:
            while True:
                line = fh.readline(MAX_RECORD_BYTES + 1)
                if not line:
                    return
                lineno += 1
                if len(line) > MAX_RECORD_BYTES:
                    raise _fail(f"{path}:{lineno}", f"the line is longer than {MAX_RECORD_BYTES >> 20} MiB")
                if lineno == start and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]
                try:
                    yield lineno, line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise _fail(f"{path}:{lineno}", f"the {what} is not UTF-8 text (byte 0x{line[e.start]:02x})") from None
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            detail = "the file ends before the compressed data does" if isinstance(e, EOFError) else str(e)
            raise _fail(f"{path}:{lineno + 1}", f"the gzip stream is truncated or corrupt ({detail})") from None


# --------------------------------------------------------------------------- JSON


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number; write a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows to infinity; write a finite number")
    return value


def json_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in the JSON text (strings skipped)."""
    opens = text.count("[") + text.count("{")
    if opens <= MAX_DEPTH:
        return opens  # an upper bound, and cheap: most records stop here
    b = np.frombuffer(_STRING.sub("", text).encode(), dtype=np.uint8)
    step = ((b == 0x5B) | (b == 0x7B)).astype(np.int32) - ((b == 0x5D) | (b == 0x7D))
    return int(np.cumsum(step).max()) if len(step) else 0


def parse_json(text: str, where: str) -> Any:
    """Parse one JSON document or record; non-finite numbers and deep nesting are refused."""
    if json_depth(text) > MAX_DEPTH:
        raise _fail(where, f"the JSON nests deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        line = f":{e.lineno}" if text.count("\n", 0, e.pos) else ""
        raise _fail(f"{where}{line}", f"not valid JSON ({e.msg} at column {e.colno})") from None
    except ValueError as e:  # a non-finite number, or an integer of more digits than Python reads
        if str(e).startswith("Exceeds the limit"):
            raise _fail(where, "an integer has more than 4300 digits; no field takes a number that large") from None
        raise _fail(where, str(e)) from None
    except RecursionError:
        raise _fail(where, f"the JSON nests deeper than {MAX_DEPTH} levels") from None


def load_json(path: str | Path, what: str) -> Any:
    """Read and parse the JSON document ``path`` (see :func:`parse_json`)."""
    return parse_json(read_text(path, what), str(path))


# --------------------------------------------------------------------------- YAML


def _yaml_error(e: yaml.YAMLError, where: str) -> PythiaInputError:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        loc = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark is not None else where
        return _fail(loc, f"YAML syntax error: {e.problem or e.context or 'invalid YAML'}")
    if isinstance(e, yaml.reader.ReaderError):  # a control character PyYAML refuses
        return _fail(where, f"YAML syntax error: character {e.character!r} at byte {e.position} is not allowed in YAML")
    return _fail(where, f"YAML syntax error: {str(e).splitlines()[0] if str(e) else type(e).__name__}")


def _check_yaml_events(text: str, where: str) -> None:
    """Depth and alias-expansion limits, from the event stream (no recursion, no expansion)."""
    sizes: dict[str, int] = {}
    stack: list[list[Any]] = [[0, None]]  # [expanded nodes, anchor] per open collection
    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(ev, yaml.CollectionStartEvent):
            stack.append([1, ev.anchor])
            if len(stack) - 1 > MAX_DEPTH:
                raise _fail(f"{where}:{ev.start_mark.line + 1}", f"the YAML nests deeper than {MAX_DEPTH} levels")
            continue
        if isinstance(ev, yaml.CollectionEndEvent):
            size, anchor = stack.pop()
        elif isinstance(ev, yaml.ScalarEvent):
            size, anchor = 1, ev.anchor
        elif isinstance(ev, yaml.AliasEvent):
            size, anchor = sizes.get(ev.anchor, 1), None
        else:
            continue
        if anchor is not None:
            sizes[anchor] = size
        stack[-1][0] += size
        if stack[-1][0] > MAX_YAML_NODES or stack[0][0] > MAX_YAML_NODES:
            raise _fail(
                f"{where}:{ev.start_mark.line + 1}",
                f"YAML aliases expand the document past {MAX_YAML_NODES:,} nodes; write the values out or use fewer aliases",
            )


@dataclass(frozen=True)
class YamlDocument:
    """A parsed YAML document with its node tree, to name lines in error messages."""

    value: Any
    node: yaml.Node | None
    source: str

    def line_of(self, path: tuple[str | int, ...]) -> int | None:
        """The 1-based line of the value at ``path`` (the deepest part of it that exists)."""
        node, line = self.node, None
        if node is not None:
            line = node.start_mark.line + 1
        for part in path:
            nxt = None
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                        nxt = v
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                nxt = node.value[part]
            if nxt is None:
                break
            node, line = nxt, nxt.start_mark.line + 1
        return line

    def where(self, path: tuple[str | int, ...] = ()) -> str:
        """``source:line: field`` for the value at ``path``."""
        line = self.line_of(path) if path else None
        loc = self.source if line is None else f"{self.source}:{line}"
        return f"{loc}: {format_path(path)}" if path else loc

    def error(self, path: tuple[str | int, ...], message: str) -> PythiaInputError:
        """A :class:`PythiaInputError` about the value at ``path``."""
        return PythiaInputError(f"{self.where(path)}: {message}")


def format_path(path: tuple[str | int, ...]) -> str:
    """``roles.coder.output_tokens`` / ``steps.fix.next[0].to``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _check_keys(node: yaml.Node, path: tuple[str | int, ...], doc: YamlDocument) -> None:
    """PyYAML keeps the last of two equal keys silently; a repeated key is a mistake."""
    stack = [(node, path)]
    while stack:
        n, p = stack.pop()
        if isinstance(n, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in n.value:
                if isinstance(k, yaml.ScalarNode):
                    if k.value in seen and k.value != "<<":
                        raise PythiaInputError(f"{doc.source}:{k.start_mark.line + 1}: {format_path((*p, k.value))}: the key appears twice")
                    seen.add(k.value)
                    stack.append((v, (*p, k.value)))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend((v, (*p, i)) for i, v in enumerate(n.value))


_PLAIN = (str, bool, int, float, type(None))


def _check_plain(value: Any, doc: YamlDocument) -> None:
    """Only what JSON can say: string keys, finite numbers, no dates or binary."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    seen: set[int] = set()
    while stack:
        v, p = stack.pop()
        if isinstance(v, dict):
            if id(v) in seen:  # an alias: checked once
                continue
            seen.add(id(v))
            for k, x in v.items():
                if not isinstance(k, str):
                    raise doc.error(p, f"key {k!r} must be a name (a string); quote it")
                stack.append((x, (*p, k)))
        elif isinstance(v, list):
            if id(v) in seen:
                continue
            seen.add(id(v))
            stack.extend((x, (*p, i)) for i, x in enumerate(v))
        elif isinstance(v, float) and not math.isfinite(v):
            raise doc.error(p, f"{v} is not a finite number")
        elif not isinstance(v, _PLAIN):
            raise doc.error(p, f"{type(v).__name__} values are not allowed here; quote it to make it a string")


def parse_yaml(text: str, source: str) -> YamlDocument:
    """Parse YAML ``text`` under the limits and value rules of this module."""
    try:
        _check_yaml_events(text, source)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            doc = YamlDocument(None, node, source)
            if node is not None:
                _check_keys(node, (), doc)
            value = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise _yaml_error(e, source) from None
    except RecursionError:  # not reached under MAX_DEPTH; kept so no stack dump can escape
        raise _fail(source, f"the YAML nests deeper than {MAX_DEPTH} levels") from None
    doc = YamlDocument(value, node, source)
    _check_plain(value, doc)
    return doc


def load_yaml(path: str | Path, what: str) -> YamlDocument:
    """Read and parse the YAML file ``path`` (see :func:`parse_yaml`)."""
    return parse_yaml(read_text(path, what), str(path))


# --------------------------------------------------------------------------- schemas


@lru_cache(maxsize=None)
def schema_validator(name: str, definition: str | None = None):  # type: ignore[no-untyped-def]
    """A draft 2020-12 validator for ``pythia/workflow/schemas/<name>.schema.json``.

    ``definition`` selects one entry of the schema's ``$defs`` instead of the whole schema.
    """
    import jsonschema

    text = resources.files("pythia.workflow").joinpath(f"schemas/{name}.schema.json").read_text()
    schema = json.loads(text)
    if definition is not None:
        schema["$ref"] = f"#/$defs/{definition}"
    return jsonschema.Draft202012Validator(schema)


def describe_schema_error(error: Any) -> tuple[tuple[str | int, ...], str]:
    """The field path a jsonschema error is about, and a phrase saying what is wrong."""
    path = tuple(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        if missing:
            return path, f"field {format_path((*path, missing[0]))} is missing"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra:
            known = ", ".join(sorted(allowed))
            return (*path, extra[0]), f"unknown field {format_path((*path, extra[0]))}" + (f"; known: {known}" if known else "")
    hint = schema_hint(error)
    if hint is not None:
        return path, f"field {format_path(path) or '(top level)'}: {hint}"
    return path, f"field {format_path(path) or '(top level)'}: {error.message}"


def schema_hint(error: Any) -> str | None:
    """A better phrase than jsonschema's for the type errors users make most, or None.

    A quoted boolean is a string, not a boolean; ``1e3`` is text to YAML 1.1 (PyYAML reads a
    number in exponent form only with a dot and a sign, ``1.0e+3``).
    """
    if error.validator != "type" or not isinstance(error.instance, str):
        return None
    if _YAML11_EXPONENT.match(error.instance):
        mantissa, exponent = re.split("[eE]", error.instance)
        fixed = f"{mantissa if '.' in mantissa else mantissa + '.0'}e{'' if exponent[:1] in '+-' else '+'}{exponent}"
        return f"{error.instance!r} is text to YAML 1.1; write the number as {fixed}"
    if "boolean" in str(error.validator_value):
        return f"{error.instance!r} is a string; write true or false without quotes"
    return None


def best_schema_error(validator: Any, value: Any) -> Any | None:
    """The most useful error of ``value`` against ``validator`` (a misspelt key first), or None."""
    import jsonschema

    errors = list(validator.iter_errors(value))
    if not errors:
        return None
    # A misspelt key also makes a required one go missing; naming the misspelling helps more.
    unexpected = [e for e in errors if e.validator == "additionalProperties"]
    return jsonschema.exceptions.best_match(unexpected or errors)


def validate(doc: YamlDocument, schema: str, definition: str | None = None) -> Any:
    """Check ``doc``'s value against a schema; return the value."""
    err = best_schema_error(schema_validator(schema, definition), doc.value)
    if err is not None:
        path, message = describe_schema_error(err)
        line = doc.line_of(path) if path else None
        loc = doc.source if line is None else f"{doc.source}:{line}"
        raise PythiaInputError(f"{loc}: {message}")
    return doc.value


def validate_value(value: Any, where: str, schema: str, definition: str | None = None) -> Any:
    """Check a JSON value (no line information) against a schema; return the value."""
    err = best_schema_error(schema_validator(schema, definition), value)
    if err is not None:
        raise PythiaInputError(f"{where}: {describe_schema_error(err)[1]}")
    return value


# --------------------------------------------------------------------------- run tables


def read_parquet(
    path: str | Path, what: str, *, required: tuple[str, ...] = (), numeric: tuple[str, ...] = ()
) -> Any:
    """A run table (``calls.parquet``, ``jobs.parquet``) as a data frame, its columns checked.

    ``required`` columns must exist; ``numeric`` ones (those present) must hold numbers with no
    infinities (NaN means "not measured" and stays).
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        raise _fail(str(path), f"no such {what}" if not path.exists() else f"is not a file, not a {what}")
    try:
        df = pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _fail(str(path), f"the {what} is not a readable Parquet table ({detail})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise _fail(str(path), f"the {what} has no column {missing[0]}")
    for c in numeric:
        if c not in df.columns:
            continue
        col = df[c]
        if not (pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)):
            raise _fail(str(path), f"column {c} of the {what} must hold numbers, not {col.dtype}")
        bad = np.isinf(col.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            raise _fail(str(path), f"column {c} of the {what} holds an infinite value (row {int(np.argmax(bad))})")
    return df
