"""A real XRootD server (Debian's ``xrootd-server``) on 127.0.0.1 for the tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import free_port, wait_for_port


class Server:
    def __init__(self, export: Path, work: Path):
        self.export, self.work, self.port = export, work, free_port()
        self.proc: subprocess.Popen | None = None

    def url(self, name: str) -> str:
        return f"root://127.0.0.1:{self.port}/{self.export / name}"

    def start(self) -> None:
        cfg = self.work / "xrootd.cfg"
        cfg.write_text(
            f"xrd.port {self.port}\nall.export {self.export}\nxrootd.chksum adler32\n"
            f"all.adminpath {self.work}\nall.pidpath {self.work}\n"
        )
        cmd = ["xrootd", "-c", str(cfg), "-l", str(self.work / "xrootd.log"), "-n", "payload-test"]
        if os.geteuid() == 0:
            cmd += ["-R", "nobody"]  # the daemon will not serve as root
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait_for_port(self.port, self.proc, 20):
            return
        log = self.work / "payload-test" / "xrootd.log"
        pytest.fail(f"xrootd did not start: {log.read_text()[-2000:] if log.exists() else 'no log'}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@contextmanager
def xrootd_server() -> Iterator[Server]:
    """A running server exporting an empty, world-readable directory (``server.export``)."""
    if shutil.which("xrootd") is None:
        pytest.skip("no xrootd server binary (apt-get install xrootd-server; .ci/run does)")
    # Not under pytest's base directory: that is private to this user, and the daemon runs as "nobody" under root.
    base = Path(tempfile.mkdtemp(prefix="payload-xrootd-"))
    base.chmod(0o755)
    export, work = base / "export", base / "work"
    export.mkdir(mode=0o755)
    work.mkdir()
    if os.geteuid() == 0:
        shutil.chown(work, "nobody")
    srv = Server(export, work)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(base, ignore_errors=True)
