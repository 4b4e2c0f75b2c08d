"""One job per output directory: an exclusive lock held for the job's whole run, and the clean-up of
temporary files that killed runs left behind.

The lock is ``flock`` on ``OUTPUT/.lock``: the kernel releases it when the holder exits, however it
dies (SIGKILL included), so a stale lock cannot block a rerun.  A second job into the same directory
stops at once with exit code 11 naming the holder's pid.  Temporary names carry their writer's pid
(``.tmp-PID-name``, ``.old-PID-name``, see ``payload.atomic``): once the lock is held, those of
processes that no longer run are removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from payload.errors import OutputBusyError, OutputError

_TEMPORARY = re.compile(r"^\.(tmp|old)-(\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Remove ``.tmp-PID-*`` and ``.old-PID-*`` entries below ``directory`` whose process is gone."""
    removed = []
    for path in sorted(directory.rglob(".*-*")):
        match = _TEMPORARY.match(path.name)
        if not match or int(match.group(2)) == os.getpid() or _alive(int(match.group(2))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def output_lock(directory: Path) -> Iterator[list[Path]]:
    """Hold the output directory for this process; raise ``OutputBusyError`` if another holds it.
    Yields the temporaries of dead runs it removed."""
    path = directory / ".lock"
    try:
        handle = open(path, "a+")  # noqa: SIM115 - held open (and locked) until the block ends
    except OSError as err:
        raise OutputError(f"output {directory}: cannot create its lock file ({err.strerror})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise OutputBusyError(
                f"output {directory}: another payload job (pid {holder}) is writing there; "
                "wait for it to finish or choose another --output"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield remove_stale_temporaries(directory)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
