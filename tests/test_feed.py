"""The hand-off of training streams to Keras: grouping batches for tf.data keeps every batch, in order."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from payload.learn.feed import epoch_batches, fit_input


class CountingStream:
    """Epoch ``epoch`` of a stream: ``steps`` batches whose values say (epoch, step, row)."""

    def __init__(self, epoch: int, steps: int = 5, size: int = 6):
        self.epoch, self.steps, self.size = epoch, steps, size
        self._batches = self._generate()  # one position per stream, as TrainingStream's row readers

    def batches(self):
        return self._batches

    def _generate(self):
        for step in range(self.steps):
            base = (self.epoch * 100 + step) * self.size
            values = np.arange(base, base + self.size, dtype=np.float32)
            yield (
                {"objects": np.repeat(values[:, None, None], 3, axis=1), "mask": np.ones((self.size, 3), np.float32)},
                (values % 2)[:, None],
                values,
            )

    def pieces(self, group):
        return [group]

    def groups(self, size, trim=False):
        batches = self.batches()
        while True:
            group = [next(batches) for _ in range(size)]
            yield (
                {k: np.stack([b[0][k] for b in group]) for k in group[0][0]},
                np.stack([b[1] for b in group]),
                np.stack([b[2] for b in group]),
            )


def _as_numpy(batch):
    x, y, w = batch
    return {k: np.asarray(v) for k, v in x.items()}, np.asarray(y), np.asarray(w)


@pytest.mark.parametrize("group", [1, 4])
def test_grouped_feed_yields_the_stream_in_order_across_epochs(group):
    expected = epoch_batches(CountingStream, start_epoch=2)
    before = threading.active_count()
    with fit_input(CountingStream, start_epoch=2, group=group) as feed:
        got = [_as_numpy(b) for _, b in zip(range(13), feed)]  # 2.6 epochs: groups straddle epoch ends
    for (x, y, w), (ex, ey, ew) in zip(got, expected):
        np.testing.assert_array_equal(w, ew)
        np.testing.assert_array_equal(y, ey)
        for key in ex:
            np.testing.assert_array_equal(x[key], ex[key])
    assert got[0][2][0] == 1200 and got[5][2][0] == 1800  # epoch 2 step 0, then epoch 3 step 0
    assert threading.active_count() <= before  # the producer stopped with the block


def test_training_stream_groups_are_its_batches_stacked(tmp_path):
    """A real stream's groups hold the same batches as its per-batch iterator: every class in its
    proportion in every batch, rows in the same order."""
    from conftest import JAGGED_CONFIG, make_events, write_jagged_root

    from payload.config import parse_config
    from payload.ingest.convert import convert
    from payload.learn.dataset import EventSource
    from payload.learn.splits import TRAIN
    from payload.learn.train import make_stream_factory, prepare

    raw = {**JAGGED_CONFIG, "training": {"batch_size": 50, "block_size": 128, "shuffle_blocks": 2}}
    config = parse_config(raw)
    files = []
    for i, n in enumerate((900, 500)):
        root = write_jagged_root(tmp_path / f"s{i}.root", make_events(n, seed=i))
        files.append(convert(config, [str(root)], tmp_path / f"s{i}.h5", progress=False).output)
    scaler, tallies = prepare(config, [EventSource(f, config, None) for f in files])
    sources = [(EventSource(f, config, scaler), label) for f, label in zip(files, (0, 1))]
    make = make_stream_factory(config, sources, tallies, (TRAIN,), seed=7, shuffle=True)
    batches = make(0).batches()
    expected = [next(batches) for _ in range(12)]
    groups = make(0).groups(5)
    got = []
    for _ in range(3):  # 15 batches, compare the first 12
        x, y, w = next(groups)
        assert x["objects"].shape[:2] == (5, 50) and y.shape == (5, 50, 1) and w.shape == (5, 50)
        got += [({k: v[i] for k, v in x.items()}, y[i], w[i]) for i in range(5)]
    for (x, y, w), (ex, ey, ew) in zip(got, expected):
        np.testing.assert_array_equal(y, ey)
        np.testing.assert_array_equal(w, ew)
        for key in ex:
            np.testing.assert_array_equal(x[key], ex[key])
    assert 0 < expected[0][1].mean() < 1  # both classes in a batch


def test_an_epoch_reads_each_block_once_and_one_more_at_most(tmp_path, monkeypatch):
    """An epoch's batches hold a few more rows than the split (whole batches): the rows past the
    end of a pass come from one more block, not from a whole shuffle buffer read and thrown away."""
    from conftest import JAGGED_CONFIG, make_events, write_jagged_root

    from payload.config import parse_config
    from payload.ingest.convert import convert
    from payload.learn.dataset import EventSource
    from payload.learn.splits import TRAIN
    from payload.learn.train import make_stream_factory, prepare

    config = parse_config({**JAGGED_CONFIG, "training": {"batch_size": 64, "block_size": 100, "shuffle_blocks": 4}})
    root = write_jagged_root(tmp_path / "s.root", make_events(1000, seed=3))
    h5 = convert(config, [str(root)], tmp_path / "s.h5", progress=False).output
    scaler, tallies = prepare(config, [EventSource(h5, config, None)])
    source = EventSource(h5, config, scaler)
    reads = []
    real_read = EventSource.read
    monkeypatch.setattr(EventSource, "read", lambda self, *a, **k: reads.append(a[:2]) or real_read(self, *a, **k))
    stream = make_stream_factory(config, [(source, 0)], tallies, (TRAIN,), seed=1, shuffle=True)(0)
    assert stream.steps * 64 > tallies[0].counts[TRAIN]  # the epoch runs into a second pass
    batches = stream.batches()
    rows = sum(len(next(batches)[2]) for _ in range(stream.steps))
    assert rows == stream.steps * 64
    assert len(reads) == len(source.block_ranges()) + 1  # every block once, then one block of the next pass


def _wide_sources(tmp_path, training: dict, events: int, seed: int, name: str, variant: str, samples=None):
    """Config, (source, label) pairs and tallies of two toy samples in 45 object slots (ROOT files
    ``name``: the same events, hence the same splits, for every ``variant``); ``samples``: the two
    samples' events, instead of ``events`` toy events each."""
    from conftest import JAGGED_CONFIG, make_events, write_jagged_root

    from payload.config import parse_config
    from payload.ingest.convert import convert
    from payload.learn.dataset import EventSource
    from payload.learn.train import prepare

    config = parse_config({**JAGGED_CONFIG, "data": {**JAGGED_CONFIG["data"], "max_objects": 45}, "training": training})
    files = []
    for i in range(2):
        sample = make_events(events, seed=seed + i) if samples is None else samples[i]
        root = write_jagged_root(tmp_path / f"{name}{i}.root", sample)
        files.append(convert(config, [str(root)], tmp_path / f"{name}{i}-{variant}.h5", progress=False).output)
    scaler, tallies = prepare(config, [EventSource(f, config, None) for f in files])
    return config, [(EventSource(f, config, scaler), label) for f, label in zip(files, (0, 1))], tallies


