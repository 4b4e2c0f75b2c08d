"""Open ROOT inputs (TTree or RNTuple, local or ``root://``) and read entry ranges of branches.

File access is kept apart from interpretation: this module knows files, trees and branches and
turns every failure into a one-line ``PayloadError`` naming the file; ``convert`` knows the layout.
"""

from __future__ import annotations

import atexit
import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import uproot

from payload.errors import (
    InputCorruptError,
    InputMissingError,
    MissingBranchError,
    MissingTreeError,
    PayloadError,
    closest,
    one_line,
)
from payload.ingest.inputs import is_url
from payload.progress import log
from payload.runtime import preload_xrootd


@dataclass
class InputTree:
    """An opened input: the file handle, its tree and the facts provenance needs."""

    location: str
    file: Any
    tree: Any
    num_entries: int
    num_bytes: int | None

    def close(self) -> None:
        self.file.close()

    def check_branches(self, names: list[str], what: str = "branch") -> None:
        available = list(self.tree.keys())
        for name in names:
            if name not in available:
                raise MissingBranchError(
                    f"input {self.location}: {what} {name!r} not found in tree {self.tree.name!r}"
                    f"{closest(name, available)}"
                )

    def iterate(
        self,
        branches: list[str],
        step_size: int,
        entry_start: int = 0,
        entry_stop: int | None = None,
        decompression_executor: Any = None,
    ) -> Iterator[tuple[int, int, dict[str, ak.Array]]]:
        """Yield (start, stop, arrays) over [entry_start, entry_stop) in steps of ``step_size`` entries.

        ``iterate`` (not ``arrays`` per range) so a basket that spans two steps is decompressed once.
        """
        start = entry_start
        try:
            for arrays, report in self.tree.iterate(
                filter_name=branches,
                step_size=step_size,
                library="ak",
                report=True,
                entry_start=entry_start,
                entry_stop=entry_stop,
                decompression_executor=decompression_executor,
            ):
                start = report.tree_entry_start
                yield report.tree_entry_start, report.tree_entry_stop, {name: arrays[name] for name in branches}
        except PayloadError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure inside a file is that file's problem
            raise InputCorruptError(
                f"input {self.location}: cannot read entries from {start} ({one_line(err)}); "
                "the file may be truncated or corrupt: re-fetch it"
            ) from None


def _forget_remote_handles(close: bool = False) -> None:
    """Drop fsspec-xrootd's cached file handles (closing them first when ``close``).

    The library closes them at interpreter exit and, when the server is gone, prints a traceback there.
    After a failed open they are forgotten (a retry must open afresh); at exit, closed quietly first.
    """
    try:
        from fsspec_xrootd import XRootDFileSystem
    except ImportError:
        return
    for fs in list(XRootDFileSystem._cache.values()):
        handles = getattr(fs, "_readonly_filehandle_cache", None)
        if handles is None:
            continue
        if close:
            with contextlib.suppress(Exception):  # the connection may be gone; the process is ending
                handles.close_all()
        handles._cache.clear()


_exit_hook: list[bool] = []


def _release_remote_handles_at_exit() -> None:
    """Registered after the first remote open, so it runs before the library's own exit hook (LIFO)."""
    if not _exit_hook:
        atexit.register(_forget_remote_handles, close=True)
        _exit_hook.append(True)


#: Attempts to open a remote file: a storage element that drops a connection often answers the next one.
REMOTE_ATTEMPTS = 3
_MISSING = ("no such file", "not found", "[3011]", "does not exist")


def _open_file(location: str, attempts: int = REMOTE_ATTEMPTS, backoff_s: float = 2.0) -> Any:
    remote = is_url(location)
    if location.startswith(("root://", "roots://")) and not preload_xrootd() and "tensorflow" in sys.modules:
        # Loading the XRootD client now would crash the process; the CLI loads it first.
        raise PayloadError(
            f"input {location}: the XRootD client must be loaded before TensorFlow: call "
            "payload.runtime.prepare_environment() (or import XRootD.client) first"
        )
    for attempt in range(1, (attempts if remote else 1) + 1):
        try:
            file = uproot.open(location)
            if remote:
                _release_remote_handles_at_exit()
            return file
        except FileNotFoundError:
            raise InputMissingError(f"input {location}: no such file") from None
        except PermissionError:
            raise InputMissingError(f"input {location}: permission denied") from None
        except Exception as err:  # noqa: BLE001
            if remote:
                _forget_remote_handles()  # a retry must not get the broken handle back
                _release_remote_handles_at_exit()
            text = str(err).lower()
            if remote and any(m in text for m in _MISSING):
                raise InputMissingError(f"input {location}: no such file on the server ({one_line(err)})") from None
            if remote and isinstance(err, (OSError, TimeoutError)) and attempt < attempts:
                log.warning("input %s: %s; retrying (%d/%d)", location, one_line(err), attempt, attempts - 1)
                time.sleep(backoff_s * attempt)
                continue
            what = (
                "cannot be read from the server"
                if remote and isinstance(err, (OSError, TimeoutError))
                else "not a readable ROOT file"
            )
            raise InputCorruptError(
                f"input {location}: {what} ({one_line(err)}); re-fetch it or drop it from the inputs"
            ) from None
    raise AssertionError("unreachable")


def open_tree(location: str, tree_name: str) -> InputTree:
    """Open ``location`` and return its tree, with a clear error for every way this fails."""
    if not is_url(location) and not Path(location).exists():
        raise InputMissingError(f"input {location}: no such file")
    file = _open_file(location)
    try:
        try:
            tree = file[tree_name]
        except uproot.KeyInFileError:
            keys = file.keys(cycle=False)
            raise MissingTreeError(
                f"input {location}: no tree {tree_name!r}{closest(tree_name, keys) or f' (keys: {keys[:10]})'}; "
                "set data.tree in the config"
            ) from None
        if not hasattr(tree, "num_entries") or not hasattr(tree, "arrays"):
            raise MissingTreeError(
                f"input {location}: {tree_name!r} is a {type(tree).__name__.removeprefix('Model_')}, not a TTree or RNTuple"
            )
        num_bytes = getattr(file.file.source, "num_bytes", None)
        return InputTree(location, file, tree, int(tree.num_entries), num_bytes)
    except PayloadError:
        file.close()
        raise
    except Exception as err:  # noqa: BLE001
        file.close()
        raise InputCorruptError(
            f"input {location}: cannot read the tree ({one_line(err)}); the file may be truncated or corrupt: re-fetch it"
        ) from None
