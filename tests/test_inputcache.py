"""Network inputs computed once per job (payload/learn/inputcache.py): read back, they give the same
blocks and batches as computing them; inputs that no longer match are written again, never read."""

from __future__ import annotations

import copy
import logging

import h5py
import numpy as np
import pytest
from conftest import JAGGED_CONFIG, make_events, write_jagged_root

from payload.config import parse_config
from payload.ingest.convert import convert
from payload.learn.dataset import EventSource
from payload.learn.inputcache import attach, inputs_path
from payload.learn.splits import TRAIN
from payload.learn.train import make_stream_factory, prepare

TRAINING = {"batch_size": 64, "block_size": 128, "shuffle_blocks": 2, "bucket_by_multiplicity": True}


def _converted(tmp_path, events: tuple[int, int] = (700, 700), compression: str = "blosc-lz4"):
    """Config (Deep Sets with the high-level event inputs) and two converted toy samples."""
    config = parse_config(
        {
            **JAGGED_CONFIG,
            "data": {**JAGGED_CONFIG["data"], "max_objects": 16, "compression": compression},
            "scaling": {"transforms": {"pt": "log", "m": "log1p"}},
            "model": {"type": "deepsets", "high_level_inputs": True},
            "training": TRAINING,
        }
    )
    files = []
    for i in range(2):
        root = write_jagged_root(tmp_path / f"s{i}.root", make_events(events[i], seed=30 + i))
        files.append(convert(config, [str(root)], tmp_path / f"s{i}.h5", progress=False).output)
    return config, files


def _sources(config, files, scaler):
    return [(EventSource(f, config, scaler), label) for f, label in zip(files, (0, 1))]


@pytest.mark.parametrize("compression", ["blosc-lz4", "lzf"])
def test_cached_inputs_give_the_same_blocks_and_batches(tmp_path, monkeypatch, compression):
    """Compressed as the event file: an lzf job needs no Blosc filter for its cache either."""
    config, files = _converted(tmp_path, compression=compression)
    scaler, tallies = prepare(config, [EventSource(f, config, None) for f in files])
    computed, cached = _sources(config, files, scaler), _sources(config, files, copy.deepcopy(scaler))
    for source, _ in cached:
        attach(source)
        with h5py.File(inputs_path(source)) as f:
            assert f["objects"].compression == (None if compression == "blosc-lz4" else compression)
            assert f["objects"].shape == (source.size, 16, len(source.object_names))

    def refuse(*args):
        raise AssertionError("computed, not read back")

    # From here on the cached sources cannot compute an input: what they give was read back.
    for name in ("apply_objects", "apply_events"):
        monkeypatch.setattr(cached[0][0].scaler, name, refuse)
    for (a, _), (b, _) in zip(computed, cached):
        blocks = list(zip(a.iterate(None), b.iterate(None)))
        assert len(blocks) == 6 and set(blocks[0][1].inputs) == {"objects", "mask", "events"}
        for x, y in blocks:
            for key in x.inputs:
                np.testing.assert_array_equal(x.inputs[key], y.inputs[key])
    streams = [make_stream_factory(config, s, tallies, (TRAIN,), seed=3, shuffle=True)(0) for s in (computed, cached)]
    groups = [s.groups(2, trim=True) for s in streams]
    for _ in range(12):  # past the end of the first pass of both classes
        (cx, cy, cw), (dx, dy, dw) = next(groups[0]), next(groups[1])
        np.testing.assert_array_equal(cy, dy)
        np.testing.assert_array_equal(cw, dw)
        assert cx.keys() == dx.keys()
        for key in cx:
            np.testing.assert_array_equal(cx[key], dx[key])


def test_inputs_that_no_longer_match_are_written_again(tmp_path):
    """Reused while the event file, scaler and config are those it was made from and the file is
    intact; written again for another scaler, a reconverted event file or a damaged file."""
    config, files = _converted(tmp_path, (400, 400))
    scaler, _ = prepare(config, [EventSource(f, config, None) for f in files])
    path = inputs_path(EventSource(files[0], config, scaler))

    def attached(scaler, expect: str):
        source = EventSource(files[0], config, scaler)
        lines: list[str] = []
        handler = logging.Handler(logging.INFO)
        handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
        # On the package's logger itself: the CLI, run in-process by other tests, stops its propagation.
        logger = logging.getLogger("payload")
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            attach(source)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        assert expect in "\n".join(lines), lines
        return source

    def first_block(source):
        return next(source.iterate(None)).inputs["objects"]

    attached(scaler, "")
    written = path.stat().st_mtime_ns
    attached(scaler, "reusing s0.inputs.h5")
    assert path.stat().st_mtime_ns == written
    other = copy.deepcopy(scaler)
    other.objects.scale = scaler.objects.scale * 2
    source = attached(other, "writing s0.inputs.h5 again: it was computed from other inputs")
    np.testing.assert_allclose(first_block(source), first_block(EventSource(files[0], config, scaler)) / 2, rtol=1e-6)
    damaged = bytearray(path.read_bytes())
    middle = len(damaged) // 2
    damaged[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(damaged))
    attached(other, "again: it is damaged")
    # A reconverted event file (renamed into place as every conversion is) is another file.
    convert(config, [str(tmp_path / "s0.root")], files[0], progress=False)
    source = attached(scaler, "again: it was computed from other inputs")
    np.testing.assert_array_equal(first_block(source), first_block(EventSource(files[0], config, scaler)))


def test_inputs_of_another_length_are_refused(tmp_path):
    """A cache is read only when it holds a row for every event of its event file."""
    from payload.errors import InputCorruptError

    config, files = _converted(tmp_path, (300, 250))
    scaler, _ = prepare(config, [EventSource(f, config, None) for f in files])
    long, short = EventSource(files[0], config, scaler), EventSource(files[1], config, scaler)
    attach(long)
    with pytest.raises(InputCorruptError, match=r"s0\.inputs\.h5: not \d+ rows as .*s1\.h5; delete it"):
        short.use_inputs(inputs_path(long))
    assert inputs_path(long).exists()  # refused, not removed
    assert len(next(short.iterate(None)))  # computing its own inputs
