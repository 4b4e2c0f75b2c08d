"""Outputs appear complete or not at all: write under a temporary name, rename on success; and
the checksum (adler32) that proves a file kept for reuse is still the one written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from payload.errors import OutputError


def check_writable_dir(directory: Path, what: str) -> None:
    if not directory.exists():
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"{what} {directory}: cannot create directory ({err.strerror})") from None
    if not directory.is_dir():
        raise OutputError(f"{what} {directory}: exists and is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {directory}: directory is not writable; choose another output location")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """Yield a temporary sibling path; on success it is renamed to ``final``, on failure removed."""
    final = Path(final)
    check_writable_dir(final.parent if str(final.parent) else Path(), what)
    # The suffix is kept (Keras insists on .keras), the leading dot hides it from listings.
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
    try:
        yield tmp
        try:
            if tmp.is_dir() and final.is_dir():
                # os.replace cannot overwrite a non-empty directory: the old one is moved aside first.
                old = final.with_name(f".old-{os.getpid()}-{final.name}")
                Path(final).replace(old)
                Path(tmp).replace(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                Path(tmp).replace(final)
        except OSError as err:  # e.g. a directory, or a file where a directory goes, under that name
            raise OutputError(
                f"{what} {final}: cannot be put in place ({err.strerror}); remove what is there or choose another name"
            ) from None
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


@contextlib.contextmanager
def hdf5_writing(file, path: Path, finish=None) -> Iterator[None]:
    """Close an HDF5 file being written once the block ends (``finish`` instead, when given).

    On a failure the file is abandoned (its temporary name is removed by ``atomic_path``), but HDF5
    must still flush its caches to close it, and on a full disk a file it cannot close is flushed
    again when the library shuts down, which kills the process (SIGSEGV) after the error was
    reported.  So its descriptor is pointed at /dev/null first: the flush then succeeds, into nothing."""
    try:
        yield
        # Flushed before anything is closed: a full disk found by a close leaves HDF5 half closed.
        file.flush()
        (finish or file.close)()
    except BaseException:
        target = os.path.realpath(path)
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_RDWR)
            for fd in Path("/proc/self/fd").iterdir():  # HDF5's own descriptors of this file
                with contextlib.suppress(OSError):
                    if str(fd.readlink()) == target:
                        os.dup2(null, int(fd.name))
            os.close(null)
        with contextlib.suppress(Exception):
            file.flush()
        with contextlib.suppress(Exception):
            file.close()
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))


def adler32(path: str | Path, block: int = 1 << 22) -> str:
    """Adler-32 as Rucio records it (8 hex digits)."""
    value = 1
    with open(path, "rb") as f:
        while chunk := f.read(block):
            value = zlib.adler32(chunk, value)
    return f"{value & 0xFFFFFFFF:08x}"
