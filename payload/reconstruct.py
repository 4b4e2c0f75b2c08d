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

from payload.atomic import atomic_path
from payload.config import JobConfig
from payload.dataset import EventSource, flat_inputs
from payload.evaluate import PredictionWriter
from payload.h5layout import object_mask
from payload.metrics import WeightedHist
from payload.progress import log
from payload.splits import TEST, TRAIN

#: Per-event errors kept per sample for the out-of-distribution AUC.
AUC_EVENTS = 50_000


class _Moments:
    """Running sums for means, variances and correlations of row vectors."""

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


def evaluate_autoencoder(config: JobConfig, model, sources: list[tuple[EventSource, int]],
                         output: Path) -> tuple[dict[str, Any], dict[str, WeightedHist], np.ndarray, list[str]]:
    """Returns (metrics, residual histograms, residual correlation matrix, its variable names)."""
    from payload.models.autoencoder import split

    ae = config.model.autoencoder
    encoder, decoder = split(model, config)
    for name, part in (("encoder.keras", encoder), ("decoder.keras", decoder)):
        with atomic_path(output / name) as tmp:
            part.save(tmp)
    first = sources[0][0]
    scaler = first.scaler
    object_names, event_names = first.object_names, first.event_names
    variables = object_names + (event_names if ae.level == "event" else [])
    r = config.evaluation.residual_range
    hists = {v: WeightedHist(np.linspace(-r, r, 101)) for v in variables}
    inside = {v: np.zeros(3) for v in variables}  # count, sum, sum of squares inside the range
    total = {v: 0 for v in variables}
    correlation = _Moments(len(object_names))
    train_sum = None
    # Per sample: squared error and element count of the test split, sums for the baseline, errors for the AUC.
    test = [{"sse": 0.0, "elements": 0, "s1": None, "s2": None, "rows": 0, "errors": []} for _ in sources]
    seconds = {"encode": 0.0, "decode": 0.0}
    events_timed = 0
    latent_shape = (first.max_objects, ae.latent) if ae.level == "object" else (ae.latent,)

    def residual(name: str, raw_in: np.ndarray, raw_out: np.ndarray) -> None:
        ok = np.abs(raw_in) > 1e-9
        rel = (raw_out[ok] - raw_in[ok]) / raw_in[ok]
        hists[name].fill(np.clip(rel, -r, r), np.ones(len(rel)))
        within = rel[np.abs(rel) <= r]
        inside[name] += (len(within), within.sum(), (within**2).sum())
        total[name] += len(rel)

    with atomic_path(output / "predictions.h5") as tmp:
        writer = PredictionWriter(tmp, extra={"latent": (latent_shape, np.float32)})
        try:
            for sample, (source, _) in enumerate(sources):
                for block in source.iterate(splits=None, drop_outliers=False):
                    x = flat_inputs(block.inputs, ae.level)
                    is_test = (block.split == TEST) & ~block.outlier
                    t0 = time.perf_counter()
                    z = encoder.predict_on_batch(x)
                    t1 = time.perf_counter()
                    z = np.asarray(z[0] if isinstance(z, (list, tuple)) else z)
                    out = np.asarray(decoder.predict_on_batch(z))
                    t2 = time.perf_counter()
                    if sample == 0:
                        seconds["encode"] += t1 - t0
                        seconds["decode"] += t2 - t1
                        events_timed += len(x)
                    mask = block.inputs["mask"]
                    if ae.level == "object":
                        real = mask > 0
                        sq = ((out - x) ** 2).sum(axis=-1) * mask
                        error = sq.sum(axis=1) / np.maximum(mask.sum(axis=1), 1) / x.shape[-1]
                        z = z * mask[..., None]
                        train_rows = x[real & (block.split == TRAIN)[:, None]]
                        test_rows = x[real & is_test[:, None]]
                        test_sq = sq[is_test].sum()
                        elements = int(mask[is_test].sum()) * x.shape[-1]
                    else:
                        error = ((out - x) ** 2).mean(axis=1)
                        train_rows, test_rows = x[block.split == TRAIN], x[is_test]
                        test_sq = ((out - x)[is_test] ** 2).sum()
                        elements = int(is_test.sum()) * x.shape[1]
                    acc = test[sample]
                    if sample == 0:
                        part = train_rows.astype(np.float64)
                        train_sum = (np.zeros(x.shape[-1]), 0) if train_sum is None else train_sum
                        train_sum = (train_sum[0] + part.sum(axis=0), train_sum[1] + len(part))
                    if acc["s1"] is None:
                        acc["s1"], acc["s2"] = np.zeros(x.shape[-1]), np.zeros(x.shape[-1])
                    acc["s1"] += test_rows.sum(axis=0)
                    acc["s2"] += (test_rows.astype(np.float64) ** 2).sum(axis=0)
                    acc["rows"] += len(test_rows)
                    acc["sse"] += float(test_sq)
                    acc["elements"] += elements
                    if sum(map(len, acc["errors"])) < AUC_EVENTS:
                        acc["errors"].append(error[is_test])
                    if sample == 0 and is_test.any():
                        _residuals(block, out, is_test, ae.level, scaler, object_names, event_names, residual,
                                   correlation)
                    n = len(block)
                    writer.append({"sample": np.full(n, sample), "file_index": block.file_index, "entry": block.entry,
                                   "split": block.split, "outlier": block.outlier, "label": np.full(n, sample),
                                   "score": error, "weight": block.weights, "nn_weight": np.ones(n), "latent": z})
            writer.file.attrs["task"] = config.task
            writer.file.attrs["fields"] = ("per-event fields as for classifiers; score = mean squared reconstruction "
                                           "error (scaled units), label = sample, latent = the encoder's codes")
        finally:
            writer.file.close()

    mu = train_sum[0] / max(train_sum[1], 1)
    p = test[0]
    baseline = float((p["s2"] - 2 * mu * p["s1"] + p["rows"] * mu**2).sum() / max(p["elements"], 1))
    summary = {}
    for v in variables:
        c, s1, s2 = inside[v]
        mean = s1 / max(c, 1)
        summary[v] = {"mean": float(mean), "sigma": float(np.sqrt(max(s2 / max(c, 1) - mean**2, 0.0))),
                      "outside_fraction": float(1 - c / max(total[v], 1))}
    input_bytes = 4 * (len(object_names) if ae.level == "object" else int(np.prod(x.shape[1:])))
    metrics: dict[str, Any] = {
        "test_mse": p["sse"] / max(p["elements"], 1), "baseline_mse": baseline,
        "residuals": summary,
        "residual_correlation": {"names": object_names, "matrix": correlation.correlation().tolist()},
        "compression": {"latent_bytes": 4 * ae.latent, "input_bytes": input_bytes,
                        "ratio": 4 * ae.latent / input_bytes, "per": ae.level},
        "timing": {"encode_seconds": seconds["encode"], "decode_seconds": seconds["decode"],
                   "events": events_timed, "encode_events_per_second": events_timed / max(seconds["encode"], 1e-9),
                   "decode_events_per_second": events_timed / max(seconds["decode"], 1e-9)},
        "memory": {"encoder_weight_bytes": int(sum(np.asarray(w).nbytes for w in encoder.weights)),
                   "decoder_weight_bytes": int(sum(np.asarray(w).nbytes for w in decoder.weights))},
    }
    if len(sources) == 2 and test[1]["elements"]:
        metrics["secondary_mse"] = test[1]["sse"] / test[1]["elements"]
        metrics["ood_auc"] = rank_auc(np.concatenate(test[0]["errors"]), np.concatenate(test[1]["errors"]))
    log.info("autoencoder: test MSE %.4g (mean baseline %.4g), compression ratio %.3f",
             metrics["test_mse"], baseline, metrics["compression"]["ratio"])
    return metrics, hists, correlation.correlation(), object_names


def _residuals(block, out, is_test, level, scaler, object_names, event_names, residual, correlation) -> None:
    """Relative residuals of the block's test events in physics units."""
    n_obj = len(object_names)
    m = block.raw_objects.shape[1]
    if level == "object":
        out_objects = out
    else:
        out_objects = out[:, : m * n_obj].reshape(len(out), m, n_obj)
    real = object_mask(block.n_objects, m) & is_test[:, None]
    raw_in = block.raw_objects[real]
    raw_out = scaler.objects.invert(out_objects[real])
    for j, name in enumerate(object_names):
        residual(name, raw_in[:, j], raw_out[:, j])
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = (raw_out - raw_in) / raw_in
    finite = np.isfinite(rel).all(axis=1)
    correlation.add(rel[finite])
    if level == "event" and event_names:
        raw_events = scaler.events.invert(out[:, m * n_obj:])[is_test]
        for j, name in enumerate(event_names):
            residual(name, block.events[is_test][:, j], raw_events[:, j])
