"""The prepared GPU measurement, run end to end on this CPU with the JAX backend: the same script a GPU
machine runs, the GPU parts skipped with a message, its JSON complete."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import REPO, SHARED_DATA

pytestmark = pytest.mark.slow


def test_gpu_script_runs_on_the_cpu_and_writes_its_json(tmp_path, shared_samples):
    pytest.importorskip("jax")
    env = {**os.environ, "GPU_DATA": str(SHARED_DATA), "KERAS_BACKEND": "jax"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--events", "20000", "--steps", "6", "--warmup", "2", "--nojit-steps", "2"]
        + ["--batch-size", "512", "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "gpu.json").read_text())
    if "nvidia-smi not found" in proc.stdout + proc.stderr:  # the GPU parts skipped, and said so
        assert "running the same measurements on the CPU" in proc.stdout + proc.stderr
        assert "no GPU" in result["note"] and all(v["gpu"] is None for v in result["training"])
    assert result["events_per_sample"] == 20000
    variants = {v["variant"]: v for v in result["training"]}
    assert set(variants) == {"mp-jit", "fp32-jit", "mp-nojit", "fp32-nojit"}
    for v in variants.values():
        assert v["samples_per_s"] > 0 and 0 <= v["input_wait_share"] < 1
    assert result["inference"]["events"] > 0 and result["inference"]["events_per_s"] > 0
    estimate = result["estimate"]
    assert estimate["training_h"] == pytest.approx(estimate["epoch_s"] * estimate["epochs"] / 3600)
