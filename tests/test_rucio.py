"""Rucio DIDs as inputs, against a real Rucio server on loopback (PyPI ``rucio``, SQLite, Flask REST app).

Storage elements: one posix directory (``file`` protocol, filled with ``rucio upload``) and one served by
the loopback XRootD server (``root`` protocol, downloaded with ``xrdcp``).  Each payload command runs in a
fresh process with a client-only Rucio config, as a user's job would.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import pytest

# Found, not imported: importing the server's modules here would read a server config in this process.
if importlib.util.find_spec("rucio") is None or importlib.util.find_spec("rucio.web.rest.flaskapi") is None:
    pytest.skip("needs the Rucio server package: pip install rucio (the test extra)", allow_module_level=True)

from helpers import quick_job_config
from rucio_loopback import RucioServer
from xrootd_loopback import xrootd_server

from payload.atomic import adler32
from payload.ingest.samples import write_sample

pytestmark = pytest.mark.servers

DATA = Path(__file__).resolve().parents[1] / "payload" / "resources"
SCOPE = "user.test"


@pytest.fixture(scope="module")
def rucio(tmp_path_factory):
    base = tmp_path_factory.mktemp("rucio")
    server = RucioServer(base)
    server.start()
    try:
        server.add_posix_rse("POSIX_DISK", base / "storage")
        server.client_python(f"client.add_scope('root', {SCOPE!r})")
        server.upload("POSIX_DISK", SCOPE, "ds.a", [DATA / "sample_A.root"])
        server.upload("POSIX_DISK", SCOPE, "ds.b", [DATA / "sample_B.root"])
        extra = write_sample(base / "extra_A.root", 3000, "A", batch=1000)
        server.upload("POSIX_DISK", SCOPE, "ds.a2", [extra])
        server.client_python(
            textwrap.dedent(f"""\
            client.add_container({SCOPE!r}, "cont.a")
            client.attach_dids({SCOPE!r}, "cont.a", [{{"scope": {SCOPE!r}, "name": n}} for n in ("ds.a", "ds.a2")])
        """)
        )
        victim = write_sample(base / "victim.root", 2000, "B", batch=1000)
        server.upload("POSIX_DISK", SCOPE, "ds.corrupt", [victim])
        yield server
    finally:
        server.stop()


def payload(server: RucioServer, *args: str, cwd: Path, cache: Path, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "payload", "-q", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**server.client_env(), "PAYLOAD_RUCIO_CACHE": str(cache), **(env or {})},
    )


def entries(path: Path) -> int:
    with h5py.File(path) as f:
        return len(f["n_objects"])


def test_dataset_is_downloaded_verified_and_then_reused(rucio, tmp_path):
    cache = tmp_path / "cache"
    first = payload(rucio, "convert", "--inputs", f"{SCOPE}:ds.a", "--output", "a.h5", cwd=tmp_path, cache=cache)
    assert first.returncode == 0, first.stderr
    cached = cache / "ds.a" / "sample_A.root"  # the layout of `rucio download`
    assert adler32(cached) == adler32(DATA / "sample_A.root")
    payload(
        rucio, "convert", "--inputs", str(DATA / "sample_A.root"), "--output", "direct.h5", cwd=tmp_path, cache=cache
    )
    assert entries(tmp_path / "a.h5") == entries(tmp_path / "direct.h5") > 0

    stamp = cached.stat().st_mtime_ns
    again = payload(rucio, "convert", "--inputs", f"{SCOPE}:ds.a", "--output", "again.h5", cwd=tmp_path, cache=cache)
    assert again.returncode == 0, again.stderr
    assert cached.stat().st_mtime_ns == stamp  # verified in place, not fetched again
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == ["sample_A.root"]  # no temporary files


def test_container_in_payload_run_is_recorded_in_the_manifest(rucio, tmp_path):
    cfg = quick_job_config(tmp_path / "job.yaml")
    proc = payload(
        rucio,
        "run",
        "--primary",
        f"{SCOPE}:cont.a",
        "--secondary",
        f"{SCOPE}:ds.b",
        "--config",
        str(cfg),
        "--output",
        "out",
        "--no-job-report",
        cwd=tmp_path,
        cache=tmp_path / "cache",
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    primary = manifest["inputs"]["primary"]
    assert sorted(f["did"] for f in primary) == [f"{SCOPE}:extra_A.root", f"{SCOPE}:sample_A.root"]  # both datasets
    for f in primary:
        assert f["dataset"] == f"{SCOPE}:cont.a"
        assert f["adler32"] == f["rucio_adler32"]
        assert f["bytes"] == Path(f["resolved"]).stat().st_size
    assert manifest["inputs"]["secondary"][0]["adler32"] == adler32(DATA / "sample_B.root")


def test_file_corrupted_on_storage_is_a_checksum_error(rucio, tmp_path):
    stored = next((rucio.base / "storage").rglob("victim.root"))
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    proc = payload(rucio, "convert", "--inputs", f"{SCOPE}:ds.corrupt", "--output", "x.h5", cwd=tmp_path, cache=cache)
    assert proc.returncode == 4, proc.stderr
    assert "victim.root" in proc.stderr and "checksum" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no output, nothing half-downloaded in the cache


def test_missing_did_is_exit_3(rucio, tmp_path):
    proc = payload(
        rucio,
        "convert",
        "--inputs",
        f"{SCOPE}:no.such.dataset",
        "--output",
        "x.h5",
        cwd=tmp_path,
        cache=tmp_path / "cache",
    )
    assert proc.returncode == 3, proc.stderr
    assert f"{SCOPE}:no.such.dataset" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("problem", ["no config", "wrong password"])
def test_no_usable_rucio_setup_is_exit_10(rucio, tmp_path, problem):
    if problem == "no config":
        env = {"RUCIO_CONFIG": str(tmp_path / "absent.cfg")}
    else:
        cfg = tmp_path / "bad.cfg"
        text = rucio.client_cfg.read_text().replace(f"password = {rucio.password}", "password = wrong")
        cfg.write_text(text.replace(str(rucio.base / "tokens"), str(tmp_path / "tokens")))  # no valid token cached
        env = {"RUCIO_CONFIG": str(cfg)}
    proc = payload(
        rucio,
        "convert",
        "--inputs",
        f"{SCOPE}:ds.a",
        "--output",
        "x.h5",
        cwd=tmp_path,
        cache=tmp_path / "cache",
        env=env,
    )
    assert proc.returncode == 10, proc.stderr
    assert "Rucio" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.h5").exists()
    assert rucio.password not in proc.stderr


def test_dataset_on_an_xrootd_storage_element(rucio, tmp_path):
    if shutil.which("xrdcp") is None:
        pytest.skip("no xrdcp (apt-get install xrootd-client; .ci/run does)")
    with xrootd_server() as xrd:
        (xrd.export / SCOPE.replace(".", "/")).mkdir(parents=True)
        stored = xrd.export / SCOPE.replace(".", "/") / "sample_B.xrd.root"
        shutil.copy(DATA / "sample_B.root", stored)
        for d in (xrd.export / "user", stored.parent):
            d.chmod(0o755)
        stored.chmod(0o644)
        rse = f"XRD_DISK_{xrd.port}"
        # Registered, not uploaded: the daemon serves read-only; the replica is where Rucio's path scheme puts it.
        rucio.client_python(
            textwrap.dedent(f"""\
            client.add_rse({rse!r}, deterministic=True)
            client.add_protocol({rse!r}, {{
                "scheme": "root", "hostname": "127.0.0.1", "port": {xrd.port},
                "prefix": {"/" + str(xrd.export) + "/"!r},  # root://host:port//absolute/path
                "impl": "rucio.rse.protocols.xrootd.Default",
                "domains": {{d: {{"read": 1, "write": 1, "delete": 1}} for d in ("lan", "wan")}}}})
            client.add_replicas({rse!r}, [{{"scope": {SCOPE!r}, "name": "sample_B.xrd.root", "bytes": {stored.stat().st_size},
                                           "adler32": {adler32(stored)!r}}}])
            client.add_dataset({SCOPE!r}, "ds.xrd")
            client.attach_dids({SCOPE!r}, "ds.xrd", [{{"scope": {SCOPE!r}, "name": "sample_B.xrd.root"}}])
        """)
        )
        cache = tmp_path / "cache"
        proc = payload(rucio, "convert", "--inputs", f"{SCOPE}:ds.xrd", "--output", "b.h5", cwd=tmp_path, cache=cache)
    assert proc.returncode == 0, proc.stderr
    assert adler32(cache / "ds.xrd" / "sample_B.xrd.root") == adler32(DATA / "sample_B.root")
    assert entries(tmp_path / "b.h5") > 0
