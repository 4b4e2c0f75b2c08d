"""The HDF5 event file: the documented meeting point between conversion and every later stage.

Layout (see docs/hdf5-layout.md), N events, M max objects, F object features:

    /objects     float32 (N, M, F)  padded objects, sorted, padding is 0; attr ``names``
    /n_objects   int16   (N,)       real objects per event (after clipping to M); mask = arange(M) < n
    /events      float32 (N, E)     event-level features; attr ``names``
    /spectators  float32 (N, S)     carried through untouched (not network inputs); attr ``names``
    /weights     float32 (N,)       event weights (1 when no weight branch is configured)
    /file_index  int32   (N,)       index into the root attr ``source_files``
    /entry       int64   (N,)       entry number in that file's tree: joins results back to ROOT

Datasets are Blosc-LZ4 compressed by default: ``import hdf5plugin`` before reading them with h5py.

Root attributes (JSON strings): ``config``, ``provenance``, ``stats``, ``source_files``; plus
``format``, ``format_version`` and ``payload_version``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc
import h5py

try:  # registers the Blosc filter with HDF5: writing Blosc datasets and h5py's own reads of them need it
    import hdf5plugin
except ImportError:  # read_rows decompresses Blosc chunks itself; other compressions need nothing more
    hdf5plugin = None  # type: ignore[assignment]
import numpy as np
from h5py._objects import phil  # h5py's HDF5 library lock

from payload import __version__
from payload.errors import ConfigError, InputCorruptError, InputMissingError

# Compression in _blosc_lz4 runs with the GIL released (a process-wide python-blosc setting).
blosc.set_releasegil(True)
blosc.set_nthreads(1)  # the conversion threads already keep the cores busy

FORMAT = "grid-payload-events"
FORMAT_VERSION = 1
#: Target bytes per HDF5 chunk: big enough for fast contiguous reads, small enough to stream.
CHUNK_BYTES = 1 << 20
SMALL_CHUNK_FACTOR = 8


class SparseObjects:
    """Padded (n, M, F) float32 objects held as the real ones only.

    Row ``i`` of ``rows`` (k, F) belongs at flat slot ``slots[i]`` = event * M + position, slots
    ascending.  The writer pads one HDF5 chunk at a time into a buffer that stays in the CPU cache
    and compresses it there: padding a whole block first meant writing and re-reading ~10x its
    real bytes through main memory, twice the cost of the compression itself.
    """

    def __init__(self, n_objects: np.ndarray, slots: np.ndarray, rows: np.ndarray, max_objects: int):
        self.slots, self.max_objects = slots, max_objects
        self.shape = (len(n_objects), max_objects, rows.shape[1])
        # Whole objects move as one F*4-byte item: ~2x faster than fancy indexing (rows, F) floats.
        self._item = np.dtype((np.void, 4 * rows.shape[1]))
        self._rows = np.ascontiguousarray(rows, dtype=np.float32).view(self._item).ravel()
        self._offsets = np.concatenate([[0], np.cumsum(n_objects, dtype=np.int64)])

    def __len__(self) -> int:
        return self.shape[0]

    def dense(self, start: int = 0, stop: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Padded events [start, stop), written into ``out`` (any contents) when given."""
        stop = len(self) if stop is None else stop
        if out is None:
            out = np.zeros((stop - start, *self.shape[1:]), dtype=np.float32)
        else:
            out = out[: stop - start]
            out.fill(0)
        lo, hi = self._offsets[start], self._offsets[stop]
        out.reshape(-1).view(self._item)[self.slots[lo:hi] - start * self.max_objects] = self._rows[lo:hi]
        return out


@dataclass
class Chunk:
    """One converted block of events, all arrays aligned on the first axis."""

    objects: np.ndarray | SparseObjects  # (n, M, F) float32
    n_objects: np.ndarray  # (n,) int16
    events: np.ndarray  # (n, E) float32
    spectators: np.ndarray  # (n, S) float32
    weights: np.ndarray  # (n,) float32
    file_index: np.ndarray  # (n,) int32
    entry: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.weights)


def _shuffle(dtype: Any) -> int:
    """Blosc's shuffle for a dataset: integers (entry numbers, counts, file indices) compress ~45x
    better and 3-5x faster byte-shuffled; floats, mostly padding zeros or noise-like, are fastest unshuffled."""
    return blosc.SHUFFLE if np.issubdtype(dtype, np.integer) else blosc.NOSHUFFLE


def _compression(name: str, dtype: Any) -> dict[str, Any]:
    # Padded objects are mostly zeros.  Blosc-LZ4 (no shuffle) shrinks them ~4x at ~3 GB/s, which
    # beats writing them raw (disk-bound) and lzf/gzip (CPU-bound) by 4-10x; see benchmarks/convert.py.
    if name == "blosc-lz4":
        if hdf5plugin is None:
            raise ConfigError(
                "data.compression blosc-lz4 needs the hdf5plugin package (pip install hdf5plugin); "
                "or set data.compression to lzf"
            )
        return dict(hdf5plugin.Blosc(cname="lz4", clevel=1, shuffle=_shuffle(dtype)))
    if name == "none":
        return {}
    return {"compression": name}


