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
class WeightedHist:
    """A weighted 1-d histogram with variances (boost-histogram's Weight storage).

    Values outside the edges (and NaN) count in the first or last bin, so no weight is lost from
    normalisations."""

    def __init__(self, edges: np.ndarray):
        import boost_histogram as bh

        edges = np.asarray(edges, dtype=np.float64)
        steps = np.diff(edges)
        uniform = np.allclose(steps, steps[0], rtol=1e-9, atol=0)
        axis = bh.axis.Regular(len(steps), edges[0], edges[-1]) if uniform else bh.axis.Variable(edges)
        self.hist = bh.Histogram(axis, storage=bh.storage.Weight())

    @property
    def edges(self) -> np.ndarray:
        return self.hist.axes[0].edges

    def _folded(self, field: str) -> np.ndarray:
        flow = np.asarray(getattr(self.hist.view(flow=True), field), dtype=np.float64)
        out = flow[1:-1].copy()
        out[0] += flow[0]
        out[-1] += flow[-1]
        return out

    @property
    def sumw(self) -> np.ndarray:
        return self._folded("value")

    @property
    def sumw2(self) -> np.ndarray:
        return self._folded("variance")

    def fill(self, values: np.ndarray, weights: np.ndarray) -> None:
        self.hist.fill(np.asarray(values, dtype=np.float64), weight=np.asarray(weights, dtype=np.float64))

    def per_event(self, values: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Values of objects grouped by (event, bin): one value per group, its event and how many objects
        it holds.  Objects of one event share its weight, so a bin's variance is the sum over events of
        (weight x objects in the bin)^2, not over objects of weight^2: fill each group once with weight
        x count and the chi2 of ``compare`` counts events, which are independent."""
        axis = self.hist.axes[0]
        index = np.clip(axis.index(np.asarray(values, dtype=np.float64)), 0, axis.size - 1)
        _, first, count = np.unique(
            np.asarray(event, np.int64) * axis.size + index, return_index=True, return_counts=True
        )
        return values[first], event[first], count

    def scaled(self, factor: float) -> WeightedHist:
        out = WeightedHist.__new__(WeightedHist)
        out.hist = self.hist * factor  # values x factor, variances x factor^2
        return out

    def add(self, other: WeightedHist) -> None:
        self.hist += other.hist


def compare(a: WeightedHist, b: WeightedHist) -> dict[str, float]:
    """Shape comparison of two weighted histograms, each normalised to unit area: chi2 = sum over bins
    of (a_i - b_i)^2 / (var a_i + var b_i) with the weighted variances, ndf = filled bins - 1 (the
    normalisation), its p-value, chi2/ndf, and the binned Kolmogorov-Smirnov distance."""
    from scipy.stats import chi2 as chi2_dist

    na, nb = a.sumw.sum(), b.sumw.sum()
    if na <= 0 or nb <= 0:
        nan = float("nan")
        return {"chi2": nan, "ndf": 0, "chi2_ndf": nan, "p": nan, "ks": nan}
    pa, pb = a.sumw / na, b.sumw / nb
    var = a.sumw2 / na**2 + b.sumw2 / nb**2
    ok = var > 0
    chi2 = float(((pa[ok] - pb[ok]) ** 2 / var[ok]).sum())
    ndf = max(int(ok.sum()) - 1, 1)
    return {
        "chi2": chi2,
        "ndf": ndf,
        "chi2_ndf": chi2 / ndf,
        "p": float(chi2_dist.sf(chi2, ndf)),
        "ks": float(np.abs(np.cumsum(a.sumw) / na - np.cumsum(b.sumw) / nb).max()),
    }


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
        # The trapezoid rule written out: np.trapezoid needs NumPy 2, np.trapz is gone from it.
        return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))

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

    def _above(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(threshold, signal weight, background weight) selected by score >= threshold, per bin edge."""
        s = np.concatenate([np.cumsum(self.hist[1].sumw[::-1])[::-1], [0.0]])
        b = np.concatenate([np.cumsum(self.hist[0].sumw[::-1])[::-1], [0.0]])
        return self.hist[1].edges, s, b

    def ams(self, b_r: float = 10.0, scale: float = 1.0) -> dict[str, float]:
        """Best approximate median significance (seed 002) over score thresholds, label 1 = signal:
        AMS = sqrt(2 ((s + b + b_r) ln(1 + s / (b + b_r)) - s)), s and b the weights selected,
        times ``scale`` (1 / the test fraction: weights then describe the whole sample)."""
        edges, s, b = self._above()
        s, b = s * scale, b * scale
        ams = np.sqrt(np.maximum(2 * ((s + b + b_r) * np.log1p(s / np.maximum(b + b_r, 1e-300)) - s), 0.0))
        i = int(np.argmax(ams))
        return {"ams": float(ams[i]), "threshold": float(edges[i]), "s": float(s[i]), "b": float(b[i]), "b_r": b_r}

    def speedup(self, simulation: float, network: float, retention: float) -> dict[str, float]:
        """Seed 003: events kept per unit of computing time with the network filter before simulation,
        over without it, at the best threshold.  Times relative to generation; label 1 = kept by the skim:
        TPR (1 + simulation) / (1 + network + (TPR r + FPR (1 - r)) simulation)."""
        edges, s, b = self._above()
        tpr, fpr = s / max(s[0], 1e-300), b / max(b[0], 1e-300)
        gain = tpr * (1 + simulation) / (1 + network + (tpr * retention + fpr * (1 - retention)) * simulation)
        i = int(np.argmax(gain))
        return {"speedup": float(gain[i]), "threshold": float(edges[i]), "tpr": float(tpr[i]), "fpr": float(fpr[i])}

    def summary(self) -> dict[str, Any]:
        return {
            "auc": self.auc(),
            "accuracy": self.correct / max(self.total, 1e-300),
            "loss": self.logloss / max(self.total, 1e-300),
            "events": self.count,
        }


def distance_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Sample distance correlation (Szekely et al.) of two 1-d samples: 0 only for independence."""

    def centred(v):
        d = np.abs(v[:, None] - v[None, :])
        return d - d.mean(axis=0) - d.mean(axis=1)[:, None] + d.mean()

    a, b = centred(np.asarray(x, np.float64)), centred(np.asarray(y, np.float64))
    denominator = np.sqrt((a * a).mean() * (b * b).mean())
    return float(np.sqrt(max((a * b).mean(), 0.0) / denominator)) if denominator > 0 else 0.0
