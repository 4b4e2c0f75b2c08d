"""Streaming batches from HDF5 event files: never the whole array in memory.

An ``EventSource`` reads one event file in large contiguous blocks, keeps the events of one split
that pass the outlier cuts and scales them.  ``TrainingStream`` shuffles block order per epoch and
rows within a buffer of blocks, and mixes the classes (each in its own file) into every batch in
their configured proportion.  Batches are dicts of numpy arrays, ready for ``keras.Model.fit``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from payload.config import ClassifierModel, DeepSetsModel, JobConfig
from payload.errors import InputCorruptError
from payload.ingest.h5layout import json_attr, names, object_mask, open_event_file, read_rows
from payload.learn.scaling import Scaler, outlier_mask
from payload.learn.splits import TEST, TRAIN, assign, base_name, file_key, part


@dataclass
class Block:
    """Selected, scaled events of one contiguous range of an event file."""

    inputs: dict[str, np.ndarray]  # objects, mask (and events when configured)
    weights: np.ndarray
    rows: np.ndarray  # row numbers in the event file
    raw_objects: np.ndarray  # unscaled, for plots of input features
    n_objects: np.ndarray
    events: np.ndarray  # unscaled event features
    spectators: np.ndarray
    entry: np.ndarray
    file_index: np.ndarray
    split: np.ndarray
    outlier: np.ndarray  # fails the outlier cuts (kept only when not dropped)

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, index: np.ndarray | slice) -> Block:
        """Rows by index array (a copy) or slice (views, no copy)."""
        return Block({k: v[index] for k, v in self.inputs.items()}, *(getattr(self, f)[index] for f in _ROW_FIELDS))


_ROW_FIELDS = (
    "weights",
    "rows",
    "raw_objects",
    "n_objects",
    "events",
    "spectators",
    "entry",
    "file_index",
    "split",
    "outlier",
)


def concat(blocks: list[Block]) -> Block:
    return Block(
        {k: np.concatenate([b.inputs[k] for b in blocks]) for k in blocks[0].inputs},
        *(np.concatenate([getattr(b, f) for b in blocks]) for f in _ROW_FIELDS),
    )


class EventSource:
    """One event file, read block by block, filtered to some splits and scaled."""

    def __init__(self, path: str | Path, config: JobConfig, scaler: Scaler | None, trained_on: set[str] | None = None):
        """``trained_on``: base names of the files a model was trained on, when applying it; events of
        any other file are all test events (the model never saw them)."""
        self.path = Path(path)
        self.config = config
        self.scaler = scaler
        with open_event_file(self.path) as f:
            self.size = len(f["weights"])
            self.object_names = names(f["objects"])
            self.max_objects = f["objects"].shape[1]
            self.event_names = names(f["events"])
            self.spectator_names = names(f["spectators"])
            self.source_files = json_attr(f, "source_files")
            # Tree entries per input (the friend trees' lengths), events included or not.
            self.source_entries = [int(s["entries"]) for s in json_attr(f, "provenance").get("sources", [])]
            self.stats = json_attr(f, "stats")
        self.file_keys = np.array([file_key(s) for s in self.source_files], dtype=np.int64)
        self.unseen = np.array(
            [trained_on is not None and base_name(s) not in trained_on for s in self.source_files], dtype=bool
        )
        # Network event inputs: the file's event features, then (model.high_level_inputs) the
        # high-level features built from the objects of each event.
        self.high_level = None
        if isinstance(config.model, ClassifierModel) and config.model.high_level_inputs:
            from payload.learn.highlevel import HighLevel

            self.high_level = HighLevel(config, self.object_names, [], [])
        self.network_event_names = self.event_names + (self.high_level.object_names_ if self.high_level else [])
        self.use_events = bool(self.network_event_names)
        # Observables of the decorrelation penalty: (spectator or event, column) each.
        wanted = config.training.decorrelation.features if config.training.decorrelation else []
        self.decorrelate = [
            ("spectator", self.spectator_names.index(n))
            if n in self.spectator_names
            else ("event", self.event_names.index(n))
            for n in wanted
        ]
        self._file = None
        self._inputs_path: Path | None = None
        self._inputs: Any = None  # h5py.File, opened on first use

    def use_inputs(self, path: Path) -> None:
        """Read the scaled network inputs from ``path`` (``payload.learn.inputcache``, written for this
        file and scaler) instead of computing them block by block."""
        import h5py

        with h5py.File(path, "r") as f:
            if int(f.attrs.get("rows", -1)) != self.size or any(len(f[k]) != self.size for k in f):
                raise InputCorruptError(f"network inputs {path}: not {self.size} rows as {self.path}; delete it")
        self._inputs_path = path

    def _cached(self, start: int, stop: int) -> dict[str, np.ndarray] | None:
        if self._inputs_path is None:
            return None
        if self._inputs is None:
            import h5py

            self._inputs = h5py.File(self._inputs_path, "r")
        f = self._inputs
        return {name: read_rows(f[name], start, stop) for name in CACHED if name in f}

    def _h5(self):
        if self._file is None:
            self._file = open_event_file(self.path)
        return self._file

    def close(self) -> None:
        for f in (self._file, self._inputs):
            if f is not None:
                f.close()
        self._file = self._inputs = None

    def block_ranges(self) -> list[tuple[int, int]]:
        step = self.config.training.block_size
        return [(a, min(a + step, self.size)) for a in range(0, self.size, step)]

    def read(
        self,
        start: int,
        stop: int,
        splits: tuple[int, ...] | None,
        drop_outliers: bool = True,
        half: int | None = None,
        leave_out: tuple[int, int] | None = None,
    ) -> Block:
        """Events of rows [start, stop) in ``splits`` (all when None); ``half`` (0 or 1) further keeps
        one hash-defined half of them, for checks trained and tested on disjoint halves;
        ``leave_out`` (parts, part) drops the training events of one part (a cross-fit member)."""
        f = self._h5()
        objects = read_rows(f["objects"], start, stop)
        n_objects = read_rows(f["n_objects"], start, stop)
        events = read_rows(f["events"], start, stop)
        entry = read_rows(f["entry"], start, stop)
        file_index = read_rows(f["file_index"], start, stop)
        sc = self.config.split
        split = assign(entry, self.file_keys[file_index], sc.seed, sc.train, sc.validation, sc.folds, sc.fold)
        split[self.unseen[file_index]] = TEST
        keep = np.ones(len(entry), dtype=bool) if splits is None else np.isin(split, splits)
        if half is not None:
            halves = assign(entry, self.file_keys[file_index], sc.seed + 1, 0.5, 0.0)
            keep &= (halves == 0) == (half == 0)
        if leave_out is not None:
            keep &= ~(
                (split == TRAIN) & (part(entry, self.file_keys[file_index], sc.seed, leave_out[0]) == leave_out[1])
            )
        inlier = outlier_mask(objects, n_objects, self.object_names, self.config.scaling.outliers)
        if drop_outliers:
            keep &= inlier
        index = np.flatnonzero(keep)
        objects, n_objects, events = objects[index], n_objects[index], events[index]
        spectators = read_rows(f["spectators"], start, stop)[index]
        inputs: dict[str, np.ndarray] = {}
        if self.scaler is not None:
            cached = self._cached(start, stop)
            inputs["objects"] = (
                self.scaler.apply_objects(objects, n_objects) if cached is None else cached["objects"][index]
            )
            inputs["mask"] = object_mask(n_objects, objects.shape[1]).astype(np.float32)
            if self.use_events:
                inputs["events"] = (
                    self.scaler.apply_events(self.network_events(objects, n_objects, events))
                    if cached is None
                    else cached["events"][index]
                )
            if self.decorrelate:
                inputs["decorrelate"] = np.stack(
                    [spectators[:, i] if kind == "spectator" else events[:, i] for kind, i in self.decorrelate], axis=1
                ).astype(np.float32)
        return Block(
            inputs,
            read_rows(f["weights"], start, stop)[index],
            start + index,
            objects,
            n_objects,
            events,
            spectators,
            entry[index],
            file_index[index],
            split[index],
            ~inlier[index],
        )

    def network_events(self, objects: np.ndarray, n_objects: np.ndarray, events: np.ndarray) -> np.ndarray:
        """The raw (unscaled) event inputs of the network, named ``network_event_names``."""
        if self.high_level is None:
            return events
        return np.concatenate([events, self.high_level.object_columns(objects, n_objects)], axis=1)

    def iterate(self, splits: tuple[int, ...] | None, drop_outliers: bool = True) -> Iterator[Block]:
        """Every selected event once, in file order."""
        for a, b in self.block_ranges():
            block = self.read(a, b, splits, drop_outliers)
            if len(block):
                yield block


def training_weights(block: Block, config: JobConfig, class_factor: float) -> np.ndarray:
    w = block.weights.astype(np.float32) if config.training.use_weights else np.ones(len(block), np.float32)
    mode = config.training.negative_weights
    if mode == "abs":
        w = np.abs(w)
    elif mode == "zero":
        w = np.maximum(w, 0)
    return w * np.float32(class_factor)


Batch = tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]  # (x, y, sample weight); maybe stacked

#: Batches of one multiplicity handed on together when bucketing: few hand-offs, steps well mixed.
BUCKET_PIECE = 8

#: The network inputs ``payload.learn.inputcache`` computes once per job (the scaling and the
#: high-level features, most of a stream's work); the mask and decorrelation inputs are cheap.
CACHED = ("objects", "events")

#: The inputs with an object-slot axis (right after the row axes).
SLOTTED = ("objects", "mask")

#: Trimmed object arrays keep a multiple of this many slots: few distinct shapes, so few retracings.
TRIM_STEP = 8


def slots_needed(mask: np.ndarray) -> np.ndarray:
    """Per event of ``mask`` (..., slots): the slots that hold its real objects, rounded up to TRIM_STEP."""
    real = mask.sum(axis=-1).astype(np.int64)
    return np.minimum(mask.shape[-1], np.maximum(TRIM_STEP, -(-real // TRIM_STEP) * TRIM_STEP))


def cut_padding(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs with the padded object slots beyond the last real object of any event cut away (views).
    Real objects come first in every event, so nothing real is lost."""
    if "mask" not in inputs:
        return inputs
    mask = inputs["mask"]
    keep = int(slots_needed(mask).max()) if mask.size else min(mask.shape[-1], TRIM_STEP)
    if keep == mask.shape[-1]:
        return inputs
    return cut_slots(inputs, keep)


