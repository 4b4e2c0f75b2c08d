"""Process set-up for the places the job runs: a read-only image, an arbitrary user, no HOME,
remote files behind XRootD.

Grid sites start the container with Apptainer as a user the image does not know, with HOME unset
or read-only; Keras and matplotlib would then try to create ``~/.keras`` and ``~/.config``.  Their
caches go to a private scratch directory instead (``tempfile`` falls back to the working directory
when even /tmp is read-only), removed when the process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.abc
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

#: XRootD client defaults (read once, when the client library loads): a lost server is reported in
#: about a minute instead of the library's default of up to ten, and the reader retries on top.
XROOTD_DEFAULTS = {
    "XRD_CONNECTIONWINDOW": "15",
    "XRD_CONNECTIONRETRY": "2",
    "XRD_REQUESTTIMEOUT": "120",
    "XRD_STREAMTIMEOUT": "60",
}


def preload_xrootd() -> bool:
    """Load the XRootD client (when installed) before TensorFlow: loaded after it, the bindings crash
    the process (conflicting bundled libraries; xrootd/xrootd#2682).  Returns whether it is loaded."""
    if "XRootD.client" in sys.modules:
        return True
    if "tensorflow" in sys.modules:
        return False
    for key, value in XROOTD_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        import XRootD.client  # noqa: F401
    except ImportError:
        return False
    return True


#: TensorFlow's native log lines: glog style (``I0000 00:00:1796584802.44 31630 port.cc:153] ...``, severity
#: first) and the older ``2024-01-01 12:00:00.0: I tensorflow/...`` form; and absl's notice that it
#: writes to stderr until initialised, which comes with them.
_NATIVE_LOG = re.compile(r"^(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\]]+\]|\d{4}-\d\d-\d\d [\d:.]+: ([IWEF]) )")
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = "IWEF"


def _held_back(line: str, level: int) -> bool:
    if line.startswith(_ABSL_NOTICE):
        return True
    match = _NATIVE_LOG.match(line)
    return match is not None and _SEVERITY.index(match.group(1) or match.group(2)) < level


@contextlib.contextmanager
def _native_lines_held_to(level: int) -> Iterator[None]:
    """File descriptor 2 through a pipe whose reader drops the native log lines below ``level`` and
    passes everything else on as it comes."""
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                if not _held_back(raw.decode(errors="replace"), level):
                    os.write(real, raw)

    forwarder = threading.Thread(target=forward, name="payload-stderr", daemon=True)
    forwarder.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last write end: the forwarder reads to its end
        forwarder.join()
        os.close(real)


class _HeldLoader(importlib.abc.Loader):
    """The module's own loader, run with the native lines held back; anything else it is asked is its."""

    def __init__(self, loader: importlib.abc.Loader, level: int) -> None:
        self._loader, self._level = loader, level

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with _native_lines_held_to(self._level):
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _QuietBackendFinder(importlib.abc.MetaPathFinder):
    def __init__(self, level: int) -> None:
        self.level = level

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name not in ("keras", "tensorflow"):
            return None
        # The first of the two only: TensorFlow's start-up lines all come while it loads.
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _HeldLoader(spec.loader, self.level)
        return spec


def quiet_backend_import() -> None:
    """Keep TensorFlow's native start-up lines to ``TF_CPP_MIN_LOG_LEVEL`` when Keras (or TensorFlow)
    first loads, wherever that happens (a job that fails on its inputs first never waits seconds to load it).

    TensorFlow 2.21 writes some (oneDNN, absl's notice) before its logging has read that variable.
    """
    try:
        level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        level = 0
    loaded = {"keras", "tensorflow"} & sys.modules.keys()
    if level > 0 and not loaded and not any(isinstance(f, _QuietBackendFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietBackendFinder(level))


def prepare_environment() -> None:
    preload_xrootd()
    home = os.environ.get("HOME")
    if home and Path(home).is_dir() and os.access(home, os.W_OK):
        return
    scratch = tempfile.mkdtemp(prefix=".payload-scratch-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    os.environ.setdefault("KERAS_HOME", str(Path(scratch) / "keras"))
    os.environ.setdefault("MPLCONFIGDIR", str(Path(scratch) / "matplotlib"))
