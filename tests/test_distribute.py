"""Data-parallel training (payload/learn/distribute.py) on two devices.  No machine here has two GPUs, so
the tests replicate over two CPU devices, the same code path a multi-GPU node takes with ``auto``."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent


def _run(tmp_path: Path, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, str(TESTS / "data_parallel_job.py"), str(tmp_path)],
        cwd=TESTS,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "data parallel over 2 devices" in (tmp_path / "job" / "job.log").read_text()
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _check(result: dict) -> None:
    assert result["replicas"] == 2 and result["epochs"] == 2
    assert math.isfinite(result["best_loss"]) and result["best_loss"] < math.log(2)  # it learnt something
    assert 0.5 < result["auc"] <= 1
    assert "multiple of the 2 devices" in result["odd"]


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    _check(_run(tmp_path, {"KERAS_BACKEND": "tensorflow"}))


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_jax_data_parallel_on_two_host_devices(tmp_path):
    _check(_run(tmp_path, {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}))
