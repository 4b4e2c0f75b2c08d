"""Stages hand freed memory back: the job's peak is its largest stage, not the sum of what each left behind."""

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Allocates 400 MB in 100 kB blocks (below glibc's mmap threshold, so from the heap, and tcmalloc's
# page heap), frees all but the last (which pins the top of glibc's heap: no automatic trim), and
# reports resident memory before and after the release.
CHILD = """
import json, ctypes
from payload.device import allocator, release_free_memory
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6
blocks = [bytearray(100_000) for _ in range(4000)]
keep = blocks[-1]
del blocks
before = rss()
released = release_free_memory()
print(json.dumps({"allocator": allocator(), "released": released, "before": before, "after": rss()}))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="resident memory is read from Linux's /proc")
@pytest.mark.parametrize("name", ["glibc", "tcmalloc"])
def test_release_free_memory_returns_what_was_freed(name):
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if name == "tcmalloc":
        library = ctypes.util.find_library("tcmalloc_minimal")
        if library is None:
            pytest.skip("libtcmalloc_minimal is not installed (apt-get install libtcmalloc-minimal4)")
        env["LD_PRELOAD"] = library
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["allocator"] == name and result["released"]
    # The freed 400 MB were still resident before (else this test shows nothing) and are gone after.
    assert result["before"] - result["after"] > 300, result
