"""What a person sees: `payload demo` as the README's first command runs it, and the live progress
line of a job started from a terminal."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import DATA, quick_job_config, run_in_pty

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    # As on a fresh machine: Python's default warning filters, TensorFlow's default log level.
    return {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}


def test_demo_prints_only_its_own_lines(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "payload", "demo", "--output", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    foreign = [line for line in lines if not line.startswith("payload: ")]
    assert not foreign, "start-up chatter or warnings on stderr:\n" + "\n".join(foreign[:20])
    assert any("epoch 8:" in line for line in lines)
    # The last lines: what was done, the headline figures, the verdict, where the outputs are.
    tail = "\n".join(lines[-4:])
    assert "done: train reweight, 8 epoch(s) in" in tail and "test AUC" in tail
    onnx = "model.onnx, " if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow" else ""
    assert f"outputs in {tmp_path / 'demo'}: model.keras, {onnx}predictions.h5" in tail
    assert "friends/ (2 ROOT friend tree file(s))" in tail
    assert "demo finished" in proc.stdout


def test_a_terminal_gets_a_live_training_line(tmp_path):
    config = quick_job_config(tmp_path / "job.yaml")
    code, text = run_in_pty(
        [
            sys.executable,
            "-m",
            "payload",
            "run",
            "--primary",
            str(DATA / "sample_A.root"),
            "--secondary",
            str(DATA / "sample_B.root"),
            "--config",
            str(config),
            "--output",
            str(tmp_path / "out"),
            "--no-job-report",
        ],
        env=_env(),
        cwd=tmp_path,
    )
    assert code == 0, text[-2000:]
    live = [part for part in text.split("\r") if part.startswith("epoch 1/1: ")]
    assert live, text[-2000:]
    assert any("samples/s" in part and "batch " in part for part in live)
    assert "\x1b[K" in text  # each update overwrites the line
    assert "payload: evaluate: 20,000/20,000 events" in text
