"""Small helpers shared by the tests that start servers or run whole jobs."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import yaml

DATA = Path(__file__).resolve().parents[1] / "payload" / "resources"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, seconds: float) -> bool:
    """True once 127.0.0.1:``port`` accepts connections; False if ``proc`` exits first or time runs out."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def quick_job_config(path: Path) -> Path:
    """The demo job, one epoch, without the closure classifier, the independent test and the baseline
    (tests of their own cover them): a whole `payload run` in seconds."""
    raw = yaml.safe_load((DATA / "demo.yaml").read_text())
    raw["training"]["epochs"] = 1
    raw["evaluation"].update(closure_classifier=False, independent_test=False, baseline="none")
    path.write_text(yaml.safe_dump(raw))
    return path


def run_in_pty(argv: list[str], timeout: float = 600, **popen) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as its stdin, stdout and stderr, as in a person's terminal:
    (exit code, everything it wrote)."""
    import os
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True, **popen)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the terminal is gone once the process and its children have exited
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=timeout), b"".join(chunks).decode(errors="replace")