def _blosc_lz4(chunk: np.ndarray) -> bytes:
    """One chunk compressed exactly as the HDF5 Blosc filter stores it, without holding the GIL."""
    return blosc.compress_ptr(
        chunk.__array_interface__["data"][0],
        chunk.size,
        typesize=chunk.dtype.itemsize,
        clevel=1,
        shuffle=_shuffle(chunk.dtype),
        cname="lz4",
    )


def _chunk_rows(row_bytes: int) -> int:
    return max(1, min(65536, CHUNK_BYTES // max(row_bytes, 1)))


def _dense(values: np.ndarray | SparseObjects, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
    if isinstance(values, SparseObjects):
        return values.dense(start, stop, out)
    return np.ascontiguousarray(values[start:stop])


class _Appender:
    """Appends rows to one resizable chunked dataset.

    With ``compress`` given, whole chunks are compressed here and written with
    ``write_direct_chunk``: h5py holds the GIL through its filter pipeline, python-blosc does not,
    so compression overlaps the reading and building threads of the conversion.  Rows short of a
    whole chunk wait in ``tail`` (less than one chunk) until the next append or ``close``.
    """

    def __init__(self, dataset: h5py.Dataset, compress: Callable[[np.ndarray], bytes] | None):
        self.ds, self.compress = dataset, compress
        self.rows = dataset.chunks[0]
        self.row_shape = dataset.shape[1:]
        self.written = 0
        self.tail = np.zeros((0, *self.row_shape), dtype=dataset.dtype)
        self._buffer = np.empty((self.rows, *self.row_shape), dtype=dataset.dtype)

    def append(self, values: np.ndarray | SparseObjects) -> None:
        n = len(values)
        if self.compress is None:
            self.ds.resize(self.written + n, axis=0)
            self.ds[self.written :] = _dense(values, 0, n)
            self.written += n
            return
        head = min(n, (self.rows - len(self.tail)) % self.rows)
        if len(self.tail):
            self.tail = np.concatenate([self.tail, _dense(values, 0, head)])
            if len(self.tail) < self.rows:
                return
        whole = head + (n - head) // self.rows * self.rows
        firsts = range(head, whole, self.rows)
        # One extent change per append and no h5py properties per chunk: with ~1 MB object chunks
        # and small per-event datasets, per-chunk Python overhead was half of the writing time.
        self.ds.id.set_extent(
            (self.written + (len(self.tail) > 0) * self.rows + len(firsts) * self.rows, *self.row_shape)
        )
        zeros = (0,) * len(self.row_shape)
        if len(self.tail):
            self.ds.id.write_direct_chunk((self.written, *zeros), self.compress(self.tail))
            self.written += self.rows
        for first in firsts:
            chunk = _dense(values, first, first + self.rows, self._buffer)
            self.ds.id.write_direct_chunk((self.written, *zeros), self.compress(chunk))
            self.written += self.rows
        self.tail = np.array(_dense(values, whole, n))

    def close(self) -> None:
        if len(self.tail):
            self.ds.resize(self.written + len(self.tail), axis=0)
            self.ds[self.written :] = self.tail  # the last, partial chunk goes through the filter
            self.written += len(self.tail)
            self.tail = self.tail[:0]


def appender(
    file: h5py.File, name: str, row_shape: tuple[int, ...], dtype: Any, rows: int, compression: str
) -> _Appender:
    """A new resizable dataset of ``rows``-row chunks, compressed as ``compression`` (a
    ``data.compression`` value), and what appends to it."""
    ds = file.create_dataset(
        name,
        shape=(0, *row_shape),
        maxshape=(None, *row_shape),
        dtype=dtype,
        chunks=(rows, *row_shape),
        **_compression(compression, dtype),
    )
    return _Appender(ds, _blosc_lz4 if compression == "blosc-lz4" else None)


def object_chunk_rows(max_objects: int, features: int) -> int:
    """Rows per chunk of float32 objects (N, max_objects, features): about ``CHUNK_BYTES`` each."""
    return _chunk_rows(max_objects * features * 4)


class EventFileWriter:
    """Appends ``Chunk``s to resizable, chunked datasets."""

    def __init__(
        self,
        path: str | os.PathLike,
        max_objects: int,
        object_names: list[str],
        event_names: list[str],
        spectator_names: list[str],
        compression: str = "blosc-lz4",
    ):
        self.file = h5py.File(path, "w")
        self.size = 0
        m, f = max_objects, len(object_names)
        rows = object_chunk_rows(m, f)
        # Per-event datasets are ~1 % of the bytes: chunks of SMALL_CHUNK_FACTOR object chunks keep
        # their number of (fixed-cost) chunk writes and reads small, and a training block still
        # decompresses little more of them than it uses.
        small_rows = min(65536, rows * SMALL_CHUNK_FACTOR)

        self._empty: list[str] = []
        self._appenders: dict[str, _Appender] = {}

        def make(name: str, shape: tuple[int, ...], dtype: Any, names: list[str] | None = None) -> None:
            if 0 in shape:
                # HDF5 cannot chunk a zero-width dataset: it is written whole, at the end.
                ds = self.file.create_dataset(name, shape=(0, *shape), dtype=dtype)
                self._empty.append(name)
            else:
                chunk = rows if name == "objects" else small_rows
                self._appenders[name] = appender(self.file, name, shape, dtype, chunk, compression)
                ds = self._appenders[name].ds
            if names is not None:
                ds.attrs["names"] = np.array(names, dtype=h5py.string_dtype())

        make("objects", (m, f), np.float32, object_names)
        make("n_objects", (), np.int16)
        make("events", (len(event_names),), np.float32, event_names)
        make("spectators", (len(spectator_names),), np.float32, spectator_names)
        make("weights", (), np.float32)
        make("file_index", (), np.int32)
        make("entry", (), np.int64)

    def append(self, chunk: Chunk) -> None:
        """Append a chunk; its arrays may be reused by the caller once this returns."""
        for name, appender in self._appenders.items():
            appender.append(getattr(chunk, name))
        self.size += len(chunk)

    def set_attrs(self, **attrs: Any) -> None:
        self.file.attrs["format"] = FORMAT
        self.file.attrs["format_version"] = FORMAT_VERSION
        self.file.attrs["payload_version"] = __version__
        for key, value in attrs.items():
            self.file.attrs[key] = json.dumps(value, sort_keys=True)

    def close(self) -> None:
        for appender in self._appenders.values():
            appender.close()
        for name in self._empty:
            old = self.file[name]
            attrs = dict(old.attrs)
            del self.file[name]
            new = self.file.create_dataset(name, shape=(self.size, *old.shape[1:]), dtype=old.dtype)
            new.attrs.update(attrs)
        self._empty.clear()
        self.file.close()


BLOSC_FILTER = 32001


def read_rows(dataset: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a dataset.  Blosc-compressed chunks are read raw and decompressed by
    python-blosc, which releases the GIL where h5py's filter pipeline holds it: a training job's
    reading thread then leaves Keras' own Python loop running.  HDF5 itself is not thread-safe:
    every HDF5 call holds h5py's library lock, as h5py's own high-level calls do."""
    with phil:
        plist = dataset.id.get_create_plist()
        if dataset.chunks is None or plist.get_nfilters() != 1 or plist.get_filter(0)[0] != BLOSC_FILTER:
            return dataset[start:stop]
        shape, rows = dataset.shape, dataset.chunks[0]
    stop = min(stop, shape[0])
    tail = (0,) * (len(shape) - 1)
    out = np.empty((max(stop - start, 0), *shape[1:]), dtype=dataset.dtype)
    scratch = None
    for first in range(start // rows * rows, stop, rows):
        with phil:
            mask, raw = dataset.id.read_direct_chunk((first, *tail))
        a, b = max(start, first), min(stop, first + rows)
        if mask:  # the filter was skipped for this chunk: let HDF5 read it
            out[a - start : b - start] = dataset[a:b]
        elif a == first and b == first + rows:
            blosc.decompress_ptr(raw, out[a - start :].__array_interface__["data"][0])
        else:
            if scratch is None:
                scratch = np.empty((rows, *shape[1:]), dtype=dataset.dtype)
            blosc.decompress_ptr(raw, scratch.__array_interface__["data"][0])
            out[a - start : b - start] = scratch[a - first : b - first]
    return out


def object_mask(n_objects: np.ndarray, max_objects: int) -> np.ndarray:
    """(N, M) boolean mask of real objects: ``arange(M) < n_objects``."""
    return np.arange(max_objects) < np.asarray(n_objects)[:, None]


def names(dataset: h5py.Dataset) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in dataset.attrs["names"]]


def json_attr(file: h5py.File, key: str) -> Any:
    return json.loads(file.attrs[key])


def open_event_file(path: str | Path) -> h5py.File:
    """Open an event file read-only, checking it is one."""
    path = Path(path)
    if not path.exists():
        raise InputMissingError(f"event file {path}: no such file")
    try:
        file = h5py.File(path, "r")
    except OSError as err:
        raise InputCorruptError(f"event file {path}: not a readable HDF5 file ({err})") from None
    if file.attrs.get("format") != FORMAT:
        file.close()
        raise InputCorruptError(f"event file {path}: not a grid-payload event file (run 'payload convert')")
    return file
