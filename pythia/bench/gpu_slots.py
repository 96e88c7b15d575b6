"""Exclusive GPUs for concurrent real runs on one host.

Snakemake counts a ``gpu`` resource but does not say which device a job may use (it sets no
``CUDA_VISIBLE_DEVICES``), so a real run pins its own GPU: it takes an exclusive lock on one
file per device in a shared folder and exports that device to its engine. A run that exits
or crashes releases its lock with its file descriptor.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

from pythia.errors import PythiaInputError

log = logging.getLogger(__name__)
DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / "pythia-gpu-locks"


def visible_devices() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else every NVML device."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # no library, no driver, no device: a host without GPUs
        log.info("no GPU found (%s)", e)
        return []


@contextlib.contextmanager
def gpu_slot(devices: list[str] | None = None, lock_dir: Path = DEFAULT_LOCK_DIR,
             timeout_s: float = 24 * 3600.0, poll_s: float = 2.0) -> Iterator[str | None]:
    """Hold one of ``devices`` (default :func:`visible_devices`) exclusively; yields its id.

    Yields ``None`` on a host without GPUs. Waits (polling) while every device is held by
    another run, up to ``timeout_s``.
    """
    devices = visible_devices() if devices is None else devices
    if not devices:
        yield None
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        for dev in devices:
            fd = os.open(lock_dir / f"gpu-{dev}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield dev
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        if time.monotonic() >= deadline:
            raise PythiaInputError(f"no GPU of {', '.join(devices)} became free within {timeout_s:g} s")
        time.sleep(poll_s)
