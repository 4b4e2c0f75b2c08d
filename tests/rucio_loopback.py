"""A real Rucio server on 127.0.0.1 for the tests: SQLite database, the Flask REST app, posix storage.

The server (PyPI ``rucio``) and the client (``rucio-clients``, the same version) run in separate
processes with separate configs: a client config holding a ``[database]`` section makes the client
try to reach the database itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import rucio
from helpers import free_port, wait_for_port

ALEMBIC_INI = """\
[alembic]
script_location = {repo}
sqlalchemy.url = {db}

[loggers]
keys = root
[handlers]
keys = console
[formatters]
keys = generic
[logger_root]
level = WARN
handlers = console
[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic
[formatter_generic]
format = %(levelname)s %(message)s
"""

SERVER_CFG = """\
[common]
logdir = {base}/log
loglevel = WARNING
[database]
default = {db}
[alembic]
cfg = {base}/alembic.ini
[bootstrap]
userpass_identity = {user}
userpass_pwd = {password}
[policy]
permission = generic
schema = generic
lfn2pfn_algorithm_default = identity
[monitor]
enable_metrics = False
[trace]
tracedir = {base}/traces
"""

CLIENT_CFG = """\
[client]
rucio_host = {url}
auth_host = {url}
auth_type = userpass
username = {user}
password = {password}
account = root
ca_cert = /etc/ssl/certs/ca-certificates.crt
request_retries = 1
auth_token_file_path = {tokens}/auth_token
"""

SERVE = textwrap.dedent("""\
    import sys
    from werkzeug.serving import make_server
    from rucio.web.rest.flaskapi.v1.main import application
    make_server("127.0.0.1", int(sys.argv[1]), application, threaded=True).serve_forever()
""")


class RucioServer:
    user, password = "ddmlab", "secret"

    def __init__(self, base: Path):
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server_cfg = base / "server.cfg"
        self.client_cfg = base / "client.cfg"
        self.proc: subprocess.Popen | None = None

    def server_env(self) -> dict[str, str]:
        return {**os.environ, "RUCIO_CONFIG": str(self.server_cfg)}

    def client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUCIO_")}
        return {**env, "RUCIO_CONFIG": str(self.client_cfg), "RUCIO_CLIENT_MODE": "1"}

    def start(self) -> None:
        db = f"sqlite:///{self.base / 'rucio.db'}"
        (self.base / "log").mkdir(parents=True, exist_ok=True)
        (self.base / "traces").mkdir(exist_ok=True)
        repo = Path(rucio.__file__).parent / "db" / "sqla" / "migrate_repo"
        (self.base / "alembic.ini").write_text(ALEMBIC_INI.format(repo=repo, db=db))
        self.server_cfg.write_text(SERVER_CFG.format(base=self.base, db=db, user=self.user, password=self.password))
        self.client_cfg.write_text(
            CLIENT_CFG.format(url=self.url, user=self.user, password=self.password, tokens=self.base / "tokens")
        )
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from rucio.db.sqla.util import build_database, create_base_vo, "
                "create_root_account; build_database(); create_base_vo(); create_root_account()",
            ],
            env=self.server_env(),
            check=True,
            capture_output=True,
            timeout=300,
        )
        log = open(self.base / "log" / "server.log", "w")  # noqa: SIM115 - the server's lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(self.port)], env=self.server_env(), stdout=log, stderr=subprocess.STDOUT
        )
        if not wait_for_port(self.port, self.proc, 60):
            raise RuntimeError(f"rucio server did not start: {(self.base / 'log' / 'server.log').read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def client_python(self, code: str) -> str:
        """Run ``code`` with a Rucio client in a fresh process; its stdout."""
        proc = subprocess.run(
            [sys.executable, "-c", "from rucio.client import Client\nclient = Client()\n" + code],
            env=self.client_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode:
            raise RuntimeError(f"rucio client failed: {proc.stderr[-3000:]}")
        return proc.stdout

    def add_posix_rse(self, name: str, storage: Path) -> None:
        storage.mkdir(parents=True, exist_ok=True)
        self.client_python(
            textwrap.dedent(f"""\
            client.add_rse({name!r}, deterministic=True)
            client.add_protocol({name!r}, {{
                "scheme": "file", "hostname": "localhost", "port": 0, "prefix": {str(storage) + "/"!r},
                "impl": "rucio.rse.protocols.posix.Default",
                "domains": {{d: {{"read": 1, "write": 1, "delete": 1, "third_party_copy_read": 1,
                                 "third_party_copy_write": 1}} for d in ("lan", "wan")}}}})
            client.set_local_account_limit("root", {name!r}, -1)
        """)
        )

    def upload(self, rse: str, scope: str, dataset: str, files: list[Path]) -> None:
        proc = subprocess.run(
            ["rucio", "upload", "--rse", rse, "--scope", scope, f"{scope}:{dataset}", *map(str, files)],
            env=self.client_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode:
            raise RuntimeError(f"rucio upload failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
