"""Hand a training stream to ``keras.Model.fit``.

Batches are produced one epoch stream after another in a background thread.  With the TensorFlow
backend, Keras pulls a Python generator once per batch through ``tf.data.Dataset.from_generator``;
on a small model that hand-off, not the reading, bounds throughput (benchmarks/train.py), so batches
are passed ``GROUP`` at a time, built stacked by the stream (``TrainingStream.groups``: one copy per
group), and split again inside tf.data; a group bucketed by multiplicity goes as pieces of batches
that need the same number of object slots (``TrainingStream.pieces``).  Other backends iterate the
stream directly.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import keras

from payload.ingest.prefetch import prefetched
from payload.learn.dataset import SLOTTED, Batch, TrainingStream

#: Batches per Python hand-off to tf.data.
GROUP = 32


def epoch_batches(make_stream: Callable[[int], TrainingStream], start_epoch: int = 0) -> Iterator[Batch]:
    """Endless batches; epoch e is its own stream seeded by e, so a resumed job sees the same data."""
    for epoch in itertools.count(start_epoch):
        stream = make_stream(epoch)
        batches = stream.batches()
        for _ in range(stream.steps):
            yield next(batches)


def one_epoch_groups(stream: TrainingStream, group: int, trim: bool = False) -> Iterator[Batch]:
    """One epoch of ``stream`` in groups of ``group`` stacked batches (the last group is shorter);
    ``trim``: padding cut per group where the model allows it."""
    full, rest = divmod(stream.steps, group)
    groups = stream.groups(group, trim=trim)
    for _ in range(full):
        yield from stream.pieces(next(groups)) if trim else [next(groups)]
    if rest:  # a new generator on the same stream continues where the last one stopped
        last = next(stream.groups(rest, trim=trim))
        yield from stream.pieces(last) if trim else [last]


def epoch_groups(
    make_stream: Callable[[int], TrainingStream], start_epoch: int, group: int, trim: bool = False
) -> Iterator[Batch]:
    """``epoch_batches`` in groups: ``one_epoch_groups`` of one epoch after another."""
    for epoch in itertools.count(start_epoch):
        yield from one_epoch_groups(make_stream(epoch), group, trim)


class ValidationBatches(keras.utils.PyDataset):
    """The validation split for ``fit(validation_data=...)``: the same batches, from the first, every
    epoch.  Keras restarts its evaluation input each epoch after tf.data has read ahead of the last
    epoch's end, so an endless iterator would drift by that read-ahead from epoch to epoch (and
    validate differently after a resume).  Keras reads the batches in order; the stream is reopened
    only when it asks for an earlier one."""

    def __init__(self, make_stream: Callable[[], TrainingStream]):
        super().__init__()
        self._make = make_stream
        self._steps = make_stream().steps
        self._batches: Iterator[Batch] | None = None
        self._next = 0

    def __len__(self) -> int:
        return self._steps

    def __getitem__(self, index: int) -> Batch:
        if self._batches is None or index < self._next:
            self._batches, self._next = self._make().batches(), 0
        while True:
            batch = next(self._batches)
            self._next += 1
            if self._next > index:
                return batch


@contextlib.contextmanager
def fit_input(make_stream: Callable[[int], TrainingStream], start_epoch: int = 0, group: int = GROUP) -> Iterator[Any]:
    """The ``x`` for ``fit(x, steps_per_epoch=...)``: the endless batches of ``make_stream``'s epochs
    from ``start_epoch`` on, in order.  The background producer stops when the block is left; an
    error of the stream inside it is raised as itself (``_dataset``)."""
    if keras.backend.backend() != "tensorflow" or group <= 1:
        with prefetched(epoch_batches(make_stream, start_epoch)) as stream:
            yield stream
        return
    with prefetched(epoch_groups(make_stream, start_epoch, group, trim=True), depth=2) as groups:
        first = next(groups)
        source = itertools.chain([first], groups)
        with _dataset(lambda: source, first) as batches:
            yield batches


@contextlib.contextmanager
def validation_input(make_stream: Callable[[], TrainingStream], group: int = GROUP) -> Iterator[Any]:
    """The ``validation_data`` for ``fit`` inside the block: the validation split, the same batches
    every epoch, as the training batches are handed on (grouped, padding cut).  Keras iterates a
    finite dataset afresh each epoch, which starts a new stream.  Other backends get
    ``ValidationBatches``."""
    if keras.backend.backend() != "tensorflow" or group <= 1:
        yield ValidationBatches(make_stream)
        return
    import tensorflow as tf

    stream = make_stream()
    first = next(one_epoch_groups(stream, group, trim=True))
    with _dataset(lambda: one_epoch_groups(make_stream(), group, trim=True), first) as batches:
        # Keras (3.15) counts one more, empty step into the mean loss of a dataset of unknown length.
        yield batches.apply(tf.data.experimental.assert_cardinality(stream.steps))


@contextlib.contextmanager
def _dataset(generator: Callable[[], Iterator[Batch]], first: Batch) -> Iterator[Any]:
    """A tf.data dataset of the batches in ``generator``'s stacked groups, typed after ``first``.
    tf.data reports an error of the generator as a generic ``UnknownError``; one that ends the block
    is raised as the generator's own (a damaged input keeps its message and documented exit code)."""
    import tensorflow as tf

    # Object slots vary from group to group when padding is trimmed: that axis is left open.
    spec = (
        {
            key: tf.TensorSpec(
                (None, v.shape[1], None, *v.shape[3:]) if key in SLOTTED else (None, *v.shape[1:]),
                tf.as_dtype(v.dtype),
            )
            for key, v in first[0].items()
        },
        tf.TensorSpec((None, *first[1].shape[1:]), tf.as_dtype(first[1].dtype)),
        tf.TensorSpec((None, *first[2].shape[1:]), tf.as_dtype(first[2].dtype)),
    )
    raised: list[BaseException] = []

    def recorded() -> Iterator[Batch]:
        try:
            yield from generator()
        except Exception as err:
            raised.append(err)
            raise

    try:
        yield tf.data.Dataset.from_generator(recorded, output_signature=spec).unbatch().prefetch(tf.data.AUTOTUNE)
    except tf.errors.OpError as err:
        if raised:
            raise raised[-1] from err
        raise
