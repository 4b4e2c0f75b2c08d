"""Autoencoder evaluation (seeds 001 and 004), streaming block by block.

Metrics (``metrics["autoencoder"]``): the test MSE in scaled units beside the baseline of predicting
every input's training mean; per variable the relative residual (out - in) / in in physics units
(mean and sigma inside +-``evaluation.residual_range``, the fraction outside); the correlation
matrix of the object features' residuals; the compression (latent bytes over input bytes, float32
both); encode and decode time of the test split; the encoder's and decoder's weight sizes.  With a
secondary sample, its MSE and the AUC of the per-event error separating it from the primary (an
out-of-distribution test).  ``predictions.h5`` holds the per-event error as ``score`` and the
latent codes as ``latent``; ``encoder.keras`` and ``decoder.keras`` are saved beside the model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from payload.atomic import atomic_path, hdf5_writing
from payload.config import JobConfig
from payload.ingest.h5layout import object_mask
from payload.learn.dataset import EventSource, flat_inputs
from payload.learn.splits import TEST, TRAIN
from payload.progress import log
from payload.results.evaluate import PredictionWriter
from payload.results.metrics import WeightedHist

#: Per-event errors kept per sample for the out-of-distribution AUC.
AUC_EVENTS = 50_000


class _Moments:
    """Running sums for the correlation matrix of row vectors."""

    def __init__(self, width: int):
        self.n = 0
        self.s1, self.s2 = np.zeros(width), np.zeros((width, width))

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float64)
        self.n += len(rows)
        self.s1 += rows.sum(axis=0)
        self.s2 += rows.T @ rows

    def correlation(self) -> np.ndarray:
        mean = self.s1 / max(self.n, 1)
        cov = self.s2 / max(self.n, 1) - np.outer(mean, mean)
        sd = np.sqrt(np.maximum(np.diag(cov), 1e-300))
        return cov / np.outer(sd, sd)


class _Errors:
    """One sample's test split: squared reconstruction error per element, the sums that give the
    error of predicting a fixed mean instead, and per-event errors for the out-of-distribution AUC."""

    def __init__(self, width: int):
        self.sse, self.elements, self.rows = 0.0, 0, 0
        self.s1, self.s2 = np.zeros(width), np.zeros(width)
        self.events: list[np.ndarray] = []

    def add(self, rows: np.ndarray, sse: float, elements: int, event_errors: np.ndarray) -> None:
        self.s1 += rows.sum(axis=0)
        self.s2 += (rows.astype(np.float64) ** 2).sum(axis=0)
        self.rows += len(rows)
        self.sse += sse
        self.elements += elements
        if sum(map(len, self.events)) < AUC_EVENTS:
            self.events.append(event_errors)

    def mse(self) -> float:
        return self.sse / max(self.elements, 1)

    def baseline(self, mean: np.ndarray) -> float:
        """MSE of predicting ``mean`` for every input: sum of (x - mean)^2 from the running sums."""
        return float((self.s2 - 2 * mean * self.s1 + self.rows * mean**2).sum() / max(self.elements, 1))


class _Residuals:
    """Relative residuals (out - in) / in per variable in physics units: histograms, mean and sigma
    inside +-``r``, the fraction outside, and the correlation of the object features' residuals."""

    def __init__(self, names: list[str], n_object_features: int, r: float):
        self.r = r
        self.hists = {v: WeightedHist(np.linspace(-r, r, 101)) for v in names}
        self.inside = {v: np.zeros(3) for v in names}  # count, sum, sum of squares inside the range
        self.total = dict.fromkeys(names, 0)
        self.correlation = _Moments(n_object_features)

    def add(self, name: str, raw_in: np.ndarray, raw_out: np.ndarray) -> None:
        ok = np.abs(raw_in) > 1e-9
        rel = (raw_out[ok] - raw_in[ok]) / raw_in[ok]
        self.hists[name].fill(np.clip(rel, -self.r, self.r), np.ones(len(rel)))
        within = rel[np.abs(rel) <= self.r]
        self.inside[name] += (len(within), within.sum(), (within**2).sum())
        self.total[name] += len(rel)

    def add_block(self, block, out: np.ndarray, test: np.ndarray, level: str, scaler) -> None:
        """The test events of a block, ``out`` being the decoder's output for all its events."""
        object_names, event_names = scaler.objects.names, scaler.events.names
        m, f = block.raw_objects.shape[1], len(object_names)
        out_objects = out if level == "object" else out[:, : m * f].reshape(len(out), m, f)
        real = object_mask(block.n_objects, m) & test[:, None]
        raw_in = block.raw_objects[real]
        raw_out = scaler.objects.invert(out_objects[real])
        for j, name in enumerate(object_names):
            self.add(name, raw_in[:, j], raw_out[:, j])
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = (raw_out - raw_in) / raw_in
        self.correlation.add(rel[np.isfinite(rel).all(axis=1)])
        if level == "event" and event_names:
            raw_events = scaler.events.invert(out[:, m * f :])[test]
            for j, name in enumerate(event_names):
                self.add(name, block.events[test][:, j], raw_events[:, j])

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for v, (c, s1, s2) in self.inside.items():
            mean = s1 / max(c, 1)
            out[v] = {
                "mean": float(mean),
                "sigma": float(np.sqrt(max(s2 / max(c, 1) - mean**2, 0.0))),
                "outside_fraction": float(1 - c / max(self.total[v], 1)),
            }
        return out


