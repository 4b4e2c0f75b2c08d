"""Process set-up: the backend's native start-up lines are held to TF_CPP_MIN_LOG_LEVEL, and nothing
else written while it loads is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from payload.runtime import _held_back

NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
INFO = "I0000 00:00:1796584802.443676   31630 port.cc:153] oneDNN custom operations are on.\n"
WARN = "W0000 00:00:1796584802.5   31630 cuda_executor.cc:1] could not open file\n"
ERROR = "E0000 00:00:1796584802.6   31630 cuda_dnn.cc:8579] Unable to register cuDNN factory\n"
FATAL = "F0000 00:00:1796584802.7   31630 gpu_device.cc:2] Check failed: device lost\n"
OLD_INFO = "2024-01-17 10:00:00.123456: I tensorflow/core/util/port.cc:113] oneDNN custom operations are on.\n"


@pytest.mark.parametrize(
    ("level", "dropped"),
    [(1, {NOTICE, INFO, OLD_INFO}), (2, {NOTICE, INFO, OLD_INFO, WARN}), (3, {NOTICE, INFO, OLD_INFO, WARN, ERROR})],
)
def test_native_lines_below_the_level_are_held_back(level, dropped):
    lines = [NOTICE, INFO, WARN, ERROR, FATAL, OLD_INFO, "Traceback (most recent call last):\n", "UserWarning: x\n"]
    assert {line for line in lines if _held_back(line, level)} == dropped


def test_what_loads_with_the_backend_reaches_stderr_but_its_chatter(tmp_path):
    # A stand-in `keras` on sys.path, because the real TensorFlow writes only the lines held back:
    # this one writes each kind of line the way native code does (straight to file descriptor 2).
    (tmp_path / "keras.py").write_text(
        textwrap.dedent(
            f"""
            import os, sys, warnings
            for line in {[NOTICE, INFO, ERROR, FATAL]!r}:
                os.write(2, line.encode())
            warnings.warn("a Python warning while the backend loads")
            sys.stderr.write("partial line without newline")
            """
        )
    )
    code = "from payload.runtime import quiet_backend_import; quiet_backend_import(); import keras; print('loaded')"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "loaded\n"
    assert NOTICE not in proc.stderr and INFO not in proc.stderr
    assert ERROR in proc.stderr and FATAL in proc.stderr
    assert "a Python warning while the backend loads" in proc.stderr
    assert proc.stderr.endswith("partial line without newline")
    # With the level at 0 (or -v) nothing is held back.
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert NOTICE in proc.stderr and INFO in proc.stderr
