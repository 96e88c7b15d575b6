"""Where the project's data lives: the project root, the public traces, results."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The repository root (holding ``baselines/`` and ``workloads/``).

    An editable install resolves it from the package location; otherwise the current
    directory is taken, so commands run from a checkout find the checkout's files.
    """
    here = Path(__file__).resolve().parent.parent
    if (here / "baselines").is_dir() and (here / "workloads").is_dir():
        return here
    return Path.cwd()


def traces_dir() -> Path:
    """The public traces: ``$PYTHIA_TRACES`` or ``../shared/traces`` beside the project root."""
    env = os.environ.get("PYTHIA_TRACES")
    if env:
        return Path(env)
    return project_root().parent / "shared" / "traces"


def workloads_dir() -> Path:
    """The shipped workflow specs."""
    return project_root() / "workloads"