def _squared_errors(x: np.ndarray, out: np.ndarray, mask: np.ndarray, level: str):
    """Per event: (mean squared error, summed squared error, number of elements) over real inputs."""
    if level == "object":
        sums = ((out - x) ** 2).sum(axis=-1) * mask
        sums, counts = sums.sum(axis=1), mask.sum(axis=1) * x.shape[-1]
    else:
        sums, counts = ((out - x) ** 2).sum(axis=1), np.full(len(x), x.shape[1])
    return sums / np.maximum(counts, 1), sums, counts


def _inputs_of(x: np.ndarray, mask: np.ndarray, selected: np.ndarray, level: str) -> np.ndarray:
    """The input rows of the selected events (their real objects at object level)."""
    return x[(mask > 0) & selected[:, None]] if level == "object" else x[selected]


def rank_auc(background: np.ndarray, signal: np.ndarray) -> float:
    """P(signal > background) from ranks (Mann-Whitney), ties counted half."""
    values = np.concatenate([background, signal])
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ranks = np.bincount(inverse, weights=ranks)[inverse] / counts[inverse]  # average ranks of ties
    n0, n1 = len(background), len(signal)
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2) / max(n0 * n1, 1))


def evaluate_autoencoder(
    config: JobConfig, model, sources: list[tuple[EventSource, int]], output: Path
) -> tuple[dict[str, Any], dict[str, WeightedHist], np.ndarray, list[str]]:
    """Returns (metrics, residual histograms, residual correlation matrix, its variable names)."""
    from payload.learn.models.autoencoder import split

    ae = config.autoencoder
    encoder, decoder = split(model, config)
    for name, part in (("encoder.keras", encoder), ("decoder.keras", decoder)):
        with atomic_path(output / name) as tmp:
            part.save(tmp)
    first = sources[0][0]
    scaler = first.scaler
    object_names = first.object_names
    residuals = _Residuals(
        object_names + (first.event_names if ae.level == "event" else []),
        len(object_names),
        config.evaluation.residual_range,
    )
    width = (
        len(object_names) if ae.level == "object" else first.max_objects * len(object_names) + len(first.event_names)
    )
    errors = [_Errors(width) for _ in sources]
    primary = _Primary(width)
    latent_shape = (first.max_objects, ae.latent) if ae.level == "object" else (ae.latent,)

    with atomic_path(output / "predictions.h5") as tmp:
        writer = PredictionWriter(tmp, extra={"latent": (latent_shape, np.float32)})
        with hdf5_writing(writer.file, tmp):
            for sample, (source, _) in enumerate(sources):
                for block in source.iterate(splits=None, drop_outliers=False):
                    x = flat_inputs(block.inputs, ae.level)
                    t0 = time.perf_counter()
                    z = encoder.predict_on_batch(x)
                    t1 = time.perf_counter()
                    z = np.asarray(z[0] if isinstance(z, (list, tuple)) else z)  # a VAE's mean
                    out = np.asarray(decoder.predict_on_batch(z))
                    seconds = (t1 - t0, time.perf_counter() - t1)
                    mask = block.inputs["mask"]
                    test = (block.split == TEST) & ~block.outlier
                    per_event, sums, counts = _squared_errors(x, out, mask, ae.level)
                    errors[sample].add(
                        _inputs_of(x, mask, test, ae.level),
                        float(sums[test].sum()),
                        int(counts[test].sum()),
                        per_event[test],
                    )
                    if sample == 0:
                        primary.add(_inputs_of(x, mask, block.split == TRAIN, ae.level), len(x), seconds)
                        if test.any():
                            residuals.add_block(block, out, test, ae.level, scaler)
                    writer.append(_rows(block, sample, per_event, z * mask[..., None] if ae.level == "object" else z))
            writer.describe_sources([s for s, _ in sources])
            writer.file.attrs["task"] = config.task
            writer.file.attrs["fields"] = (
                "per-event fields as for classifiers; score = mean squared reconstruction "
                "error (scaled units), label = sample, latent = the encoder's codes"
            )

    metrics = _metrics(ae, errors, primary, width, (encoder, decoder))
    matrix = residuals.correlation.correlation()
    metrics["residuals"] = residuals.summary()
    metrics["residual_correlation"] = {"names": object_names, "matrix": matrix.tolist()}
    log.info(
        "autoencoder: test MSE %.4g (mean baseline %.4g), compression ratio %.3f",
        metrics["test_mse"],
        metrics["baseline_mse"],
        metrics["compression"]["ratio"],
    )
    return metrics, residuals.hists, matrix, object_names


