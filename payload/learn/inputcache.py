"""The network inputs of an event file, computed once per job and read back by every epoch.

Scaling the objects and building the event-level summaries a network takes
(``model.high_level_inputs``) are most of a training stream's CPU time when they are redone for
every block in every epoch.  A training job (``training.cache_inputs``) writes them once, after the
scaler is fitted, row for row with the event file, beside it in ``work/``:

    <sample>.inputs.h5
      /objects  float32 (N, M, F)  ``Scaler.apply_objects`` of the event file's objects (padding 0)
      /events   float32 (N, E)     ``Scaler.apply_events`` of the network's event inputs (when it takes any)
    <sample>.inputs.json           the record: ``key``, the file's size and adler32

Both datasets are compressed as the event file (``data.compression``) and chunked as its objects.
The key is a digest of what the inputs were computed from: the event file as it is on disk, the
scaler, the data, scaling and model config and the package version.  A file whose record does not
match (other inputs, another scaler, a damaged or half-written file) is written again, never read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np

from payload import __version__
from payload.atomic import adler32, atomic_path, hdf5_writing, write_json
from payload.config import config_to_dict
from payload.ingest.h5layout import appender, object_chunk_rows
from payload.learn.dataset import CACHED, EventSource
from payload.progress import log


def inputs_path(source: EventSource) -> Path:
    return source.path.with_suffix(".inputs.h5")


def key(source: EventSource) -> str:
    """A digest of everything the cached inputs of ``source`` are computed from."""
    assert source.scaler is not None
    stat = source.path.stat()
    config = config_to_dict(source.config)
    made_from = {
        # A reconverted event file is a new file (renamed into place): new inode and time.
        "event_file": [str(source.path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino],
        "scaler": source.scaler.to_dict(),
        "config": {k: config[k] for k in ("data", "scaling", "model")},
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(made_from, sort_keys=True).encode()).hexdigest()


def _stale(path: Path, record_path: Path, expected: str) -> str | None:
    """Why the existing file ``path`` cannot be reused (None when it can)."""
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return "it has no record"
    if record.get("key") != expected:
        return "it was computed from other inputs, another scaler or another config"
    if record.get("bytes") != path.stat().st_size or record.get("adler32") != adler32(path):
        return "it is damaged (its size or checksum no longer matches)"
    return None


def attach(source: EventSource) -> None:
    """Point ``source`` at its cached network inputs, written first unless a matching file is there."""
    path, record_path = inputs_path(source), source.path.with_suffix(".inputs.json")
    expected = key(source)
    reason = _stale(path, record_path, expected) if path.exists() else "absent"
    if reason is None:
        log.info("network inputs of %s: reusing %s", source.path.name, path.name)
    else:
        if path.exists():
            log.info("network inputs of %s: writing %s again: %s", source.path.name, path.name, reason)
        record_path.unlink(missing_ok=True)
        _write(source, path)
        size = path.stat().st_size
        write_json(record_path, {"key": expected, "bytes": size, "adler32": adler32(path)})
        log.info(
            "network inputs of %s: wrote %s (%d events, %.0f MB)", source.path.name, path.name, source.size, size / 1e6
        )
    source.use_inputs(path)


def _write(source: EventSource, path: Path) -> None:
    """Every event's network inputs, streamed block by block (scaled exactly as ``EventSource.read`` does)."""
    with atomic_path(path) as tmp:
        file = h5py.File(tmp, "w")
        with hdf5_writing(file, tmp):
            # Chunks of the event file's object rows: a training block decompresses what it reads, no more.
            rows = object_chunk_rows(source.max_objects, len(source.object_names))
            compression = source.config.data.compression  # the event file's
            appenders = {}
            for start, stop in source.block_ranges():
                block = source.read(start, stop, None, drop_outliers=False)
                for name in CACHED:
                    if name in block.inputs:
                        values = np.ascontiguousarray(block.inputs[name], dtype=np.float32)
                        if name not in appenders:
                            appenders[name] = appender(file, name, values.shape[1:], np.float32, rows, compression)
                        appenders[name].append(values)
            for each in appenders.values():
                each.close()
            file.attrs["rows"] = source.size
