"""PNG plots of a job's results (matplotlib, headless)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from payload.evaluate import Evaluation  # noqa: E402
from payload.metrics import WeightedHist  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def roc(evaluation: Evaluation, path: Path) -> Path:
    fpr, tpr = evaluation.scores.roc()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"AUC = {evaluation.scores.auc():.4f}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test split, weighted)")
    ax.legend(loc="lower right")
    return _save(fig, path)


def history(history_csv: Path, path: Path) -> Path | None:
    if not history_csv.exists():
        return None
    with history_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    for key in ("loss", "val_loss"):
        if key in rows[0]:
            ax.plot(epochs, [float(r[key]) for r in rows], marker="o", label=key)
    ax.set(xlabel="epoch", ylabel="weighted binary cross-entropy", title="learning curves")
    ax.legend()
    return _save(fig, path)


def calibration(evaluation: Evaluation, path: Path) -> Path:
    cal = evaluation.metrics["calibration"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(cal["score"], cal["fraction"], marker="o", label="classifier")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", label="perfectly calibrated")
    ax.set(xlabel="mean score in bin", ylabel="weighted fraction of label 1", title="calibration (test split)")
    ax.legend()
    return _save(fig, path)


def weights(hist: WeightedHist, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.stairs(hist.sumw, hist.edges)
    ax.set(xscale="log", xlabel="NN weight p/(1-p)", ylabel="weighted events", title="NN weights (primary, test)")
    return _save(fig, path)


def closure(evaluation: Evaluation, directory: Path, labels: tuple[str, str] = ("primary", "secondary")) -> list[Path]:
    paths = []
    for v in evaluation.variables:
        h = {k: hist.sumw / max(hist.sumw.sum(), 1e-300) for k, hist in v.hists.items()}
        edges = v.hists["primary"].edges
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        top.stairs(h["primary"], edges, label=labels[0])
        top.stairs(h["reweighted"], edges, label=f"{labels[0]} reweighted")
        top.stairs(h["secondary"], edges, label=labels[1], ls="--")
        c = evaluation.metrics["closure"][v.name]
        top.set(ylabel="normalised", title=f"{v.name}: chi2/ndf {c['chi2_ndf_before']:.2f} -> {c['chi2_ndf_after']:.2f}")
        top.legend(fontsize=8)
        with np.errstate(divide="ignore", invalid="ignore"):
            for key in ("primary", "reweighted"):
                bottom.stairs(np.where(h["secondary"] > 0, h[key] / h["secondary"], np.nan), edges, label=key)
        bottom.axhline(1, c="grey", ls=":")
        bottom.set(ylim=(0.8, 1.2), xlabel=v.name, ylabel=f"/ {labels[1]}")
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", v.name)
        paths.append(_save(fig, directory / f"closure_{safe}.png"))
    return paths


def bar(labels: list[str], values: list[float], metric: str, path: Path) -> Path:
    """One bar per job, in the given (ranked) order."""
    fig, ax = plt.subplots(figsize=(max(5, 0.25 * len(labels) + 2), 4))
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set(ylabel=metric, title=f"jobs ranked by {metric}")
    if values:
        low, high = min(values), max(values)
        pad = 0.1 * (high - low) or 0.05 * abs(high) or 1.0
        ax.set_ylim(low - pad, high + pad)
    return _save(fig, path)


def residuals(hists: dict[str, WeightedHist], summary: dict[str, dict[str, float]], path: Path) -> Path:
    """Seed 004's response plots: relative residual (out - in) / in per variable, with mean and sigma."""
    n = len(hists)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, (name, hist) in zip(axes.flat, hists.items()):
        s = summary[name]
        ax.stairs(hist.sumw, hist.edges)
        ax.set(xlabel=f"({name} out - in) / in", title=f"mean {s['mean']:.2g}, sigma {s['sigma']:.2g}")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return _save(fig, path)


def correlation(matrix: np.ndarray, names: list[str], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(names), 0.8 + 0.6 * len(names)))
    image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax)
    ax.set_title("correlation of relative residuals")
    return _save(fig, path)
