"""Start, watch and stop one engine server process.

:class:`EngineServer` runs an :class:`~pythia.serve.engines.EngineLaunch` in its own process
group (so that stopping it also stops vLLM's engine-core and worker processes), sends its
output to a log file, polls the health endpoint with a deadline, and on failure raises one
:class:`EngineStartError` carrying the tail of the log.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO

from pythia.serve.engines import EngineLaunch

DEFAULT_START_TIMEOUT_S = 240.0
LOG_TAIL_LINES = 40


class EngineStartError(RuntimeError):
    """The engine did not become healthy; the message ends with the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file (empty when unreadable)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# A traceback's last line, bare or behind vLLM's "(Proc pid=N) ERROR date time [file:line] " prefix.
_EXC_LINE = re.compile(
    r"^(?:\([^)]*\)\s+ERROR\s+\S+\s+\S+\s+\[[^\]]*\]\s+)?"
    r"((?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception)): (.+)$"
)


def _root_cause(log_text: str) -> str | None:
    """The first exception line of a log (the root cause comes before its echoes), shortened."""
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        m = _EXC_LINE.match(line.strip())
        if not m:
            continue
        name, msg = m.group(1).rsplit(".", 1)[-1], m.group(2).strip()
        if "validation error" in msg and i + 1 < len(lines):  # pydantic puts the reason on the next line
            msg = f"{msg}: {lines[i + 1].strip()}"
        return f"{name}: {msg}"[:400]
    return None


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """GET ``url``; returns (status, body), status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (loopback only)
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), b""
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, b""


class EngineServer:
    """One engine server process.

    Use as a context manager::

        with EngineServer(launch, log_path) as srv:
            srv.wait_healthy()
            ...   # requests to srv.base_url

    Args:
        launch: the command (see :func:`pythia.serve.engines.build_launch`).
        log_path: where the server's stdout and stderr go.
        start_timeout_s: deadline of :meth:`wait_healthy`.
    """

    def __init__(self, launch: EngineLaunch, log_path: str | Path, start_timeout_s: float = DEFAULT_START_TIMEOUT_S) -> None:
        if launch.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("engine servers here listen on the loopback address only")
        self.launch = launch
        self.log_path = Path(log_path)
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.started_at: float | None = None
        self.healthy_after_s: float | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:port``."""
        return self.launch.base_url

    def start(self) -> None:
        """Start the process (returns at once; see :meth:`wait_healthy`)."""
        if self.proc is not None:
            raise RuntimeError("the server is already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        env = {**os.environ, **self.launch.env}
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.launch.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: stop() reaches every child
        )

    def wait_healthy(self, timeout_s: float | None = None, poll_s: float = 1.0) -> float:
        """Poll the health endpoint until it answers 200; returns the seconds since start.

        Raises :class:`EngineStartError` (with the log tail) when the process exits or the
        deadline passes; the process is stopped first.
        """
        if self.proc is None or self.started_at is None:
            raise RuntimeError("start() the server first")
        deadline = self.started_at + (timeout_s if timeout_s is not None else self.start_timeout_s)
        url = self.base_url + self.launch.health_path
        while True:
            code = self.proc.poll()
            if code is not None:
                self._fail(f"the {self.launch.backend} server exited with status {code} before it was healthy")
            status, _ = http_get(url, timeout_s=2.0)
            if status == 200:
                self.healthy_after_s = time.monotonic() - self.started_at
                return self.healthy_after_s
            if time.monotonic() > deadline:
                self._fail(
                    f"the {self.launch.backend} server was not healthy after "
                    f"{time.monotonic() - self.started_at:.0f} s"
                )
            time.sleep(poll_s)

    def _fail(self, what: str) -> None:
        self.stop()
        tail = log_tail(self.log_path, lines=400)
        cause = _root_cause(tail)
        short = "\n".join(tail.splitlines()[-LOG_TAIL_LINES:])
        raise EngineStartError(
            f"{what}{': ' + cause if cause else ''}; log {self.log_path}, last lines:\n{short}"
        )

    def is_running(self) -> bool:
        """True while the process lives."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 20.0) -> int | None:
        """Stop the whole process group: SIGINT, then SIGTERM, then SIGKILL; returns the exit status."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, sig)
                    try:
                        proc.wait(timeout=wait_s)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            # Children (engine core, workers) may outlive the leader for a moment.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            return proc.poll()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> "EngineServer":
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
