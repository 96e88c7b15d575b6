"""GPU pinning of concurrent real runs: one device per run, released on exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from pythia.bench.gpu_slots import gpu_slot, visible_devices
from pythia.errors import PythiaInputError


def test_concurrent_holders_get_distinct_devices_and_release_them(tmp_path: Path) -> None:
    devices = ["0", "1"]
    with gpu_slot(devices, tmp_path) as a, gpu_slot(devices, tmp_path) as b:
        assert {a, b} == {"0", "1"}
        with pytest.raises(PythiaInputError, match="no GPU of 0, 1 became free"):
            with gpu_slot(devices, tmp_path, timeout_s=0.2, poll_s=0.05):
                pass
    with gpu_slot(devices, tmp_path) as again:
        assert again == "0"


def test_no_gpu_yields_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_devices() == []
    with gpu_slot(lock_dir=tmp_path) as dev:
        assert dev is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_devices() == ["2", "3"]
