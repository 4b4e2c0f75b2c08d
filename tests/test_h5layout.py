"""The HDF5 event-file writer and the threaded pipeline stage conversion relies on."""

from __future__ import annotations

import threading

import h5py
import hdf5plugin
import numpy as np
import pytest

from payload.ingest.h5layout import Chunk, EventFileWriter
from payload.ingest.prefetch import prefetch


def _chunk(rng: np.random.Generator, n: int, start: int) -> Chunk:
    objects = np.zeros((n, 4, 3), dtype=np.float32)
    counts = rng.integers(0, 5, n)
    for i, c in enumerate(counts):
        objects[i, :c] = rng.normal(size=(c, 3))
    return Chunk(
        objects=objects,
        n_objects=counts.astype(np.int16),
        events=rng.normal(size=(n, 2)).astype(np.float32),
        spectators=np.zeros((n, 0), dtype=np.float32),
        weights=rng.random(n).astype(np.float32),
        file_index=np.zeros(n, dtype=np.int32),
        entry=np.arange(start, start + n),
    )


@pytest.mark.parametrize("compression", ["blosc-lz4", "lzf", "none"])
def test_appends_of_any_size_read_back_exactly(tmp_path, compression, monkeypatch):
    """Appends smaller than, equal to and larger than a chunk, in any mix, read back as written,
    through h5py's own filter pipeline (the Blosc path writes pre-compressed chunks directly)."""
    import payload.ingest.h5layout as layout

    monkeypatch.setattr(layout, "CHUNK_BYTES", 4 * 3 * 4 * 10)  # 10 rows per chunk
    rng = np.random.default_rng(1)
    sizes = [3, 7, 10, 25, 1, 0, 9, 40, 4]
    chunks, start = [], 0
    for n in sizes:
        chunks.append(_chunk(rng, n, start))
        start += n
    path = tmp_path / "events.h5"
    writer = EventFileWriter(path, 4, ["a", "b", "c"], ["x", "y"], [], compression)
    for chunk in chunks:
        writer.append(chunk)
        chunk.objects[...] = 0  # the caller reuses its buffers: the writer must not keep references
    writer.close()
    assert writer.size == sum(sizes)
    with h5py.File(path) as f:
        assert f["objects"].chunks == (10, 4, 3)
        if compression == "blosc-lz4":
            assert str(hdf5plugin.BLOSC_ID) in f["objects"]._filters
        for name in ("n_objects", "events", "weights", "entry"):
            np.testing.assert_array_equal(f[name][:], np.concatenate([getattr(c, name) for c in chunks]))
        assert f["spectators"].shape == (sum(sizes), 0)
        rng = np.random.default_rng(1)
        expected = np.concatenate([_chunk(rng, n, 0).objects for n in sizes])
        np.testing.assert_array_equal(f["objects"][:], expected)


def test_integer_datasets_are_byte_shuffled(tmp_path):
    """Entry numbers and counts are Blosc byte-shuffled (floats are not): entry numbers then take a
    small fraction of their size.  The directly written chunks say so in their own headers, as the
    dataset's filter description does, and read back exactly through h5py's filter pipeline."""
    chunk = _chunk(np.random.default_rng(2), 150_000, 10**9)  # more than a whole chunk of every dataset
    path = tmp_path / "events.h5"
    writer = EventFileWriter(path, 4, ["a", "b", "c"], ["x", "y"], [], "blosc-lz4")
    writer.append(chunk)
    writer.close()
    with h5py.File(path) as f:
        for name, shuffled in (
            ("entry", True),
            ("n_objects", True),
            ("file_index", True),
            ("objects", False),
            ("events", False),
            ("weights", False),
        ):
            ds = f[name]
            np.testing.assert_array_equal(ds[:], getattr(chunk, name))
            cd_values = ds._filters[str(hdf5plugin.BLOSC_ID)]
            _, raw = ds.id.read_direct_chunk((0,) * ds.ndim)
            header_flags = raw[2]  # Blosc header: version, versionlz, flags; bit 0 = byte shuffle
            assert (cd_values[5] == 1) == shuffled == bool(header_flags & 1), name
        assert f["entry"].id.get_storage_size() < f["entry"].size * 8 / 20


