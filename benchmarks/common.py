"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    VmHWM belongs to the address space, which exec replaces; ru_maxrss would instead carry over the
    parent's peak into a freshly started measurement process, so it is only the fallback.
    """
    from payload.manifest import peak_rss_mb as vmhwm

    value = vmhwm()
    return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
