"""Closure checks of a reweighting that share no model or scaling with the network.

They work on a bounded sample of test events (``evaluation.closure_events`` per sample, drawn by a
hash of file and entry, so the same events whatever the chunking) described by the high-level
features of ``payload.learn.highlevel``:

- event-level closure tables: every high-level variable in ``evaluation.closure_bins``
  equal-population bins of the secondary (one bin per value for multiplicities), chi2 with the
  weighted variances, ndf = bins - 1, and its p-value, for each weighting (unweighted, NN, baseline);
- the independent test: a gradient-boosted classifier (scikit-learn's HistGradientBoostingClassifier)
  trained with k-fold cross-validation to separate weighted primary from secondary; its out-of-fold
  AUC is compared with what label-independent scores give (0.5, with the Mann-Whitney standard
  error for the effective sample sizes) and with a label-permutation null.  A p-value below
  ``SIGNIFICANCE`` means the weighted samples still differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from payload.results.metrics import BinaryScores, WeightedHist, compare

#: p-values below this are called significant in the job's output.
SIGNIFICANCE = 0.01


@dataclass
class ClosureSample:
    """Test events kept for the checks: high-level features, event weights and each weighting's
    per-event factor (primary only; the secondary is the target)."""

    names: list[str]
    integer: set[str]
    parts: dict[int, list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]] = field(default_factory=dict)

    def add(
        self, sample: int, features: np.ndarray, weights: np.ndarray, factors: dict[str, np.ndarray] | None = None
    ) -> None:
        if len(features):
            self.parts.setdefault(sample, []).append((features, weights.astype(np.float64), factors or {}))

    def arrays(self, sample: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        parts = self.parts.get(sample, [])
        if not parts:
            return np.zeros((0, len(self.names)), np.float32), np.zeros(0), {}
        factors = {k: np.concatenate([p[2][k] for p in parts]) for k in parts[0][2]}
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), factors

    def normalise(self, name: str, factor: float) -> None:
        for _, _, factors in self.parts.get(0, []):
            if name in factors:
                factors[name] = factors[name] * factor


def edges_for(values: np.ndarray, bins: int, integer: bool) -> np.ndarray | None:
    """Equal-population bin edges of ``values`` (one bin per integer value for multiplicities, sparse
    ones merged until each holds at least 0.5 %), or None when the values are all the same."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or finite.min() == finite.max():
        return None
    if integer:
        lo, hi = int(finite.min()), int(finite.max())
        counts = np.bincount(np.rint(finite).astype(np.int64) - lo, minlength=hi - lo + 1)
        edges, acc = [lo - 0.5], 0
        for value, count in enumerate(counts):
            acc += count
            if acc >= 0.005 * finite.size:
                edges.append(lo + value + 0.5)
                acc = 0
        edges[-1] = hi + 0.5
        return np.asarray(edges) if len(edges) > 2 else None
    quantiles = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)))
    return quantiles if len(quantiles) > 2 else None


def event_level(sample: ClosureSample, bins: int) -> dict[str, Any]:
    """Closure tables per high-level variable and weighting, the total over all variables, and the
    histograms (for plots): ``{"variables": {name: {weighting: comparison}}, "total": {...},
    "hists": {name: {"secondary": h, weighting: h}}}``."""
    x0, w0, factors = sample.arrays(0)
    x1, w1, _ = sample.arrays(1)
    weightings = {"unweighted": np.ones(len(w0)), **factors}
    variables: dict[str, Any] = {}
    hists: dict[str, Any] = {}
    totals = {k: [0.0, 0] for k in weightings}
    for i, name in enumerate(sample.names):
        edges = edges_for(x1[:, i], bins, name in sample.integer)
        # A constant column, or one repeating another (the sum over a one-object collection is its
        # leading object's), adds nothing and would be counted twice in the total.
        if edges is None or any(
            np.array_equal(x1[:, i], x1[:, k]) and np.array_equal(x0[:, i], x0[:, k]) for k in range(i)
        ):
            continue
        target = WeightedHist(edges)
        target.fill(x1[:, i], w1)
        hists[name] = {"secondary": target}
        variables[name] = {}
        for key, f in weightings.items():
            h = WeightedHist(edges)
            h.fill(x0[:, i], w0 * f)
            hists[name][key] = h
            c = compare(h, target)
            variables[name][key] = c
            if np.isfinite(c["chi2"]):
                totals[key][0] += c["chi2"]
                totals[key][1] += c["ndf"]
    from scipy.stats import chi2 as chi2_dist

    total = {
        k: {"chi2": c, "ndf": n, "chi2_ndf": c / max(n, 1), "p": float(chi2_dist.sf(c, n)) if n else float("nan")}
        for k, (c, n) in totals.items()
    }
    return {"variables": variables, "total": total, "hists": hists}


