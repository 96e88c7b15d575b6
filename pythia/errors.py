"""Errors a user can cause.

A :class:`PythiaInputError` carries one sentence that names the file and the line or
field at fault. The command line prints it without a traceback and exits with status 2;
tracebacks are reserved for bugs in Pythia itself.
"""

from __future__ import annotations


class PythiaInputError(Exception):
    """Bad user input (a trace, a spec, a config); the message is one sentence for the user.

    The message is kept on one line: a field name or value quoted from the user's file may hold
    line breaks or other control characters, which are shown escaped.
    """

    exit_status = 2

    def __init__(self, message: object = "") -> None:
        text = str(message)
        if not text.isprintable():
            text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
        super().__init__(text)


def where(path: object, line: int | None = None, field: str | None = None) -> str:
    """Format a location as ``file:line: field`` for error messages."""
    loc = str(path)
    if line is not None:
        loc += f":{line}"
    if field:
        loc += f": {field}"
    return loc