def cut_slots(inputs: dict[str, np.ndarray], slots: int, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``inputs`` with the objects and mask cut to their first ``slots`` slots and, given ``rows``,
    only those rows of the leading axis (one copy of what is kept; views without ``rows``)."""
    first = slice(None) if rows is None else rows
    out = {k: v[first] for k, v in inputs.items() if k not in SLOTTED}
    out["mask"] = inputs["mask"][first, ..., :slots]
    out["objects"] = inputs["objects"][first, ..., :slots, :]
    return out


def bucket_pieces(group: Batch, rng: np.random.Generator, piece: int) -> list[Batch]:
    """A stacked group of batches as pieces of at most ``piece`` batches that need the same number of
    slots, each cut to it; the pieces in random order, so that steps do not run from the emptiest
    batches to the fullest."""
    x, y, w = group
    slots = slots_needed(x["mask"]).max(axis=-1)  # per batch: what its fullest event needs
    pieces = []
    for s in np.unique(slots):
        batches = np.flatnonzero(slots == s)
        batches = batches[rng.permutation(len(batches))]
        for start in range(0, len(batches), piece):
            index = np.sort(batches[start : start + piece])
            pieces.append((cut_slots(x, int(s), index), y[index], w[index]))
    return [pieces[i] for i in rng.permutation(len(pieces))]


def _by_multiplicity(group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A stacked group (batches, rows, ...) with its rows dealt into the batches by the slots their
    multiplicity needs (multiples of TRIM_STEP).  Within the events that need the same slots, the
    classes are interleaved in proportion, so every batch holds them as they come at those
    multiplicities, exactly, as an unbucketed batch holds them overall.  Both matter where the
    multiplicity is what separates the classes (measured on the 200k seed-000 job): batches sorted
    finer hold nothing to learn it from, and batches whose class shares swing by a few percent from
    step to step pull the network's output back and forth by more than the signal it learns."""
    shape = group["mask"].shape[:2]
    needs = slots_needed(group["mask"]).ravel()
    label = group["label"].ravel()
    place = np.empty(len(label))
    for slots in np.unique(needs):
        for c in np.unique(label):
            rows = np.flatnonzero((needs == slots) & (label == c))  # already in shuffled order
            place[rows] = slots + (np.arange(len(rows)) + 0.5) / len(rows)
    order = np.argsort(place, kind="stable")
    return {k: v.reshape(-1, *v.shape[2:])[order].reshape(*shape, *v.shape[2:]) for k, v in group.items()}


def flat_inputs(inputs: dict[str, np.ndarray], level: str) -> np.ndarray:
    """What an autoencoder reconstructs: the objects (object level) or, per event, the padded objects
    flattened row-major followed by the event features (event level)."""
    if level == "object":
        return inputs["objects"]
    parts = [inputs["objects"].reshape(len(inputs["objects"]), -1)]
    if "events" in inputs:
        parts.append(inputs["events"])
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


Rows = dict[str, np.ndarray]  # network inputs plus "weight": all a training batch needs


def _rows_of(block: Block, config: JobConfig, narrow: bool) -> Rows:
    """A block's training rows; ``narrow``: only the slots its events need (views), so that shuffling
    and batching copy a few slots per event instead of every padded one."""
    return {**(cut_padding(block.inputs) if narrow else block.inputs), "weight": training_weights(block, config, 1.0)}


def pad_slots(a: np.ndarray, slot_axis: int, width: int) -> np.ndarray:
    """``a`` with its object-slot axis zero-padded to ``width`` slots (itself when that wide)."""
    if a.shape[slot_axis] == width:
        return a
    pad = [(0, 0)] * a.ndim
    pad[slot_axis] = (0, width - a.shape[slot_axis])
    return np.pad(a, pad)


def join(arrays: list[np.ndarray], axis: int, slot_axis: int | None = None) -> np.ndarray:
    """``np.concatenate`` along ``axis``; arrays cut to different numbers of slots (``slot_axis``) are
    zero-padded to the widest, as padding is."""
    if slot_axis is not None:
        width = max(a.shape[slot_axis] for a in arrays)
        arrays = [pad_slots(a, slot_axis, width) for a in arrays]
    return np.concatenate(arrays, axis=axis)


def _cat(parts: list[Rows]) -> Rows:
    if len(parts) == 1:
        return parts[0]
    return {k: join([p[k] for p in parts], 0, 1 if k in SLOTTED else None) for k in parts[0]}


class _ShuffledRows:
    """Endless rows of one source's split: block order reshuffled every pass, rows shuffled
    within a buffer of ``shuffle_blocks`` blocks.  Only network inputs and weights are kept, and
    batches are slices of the shuffled buffer: one copy per event per pass."""

    def __init__(
        self,
        source: EventSource,
        splits: tuple[int, ...],
        rng: np.random.Generator,
        buffer_blocks: int,
        half: int | None = None,
        leave_out: tuple[int, int] | None = None,
        narrow: bool = False,
        blocks: list[int] | None = None,
    ):
        self.source, self.splits, self.rng, self.buffer_blocks, self.half = source, splits, rng, buffer_blocks, half
        self.leave_out, self.narrow = leave_out, narrow
        every = source.block_ranges()
        self.ranges = every if blocks is None else [every[i] for i in blocks]
        self._pending: Rows | None = None
        self._size = self._offset = 0
        self._blocks: Iterator[Block] = iter(())

    def _fill(self, need: int | None) -> Rows:
        """The next shuffled buffer: up to ``buffer_blocks`` blocks, never past the end of a pass
        (so no event appears twice in one buffer); a new pass reshuffles the block order.  Reading
        stops once ``need`` rows are in: an epoch that ends a few rows into a new pass reads one
        block, not a whole buffer it then throws away."""
        config = self.source.config
        for _ in range(2):
            rows, have = [], 0
            for count, block in enumerate(self._blocks, 1):
                if len(block):
                    rows.append(_rows_of(block, config, self.narrow))
                    have += len(block)
                if count == self.buffer_blocks or (need is not None and have >= need):
                    break
            if rows:
                buf = _cat(rows)
                order = self.rng.permutation(len(buf["weight"]))
                return {k: v[order] for k, v in buf.items()}
            ranges = self.ranges
            order = self.rng.permutation(len(ranges))
            self._blocks = (
                self.source.read(*ranges[i], self.splits, half=self.half, leave_out=self.leave_out)  # type: ignore[call-arg,misc]
                for i in order
            )
        raise RuntimeError(f"{self.source.path}: no events in the requested split")

    def take(self, n: int, remaining: int | None = None) -> Rows:
        """The next ``n`` rows; ``remaining`` is how many rows the current epoch still takes (this
        call's included), which bounds what a refill reads."""
        parts, have = [], 0
        while have < n:
            if self._pending is None or self._offset == self._size:
                need = None if remaining is None or remaining - have <= 0 else remaining - have
                self._pending, self._offset = self._fill(need), 0
                self._size = len(self._pending["weight"])
            k = min(n - have, self._size - self._offset)
            parts.append({key: v[self._offset : self._offset + k] for key, v in self._pending.items()})
            self._offset += k
            have += k
        return _cat(parts)


class TrainingStream:
    """Batches mixing the classes in proportion, endless, for ``fit(steps_per_epoch=...)``.

    ``extra_weight(inputs, label)`` multiplies the weights of a class's rows (the closure check uses it
    to apply NN weights).  Rows within a batch need no shuffling: the loss is a sum over the batch.
    With ``augment`` every event's objects get a random symmetry transformation.  For ``autoencode``
    the target is the input itself, weighted per real object at object level.
    """

    def __init__(
        self,
        sources: list[tuple[EventSource, int]],
        counts: list[int],
        sumw: list[float],
        config: JobConfig,
        splits: tuple[int, ...],
        seed: int,
        shuffle: bool = True,
        extra_weight: Callable[[dict[str, np.ndarray], int], np.ndarray] | None = None,
        half: int | None = None,
        augment: bool = False,
        leave_out: tuple[int, int] | None = None,
        blocks: list[list[int]] | None = None,
    ):
        """``blocks``: per source, the indices of the blocks (``EventSource.block_ranges``) to read,
        when not all; ``counts`` and ``sumw`` are then of those blocks."""
        total = sum(counts)
        bs = config.training.batch_size
        self.steps = max(1, int(np.ceil(total / bs)))
        self.per_batch = [max(1, round(bs * c / total)) for c in counts]
        # The batch holds exactly batch_size rows when the proportions allow: devices split it evenly.
        self.per_batch[-1] = max(1, bs - sum(self.per_batch[:-1]))
        self.taken = [0] * len(counts)  # rows taken from each class in this epoch
        # Class balancing: each class carries the same total weight (mean weight about 1).
        self.factors = [
            (total / len(counts)) / max(abs(s), 1e-12) if config.training.class_balance else 1.0 for s in sumw
        ]
        #: Whether ``groups(..., trim=True)`` may cut padding (the model takes any number of slots).
        self.trimmable = config.training.trim_padding and isinstance(config.model, DeepSetsModel)
        #: Slots of the padded layout, which untrimmed groups keep.
        self.slots = sources[0][0].max_objects
        rng = np.random.default_rng(seed)
        buffer_blocks = config.training.shuffle_blocks if shuffle else 1
        self.rows = [
            _ShuffledRows(
                src,
                splits,
                np.random.default_rng(rng.integers(1 << 62)),
                buffer_blocks,
                half,
                leave_out,
                narrow=self.trimmable,
                blocks=None if blocks is None else blocks[i],
            )
            for i, (src, _) in enumerate(sources)
        ]
        self.labels = [label for _, label in sources]
        self.extra_weight = extra_weight
        self.rng = np.random.default_rng(rng.integers(1 << 62))
        self.augmenter = None
        if augment and config.training.augment:
            from payload.learn.augment import Augmenter

            self.augmenter = Augmenter(config, sources[0][0].scaler)  # type: ignore[arg-type]
        self.level = config.autoencoder.level if config.task == "autoencode" else None
        #: Whether such groups are ordered by multiplicity, to be cut batch by batch (``pieces``).
        self.bucketed = self.trimmable and config.training.bucket_by_multiplicity
        self.bucket_rng = np.random.default_rng(rng.integers(1 << 62))

    def pieces(self, group: Batch) -> list[Batch]:
        """What ``groups(..., trim=True)`` gave, as it is handed on: the group itself, or when
        ``bucketed`` its pieces of ``BUCKET_PIECE`` batches, each cut to its own multiplicity."""
        return bucket_pieces(group, self.bucket_rng, BUCKET_PIECE) if self.bucketed else [group]

    def batches(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]:
        """Endless batches (x, y, sample weight)."""
        for x, y, w in self.groups(1):
            yield {k: v[0] for k, v in x.items()}, y[0], w[0]

    def groups(self, size: int, trim: bool = False) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]:
        """Endless groups of ``size`` consecutive batches stacked on a leading axis: the same batches
        as ``batches()`` (for the same seed and no augmentation), built with one copy per group.
        With ``trim`` (for a consumer that declares the slot axis variable, as ``payload.learn.feed`` does
        for tf.data) the padding beyond the group's largest multiplicity is cut away, or, when
        ``bucketed``, the group's rows are dealt into its batches by the slots they need
        (``_by_multiplicity``) for ``pieces`` to cut batch by batch; plain batches keep every slot,
        since Keras fixes a generator's shapes from its first two batches."""
        while True:
            parts, labels = [], []
            for c, (rows, n, label, factor) in enumerate(zip(self.rows, self.per_batch, self.labels, self.factors)):
                part = rows.take(size * n, self.steps * n - self.taken[c])
                self.taken[c] += size * n
                weight = part["weight"] * np.float32(factor)
                if self.extra_weight is not None:
                    weight = weight * self.extra_weight({k: v for k, v in part.items() if k != "weight"}, label)
                part["weight"] = weight
                parts.append({k: v.reshape(size, n, *v.shape[1:]) for k, v in part.items()})
                labels.append(np.full((size, n), label, dtype=np.float32))
            # Batch i takes the next per_batch[k] rows of every class k, as consecutive batches would.
            group = {k: join([p[k] for p in parts], 1, 2 if k in SLOTTED else None) for k in parts[0]}
            group["label"] = np.concatenate(labels, axis=1)
            if trim and self.bucketed:
                group = _by_multiplicity(group)
            elif trim and self.trimmable:
                group = cut_padding(group)
            elif self.trimmable:  # the rows were read narrow: back to every slot
                group |= {k: pad_slots(group[k], 2, self.slots) for k in SLOTTED}
            y = group.pop("label")
            weight = group.pop("weight")
            rows_shape = (size * weight.shape[1],)
            if self.augmenter is not None:
                objects = group["objects"].reshape(*rows_shape, *group["objects"].shape[2:])
                mask = group["mask"].reshape(*rows_shape, *group["mask"].shape[2:])
                group["objects"] = self.augmenter.random(objects, mask, self.rng).reshape(group["objects"].shape)
            if self.level is None:
                yield group, y[..., None], weight
            elif self.level == "object":
                yield group, group["objects"], weight[..., None] * group["mask"]
            else:
                flat = flat_inputs({k: v.reshape(*rows_shape, *v.shape[2:]) for k, v in group.items()}, self.level)
                yield group, flat.reshape(size, -1, flat.shape[-1]), weight