def _classifier(seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=200,
        learning_rate=0.1,
        max_leaf_nodes=15,
        min_samples_leaf=100,
        l2_regularization=1.0,
        early_stopping=True,
        validation_fraction=0.15,
        n_iter_no_change=10,
        random_state=seed,
    )


def quantized(x: np.ndarray, levels: int = 255) -> np.ndarray:
    """Each column replaced by its unweighted quantile-bin index (at most ``levels`` values): what the
    classifier bins to anyway, done once here, because scikit-learn computes weighted bin edges with a
    Python loop per bin (~3 s per fit on two cores)."""
    out = np.empty(x.shape, np.float32)
    for j in range(x.shape[1]):
        column = x[:, j]
        edges = np.unique(np.quantile(column, np.linspace(0, 1, levels + 1)[1:-1]))
        out[:, j] = np.searchsorted(edges, column, side="right")
    return out


def _out_of_fold(x: np.ndarray, y: np.ndarray, w: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold probabilities of a k-fold cross-validated classifier; each class carries the same
    total |weight| in training."""
    from sklearn.model_selection import StratifiedKFold

    fit_w = np.abs(w).astype(np.float64)
    for label in (0, 1):
        sel = y == label
        fit_w[sel] *= len(y) / 2 / max(fit_w[sel].sum(), 1e-300)
    out = np.empty(len(y))
    for k, (train, test) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)):
        model = _classifier(seed + k)
        model.fit(x[train], y[train], sample_weight=fit_w[train])
        out[test] = model.predict_proba(x[test])[:, 1]
    return out


def _auc(scores: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    b = BinaryScores()
    b.fill(scores, y, w)
    return b.auc()


def null_sigma(w0: np.ndarray, w1: np.ndarray) -> float:
    """Standard deviation of the weighted AUC of scores that do not depend on the label (Mann-Whitney,
    with the effective sample sizes (sum w)^2 / sum w^2 of the two classes)."""
    inv = sum(float((w * w).sum()) / max(float(w.sum()) ** 2, 1e-300) for w in (w0, w1))
    return math.sqrt(inv / 12.0)


def independent_test(
    sample: ClosureSample, folds: int = 5, permutations: int = 5, seed: int = 0, judged: str = "nn"
) -> dict[str, Any]:
    """The out-of-fold AUC of a classifier separating weighted primary from secondary, per weighting,
    with its significance; the label-permutation null is run for the ``judged`` weighting."""
    from scipy.stats import norm

    x0, w0, factors = sample.arrays(0)
    x1, w1, _ = sample.arrays(1)
    x = quantized(np.concatenate([x0, x1]))
    y = np.concatenate([np.zeros(len(x0), np.int8), np.ones(len(x1), np.int8)])
    out: dict[str, Any] = {
        "events": {"primary": len(x0), "secondary": len(x1)},
        "folds": folds,
        "features": list(sample.names),
        "classifier": "HistGradientBoostingClassifier",
    }
    if min(len(x0), len(x1)) < 10 * folds:
        out["skipped"] = f"too few test events ({len(x0)} primary, {len(x1)} secondary)"
        return out
    results = {}
    for name, f in {"unweighted": np.ones(len(w0)), **factors}.items():
        w = np.concatenate([w0 * f, w1])
        auc = _auc(_out_of_fold(x, y, w, folds, seed), y, w)
        sigma = null_sigma(w0 * f, w1)
        z = (auc - 0.5) / sigma
        results[name] = {
            "auc": auc,
            "null_sigma": sigma,
            "z": z,
            "p": float(norm.sf(z)),
            "significant": bool(norm.sf(z) < SIGNIFICANCE),
        }
    out["results"] = results
    if permutations and judged in results:
        rng = np.random.default_rng(seed + 1)
        w = np.concatenate([w0 * factors[judged], w1])
        null = []
        for k in range(permutations):
            perm = rng.permutation(len(y))
            # Labels move, each event keeps its weight: the features then say nothing about the label.
            null.append(_auc(_out_of_fold(x, y[perm], w, folds, seed + 10 + k), y[perm], w))
        out["permutation_null"] = {
            "weighting": judged,
            "aucs": null,
            "mean": float(np.mean(null)),
            "std": float(np.std(null, ddof=1)) if len(null) > 1 else float("nan"),
        }
    return out


def weight_diagnostics(weights: np.ndarray, factors: np.ndarray, clipped: int | None = None) -> dict[str, float]:
    """Effective sample size over N, the largest and smallest factor, for event weights x ``factors``."""
    w = weights * factors
    n = len(w)
    ess = float(w.sum()) ** 2 / max(float((w * w).sum()), 1e-300) if n else 0.0
    out = {
        "events": n,
        "ess_fraction": ess / max(n, 1),
        "max": float(factors.max()) if n else float("nan"),
        "min": float(factors.min()) if n else float("nan"),
    }
    if clipped is not None:
        out["clipped_fraction"] = clipped / max(n, 1)
    return out


def named_tables(event_level: dict[str, Any], object_level: dict[str, Any]) -> dict[str, Any]:
    """The event-level and object-level closure tables in one mapping, the object-level ones named
    ``<collection>_<feature> (objects)``: how the verdict and the summary plot name them."""
    return {**event_level, **{f"{name} (objects)": v for name, v in object_level.items()}}


def verdict(
    tables: dict[str, Any],
    test: dict[str, Any],
    judged: str = "nn",
    baseline: str | None = "baseline",
    objects: dict[str, Any] | None = None,
) -> list[str]:
    """Plain sentences for the log and metrics.json: what did not close (event-level variables, and the
    object-level ``objects`` tables, named ``<feature> (objects)``), what got worse, and how the
    network compares with the baseline.  Empty when nothing is wrong."""
    lines = []
    variables = named_tables(tables.get("variables", {}), objects or {})
    open_ = sorted(n for n, v in variables.items() if judged in v and v[judged]["p"] < SIGNIFICANCE)
    worse = sorted(n for n in open_ if variables[n][judged]["chi2"] > variables[n]["unweighted"]["chi2"])
    if worse:
        lines.append(
            f"the weights made {len(worse)} variable(s) worse than no reweighting and not closed "
            f"(chi2 p < {SIGNIFICANCE}): {', '.join(worse)}"
        )
    rest = [n for n in open_ if n not in worse]
    if rest:
        lines.append(
            f"{len(rest)} variable(s) not closed after reweighting (chi2 p < {SIGNIFICANCE}): {', '.join(rest)}"
        )
    result = test.get("results", {}).get(judged)
    if result and result["significant"]:
        lines.append(
            f"the independent classifier still separates reweighted primary from secondary: AUC "
            f"{result['auc']:.4f} against 0.5 +- {result['null_sigma']:.4f} (p = {result['p']:.2g})"
        )
    total = tables.get("total", {})
    if against_baseline(total, judged, baseline) == "worse":
        lines.append(
            f"the standard reweighter (baseline) closes better than the network: total chi2/ndf "
            f"{total[baseline]['chi2_ndf']:.2f} against {total[judged]['chi2_ndf']:.2f} over {total[judged]['ndf']} bins"
        )
    return lines


def against_baseline(total: dict[str, Any], judged: str = "nn", baseline: str | None = "baseline") -> str | None:
    """``better``, ``level`` or ``worse``: the judged weighting's total chi2/ndf against the baseline's,
    ``level`` while their difference is within the statistics; None without a baseline."""
    if not (baseline and baseline in total and judged in total):
        return None
    difference = total[judged]["chi2_ndf"] - total[baseline]["chi2_ndf"]
    # Each chi2/ndf has sd sqrt(2/ndf), so their difference is noise below ~2 sqrt(2) sqrt(2/ndf).
    noise = 2 * math.sqrt(2) * math.sqrt(2 / max(total[judged]["ndf"], 1))
    return "worse" if difference > noise else "better" if difference < -noise else "level"
