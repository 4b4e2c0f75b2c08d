"""Job tarballs: written atomically, extracted with path checks (no absolute paths, no '..',
no links or devices), since a tarball from the grid is untrusted input."""

from __future__ import annotations

import errno
import os
import tarfile
import zlib
from pathlib import Path

from payload.atomic import atomic_path
from payload.errors import ConfigError, InputCorruptError


def make_tarball(
    source: Path, target: Path, exclude: tuple[str, ...] = ("work", "checkpoints"), only: tuple[str, ...] | None = None
) -> Path:
    """``source``'s files (but ``exclude``d directories and hidden files, or only those named in
    ``only``) as a gzipped tarball, written atomically."""
    with atomic_path(target) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source)
            if rel.parts[0] in exclude or path.name.startswith(".") or not path.is_file():
                continue
            if only is not None and str(rel) not in only:
                continue
            tar.add(path, arcname=str(rel))
    return target


#: Bounds on what one tarball may put on disk (a gzip bomb of 2 MB expands to gigabytes).  Generous
#: defaults; the environment variables PAYLOAD_MAX_EXTRACT_BYTES and PAYLOAD_MAX_EXTRACT_MEMBERS set others.
MAX_BYTES = 64 << 30
MAX_MEMBERS = 10_000


def _limit(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: must be a whole number of bytes or members") from None


def safe_extract(
    tarball: Path,
    destination: Path,
    only: tuple[str, ...] | None = None,
    max_bytes: int | None = None,
    max_members: int | None = None,
) -> Path:
    """Extract ``tarball`` (all members, or those named in ``only``) into ``destination`` after checking
    every member: no absolute path, no '..', no link or device, at most ``max_members`` members and
    ``max_bytes`` bytes to write (as the headers declare them, checked before anything is written)."""
    # A caller's own limit is named as such; the defaults are named by the variable that changes them.
    bytes_hint = "PAYLOAD_MAX_EXTRACT_BYTES" if max_bytes is None else "the limit for this kind of archive"
    members_hint = "PAYLOAD_MAX_EXTRACT_MEMBERS" if max_members is None else "the limit for this kind of archive"
    max_bytes = _limit("PAYLOAD_MAX_EXTRACT_BYTES", MAX_BYTES) if max_bytes is None else max_bytes
    max_members = _limit("PAYLOAD_MAX_EXTRACT_MEMBERS", MAX_MEMBERS) if max_members is None else max_members
    try:
        with tarfile.open(tarball) as tar:
            members, total = [], 0
            for member in tar:
                name = Path(member.name)
                if name.is_absolute() or ".." in name.parts:
                    raise InputCorruptError(
                        f"tarball {tarball}: member {member.name!r} escapes the extraction directory"
                    )
                if not (member.isfile() or member.isdir()):
                    raise InputCorruptError(f"tarball {tarball}: member {member.name!r} is a link or device; refused")
                if only is not None and str(name) not in only:
                    continue
                members.append(member)
                total += member.size
                if len(members) > max_members:
                    raise InputCorruptError(
                        f"tarball {tarball}: more than {max_members} members ({members_hint}); refused"
                    )
                if total > max_bytes:
                    raise InputCorruptError(
                        f"tarball {tarball}: member {member.name!r} takes what it would write "
                        f"past {max_bytes} bytes ({bytes_hint}); refused"
                    )
            destination.mkdir(parents=True, exist_ok=True)
            for member in members:
                if hasattr(tarfile, "data_filter"):
                    tar.extract(member, destination, filter="data")
                else:  # Python < 3.11.4 (Debian bookworm's 3.11.2): members checked above; no modes or owners kept
                    tar.extract(member, destination, set_attrs=False)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise InputCorruptError(f"tarball {tarball}: cannot be read ({err}); re-download it") from None
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise
        raise InputCorruptError(f"tarball {tarball}: cannot be read ({err}); re-download it") from None
    return destination
