"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import ctypes.util
import os
import resource

ALLOCATORS = ("auto", "tcmalloc", "glibc")


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    VmHWM belongs to the address space, which exec replaces; ru_maxrss would instead carry over the
    parent's peak into a freshly started measurement process, so it is only the fallback.
    """
    from payload.results.manifest import peak_rss_mb as vmhwm

    value = vmhwm()
    return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def allocator_env(choice: str) -> tuple[dict[str, str], str]:
    """Environment and allocator name for measurement processes: ``tcmalloc`` preloads it as the
    image does, ``glibc`` runs without it, ``auto`` is tcmalloc where the library is installed
    (Debian: ``apt-get install libtcmalloc-minimal4``)."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    library = ctypes.util.find_library("tcmalloc_minimal")
    if choice == "glibc" or (choice == "auto" and library is None):
        return env, "glibc"
    if library is None:
        raise SystemExit(
            "--allocator tcmalloc: libtcmalloc_minimal is not installed (apt-get install libtcmalloc-minimal4)"
        )
    env["LD_PRELOAD"] = library
    return env, "tcmalloc"