def _wide_stream(tmp_path, training: dict, events: int, seed: int, name: str, variant: str):
    """Epoch 0 of a training stream over ``_wide_sources``."""
    from payload.learn.splits import TRAIN
    from payload.learn.train import make_stream_factory

    config, sources, tallies = _wide_sources(tmp_path, training, events, seed, name, variant)
    return make_stream_factory(config, sources, tallies, (TRAIN,), seed=7, shuffle=True)(0)


def test_deep_sets_batches_carry_no_padding_beyond_their_largest_event(tmp_path):
    """With 45 slots and at most 13 real objects per event, every batch is cut to 16 slots; without
    trimming it keeps 45; the real objects are the same either way."""

    def stream(trim):
        training = {"batch_size": 64, "trim_padding": trim, "bucket_by_multiplicity": False}
        return _wide_stream(tmp_path, training, 600, 10, "t", str(trim)).groups(4, trim=True)

    trimmed, full = next(stream(True)), next(stream(False))
    assert full[0]["objects"].shape[2] == 45
    assert trimmed[0]["objects"].shape[2] == 16 and trimmed[0]["mask"].shape[2] == 16
    np.testing.assert_array_equal(trimmed[0]["mask"].sum(axis=2), full[0]["mask"].sum(axis=2))
    np.testing.assert_array_equal(trimmed[0]["objects"], full[0]["objects"][:, :, :16])
    assert not full[0]["objects"][:, :, 16:].any()


def test_join_pads_narrower_slot_axes_with_zeros():
    from payload.learn.dataset import join

    a, b = np.ones((2, 8, 3), np.float32), np.full((1, 16, 3), 2, np.float32)
    joined = join([a, b], 0, 1)
    assert joined.shape == (3, 16, 3)
    np.testing.assert_array_equal(joined[:2, :8], a)
    assert not joined[:2, 8:].any()
    np.testing.assert_array_equal(joined[2], b[0])
    np.testing.assert_array_equal(join([a, a], 0), np.concatenate([a, a]))


