"""Turn input specifications as users and PanDA give them into a list of file locations.

PanDA passes ``%IN`` as one comma-joined list of file names (staged into the working directory) or
``root://`` URLs (direct I/O).  Users also give globs, directories and Rucio DIDs (``scope:name``,
downloaded into a cache by ``payload.ingest.download``).  Remote URLs are left to uproot.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable
from pathlib import Path

from payload.errors import InputMissingError
from payload.ingest.download import fetch, is_did

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_GLOB_CHARS = set("*?[")


def is_url(location: str) -> bool:
    return bool(_URL.match(location))


def _split(specs: str | Iterable[str]) -> list[str]:
    if isinstance(specs, str):
        specs = [specs]
    items: list[str] = []
    for spec in specs:
        items.extend(part.strip() for part in spec.split(",") if part.strip())
    return items


def expand_inputs(specs: str | Iterable[str]) -> list[str]:
    """Expand comma-separated lists, globs and directories into an ordered list of files.

    Order is preserved (PanDA's order), globs and directories expand sorted, and duplicates are
    dropped so a file is never read twice.  A glob or directory that matches nothing is an error;
    a plain path that does not exist is too.
    """
    files: list[str] = []
    for item in _split(specs):
        if is_url(item):
            if item.startswith("file://"):
                item = item[len("file://") :]
            else:
                files.append(item)
                continue
        if is_did(item):
            files.extend(fetch(item))
        elif Path(item).is_dir():
            matches = sorted(str(p) for p in Path(item).iterdir() if p.name.endswith(".root"))
            if not matches:
                raise InputMissingError(f"input {item}: directory holds no .root file")
            files.extend(matches)
        elif Path(item).exists():  # before globbing: a file may be named run[1].root
            files.append(item)
        elif _GLOB_CHARS & set(item):
            matches = sorted(glob.glob(item))
            if not matches:
                raise InputMissingError(f"input {item}: no file matches this pattern")
            files.extend(matches)
        else:
            raise InputMissingError(f"input {item}: no such file (check the path, or the dataset's staging)")
    if not files:
        raise InputMissingError("no input files given")
    return list(dict.fromkeys(files))
