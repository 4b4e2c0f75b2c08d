"""Process set-up for the places the job runs: a read-only image, an arbitrary user, no HOME,
remote files behind XRootD.

Grid sites start the container with Apptainer as a user the image does not know, with HOME unset
or read-only; Keras and matplotlib would then try to create ``~/.keras`` and ``~/.config``.  Their
caches go to a private scratch directory instead (``tempfile`` falls back to the working directory
when even /tmp is read-only), removed when the process exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

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


def prepare_environment() -> None:
    preload_xrootd()
    home = os.environ.get("HOME")
    if home and Path(home).is_dir() and os.access(home, os.W_OK):
        return
    scratch = tempfile.mkdtemp(prefix=".payload-scratch-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    os.environ.setdefault("KERAS_HOME", str(Path(scratch) / "keras"))
    os.environ.setdefault("MPLCONFIGDIR", str(Path(scratch) / "matplotlib"))
