"""The job manifest: what ran, on what, from which inputs, how long each stage took."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from payload import __version__
from payload.atomic import adler32
from payload.device import release_free_memory
from payload.ingest.download import ORIGINS
from payload.ingest.inputs import is_url


def describe_input(location: str) -> dict[str, Any]:
    """Where an input was read from, its size and adler32 (for root:// URLs, as the server reports them)."""
    if location.startswith(("root://", "roots://")):
        return {"location": location, **_xrootd_facts(location)}
    if is_url(location):
        return {"location": location}
    path = Path(location)
    stat = path.stat()
    return {
        "location": location,
        "resolved": str(path.resolve()),
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "adler32": adler32(path),
        **ORIGINS.get(location, {}),
    }


def _xrootd_facts(url: str) -> dict[str, Any]:
    """Size and checksum from the XRootD server; empty when the bindings or the server cannot say."""
    try:
        from XRootD import client
        from XRootD.client.flags import QueryCode
    except ImportError:
        return {}
    parsed = client.URL(url)
    fs = client.FileSystem(f"{parsed.protocol}://{parsed.hostid}")
    facts: dict[str, Any] = {}
    status, info = fs.stat(parsed.path_with_params, timeout=30)
    if status.ok:
        facts["bytes"] = info.size
    status, answer = fs.query(QueryCode.CHECKSUM, parsed.path_with_params, timeout=30)
    if status.ok and answer:
        name, _, value = answer.decode(errors="replace").strip("\x00 \n").partition(" ")
        if name == "adler32" and value:
            facts["adler32"] = value.strip("\x00 ").lower().rjust(8, "0")
    return facts


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: ``/proc/self/clear_refs`` 5) so a stage measures its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (``VmHWM``) in MB; None where ``/proc`` cannot say."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


class Timer:
    """Wall time and, where Linux lets the peak be reset, peak resident memory per stage."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}
        #: The innermost stage an exception left (what ``error.json`` names), and the stage now running.
        self.failed: str | None = None
        self.current = "setup"

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        # What the stages before freed is handed back first: the peak measured is this stage's own.
        release_free_memory()
        own_peak = _reset_peak_rss()
        start = time.perf_counter()
        outer, self.current = self.current, name
        try:
            yield
        except BaseException:
            self.failed = self.failed or name
            raise
        finally:
            self.current = outer
            self.stages[name] = round(self.stages.get(name, 0.0) + time.perf_counter() - start, 3)
            peak = peak_rss_mb() if own_peak else None
            if peak is not None:
                self.peak_rss_mb[name] = max(peak, self.peak_rss_mb.get(name, 0.0))


def build_manifest(
    status: str,
    exit_code: int,
    mode: str,
    task: str,
    inputs: dict[str, list[dict[str, Any]]],
    device: dict[str, Any],
    timer: Timer,
    output: Path,
    started: float,
) -> dict[str, Any]:
    files = sorted(
        p
        for p in output.rglob("*")
        if p.is_file()
        and not p.name.startswith(".")
        and "checkpoints" not in p.parts
        and "work" not in p.relative_to(output).parts[:1]
    )
    return {
        "status": status,
        "exit_code": exit_code,
        "payload_version": __version__,
        "mode": mode,
        "task": task,
        "inputs": inputs,
        "device": device,
        "timings": timer.stages,
        "peak_rss_mb": timer.peak_rss_mb,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "outputs": {str(p.relative_to(output)): p.stat().st_size for p in files if p.name != "manifest.json"},
    }