def test_rows_shuffled_narrow_make_the_same_batches_as_padded_rows(tmp_path):
    """A Deep Sets stream shuffles and batches each block's rows cut to the slots its own events need:
    blocks (and classes) of different widths are joined by zero-padding, and untrimmed groups come
    back with all 45 slots, equal to those of a stream that keeps every slot throughout."""
    from conftest import make_events

    from payload.learn.dataset import cut_padding
    from payload.learn.splits import TRAIN
    from payload.learn.train import make_stream_factory

    # Class 0: blocks of at most 8 objects, then blocks of up to 13; class 1: up to 13 throughout.
    narrow_part, wide_part = make_events(300, seed=50, max_jets=4), make_events(300, seed=51)
    samples = [{k: narrow_part[k] + wide_part[k] for k in narrow_part}, make_events(600, seed=52)]

    def stream(trim: bool):
        training = {"batch_size": 64, "block_size": 64, "shuffle_blocks": 3, "trim_padding": trim}
        config, sources, tallies = _wide_sources(tmp_path, training, 0, 0, "n", str(trim), samples)
        return make_stream_factory(config, sources, tallies, (TRAIN,), seed=7, shuffle=True)(0), sources

    (narrow, sources), (padded, _) = stream(True), stream(False)
    widths = {cut_padding(b.inputs)["mask"].shape[1] for b in sources[0][0].iterate((TRAIN,))}
    assert widths == {8, 16}  # the joins below pad
    assert narrow.rows[0].narrow and not padded.rows[0].narrow
    groups = narrow.groups(3), padded.groups(3)
    for _ in range(4):  # 12 batches of 64: past the first shuffle buffer
        (nx, ny, nw), (px, py, pw) = next(groups[0]), next(groups[1])
        assert nx["objects"].shape == px["objects"].shape == (3, 64, 45, px["objects"].shape[-1])
        np.testing.assert_array_equal(ny, py)
        np.testing.assert_array_equal(nw, pw)
        for key in px:
            np.testing.assert_array_equal(nx[key], px[key])


