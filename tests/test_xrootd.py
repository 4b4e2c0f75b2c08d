"""root:// inputs read through a real XRootD server on loopback (Debian's xrootd-server).

Skipped, with the reason, where no ``xrootd`` binary or XRootD Python bindings exist (``.ci/run``
installs both).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from helpers import quick_job_config
from xrootd_loopback import xrootd_server

from payload.config import default_config_path, load_config
from payload.ingest.convert import convert
from payload.ingest.samples import write_sample

pytestmark = pytest.mark.servers

DATA = Path(__file__).resolve().parents[1] / "payload" / "resources"
# A lost server is reported within seconds here (the job's defaults allow a minute).
FAST_FAIL = {
    "XRD_CONNECTIONWINDOW": "2",
    "XRD_CONNECTIONRETRY": "1",
    "XRD_REQUESTTIMEOUT": "10",
    "XRD_STREAMTIMEOUT": "5",
}


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("XRootD", reason="pip install xrootd (the grid extra)")
    with xrootd_server() as srv:
        for name in ("sample_A.root", "sample_B.root"):
            shutil.copy(DATA / name, srv.export / name)
        write_sample(srv.export / "big.root", 200_000, "A", batch=2000)  # many baskets: time to stop the server
        for f in srv.export.iterdir():
            f.chmod(0o644)
        yield srv


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "payload", "-q", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **FAST_FAIL},
    )


def test_convert_reads_root_urls_like_local_files(server, tmp_path):
    config = load_config(default_config_path())
    remote = convert(config, server.url("sample_A.root"), tmp_path / "remote.h5", progress=False)
    local = convert(config, str(DATA / "sample_A.root"), tmp_path / "local.h5", progress=False)
    assert remote.events == local.events > 0
    with h5py.File(tmp_path / "remote.h5") as r, h5py.File(tmp_path / "local.h5") as l:
        for key in ("objects", "n_objects", "spectators", "weights", "entry"):
            np.testing.assert_array_equal(r[key][:], l[key][:])


def test_run_reads_root_urls_and_records_them(server, tmp_path):
    from payload.atomic import adler32

    cfg = quick_job_config(tmp_path / "job.yaml")
    proc = run(
        "run",
        "--primary",
        server.url("sample_A.root"),
        "--secondary",
        server.url("sample_B.root"),
        "--config",
        str(cfg),
        "--output",
        "out",
        "--no-job-report",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    primary = manifest["inputs"]["primary"][0]
    assert primary["location"] == server.url("sample_A.root")
    assert primary["bytes"] == (DATA / "sample_A.root").stat().st_size
    assert primary["adler32"] == adler32(DATA / "sample_A.root")  # the server's checksum, from the server


def test_missing_remote_file_is_a_clear_error(server, tmp_path):
    proc = run("convert", "--inputs", server.url("nope.root"), "--output", "x.h5", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "nope.root" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


def test_server_lost_mid_conversion_leaves_no_output(server, tmp_path):
    cfg = tmp_path / "job.yaml"
    raw = yaml.safe_load(default_config_path().read_text())
    raw["data"]["chunk_size"] = 2000
    cfg.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "payload",
            "-q",
            "convert",
            "--config",
            str(cfg),
            "--inputs",
            server.url("big.root"),
            "--output",
            "big.h5",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **FAST_FAIL},
    )
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob(".tmp-*big.h5")):  # conversion has started writing
            assert time.time() < deadline and proc.poll() is None, proc.communicate()[1]
            time.sleep(0.05)
        server.stop()
        _, stderr = proc.communicate(timeout=300)
    finally:
        server.start()  # for any later test
    assert proc.returncode == 4, stderr
    assert "big.root" in stderr and "Traceback" not in stderr
    assert [p.name for p in tmp_path.iterdir()] == ["job.yaml"]  # no partial output, no temporary file
