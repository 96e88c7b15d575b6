"""SLURM support, proven on one machine: the check of `make slurm-check` as a test.

A one-node SLURM cluster on localhost runs the smoke grid through workflow/profiles/slurm and
a local run of the same grid must give the same results (workflow/scripts/slurm_local.sh).
It needs root and apt-get and takes about 8 minutes on 2 cores, beyond the CI's budget, so it
runs only when asked for: PYTHIA_TEST_SLURM=1 on a machine with SLURM's commands (sinfo).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "workflow" / "scripts" / "slurm_local.sh"


def _skip_reason() -> str | None:
    if os.environ.get("PYTHIA_TEST_SLURM") != "1":
        return "the SLURM check runs only with PYTHIA_TEST_SLURM=1 (it needs root and apt-get, ~8 min)"
    if shutil.which("sinfo") is None:
        return "needs SLURM's commands (sinfo): `make slurm-check` installs them as root"
    if os.geteuid() != 0:
        return "needs root: it starts munged, slurmctld and slurmd"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))]


def test_smoke_grid_through_slurm_gives_the_local_results() -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    out = proc.stdout + proc.stderr
    print(proc.stdout)  # the comparison and the wall times, shown with pytest -s
    assert proc.returncode == 0, out[-6000:]
    assert "jobs went through sbatch" in out and "no difference" in out, out[-3000:]