def test_bucketed_batches_are_cut_to_their_own_multiplicity_and_hold_the_same_rows(tmp_path):
    """Bucketing deals a group's rows into batches by multiplicity: the pieces hold exactly the rows of
    the unbucketed group (the same events with their labels and weights), each piece is cut to the
    largest multiplicity it holds, and most batches need fewer slots than the group's largest event."""
    from payload.learn.dataset import TRIM_STEP

    def stream(bucket):
        return _wide_stream(tmp_path, {"batch_size": 32, "bucket_by_multiplicity": bucket}, 1500, 20, "b", str(bucket))

    plain, bucketed = stream(False), stream(True)
    group = next(plain.groups(16, trim=True))
    pieces = bucketed.pieces(next(bucketed.groups(16, trim=True)))
    assert len(pieces) > 1

    def rows(x, y, w):  # every row as (label, weight, real objects), sorted: the group's content
        real = (x["objects"] * x["mask"][..., None]).reshape(-1, x["mask"].shape[-1] * x["objects"].shape[-1])
        padded = np.zeros((len(real), 45 * x["objects"].shape[-1]), np.float32)
        padded[:, : real.shape[1]] = real
        table = np.column_stack([y.reshape(-1), w.reshape(-1), padded])
        return table[np.lexsort(table.T[::-1])]

    x, y, w = group
    got = [rows(*p) for p in pieces]
    np.testing.assert_array_equal(np.concatenate(got)[np.lexsort(np.concatenate(got).T[::-1])], rows(x, y, w))
    for px, py, pw in pieces:
        assert py.shape[1:] == (32, 1) and pw.shape[1:] == (32,)
        largest = int(px["mask"].sum(axis=-1).max())
        assert px["objects"].shape[2] == px["mask"].shape[2] == max(TRIM_STEP, -(-largest // TRIM_STEP) * TRIM_STEP)
    # Rows are grouped by the slots they need, not sorted finer: every batch but those straddling a
    # boundary holds one slot count's events, as a random sample of them (several multiplicities and
    # both classes in it).
    needs = [(-(-m.astype(int) // TRIM_STEP), py) for px, ys, _ in pieces for m, py in zip(px["mask"].sum(axis=-1), ys)]
    straddling = sum(len(np.unique(n)) > 1 for n, _ in needs)
    assert straddling <= len(np.unique(np.concatenate([n for n, _ in needs]))) - 1
    mixed = [
        len(np.unique(m)) > 2 and 0 < ys.mean() < 1
        for (px, yy, _) in pieces
        for m, ys in zip(px["mask"].sum(axis=-1), yy)
    ]
    assert sum(mixed) >= len(mixed) - straddling - 1
    # ... with the classes in exactly the shares they have among those events (to a row or two): shares
    # swinging from batch to batch would pull the network back and forth.
    share = {}
    for n, ys in needs:
        for k in np.unique(n):
            share.setdefault(k, []).append(ys[n == k].ravel())
    share = {k: np.concatenate(v).mean() for k, v in share.items()}
    for n, ys in needs:
        if len(np.unique(n)) == 1:
            assert abs(ys.mean() - share[n[0]]) <= 2 / len(ys)
    batches = sum(len(p[1]) for p in pieces)
    narrow = sum(len(p[1]) for p in pieces if p[0]["mask"].shape[2] < x["mask"].shape[2])
    assert batches == 16 and narrow >= batches // 2


def test_validation_batches_are_cut_as_training_batches_and_keras_averages_them_right(tmp_path):
    """The validation split reaches Keras as the training batches do (grouped, each batch cut to the
    slots its events need), the same batches every epoch, and Keras's loss over them is the weighted
    mean of the per-event losses, as over the plain padded batches: a dataset of unknown length
    would have Keras count one more, empty step into the mean."""
    from payload.learn.feed import ValidationBatches, validation_input
    from payload.learn.models import build_model_for
    from payload.learn.splits import VALIDATION
    from payload.learn.train import compile_model, make_stream_factory

    training = {"batch_size": 32, "bucket_by_multiplicity": True}
    config, sources, tallies = _wide_sources(tmp_path, training, 1500, 30, "v", "v")
    make = make_stream_factory(config, sources, tallies, (VALIDATION,), seed=8, shuffle=False)
    model = build_model_for(config, sources[0][0])
    compile_model(model, config, 10)
    plain = ValidationBatches(lambda: make(0))
    assert len(plain) >= 8
    losses = []
    for i in range(len(plain)):
        x, y, w = plain[i]
        p = np.clip(np.asarray(model.predict_on_batch(x), np.float64).ravel(), 1e-7, 1 - 1e-7)
        losses.append(-(y.ravel() * np.log(p) + (1 - y.ravel()) * np.log(1 - p)) * w)
    expected = float(np.mean(np.concatenate(losses)))
    with validation_input(lambda: make(0), group=4) as cut:
        assert max(x["objects"].shape[1] for x, _, _ in cut) < 45
        first, again = (model.evaluate(cut, verbose=0, return_dict=True) for _ in range(2))
    padded = model.evaluate(plain, verbose=0, return_dict=True)
    assert first == again
    assert first["loss"] == pytest.approx(expected, rel=1e-5)
    assert padded["loss"] == pytest.approx(expected, rel=1e-5)
    assert first["auc"] == pytest.approx(padded["auc"], abs=1e-6)


def test_validation_beyond_its_limit_reads_only_evenly_spread_blocks(tmp_path, monkeypatch):
    """Beyond ``training.validation_events`` the validation stream takes the events of evenly spaced
    blocks of every file (the first stride and the last both represented), reads no other block,
    hands on every validation event of those blocks once per pass, keeps the classes in proportion
    and gives the same batches every epoch; under the limit it reads every block."""
    from payload.learn.dataset import EventSource
    from payload.learn.splits import VALIDATION
    from payload.learn.train import make_stream_factory, spread_blocks

    training = {"batch_size": 32, "block_size": 100}
    config, sources, tallies = _wide_sources(tmp_path, training, 3000, 50, "l", "l")
    every = sum(t.counts[VALIDATION] for t in tallies)
    blocks = spread_blocks(tallies, (VALIDATION,), every // 4)
    assert blocks is not None and spread_blocks(tallies, (VALIDATION,), every) is None
    for chosen, tally in zip(blocks, tallies):
        assert len(tally.blocks) == 30 and 6 <= len(chosen) <= 9
        assert chosen[0] < 4 and chosen[-1] >= 26 and len(set(chosen)) == len(chosen)
    read_ranges = []
    read = EventSource.read

    def recording(self, start, stop, *args, **kwargs):
        read_ranges.append((self.path, start, stop))
        return read(self, start, stop, *args, **kwargs)

    monkeypatch.setattr(EventSource, "read", recording)
    make = make_stream_factory(config, sources, tallies, (VALIDATION,), seed=3, shuffle=False, limit=every // 4)
    stream = make(0)
    expected = [
        sum(tally.blocks[i].counts.get(VALIDATION, 0) for i in chosen) for chosen, tally in zip(blocks, tallies)
    ]
    assert stream.steps == -(-sum(expected) // 32)
    assert abs(stream.per_batch[0] / 32 - expected[0] / sum(expected)) <= 1 / 32
    first = [b for _, b in zip(range(stream.steps), stream.batches())]
    allowed = {(s.path, *s.block_ranges()[i]) for (s, _), chosen in zip(sources, blocks) for i in chosen}
    assert read_ranges and set(read_ranges) <= allowed
    labels = np.concatenate([y.ravel() for _, y, _ in first])
    assert abs(int((labels == 0).sum()) - expected[0]) <= 32  # every event of the blocks, once
    again = [b for _, b in zip(range(stream.steps), make(0).batches())]  # as validation_input reopens it
    for (x, y, w), (x2, y2, w2) in zip(first, again):
        np.testing.assert_array_equal(w, w2)
        np.testing.assert_array_equal(y, y2)
        np.testing.assert_array_equal(x["objects"], x2["objects"])
    read_ranges.clear()
    whole = make_stream_factory(config, sources, tallies, (VALIDATION,), seed=3, shuffle=False, limit=every)(0)
    _ = [b for _, b in zip(range(whole.steps), whole.batches())]
    assert len(set(read_ranges)) == 60


def test_training_validates_on_at_most_validation_events(tmp_path):
    """``train`` hands Keras the capped validation stream: the log says how many of the validation
    events each epoch scores, and the validation loss is there."""
    import csv
    import logging
    import re

    from payload.learn.splits import VALIDATION
    from payload.learn.train import train

    training = {"batch_size": 256, "block_size": 500, "epochs": 1, "validation_events": 1000}
    config, sources, tallies = _wide_sources(tmp_path, training, 10_000, 60, "t", "t")
    every = sum(t.counts[VALIDATION] for t in tallies)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("payload")
    level = logger.level
    logger.addHandler(handler)  # the CLI's tests leave the payload logger not propagating to caplog's
    logger.setLevel(logging.INFO)
    try:
        train(config, sources, tallies, tmp_path / "out", progress=False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    used = [re.search(r"validation: ([\d,]+) of the ([\d,]+) events", r.getMessage()) for r in records]
    used = [m for m in used if m]
    assert len(used) == 1 and int(used[0][2].replace(",", "")) == every > 1000
    assert 800 <= int(used[0][1].replace(",", "")) <= 1300
    with (tmp_path / "out" / "history.csv").open() as f:
        assert np.isfinite(float(next(csv.DictReader(f))["val_loss"]))


@pytest.mark.parametrize("damaged", ["training", "validation"])
def test_a_read_error_while_keras_trains_is_raised_as_itself(tmp_path, monkeypatch, damaged):
    """tf.data reports an error of a batch generator as a generic UnknownError (an internal error,
    exit 70); the feeds raise the stream's own, so a damaged input keeps its message and documented
    exit code.  The damage is injected where a block is read once fit runs (which block a real
    damaged chunk reaches first depends on the shuffle and the read-ahead)."""
    from payload.errors import InputCorruptError
    from payload.learn import dataset
    from payload.learn.feed import fit_input, validation_input
    from payload.learn.models import build_model_for
    from payload.learn.splits import TRAIN, VALIDATION
    from payload.learn.train import compile_model, make_stream_factory

    config, sources, tallies = _wide_sources(tmp_path, {"batch_size": 32}, 1500, 40, "d", "d")
    model = build_model_for(config, sources[0][0])
    compile_model(model, config, 10)
    split = {"training": TRAIN, "validation": VALIDATION}[damaged]
    armed = False
    read = dataset._ShuffledRows._fill

    def fill(self, need):
        if armed and self.splits == (split,):
            raise InputCorruptError(f"event file {self.source.path}: damaged chunk; convert the inputs again")
        return read(self, need)

    monkeypatch.setattr(dataset._ShuffledRows, "_fill", fill)
    train = make_stream_factory(config, sources, tallies, (TRAIN,), seed=1, shuffle=True)
    validate = make_stream_factory(config, sources, tallies, (VALIDATION,), seed=2, shuffle=False)

    def run():
        nonlocal armed
        with validation_input(lambda: validate(0), group=4) as data, fit_input(train, group=4) as batches:
            armed = True
            model.fit(batches, steps_per_epoch=200, epochs=1, validation_data=data, verbose=0)

    with pytest.raises(InputCorruptError, match="damaged chunk"):
        run()
