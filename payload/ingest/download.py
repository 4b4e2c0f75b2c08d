"""Rucio DIDs as inputs: ``scope:name`` of a dataset or container, downloaded once into a cache.

Rucio's download client does the work: it lists the files (containers recursively), picks a replica,
writes to a temporary name, checks the adler32 Rucio recorded and renames; a file already in the cache
with the right checksum is reused.  The cache has the layout ``rucio download`` gives, one directory per
DID (``<cache>/<name>/<file>``), so either tool can use the other's downloads.  The client comes from the
``grid`` extra; its config and credentials from the usual Rucio setup (``RUCIO_CONFIG``,
``RUCIO_ACCOUNT``, an X.509 proxy or a token).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from payload.errors import DatasetAccessError, InputCorruptError, InputMissingError, one_line
from payload.progress import log

_DID = re.compile(r"^(?P<scope>[A-Za-z0-9][A-Za-z0-9_.-]{0,29}):(?P<name>[A-Za-z0-9_.-][A-Za-z0-9_.\-/]*)$")

#: Where each downloaded file came from, by local path, for the manifest.
ORIGINS: dict[str, dict[str, Any]] = {}


def is_did(item: str) -> bool:
    """``scope:name`` that is not an existing local path (a file name may contain a colon)."""
    return bool(_DID.match(item)) and not Path(item).exists()


def cache_dir() -> Path:
    """``$PAYLOAD_RUCIO_CACHE``, else ``$XDG_CACHE_HOME/grid-payload/rucio`` (``~/.cache`` by default)."""
    if os.environ.get("PAYLOAD_RUCIO_CACHE"):
        return Path(os.environ["PAYLOAD_RUCIO_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path("~").expanduser() / ".cache")
    return base / "grid-payload" / "rucio"


def _client() -> Any:
    try:
        from rucio.common.exception import RucioException
    except ImportError:
        raise DatasetAccessError(
            "Rucio DIDs need the Rucio client: pip install 'grid-payload[grid]' (the image has it)"
        ) from None
    try:
        from rucio.client import Client  # reads the config as it is imported

        return Client()
    except RucioException as err:
        raise DatasetAccessError(
            f"Rucio: {one_line(err)}; set RUCIO_CONFIG and RUCIO_ACCOUNT and get a proxy "
            "or token (e.g. voms-proxy-init) first"
        ) from None


def fetch(did: str, cache: Path | None = None) -> list[str]:
    """Download the files of ``did`` into ``cache`` (reusing verified ones) and return their paths, sorted."""
    client = _client()
    from rucio.client.downloadclient import DownloadClient
    from rucio.common.exception import DataIdentifierNotFound, NoFilesDownloaded, NotAllFilesDownloaded, RucioException

    cache = cache or cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetAccessError(
            f"Rucio cache {cache}: cannot create it ({err.strerror}); set PAYLOAD_RUCIO_CACHE"
        ) from None
    scope, name = did.split(":", 1)
    traces: list[dict[str, Any]] = []
    downloader = DownloadClient(client=client, logger=_quiet)
    try:
        if not list(client.list_files(scope, name)):
            raise InputMissingError(f"input {did}: the Rucio dataset holds no files")
        items = downloader.download_dids([{"did": did, "base_dir": str(cache)}], traces_copy_out=traces)
    except DataIdentifierNotFound:
        raise InputMissingError(f"input {did}: no such Rucio DID (check it with: rucio did list {scope}:*)") from None
    except (NoFilesDownloaded, NotAllFilesDownloaded):
        raise _download_failure(did, traces) from None
    except RucioException as err:
        raise DatasetAccessError(f"input {did}: Rucio: {one_line(err)}") from None
    paths = []
    for item in items:
        path = item["dest_file_paths"][0]
        ORIGINS[path] = {"did": f"{item['scope']}:{item['name']}", "dataset": did, "rucio_adler32": item.get("adler32")}
        paths.append(path)
    log.info(
        "input %s: %d file(s) in %s (%d downloaded)", did, len(paths), cache, sum(_state(i) == "DONE" for i in items)
    )
    return sorted(paths)


def _download_failure(did: str, traces: list[dict[str, Any]]) -> Exception:
    bad = {}
    for trace in traces:  # one per attempt; the last state per file decides
        bad[f"{trace.get('scope')}:{trace.get('filename')}"] = trace
    bad = {k: t for k, t in bad.items() if _state(t) not in ("DONE", "ALREADY_DONE")}
    corrupt = [k for k, t in bad.items() if _state(t) == "FAIL_VALIDATE"]
    if corrupt:
        reason = bad[corrupt[0]].get("stateReason", "")
        return InputCorruptError(
            f"input {did}: {', '.join(corrupt)} does not match the checksum Rucio recorded "
            f"({reason}); the replica is corrupt: declare it bad (rucio replica declare-bad)"
        )
    names = ", ".join(f"{k} ({_state(t)}: {t.get('stateReason', 'no replica')})" for k, t in bad.items())
    return InputMissingError(f"input {did}: could not download {names or 'any file'}")


def _state(trace: dict[str, Any]) -> str:
    state = trace.get("clientState")
    return str(getattr(state, "value", state))


def _quiet(level: int, msg: str, *args: Any, **_: Any) -> None:
    """Rucio's per-attempt chatter goes to the debug log: a failure is reported once, in the error."""
    text = str(msg)
    log.debug("rucio: %s", text % args if args else text)
