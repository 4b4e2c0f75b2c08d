"""Evaluation: per-event predictions and NN weights for every event, metrics on the test split,
closure of the reweighting, and the fresh-classifier check.  Everything streams block by block.

Predictions file (``predictions.h5``), one row per converted event of both samples:
``sample`` (0 primary, 1 secondary), ``file_index`` (into the ``source_files`` JSON attribute, a
dict sample -> list; ``source_entries`` the same with each input tree's entry count), ``entry`` (tree entry), ``split`` (0 train, 1 validation, 2 test),
``outlier`` (dropped from training by the outlier cuts), ``label``, ``score`` (the network output),
``weight`` (event weight) and ``nn_weight``: for ``reweight``, p/(1-p) for primary events, clipped
to [1/max_weight, max_weight] and normalised so the primary's weighted sum is unchanged; 1 for
secondary and outlier events.  With the baseline on, ``baseline_weight``: the GBReweighter's
weight, normalised the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from payload.atomic import atomic_path, hdf5_writing
from payload.config import JobConfig, embedded
from payload.ingest.h5layout import object_mask
from payload.learn.dataset import Block, EventSource, cut_slots, slots_needed
from payload.learn.models import input_names
from payload.learn.splits import TEST
from payload.progress import Progress, log
from payload.results.metrics import BinaryScores, WeightedHist, compare, distance_correlation

PRED_FIELDS = {
    "sample": np.int8,
    "file_index": np.int32,
    "entry": np.int64,
    "split": np.int8,
    "outlier": np.bool_,
    "label": np.int8,
    "score": np.float32,
    "weight": np.float32,
    "nn_weight": np.float32,
}


#: Rows per prediction call where every new input shape is compiled (JAX, even op by op; XLA): this
#: many rows, or the next power of two of what is left, padded with empty events, so a few programs
#: serve the whole job instead of one per block's group (JAX on a CPU, 393k events: 8 s against 128 s).
PREDICT_ROWS = 8192


def predict(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Scores of a block of events.  A model that takes any number of object slots gets the events
    in groups by the slots their multiplicity needs, each group cut to them (most events of a block
    need half the slots of its fullest)."""
    wanted = {k: inputs[k] for k in input_names(model)}
    if not variable_objects(model):
        return _scores(model, wanted)
    needs = slots_needed(wanted["mask"])
    out = np.empty(len(needs))
    for slots in np.unique(needs):
        rows = np.flatnonzero(needs == slots)
        out[rows] = _scores(model, cut_slots(wanted, slots, rows))
    return out


