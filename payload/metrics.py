"""Weighted metrics from streaming histograms: bounded memory whatever the number of events.

ROC/AUC come from fine score histograms per class (10^4 bins: AUC exact to ~1e-4), closure from
weighted histograms of each variable (chi2/ndf and a binned Kolmogorov-Smirnov distance).
"""

from __future__ import annotations

from typing import Any

import numpy as np

SCORE_BINS = 10_000

#: A finished job's headline numbers, read from its metrics.json, and which way is better: what
#: ``payload merge`` ranks jobs by and what a phpo evaluation reports to the steering.
HEADLINE: dict[str, tuple[str, Any]] = {
    "best_loss": ("min", lambda m: m["training"]["best_loss"]),
    "test_loss": ("min", lambda m: m["test"]["loss"]),
    "test_auc": ("max", lambda m: m["test"]["auc"]),
    "test_accuracy": ("max", lambda m: m["test"]["accuracy"]),
    # The closure classifier's distance from 0.5: 0 when reweighted primary and secondary look alike.
    "closure": ("min", lambda m: abs(m["closure_classifier_auc"] - 0.5)),
}


class WeightedHist:
    def __init__(self, edges: np.ndarray):
        self.edges = np.asarray(edges, dtype=np.float64)
        self.sumw = np.zeros(len(self.edges) - 1)
        self.sumw2 = np.zeros(len(self.edges) - 1)

    def fill(self, values: np.ndarray, weights: np.ndarray) -> None:
        # Values outside the range go to the edge bins, so no weight is lost from normalisations.
        idx = np.clip(np.searchsorted(self.edges, values, side="right") - 1, 0, len(self.sumw) - 1)
        self.sumw += np.bincount(idx, weights=weights, minlength=len(self.sumw))
        self.sumw2 += np.bincount(idx, weights=weights * weights, minlength=len(self.sumw))

    def scaled(self, factor: float) -> WeightedHist:
        out = WeightedHist(self.edges)
        out.sumw, out.sumw2 = self.sumw * factor, self.sumw2 * factor * factor
        return out


def chi2_ndf(a: WeightedHist, b: WeightedHist) -> float:
    """Shape comparison of two weighted histograms (each normalised to unit area)."""
    na, nb = a.sumw.sum(), b.sumw.sum()
    if na <= 0 or nb <= 0:
        return float("nan")
    pa, pb = a.sumw / na, b.sumw / nb
    var = a.sumw2 / na**2 + b.sumw2 / nb**2
    ok = var > 0
    return float(((pa[ok] - pb[ok]) ** 2 / var[ok]).sum() / max(ok.sum(), 1))


def ks_distance(a: WeightedHist, b: WeightedHist) -> float:
    """Largest distance between the two weighted, normalised cumulative distributions (binned)."""
    na, nb = a.sumw.sum(), b.sumw.sum()
    if na <= 0 or nb <= 0:
        return float("nan")
    return float(np.abs(np.cumsum(a.sumw) / na - np.cumsum(b.sumw) / nb).max())


class BinaryScores:
    """Accumulates weighted scores of a binary classifier: ROC, AUC, accuracy, log loss, calibration."""

    def __init__(self):
        edges = np.linspace(0.0, 1.0, SCORE_BINS + 1)
        self.hist = {0: WeightedHist(edges), 1: WeightedHist(edges)}
        self.correct = 0.0
        self.total = 0.0
        self.logloss = 0.0
        self.count = 0

    def fill(self, scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64).ravel()
        for label in (0, 1):
            sel = labels == label
            self.hist[label].fill(scores[sel], weights[sel])
        p = np.clip(scores, 1e-7, 1 - 1e-7)
        self.correct += float(weights[(scores >= 0.5) == (labels == 1)].sum())
        self.total += float(weights.sum())
        self.logloss -= float((weights * np.where(labels == 1, np.log(p), np.log(1 - p))).sum())
        self.count += len(scores)

    def roc(self) -> tuple[np.ndarray, np.ndarray]:
        """(false positive rate, true positive rate), thresholds from high to low."""
        s1, s0 = self.hist[1].sumw[::-1], self.hist[0].sumw[::-1]
        tpr = np.concatenate([[0], np.cumsum(s1) / max(s1.sum(), 1e-300)])
        fpr = np.concatenate([[0], np.cumsum(s0) / max(s0.sum(), 1e-300)])
        return fpr, tpr

    def auc(self) -> float:
        fpr, tpr = self.roc()
        return float(np.trapezoid(tpr, fpr))

    def calibration(self, bins: int = 20) -> dict[str, list[float]]:
        """Mean score and weighted fraction of label 1 in ``bins`` score bins."""
        group = SCORE_BINS // bins
        centers = (self.hist[1].edges[:-1] + self.hist[1].edges[1:]) / 2
        w1 = self.hist[1].sumw.reshape(bins, group)
        w0 = self.hist[0].sumw.reshape(bins, group)
        tot = w1 + w0
        mean_score = (tot * centers.reshape(bins, group)).sum(1) / np.maximum(tot.sum(1), 1e-300)
        frac = w1.sum(1) / np.maximum(tot.sum(1), 1e-300)
        has = tot.sum(1) > 0
        return {"score": mean_score[has].tolist(), "fraction": frac[has].tolist()}

    def summary(self) -> dict[str, Any]:
        return {"auc": self.auc(), "accuracy": self.correct / max(self.total, 1e-300),
                "loss": self.logloss / max(self.total, 1e-300), "events": self.count}