@pytest.mark.parametrize("compression", ["blosc-lz4", "none"])
def test_sparse_objects_are_padded_as_written(tmp_path, compression, monkeypatch):
    """Objects handed over as (slots, rows) come back as the padded array, across chunk borders
    and appends that leave partial chunks, the same as a dense append."""
    import payload.ingest.h5layout as layout
    from payload.ingest.h5layout import SparseObjects

    monkeypatch.setattr(layout, "CHUNK_BYTES", 4 * 3 * 4 * 10)  # 10 rows per chunk
    rng = np.random.default_rng(4)
    dense, sparse_path, dense_path = [], tmp_path / "sparse.h5", tmp_path / "dense.h5"
    writers = [EventFileWriter(p, 4, ["a", "b", "c"], ["x", "y"], [], compression) for p in (sparse_path, dense_path)]
    start = 0
    for n in (3, 17, 10, 0, 26, 1):
        chunk = _chunk(rng, n, start)
        start += n
        real = np.arange(4) < chunk.n_objects[:, None]
        slots = np.flatnonzero(real.ravel())
        sparse = SparseObjects(chunk.n_objects, slots, chunk.objects.reshape(-1, 3)[slots], 4)
        np.testing.assert_array_equal(sparse.dense(), chunk.objects)
        writers[0].append(Chunk(**{**chunk.__dict__, "objects": sparse}))
        writers[1].append(chunk)
        dense.append(chunk.objects)
    for writer in writers:
        writer.close()
    with h5py.File(sparse_path) as a, h5py.File(dense_path) as b:
        np.testing.assert_array_equal(a["objects"][:], np.concatenate(dense))
        np.testing.assert_array_equal(a["n_objects"][:], b["n_objects"][:])


def test_prefetch_keeps_order_and_raises_producer_errors():
    def numbers():
        yield from range(5)
        raise ValueError("bad chunk")

    seen = []

    def consume():
        for item in prefetch(numbers(), depth=2):
            seen.append(item)

    with pytest.raises(ValueError, match="bad chunk"):
        consume()
    assert seen == [0, 1, 2, 3, 4]


def test_prefetch_stopped_early_closes_its_source():
    closed = threading.Event()

    def source():
        try:
            yield from range(1000)
        finally:
            closed.set()

    stream = prefetch(source(), depth=2)
    assert next(stream) == 0
    stream.close()
    assert closed.is_set()  # e.g. a process pool behind the source is shut down, not leaked


@pytest.mark.parametrize("compression", ["blosc-lz4", "lzf", "none"])
def test_read_rows_matches_h5py_slicing(tmp_path, compression, monkeypatch):
    """Direct Blosc chunk reads (and the h5py path for other filters) give exactly h5py's rows for
    ranges aligned and not aligned to chunks, inside one chunk, through the partial last chunk."""
    import payload.ingest.h5layout as layout
    from payload.ingest.h5layout import read_rows

    monkeypatch.setattr(layout, "CHUNK_BYTES", 4 * 3 * 4 * 10)  # 10 rows per chunk
    rng = np.random.default_rng(2)
    path = tmp_path / "events.h5"
    writer = EventFileWriter(path, 4, ["a", "b", "c"], ["x", "y"], [], compression)
    for n, start in ((37, 0), (26, 37)):
        writer.append(_chunk(rng, n, start))
    writer.close()
    with h5py.File(path) as f:
        for name in ("objects", "n_objects", "events", "weights", "entry"):
            ds = f[name]
            for a, b in ((0, 63), (0, 10), (10, 30), (3, 7), (12, 55), (58, 63), (60, 100), (5, 5)):
                np.testing.assert_array_equal(read_rows(ds, a, b), ds[a:b])


def test_read_rows_from_several_threads_at_once(tmp_path, monkeypatch):
    """Training reads one event file from its training and validation threads: the direct chunk
    reads must hold h5py's lock (without it HDF5 fails with 'no VOL object wrap context')."""
    import payload.ingest.h5layout as layout
    from payload.ingest.h5layout import read_rows

    monkeypatch.setattr(layout, "CHUNK_BYTES", 4 * 3 * 4 * 10)
    rng = np.random.default_rng(3)
    path = tmp_path / "events.h5"
    writer = EventFileWriter(path, 4, ["a", "b", "c"], ["x", "y"], [], "blosc-lz4")
    writer.append(_chunk(rng, 3000, 0))
    writer.close()
    errors = []
    with h5py.File(path) as f:
        reference = f["objects"][:]

        def work(seed):
            r = np.random.default_rng(seed)
            try:
                for _ in range(300):
                    a = int(r.integers(0, 2900))
                    b = a + int(r.integers(1, 100))
                    if not np.array_equal(read_rows(f["objects"], a, b), reference[a:b]):
                        errors.append(f"rows {a}:{b} differ")
                    f["n_objects"][a:b]  # h5py's own reads interleaved
            except Exception as err:  # noqa: BLE001 - collected and reported below
                errors.append(repr(err))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
