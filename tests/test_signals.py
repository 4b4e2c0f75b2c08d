"""Signals as ``Terminated``: also when the signal arrives while Python runs a finalizer, where an
exception cannot propagate (a job once went on to its end after such a SIGINT, exit 0)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from payload.signals import Terminated, terminate_on_signals

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.{signal})  # a real signal, handled while in here
            deadline = time.time() + 0.2
            while time.time() < deadline:
                pass

    try:
        with terminate_on_signals():
            Finalized()
            print("after the finalizer", flush=True)
            deadline = time.time() + 5
            while time.time() < deadline:
                pass
            print("never stopped", flush=True)
    except Terminated as err:
        print(f"stopped: {{err.exit_code}}", flush=True)
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 143), ("SIGINT", 130), ("SIGUSR1", 138)])
def test_a_signal_lost_in_a_finalizer_still_stops_the_job(name, code):
    proc = _run(SCRIPT.format(signal=name))
    assert proc.stdout.splitlines() == ["after the finalizer", f"stopped: {code}"], proc.stdout + proc.stderr
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_other_errors_in_finalizers_are_still_reported():
    code = textwrap.dedent(
        """
        from payload.signals import terminate_on_signals

        class Finalized:
            def __del__(self):
                raise ValueError("a finalizer bug")

        with terminate_on_signals():
            Finalized()
        print("went on", flush=True)
        """
    )
    proc = _run(code)
    assert proc.stdout == "went on\n" and "Exception ignored" in proc.stderr and "a finalizer bug" in proc.stderr
