"""Evaluation: per-event predictions and NN weights for every event, metrics on the test split,
closure of the reweighting, and the fresh-classifier check.  Everything streams block by block.

Predictions file (``predictions.h5``), one row per converted event of both samples:
``sample`` (0 primary, 1 secondary), ``file_index`` (into the ``source_files`` JSON attribute, a
dict sample -> list), ``entry`` (tree entry), ``split`` (0 train, 1 validation, 2 test),
``outlier`` (dropped from training by the outlier cuts), ``label``, ``score`` (the network output),
``weight`` (event weight) and ``nn_weight``: for ``reweight``, p/(1-p) for primary events, clipped
to [1/max_weight, max_weight] and normalised so the primary's weighted sum is unchanged; 1 for
secondary and outlier events.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from payload.atomic import atomic_path
from payload.config import JobConfig
from payload.dataset import Block, EventSource
from payload.h5layout import object_mask
from payload.metrics import BinaryScores, WeightedHist, chi2_ndf, distance_correlation, ks_distance
from payload.models import input_names
from payload.progress import log
from payload.splits import TEST

PRED_FIELDS = {"sample": np.int8, "file_index": np.int32, "entry": np.int64, "split": np.int8, "outlier": np.bool_,
               "label": np.int8, "score": np.float32, "weight": np.float32, "nn_weight": np.float32}


def predict(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    wanted = {k: inputs[k] for k in input_names(model)}
    return np.asarray(model.predict_on_batch(wanted), dtype=np.float64).ravel()


def make_predictor(config: JobConfig, model, scaler) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """Scores of a batch of inputs; with test-time augmentation, the mean over the transformed copies."""
    rotations = config.evaluation.test_time_augment
    if not rotations:
        return lambda inputs: predict(model, inputs)
    from payload.augment import Augmenter

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


def odds(scores: np.ndarray) -> np.ndarray:
    p = np.clip(scores, 1e-7, 1 - 1e-7)
    return p / (1 - p)


def nn_weight(scores: np.ndarray, max_weight: float) -> np.ndarray:
    """p/(1-p), clipped to [1/max_weight, max_weight] (before normalisation)."""
    return np.clip(odds(scores), 1.0 / max_weight, max_weight)


@dataclass
class Variable:
    name: str
    kind: str  # "spectator", "event", "object" or "count"
    index: int
    hists: dict[str, WeightedHist] = field(default_factory=dict)

    def values(self, block: Block) -> tuple[np.ndarray, np.ndarray]:
        """Values and per-value event index (objects repeat their event's weight)."""
        n = len(block)
        if self.kind == "spectator":
            return block.spectators[:, self.index], np.arange(n)
        if self.kind == "event":
            return block.events[:, self.index], np.arange(n)
        if self.kind == "count":
            return block.n_objects.astype(np.float64), np.arange(n)
        real = object_mask(block.n_objects, block.raw_objects.shape[1])
        return block.raw_objects[:, :, self.index][real], np.nonzero(real)[0]


def _edges(stats: dict[str, Any], bins: int) -> np.ndarray:
    lo, hi = stats["quantiles"]["0.001"], stats["quantiles"]["0.999"]
    if not hi > lo:
        lo, hi = stats["min"] - 0.5, stats["max"] + 0.5
    return np.linspace(lo, hi, bins + 1)


def closure_variables(source: EventSource, bins: int) -> list[Variable]:
    stats = source.stats
    out = [Variable(n, "spectator", i) for i, n in enumerate(source.spectator_names)]
    out += [Variable(n, "event", i) for i, n in enumerate(source.event_names)]
    out += [Variable(n, "object", i) for i, n in enumerate(source.object_names)]
    out.append(Variable("n_objects", "count", 0))
    for v in out:
        if v.kind == "count":
            edges = np.arange(source.max_objects + 2) - 0.5
        else:
            group = {"spectator": "spectators", "event": "events", "object": "objects"}[v.kind]
            s = stats[group][v.name]
            edges = _edges(s, bins) if s.get("count") else np.linspace(0, 1, bins + 1)
        v.hists = {k: WeightedHist(edges) for k in ("primary", "reweighted", "secondary")}
    return out


class PredictionWriter:
    """``PRED_FIELDS`` per event, plus ``extra`` fields: name -> (shape of one row, dtype)."""

    def __init__(self, path: Path, extra: dict[str, tuple[tuple[int, ...], Any]] | None = None):
        self.file = h5py.File(path, "w")
        self.size = 0
        self.fields = {name: ((), dtype) for name, dtype in PRED_FIELDS.items()} | (extra or {})
        for name, (shape, dtype) in self.fields.items():
            rows = max(1, 65536 // max(1, int(np.prod(shape))))
            self.file.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                     chunks=(rows, *shape))

    def append(self, columns: dict[str, np.ndarray]) -> None:
        n = len(columns["entry"])
        for name in self.fields:
            ds = self.file[name]
            ds.resize(self.size + n, axis=0)
            ds[self.size:] = columns[name]
        self.size += n

    def scale_nn_weights(self, factor: float, sample: int = 0, step: int = 1 << 20) -> None:
        """Normalise the primary's NN weights in place, streaming."""
        for a in range(0, self.size, step):
            s = self.file["sample"][a:a + step]
            w = self.file["nn_weight"][a:a + step]
            move = (s == sample) & ~self.file["outlier"][a:a + step]
            w[move] *= factor
            self.file["nn_weight"][a:a + step] = w


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    scores: BinaryScores
    variables: list[Variable]
    weight_hist: WeightedHist | None


def evaluate(config: JobConfig, model, sources: list[tuple[EventSource, int]], predictions: Path) -> Evaluation:
    """Predict every event of every source, write ``predictions`` (atomically) and compute metrics.

    ``sources`` are (source, label) with the primary first; weights are reported for it.
    """
    reweight = config.task == "reweight"
    # Labels are known only when both samples are given; one sample gets predictions and weights alone.
    labelled = len(sources) == 2
    max_w = config.evaluation.max_weight
    scores = BinaryScores()
    variables = closure_variables(sources[0][0], config.evaluation.bins) if reweight and labelled else []
    weight_hist = WeightedHist(np.geomspace(1.0 / max_w, max_w, 61)) if reweight else None
    sum_w = sum_wnn = 0.0
    clipped = counted = 0
    first = sources[0][0]
    predictor = make_predictor(config, model, first.scaler)
    observables = first.spectator_names + first.event_names
    # Rows (score, observables...) of test events, the same number from each sample, for distance correlations.
    kept: list[list[np.ndarray]] = [[] for _ in sources]
    with atomic_path(predictions) as tmp:
        writer = PredictionWriter(tmp)
        try:
            for sample, (source, label) in enumerate(sources):
                for block in source.iterate(splits=None, drop_outliers=False):
                    p = predictor(block.inputs)
                    outlier = block.outlier
                    w = block.weights.astype(np.float64)
                    nnw = np.ones(len(block))
                    if reweight and sample == 0:
                        ratio = odds(p)
                        nnw = np.where(outlier, 1.0, np.clip(ratio, 1.0 / max_w, max_w))
                        clipped += int(((ratio > max_w) | (ratio < 1 / max_w))[~outlier].sum())
                        counted += int((~outlier).sum())
                        sum_w += float(w[~outlier].sum())
                        sum_wnn += float((w * nnw)[~outlier].sum())
                    writer.append({"sample": np.full(len(block), sample), "file_index": block.file_index,
                                   "entry": block.entry, "split": block.split, "outlier": outlier,
                                   "label": np.full(len(block), label), "score": p, "weight": w, "nn_weight": nnw})
                    test = (block.split == TEST) & ~outlier
                    if not labelled or not test.any():
                        continue
                    scores.fill(p[test], np.full(int(test.sum()), label), w[test])
                    if config.task == "classify" and sum(map(len, kept[sample])) < DCORR_EVENTS // len(sources):
                        kept[sample].append(np.column_stack([p, block.spectators, block.events])[test])
                    if reweight:
                        sub = block.take(np.flatnonzero(test))
                        if sample == 0:
                            weight_hist.fill(nnw[test], w[test])
                        for v in variables:
                            values, event = v.values(sub)
                            if sample == 0:
                                v.hists["primary"].fill(values, w[test][event])
                                v.hists["reweighted"].fill(values, (w * nnw)[test][event])
                            else:
                                v.hists["secondary"].fill(values, w[test][event])
            factor = sum_w / sum_wnn if reweight and sum_wnn > 0 else 1.0
            if reweight:
                writer.scale_nn_weights(factor)
            writer.file.attrs["source_files"] = json.dumps({str(i): s.source_files for i, (s, _) in enumerate(sources)})
            writer.file.attrs["task"] = config.task
            writer.file.attrs["fields"] = __doc__
            size = writer.size
        finally:
            writer.file.close()

    metrics: dict[str, Any] = {"events": size}
    if labelled:
        metrics.update(test=scores.summary(), calibration=scores.calibration())
        log.info("test AUC %.4f over %d events", metrics["test"]["auc"], metrics["test"]["events"])
    if labelled and config.task == "classify":
        metrics["ams"] = scores.ams(config.evaluation.ams_b_r, 1.0 / config.split.test)
        if config.evaluation.speedup:
            metrics["speedup"] = scores.speedup(**config.evaluation.speedup.model_dump())
        if observables:
            rows = np.concatenate([np.concatenate(k)[:DCORR_EVENTS // len(sources)] for k in kept if k])
            metrics["distance_correlation"] = {name: distance_correlation(rows[:, 0], rows[:, 1 + i])
                                               for i, name in enumerate(observables)}
    if reweight:
        metrics["nn_weights"] = {"normalisation": factor, "clipped_fraction": clipped / max(counted, 1),
                                 "max_weight": max_w}
    if reweight and labelled:
        for v in variables:
            v.hists["reweighted"] = v.hists["reweighted"].scaled(factor)
        metrics["closure"] = {
            v.name: {
                "chi2_ndf_before": chi2_ndf(v.hists["primary"], v.hists["secondary"]),
                "chi2_ndf_after": chi2_ndf(v.hists["reweighted"], v.hists["secondary"]),
                "ks_before": ks_distance(v.hists["primary"], v.hists["secondary"]),
                "ks_after": ks_distance(v.hists["reweighted"], v.hists["secondary"]),
            } for v in variables
        }
    return Evaluation(metrics, scores, variables, weight_hist)


def closure_classifier(config: JobConfig, model, sources: list[tuple[EventSource, int]], tallies,
                       factor: float) -> float:
    """Train a fresh classifier on reweighted primary vs secondary (one half of the test split) and
    return its weighted AUC on the other half: 0.5 means the reweighting left nothing to learn."""
    import keras

    from payload.feed import fit_input
    from payload.models import build_model_for
    from payload.train import compile_model, make_stream_factory

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