def _rows(block, sample: int, per_event: np.ndarray, latent: np.ndarray) -> dict[str, np.ndarray]:
    """One block's rows of predictions.h5: the classifiers' fields, the error as score, the codes."""
    n = len(block)
    return {
        "sample": np.full(n, sample),
        "file_index": block.file_index,
        "entry": block.entry,
        "split": block.split,
        "outlier": block.outlier,
        "label": np.full(n, sample),
        "score": per_event,
        "weight": block.weights,
        "nn_weight": np.ones(n),
        "latent": latent,
    }


class _Primary:
    """The primary sample's training-split mean input (the mean-prediction baseline) and the time spent
    encoding and decoding its events."""

    def __init__(self, width: int):
        self.train_sum, self.train_rows = np.zeros(width), 0
        self.encode_s = self.decode_s = 0.0
        self.timed = 0

    def add(self, train: np.ndarray, events: int, seconds: tuple[float, float]) -> None:
        self.train_sum += train.sum(axis=0)
        self.train_rows += len(train)
        self.encode_s += seconds[0]
        self.decode_s += seconds[1]
        self.timed += events


def _metrics(ae, errors: list[_Errors], tally: _Primary, width: int, parts) -> dict[str, Any]:
    """Reconstruction error against the mean-prediction baseline, compression, speed and size."""
    primary = errors[0]
    input_bytes = 4 * width
    metrics: dict[str, Any] = {
        "test_mse": primary.mse(),
        "baseline_mse": primary.baseline(tally.train_sum / max(tally.train_rows, 1)),
        "compression": {
            "latent_bytes": 4 * ae.latent,
            "input_bytes": input_bytes,
            "ratio": 4 * ae.latent / input_bytes,
            "per": ae.level,
        },
        "timing": {
            "encode_seconds": tally.encode_s,
            "decode_seconds": tally.decode_s,
            "events": tally.timed,
            "encode_events_per_second": tally.timed / max(tally.encode_s, 1e-9),
            "decode_events_per_second": tally.timed / max(tally.decode_s, 1e-9),
        },
        "memory": {
            f"{name}_weight_bytes": int(sum(np.asarray(w).nbytes for w in part.weights))
            for name, part in zip(("encoder", "decoder"), parts)
        },
    }
    if len(errors) == 2 and errors[1].elements:
        metrics["secondary_mse"] = errors[1].mse()
        metrics["ood_auc"] = rank_auc(np.concatenate(primary.events), np.concatenate(errors[1].events))
    return metrics
