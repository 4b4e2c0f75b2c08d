"""The prun sandbox: a directory holding exactly the files the job's ``--exec`` reads.

prun ships the directory it runs in (with ``--containerImage`` through ALRB's sandbox), filtered by
``--excludeFile`` patterns it applies as unanchored regular expressions, skipping ROOT files and
anything over 1 MB unless ``--extFile`` names it; a pattern meant for a run directory silently drops
a config whose name merely contains it.  So the helper stages a fresh directory with the configs
(and, when the model travels in the sandbox, a slim model bundle), runs prun there, and before
printing or running anything builds the sandbox with panda-client's own archiver (``--outTarBall``
without submitting) and checks that every file the exec reads is inside and nothing else is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from payload.errors import ConfigError

#: Where the helper stages the sandbox, under the submission directory.
DEFAULT_DIR = "prun-sandbox"
#: panda-client's upload limit for a container job's sandbox (Client.NO_BUILD_LIMIT, 10 MB).
SANDBOX_LIMIT = 10 * 1024 * 1024


#: Marks a directory as a staged sandbox, which the next submission may empty (a dot file: prun's
#: archiver leaves it out).
MARKER = ".payload-sandbox"


def stage(directory: Path) -> Path:
    """A fresh, empty sandbox directory (a former submission's files removed).  Only a directory this
    helper staged is emptied: ``--sandbox .`` or any other directory holding files is refused."""
    if directory.exists():
        if any(directory.iterdir()) and not (directory / MARKER).is_file():
            raise ConfigError(
                f"--sandbox {directory}: exists and holds files this helper did not stage; "
                "give a new directory (it is emptied on every submission)"
            )
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("staged by payload-submit prun; emptied on every submission\n")
    return directory


def slim_bundle(source: str, target: Path) -> Path:
    """The model bundle of a job output (directory or tarball) as a small tarball: only the files
    that apply the model (model.keras, scaler.json, config.yaml, metrics.json), checked by loading."""
    from payload.results import bundle
    from payload.results.archive import make_tarball

    with tempfile.TemporaryDirectory() as scratch:
        directory = bundle.locate(source, Path(scratch) / "bundle")
        bundle.load(directory, source)  # a bundle that cannot be applied fails here, not in every job
        make_tarball(directory, target, only=tuple(f for f in bundle.FILES if (directory / f).exists()))
    return target


def archive(argv: list[str], sandbox: Path) -> list[str] | None:
    """The members of the sandbox panda-client builds for ``argv`` (a prun command) run in
    ``sandbox``; None when panda-client is not installed."""
    try:
        import pandaclient  # noqa: F401
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sandbox.tgz"
        proc = subprocess.run(
            [sys.executable, "-m", "submit.sandbox", json.dumps(argv[1:]), str(out)],
            cwd=sandbox,
            capture_output=True,
            text=True,
            timeout=300,
            env={
                **os.environ,
                "PANDA_BEHIND_REAL_LB": os.environ.get("PANDA_BEHIND_REAL_LB", "1"),
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")])
                ),
            },
        )
        if proc.returncode or not out.exists():
            raise ConfigError(
                f"panda-client could not build the sandbox in {sandbox}: "
                f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"
            )
        if out.stat().st_size > SANDBOX_LIMIT:
            raise ConfigError(
                f"the sandbox is {out.stat().st_size / 1e6:.1f} MB; panda-client uploads at most "
                f"{SANDBOX_LIMIT / 1e6:.0f} MB: pass the model as a Rucio dataset instead"
            )
        with tarfile.open(out) as tar:
            return sorted(m.name for m in tar.getmembers() if m.isfile())


def check(argv: list[str], sandbox: Path, expected: set[str]) -> bool:
    """Raise a ``ConfigError`` unless panda-client's sandbox holds exactly ``expected``; False when
    panda-client is missing (nothing checked)."""
    members = archive(argv, sandbox)
    if members is None:
        return False
    missing, extra = sorted(expected - set(members)), sorted(set(members) - expected)
    if missing:
        raise ConfigError(
            f"panda-client's sandbox lacks {', '.join(missing)}, which the job reads; "
            "rename it (no pattern of --excludeFile may match) or keep it under 1 MB"
        )
    if extra:
        raise ConfigError(f"panda-client's sandbox holds files the job does not need: {', '.join(extra[:5])}")
    return True


def _build(args: list[str], out: str) -> None:
    """In a child process (prun exits on errors): panda-client's own archiving, no upload.  Only its
    credential checks are bypassed (no proxy, no server): the sandbox does not depend on them."""
    from pandaclient import PrunScript, PsubUtils

    out_ds = args[args.index("--outDS") + 1] if "--outDS" in args else "user.nobody.x"
    PsubUtils.check_proxy = lambda *a, **k: None
    PsubUtils.getNickname = lambda *a, **k: out_ds.split(".")[1]
    sys.argv = ["prun"]
    PrunScript.main(get_taskparams=True, ext_args=[*args, "--noSubmit", "--outTarBall", out], dry_mode=False)


if __name__ == "__main__":
    _build(json.loads(sys.argv[1]), sys.argv[2])
