"""Job tarballs: written atomically, extracted with path checks (no absolute paths, no '..',
no links or devices), since a tarball from the grid is untrusted input."""

from __future__ import annotations

import tarfile
from pathlib import Path

from payload.atomic import atomic_path
from payload.errors import InputCorruptError


def make_tarball(source: Path, target: Path, exclude: tuple[str, ...] = ("work", "checkpoints")) -> Path:
    with atomic_path(target) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source)
            if rel.parts[0] in exclude or path.name.startswith(".") or not path.is_file():
                continue
            tar.add(path, arcname=str(rel))
    return target


def safe_extract(tarball: Path, destination: Path) -> Path:
    try:
        with tarfile.open(tarball) as tar:
            for member in tar.getmembers():
                name = Path(member.name)
                if name.is_absolute() or ".." in name.parts:
                    raise InputCorruptError(f"tarball {tarball}: member {member.name!r} escapes the extraction directory")
                if not (member.isfile() or member.isdir()):
                    raise InputCorruptError(f"tarball {tarball}: member {member.name!r} is a link or device; refused")
            destination.mkdir(parents=True, exist_ok=True)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(destination, filter="data")
            else:  # Python < 3.11.4 (Debian bookworm's 3.11.2): members checked above; no modes or owners kept
                for member in tar.getmembers():
                    tar.extract(member, destination, set_attrs=False)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise InputCorruptError(f"tarball {tarball}: cannot be read ({err}); re-download it") from None
    return destination
