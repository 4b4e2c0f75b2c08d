"""The learning-rate range test (seed 002, Smith 2015/2018): one pass of training with the rate
raised exponentially every batch from ``start`` to ``stop``; the loss against the rate shows where
training starts, where it is fastest and where it diverges.

Writes ``lr_range.csv`` (rate, loss, smoothed loss per batch), ``lr_range.png`` and
``lr_range.json`` with the suggested rate: where the smoothed loss falls fastest.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from payload.atomic import atomic_path, write_json
from payload.config import JobConfig
from payload.errors import ConfigError
from payload.progress import log


def lr_range_test(
    config: JobConfig,
    primary,
    secondary,
    output: str | Path,
    start: float = 1e-7,
    stop: float = 10.0,
    steps: int = 200,
    smoothing: float = 0.98,
    progress: bool = True,
) -> dict[str, Any]:
    import keras

    from payload.job import convert_samples, labelled_sources
    from payload.learn.feed import epoch_batches
    from payload.learn.models import build_model_for
    from payload.learn.train import compile_model, make_stream_factory, prepare

    if not 0 < start < stop:
        raise ConfigError(f"lr-find: need 0 < --start < --stop, got {start} and {stop}")
    if steps < 10:
        raise ConfigError("lr-find: --steps must be at least 10")
    names = ["primary"] + (["secondary"] if config.task != "autoencode" else [])
    if len(names) == 2 and not secondary:
        raise ConfigError(f"task {config.task} needs --secondary")
    output = Path(output)
    given = {"primary": primary, "secondary": secondary if len(names) == 2 else None}
    _, _, files = convert_samples(config, given, output / "work", progress)
    raw = [source for source, _ in labelled_sources(config, files, None)]
    scaler, tallies = prepare(config, raw)
    sources = labelled_sources(config, files, scaler)
    keras.utils.set_random_seed(config.training.seed)
    model = build_model_for(config, sources[0][0])
    compile_model(model, config, 1, learning_rate=start)
    rates = np.geomspace(start, stop, steps)
    batches = epoch_batches(
        make_stream_factory(config, sources, tallies, (0,), config.training.seed, shuffle=True, augment=True)
    )
    rows, average, best = [], 0.0, np.inf
    for i, rate in enumerate(rates):
        model.optimizer.learning_rate.assign(float(rate))
        x, y, w = next(batches)
        model.reset_metrics()  # the returned loss is then this batch's alone
        result = model.train_on_batch(x, y, sample_weight=w, return_dict=True)
        loss = float(result["loss"])
        average = smoothing * average + (1 - smoothing) * loss
        smooth = average / (1 - smoothing ** (i + 1))  # bias-corrected running mean
        rows.append((float(rate), loss, smooth))
        best = min(best, smooth)
        if not np.isfinite(loss) or smooth > 4 * best:
            log.info("lr-find: loss diverged at rate %.3g; stopping", rate)
            break
    for source in raw + [s for s, _ in sources]:
        source.close()
    lr = np.array([r[0] for r in rows])
    smoothed = np.array([r[2] for r in rows])
    suggested = float(lr[_steepest_fall(np.log10(lr), smoothed)])
    with atomic_path(output / "lr_range.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["learning_rate", "loss", "smoothed_loss"])
        writer.writerows(rows)
    _plot(lr, smoothed, suggested, output / "lr_range.png")
    summary = {
        "suggested_learning_rate": suggested,
        "min_loss_learning_rate": float(lr[int(np.argmin(smoothed))]),
        "batches": len(rows),
        "start": start,
        "stop": stop,
    }
    write_json(output / "lr_range.json", summary)
    log.info("lr-find: loss falls fastest at learning rate %.3g (plot: %s)", suggested, output / "lr_range.png")
    return summary


def _steepest_fall(x: np.ndarray, y: np.ndarray) -> int:
    """Index where ``y`` falls fastest against ``x`` before its minimum.  Slopes are taken over a
    window of a tenth of the points, and the first tenth is skipped: per-batch losses are noisy and the
    running mean of the first batches is mostly noise."""
    n = len(y)
    w = max(1, n // 10)
    i = np.arange(n)
    lo, hi = np.maximum(i - w, 0), np.minimum(i + w, n - 1)
    slope = (y[hi] - y[lo]) / np.maximum(x[hi] - x[lo], 1e-12)
    lowest = int(np.argmin(y))
    first = min(w, lowest)
    return first + int(np.argmin(slope[first : lowest + 1]))


def _plot(lr: np.ndarray, smooth: np.ndarray, suggested: float, path: Path) -> None:
    from payload.results.plots import _save, plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lr, smooth)
    ax.axvline(suggested, ls=":", c="grey", label=f"fastest fall: {suggested:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss (smoothed)", title="learning-rate range test")
    ax.legend()
    with atomic_path(path) as tmp:
        _save(fig, tmp)