def _scores(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import keras

    if not (model.jit_compile or keras.backend.backend() == "jax"):
        return np.asarray(model.predict_on_batch(inputs), dtype=np.float64).ravel()
    n = len(next(iter(inputs.values())))
    out = np.empty(n)
    for start in range(0, n, PREDICT_ROWS):
        part = {k: v[start : start + PREDICT_ROWS] for k, v in inputs.items()}
        rows = min(PREDICT_ROWS, n - start)
        shape = max(256, 1 << (rows - 1).bit_length())
        if shape > rows:
            part = {k: np.concatenate([v, np.zeros((shape - rows, *v.shape[1:]), v.dtype)]) for k, v in part.items()}
        out[start : start + rows] = np.asarray(model.predict_on_batch(part), dtype=np.float64).ravel()[:rows]
    return out


def variable_objects(model) -> bool:
    """Whether the model takes any number of object slots (its padding can be cut away)."""
    shapes = {name: t.shape for name, t in zip(input_names(model), model.inputs)}
    return "objects" in shapes and "mask" in shapes and shapes["objects"][1] is None


def make_predictor(config: JobConfig, model, scaler) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """Scores of a batch of inputs; with test-time augmentation, the mean over the transformed copies."""
    rotations = config.evaluation.test_time_augment
    if not rotations:
        return lambda inputs: predict(model, inputs)
    from payload.learn.augment import Augmenter

    augmenter = Augmenter(config, scaler)
    group = augmenter.group(rotations)

    def averaged(inputs: dict[str, np.ndarray]) -> np.ndarray:
        total = np.zeros(len(inputs["objects"]))
        for g in group:
            total += predict(model, {**inputs, "objects": augmenter.transformed(inputs["objects"], inputs["mask"], *g)})
        return total / len(group)

    return averaged


#: Test events kept for the distance correlation of the score with each observable (O(n^2) memory).
DCORR_EVENTS = 4000
#: Hash seed offset that draws the closure sample's test events (apart from the split's own hash).
_CLOSURE_DRAW = 5


def odds(scores: np.ndarray) -> np.ndarray:
    p = np.clip(scores, 1e-7, 1 - 1e-7)
    return p / (1 - p)


def nn_weight(scores: np.ndarray, max_weight: float) -> np.ndarray:
    """p/(1-p), clipped to [1/max_weight, max_weight] (before normalisation)."""
    return np.clip(odds(scores), 1.0 / max_weight, max_weight)


class Scorer:
    """The network's score for every event of a block.  With cross-fitted members (``model.ensemble``
    with ``ensemble_split: folds``), a training-split event is scored by the one member that left its
    part out, every other event by the average of all members, so no event is weighted by a model
    that trained on it."""

    def __init__(self, config: JobConfig, model, scaler, members: list | None = None):
        self.config = config
        self.model = make_predictor(config, model, scaler)
        self.members = [make_predictor(config, m, scaler) for m in members] if members else None

    def __call__(self, block: Block, source: EventSource) -> np.ndarray:
        if not self.members:
            return self.model(block.inputs)
        from payload.learn.splits import TRAIN, part

        each = np.stack([m(block.inputs) for m in self.members])
        out = each.mean(axis=0)
        k = len(self.members)
        owner = part(block.entry, source.file_keys[block.file_index], self.config.split.seed, k)
        train = block.split == TRAIN
        out[train] = each[owner[train], np.flatnonzero(train)]
        return out


@dataclass
class Variable:
    """An object-level closure variable: one feature of all real objects of a collection (``type``
    code ``code``; every object when None), streamed over every test event."""

    name: str
    index: int
    code: int | None
    edges: np.ndarray
    hists: dict[str, WeightedHist] = field(default_factory=dict)

    def values(self, block: Block, type_index: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Values and per-value event index (objects repeat their event's weight)."""
        real = object_mask(block.n_objects, block.raw_objects.shape[1])
        if self.code is not None:
            real &= np.rint(block.raw_objects[:, :, type_index]) == self.code
        return block.raw_objects[:, :, self.index][real], np.nonzero(real)[0]


def object_variables(config: JobConfig, sources: list[tuple[EventSource, int]], bins: int) -> list[Variable]:
    """Per collection and object feature, with axis ranges from the data (the 0.1 % and 99.9 %
    quantiles of the first test events of both samples); constant features are left out."""
    from payload.config import TYPE_FEATURE

    first = sources[0][0]
    names = first.object_names
    type_index = names.index(TYPE_FEATURE) if TYPE_FEATURE in names else None
    groups = (
        [(c.name, c.type_code) for c in config.data.collections]
        if type_index is not None and len(config.data.collections) > 1
        else [("objects", None)]
    )
    skip = set(config.scaling.passthrough) | {TYPE_FEATURE} | embedded(config)
    blocks = [source.read(*r, (TEST,)) for source, _ in sources for r in source.block_ranges()[:2]]
    out = []
    for group, code in groups:
        for j, feature in enumerate(names):
            if feature in skip:
                continue
            probe = Variable(f"{group}_{feature}", j, code, np.zeros(2))
            values = np.concatenate([probe.values(b, type_index)[0] for b in blocks]) if blocks else np.zeros(0)
            values = values[np.isfinite(values)]
            if values.size < 2 or values.min() == values.max():
                continue
            lo, hi = np.quantile(values, [0.001, 0.999])
            if not hi > lo:
                lo, hi = values.min(), values.max()
            probe.edges = np.linspace(lo, hi, bins + 1)
            out.append(probe)
    return out


class PredictionWriter:
    """``PRED_FIELDS`` per event, plus ``extra`` fields: name -> (shape of one row, dtype)."""

    def __init__(self, path: Path, extra: dict[str, tuple[tuple[int, ...], Any]] | None = None):
        self.file = h5py.File(path, "w")
        self.size = 0
        self.fields = {name: ((), dtype) for name, dtype in PRED_FIELDS.items()} | (extra or {})
        # Dataset handles are kept for the file's life: a handle opened per write is closed (and its
        # cache flushed) when it goes out of scope, where a full disk could not be reported.
        self.datasets = {}
        for name, (shape, dtype) in self.fields.items():
            rows = max(1, 65536 // max(1, int(np.prod(shape))))
            self.datasets[name] = self.file.create_dataset(
                name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=(rows, *shape)
            )

    def append(self, columns: dict[str, np.ndarray]) -> None:
        n = len(columns["entry"])
        for name, ds in self.datasets.items():
            ds.resize(self.size + n, axis=0)
            ds[self.size :] = columns[name]
        self.size += n

    def describe_sources(self, sources: list[EventSource]) -> None:
        """The inputs of each sample and their tree entry counts, which the friend trees need."""
        self.file.attrs["source_files"] = json.dumps({str(i): s.source_files for i, s in enumerate(sources)})
        self.file.attrs["source_entries"] = json.dumps({str(i): s.source_entries for i, s in enumerate(sources)})

    def scale_column(self, name: str, factor: float, sample: int = 0, step: int = 1 << 20) -> None:
        """Normalise the primary's weights in column ``name`` in place (outliers keep 1), streaming."""
        d = self.datasets
        for a in range(0, self.size, step):
            s = d["sample"][a : a + step]
            w = d[name][a : a + step]
            move = (s == sample) & ~d["outlier"][a : a + step]
            w[move] *= factor
            d[name][a : a + step] = w


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    scores: BinaryScores
    variables: list[Variable]
    weight_hists: dict[str, tuple[WeightedHist, float]] = field(default_factory=dict)  # weighting: (hist, factor)
    event_hists: dict[str, dict[str, WeightedHist]] = field(default_factory=dict)


class _Weighting:
    """Running sums of one weighting of the primary (NN or baseline): its normalisation and clipping."""

    def __init__(self, max_weight: float | None):
        self.max_weight = max_weight
        self.sum_w = self.sum_wf = 0.0
        self.clipped = self.counted = 0
        edges = np.geomspace(1.0 / max_weight, max_weight, 61) if max_weight else np.geomspace(1e-2, 1e2, 61)
        self.hist = WeightedHist(edges)

    def factors(self, ratio: np.ndarray, outlier: np.ndarray, w: np.ndarray) -> np.ndarray:
        f = ratio
        if self.max_weight:
            f = np.clip(ratio, 1.0 / self.max_weight, self.max_weight)
            self.clipped += int(((ratio > self.max_weight) | (ratio < 1 / self.max_weight))[~outlier].sum())
        f = np.where(outlier, 1.0, f)
        self.counted += int((~outlier).sum())
        self.sum_w += float(w[~outlier].sum())
        self.sum_wf += float((w * f)[~outlier].sum())
        return f

    @property
    def normalisation(self) -> float:
        return self.sum_w / self.sum_wf if self.sum_wf > 0 else 1.0


class _TestEvents:
    """What the test events (outliers aside) of a labelled job are summed into while the predictions
    are written: the binary scores; for a reweighting, the per-object closure histograms streamed over
    all of them and the bounded closure sample; for a classification, rows for distance correlations."""

    def __init__(self, config: JobConfig, sources: list[tuple[EventSource, int]], weightings: dict[str, _Weighting]):
        from payload.learn.highlevel import HighLevel
        from payload.results.closure import ClosureSample

        self.config, self.sources, self.weightings = config, sources, weightings
        # Labels are known only when both samples are given; one sample gets predictions and weights alone.
        self.labelled = len(sources) == 2
        self.check = config.task == "reweight" and self.labelled
        first = sources[0][0]
        self.scores = BinaryScores()
        self.variables = object_variables(config, sources, config.evaluation.bins) if self.check else []
        self.high_level = HighLevel(config, first.object_names, first.event_names, first.spectator_names)
        self.sample = ClosureSample(self.high_level.names, self.high_level.integer)
        # Expected test events per sample, which sets the rate that keeps about closure_events of them.
        self.expected = [s.size * (1.0 if s.unseen.all() else config.split.test) for s, _ in sources]
        self.observables = first.spectator_names + first.event_names
        # Rows (score, observables...) of test events, the same number from each sample.
        self.kept: list[list[np.ndarray]] = [[] for _ in sources]
        self.type_index = first.object_names.index("type") if "type" in first.object_names else None

    def add(self, index: int, block: Block, p: np.ndarray, w: np.ndarray, factors: dict, features) -> None:
        source, label = self.sources[index]
        test = (block.split == TEST) & ~block.outlier
        if not self.labelled or not test.any():
            return
        self.scores.fill(p[test], np.full(int(test.sum()), label), w[test])
        if self.config.task == "classify" and sum(map(len, self.kept[index])) < DCORR_EVENTS // len(self.sources):
            self.kept[index].append(np.column_stack([p, block.spectators, block.events])[test])
        if not self.check:
            return
        from payload.learn.splits import uniform

        rate = min(1.0, self.config.evaluation.closure_events / max(self.expected[index], 1))
        u = uniform(block.entry, source.file_keys[block.file_index], self.config.split.seed + _CLOSURE_DRAW)
        drawn = test & (u < rate)
        self.sample.add(
            index, features[drawn], w[drawn], {k: f[drawn] for k, f in factors.items()} if index == 0 else {}
        )
        if index == 0:
            for key, weighting in self.weightings.items():
                weighting.hist.fill(factors[key][test], w[test])
        sub = block.take(np.flatnonzero(test))
        # Each histogram's weight per test event, computed once per block for every variable.
        if index:
            event_weight = {"secondary": w[test]}
        else:
            event_weight = {"unweighted": w[test]} | {k: (w * factors[k])[test] for k in self.weightings}
        for v in self.variables:
            hists = {k: v.hists.setdefault(k, WeightedHist(v.edges)) for k in event_weight}
            values, event, count = next(iter(hists.values())).per_event(*v.values(sub, self.type_index))
            for key, h in hists.items():
                h.fill(values, event_weight[key][event] * count)

    def metrics(self) -> dict[str, Any]:
        if not self.labelled:
            return {}
        scores, config = self.scores, self.config
        metrics: dict[str, Any] = {"test": scores.summary(), "calibration": scores.calibration()}
        if config.task == "classify":
            metrics["ams"] = scores.ams(config.evaluation.ams_b_r, 1.0 / config.split.test)
            if config.evaluation.speedup:
                metrics["speedup"] = scores.speedup(**config.evaluation.speedup.model_dump())
            if self.observables:
                per_sample = DCORR_EVENTS // len(self.sources)
                rows = np.concatenate([np.concatenate(k)[:per_sample] for k in self.kept if k])
                metrics["distance_correlation"] = {
                    name: distance_correlation(rows[:, 0], rows[:, 1 + i]) for i, name in enumerate(self.observables)
                }
        return metrics


def _columns(block: Block, index: int, label: int, p: np.ndarray, w: np.ndarray, factors: dict) -> dict:
    """One block's rows of predictions.h5 (``PRED_FIELDS``)."""
    columns = {
        "sample": np.full(len(block), index),
        "file_index": block.file_index,
        "entry": block.entry,
        "split": block.split,
        "outlier": block.outlier,
        "label": np.full(len(block), label),
        "score": p,
        "weight": w,
        "nn_weight": factors.get("nn", np.ones(len(block))),
    }
    if "baseline" in factors:
        columns["baseline_weight"] = factors["baseline"]
    return columns


def _scored_on(sources: list[tuple[EventSource, int]]) -> str:
    if all(s.unseen.all() for s, _ in sources):
        return "every event of files the model never trained on"
    if not any(s.unseen.any() for s, _ in sources):
        return "the test split"
    unseen = {s.path.stem: int(s.unseen.sum()) for s, _ in sources}
    return f"every event of unseen files {unseen}, the test split of training files"


def _write_predictions(
    config: JobConfig,
    sources: list[tuple[EventSource, int]],
    scorer: Scorer,
    weightings: dict[str, _Weighting],
    baseline,
    test: _TestEvents,
    predictions: Path,
    progress: bool,
) -> int:
    """Score every event, block by block, into ``predictions`` (atomically) and ``test``; the events written."""
    extra: dict[str, tuple[tuple[int, ...], Any]] | None = (
        {"baseline_weight": ((), np.float32)} if "baseline" in weightings else None
    )
    bar = Progress(sum(s.size for s, _ in sources), "evaluate") if progress else None
    with atomic_path(predictions) as tmp:
        writer = PredictionWriter(tmp, extra)
        with hdf5_writing(writer.file, tmp):
            for index, (source, label) in enumerate(sources):
                for block in source.iterate(splits=None, drop_outliers=False):
                    if bar:
                        bar.update(len(block))
                    p = scorer(block, source)
                    w = block.weights.astype(np.float64)
                    features = test.high_level.compute(block) if test.check or "baseline" in weightings else None
                    factors = {k: np.ones(len(block)) for k in weightings}
                    if index == 0 and "nn" in weightings:
                        factors["nn"] = weightings["nn"].factors(odds(p), block.outlier, w)
                    if index == 0 and "baseline" in weightings:
                        factors["baseline"] = weightings["baseline"].factors(
                            baseline.factors(features), block.outlier, w
                        )
                    writer.append(_columns(block, index, label, p, w, factors))
                    test.add(index, block, p, w, factors, features)
            for key, weighting in weightings.items():
                writer.scale_column("nn_weight" if key == "nn" else "baseline_weight", weighting.normalisation)
            writer.describe_sources([s for s, _ in sources])
            writer.file.attrs["task"] = config.task
            writer.file.attrs["fields"] = __doc__
            size = writer.size
    if bar:
        bar.finish()
    return size


def evaluate(
    config: JobConfig,
    model,
    sources: list[tuple[EventSource, int]],
    predictions: Path,
    baseline=None,
    members: list | None = None,
    progress: bool = True,
) -> Evaluation:
    """Predict every event of every source, write ``predictions`` (atomically) and compute metrics.

    ``sources`` are (source, label) with the primary first; weights are reported for it.  For a
    labelled reweighting, the closure of the NN weights (and of the ``baseline``'s, a fitted
    ``payload.results.baseline.Baseline``) is measured on the test events: object-level histograms streamed
    over all of them, event-level tables and the independent test on a bounded sample.
    """
    ev = config.evaluation
    weightings = {"nn": _Weighting(ev.max_weight)} if config.task == "reweight" else {}
    if weightings and baseline is not None:
        weightings["baseline"] = _Weighting(None)
    test = _TestEvents(config, sources, weightings)
    scorer = Scorer(config, model, sources[0][0].scaler, members)
    size = _write_predictions(config, sources, scorer, weightings, baseline, test, predictions, progress)
    metrics: dict[str, Any] = {"events": size, "scored_on": _scored_on(sources), **test.metrics()}
    if "test" in metrics:
        log.info(
            "test AUC %.4f over %d events (%s)", metrics["test"]["auc"], metrics["test"]["events"], metrics["scored_on"]
        )
    if "nn" in weightings:
        nn = weightings["nn"]
        metrics["nn_weights"] = {
            "normalisation": nn.normalisation,
            "clipped_fraction": nn.clipped / max(nn.counted, 1),
            "max_weight": ev.max_weight,
        }
    evaluation = Evaluation(
        metrics, test.scores, test.variables, {k: (wt.hist, wt.normalisation) for k, wt in weightings.items()}
    )
    if test.check:
        _closure(config, evaluation, test.sample, weightings, baseline)
    return evaluation


def _closure(config: JobConfig, evaluation: Evaluation, sample, weightings: dict[str, _Weighting], baseline) -> None:
    """Closure metrics of every weighting on the test events (see ``payload.results.closure``), in metrics."""
    from payload.results.closure import against_baseline, event_level, independent_test, verdict, weight_diagnostics

    ev = config.evaluation
    metrics = evaluation.metrics
    for key, weighting in weightings.items():
        sample.normalise(key, weighting.normalisation)
        for v in evaluation.variables:
            if key in v.hists:
                v.hists[key] = v.hists[key].scaled(weighting.normalisation)
    _x0, w0, factors = sample.arrays(0)
    for key in weightings:
        diagnostics = weight_diagnostics(w0, factors[key]) if key in factors else {}
        target = metrics.setdefault("nn_weights" if key == "nn" else "baseline", {})
        target.update({f"test_{k}": v for k, v in diagnostics.items()})
    if baseline is not None:
        metrics["baseline"].update(
            {
                "method": "hep_ml GBReweighter",
                "trained_on": list(baseline.trained_on),
                "normalisation": weightings["baseline"].normalisation,
                "features": baseline.high_level.names,
            }
        )
    tables = event_level(sample, ev.closure_bins)
    evaluation.event_hists = tables.pop("hists")
    closure: dict[str, Any] = {
        "events": {"primary": len(w0), "secondary": len(sample.arrays(1)[1]), "cap_per_sample": ev.closure_events},
        "event_level": tables["variables"],
        "event_level_total": tables["total"],
    }
    closure["object_level"] = {
        v.name: {k: compare(h, v.hists["secondary"]) for k, h in v.hists.items() if k != "secondary"}
        for v in evaluation.variables
        if "secondary" in v.hists
    }
    test: dict[str, Any] = {}
    if ev.independent_test:
        log.info(
            "independent closure test: k-fold gradient-boosted classifier on %d + %d test events",
            closure["events"]["primary"],
            closure["events"]["secondary"],
        )
        test = independent_test(sample, ev.independent_folds, ev.permutations, config.training.seed)
        closure["independent_test"] = test
    messages = verdict(tables, test, "nn", "baseline" if baseline is not None else None, closure["object_level"])
    total = tables["total"]
    nn_result = test.get("results", {}).get("nn")
    closure["verdict"] = {
        "closed": not messages or all(m.startswith("the standard reweighter") for m in messages),
        "beats_baseline": (total["nn"]["chi2_ndf"] <= total["baseline"]["chi2_ndf"]) if "baseline" in total else None,
        "against_baseline": against_baseline(total),
        "messages": messages,
    }
    for line in _summary_lines(total, nn_result, test.get("results", {})):
        log.info("%s", line)
    for m in messages:
        log.warning("closure: %s", m)
    metrics["closure"] = closure


def _summary_lines(total: dict[str, Any], nn_result, results: dict[str, Any]) -> list[str]:
    names = [k for k in ("unweighted", "nn", "baseline") if k in total]
    lines = [
        "closure on test events (event-level, total chi2/ndf): "
        + ", ".join(f"{k} {total[k]['chi2_ndf']:.2f}" for k in names)
        + f" (ndf {total[names[0]]['ndf']})"
    ]
    if results:
        lines.append(
            "independent classifier AUC (0.5 = closed): "
            + ", ".join(f"{k} {r['auc']:.4f} (p {r['p']:.2g})" for k, r in results.items())
        )
    return lines


def closure_classifier(
    config: JobConfig, model, sources: list[tuple[EventSource, int]], tallies, factor: float
) -> float:
    """Train a fresh classifier on reweighted primary vs secondary (one half of the test split) and
    return its weighted AUC on the other half: 0.5 means the reweighting left nothing to learn."""
    import keras

    from payload.learn.feed import fit_input
    from payload.learn.models import build_model_for
    from payload.learn.train import compile_model, make_stream_factory

    max_w = config.evaluation.max_weight
    primary_label = sources[0][1]
    predictor = make_predictor(config, model, sources[0][0].scaler)

    def extra(inputs: dict[str, np.ndarray], label: int) -> np.ndarray:
        n = len(next(iter(inputs.values())))
        if label != primary_label:
            return np.ones(n, dtype=np.float32)
        return (nn_weight(predictor(inputs), max_w) * factor).astype(np.float32)

    seed = config.training.seed + 99
    keras.utils.set_random_seed(seed)
    streams = make_stream_factory(config, sources, tallies, (TEST,), seed, shuffle=True, extra_weight=extra, half=0)
    fresh = build_model_for(config, sources[0][0])
    epochs = config.evaluation.closure_epochs
    steps = streams(0).steps
    compile_model(fresh, config, steps, epochs)
    with fit_input(streams) as batches:
        fresh.fit(batches, steps_per_epoch=steps, epochs=epochs, verbose=0, shuffle=False)
    scores = BinaryScores()
    for source, label in sources:
        for a, b in source.block_ranges():
            block = source.read(a, b, (TEST,), half=1)
            if not len(block):
                continue
            w = block.weights.astype(np.float64)
            if label == primary_label:
                w = w * extra(block.inputs, label)
            scores.fill(predict(fresh, block.inputs), np.full(len(block), label), w)
    auc = scores.auc()
    log.info("closure classifier (reweighted primary vs secondary) AUC %.4f", auc)
    return auc
