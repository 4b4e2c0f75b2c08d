"""payload.results.metrics against independent reference implementations (scikit-learn, SciPy) and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2 as chi2_dist
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from payload.results.metrics import SCORE_BINS, BinaryScores, WeightedHist, compare, distance_correlation


def _on_bin_centres(x: np.ndarray) -> np.ndarray:
    """Scores placed at the centres of the score bins, so binning loses nothing."""
    return (np.minimum((x * SCORE_BINS).astype(int), SCORE_BINS - 1) + 0.5) / SCORE_BINS


def test_weighted_auc_equals_scikit_learn():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 20_000)
    scores = _on_bin_centres(np.clip(rng.normal(0.45 + 0.1 * labels, 0.15), 0, 1))
    weights = rng.exponential(1.0, labels.size)
    scored = BinaryScores()
    scored.fill(scores[:7000], labels[:7000], weights[:7000])  # filled in two chunks, as the jobs do
    scored.fill(scores[7000:], labels[7000:], weights[7000:])
    assert scored.auc() == pytest.approx(roc_auc_score(labels, scores, sample_weight=weights), abs=1e-9)
    fair = BinaryScores()
    fair.fill(np.full(1000, 0.5), np.arange(1000) % 2, np.ones(1000))
    assert fair.auc() == pytest.approx(0.5)


def test_binned_ks_equals_scipy_and_chi2_follows_its_distribution():
    rng = np.random.default_rng(4)
    edges = np.linspace(0, 1, 41)
    centres = (edges[:-1] + edges[1:]) / 2
    x = centres[rng.integers(0, 40, 5000)]
    y = centres[np.minimum(rng.binomial(40, 0.48, 4000), 39)]
    a, b = WeightedHist(edges), WeightedHist(edges)
    a.fill(x, np.ones_like(x))
    b.fill(y, np.ones_like(y))
    assert compare(a, b)["ks"] == pytest.approx(ks_2samp(x, y).statistic, abs=1e-12)
    # Two samples of one distribution: chi2 is chi2-distributed with the stated ndf (p uniform).
    p_values = []
    for _ in range(300):
        a, b = WeightedHist(edges), WeightedHist(edges)
        u, v = rng.random(3000), rng.random(2000)
        a.fill(u, rng.exponential(1.0, u.size))  # weighted: the variances must be sum w^2
        b.fill(v, np.ones_like(v))
        result = compare(a, b)
        assert result["ndf"] == 39 and result["p"] == pytest.approx(chi2_dist.sf(result["chi2"], 39))
        p_values.append(result["p"])
    assert 0.4 < np.mean(p_values) < 0.6 and 0.05 < np.mean(np.array(p_values) < 0.1) < 0.16


def test_objects_of_one_event_count_as_one_event_in_the_chi2():
    """Events of 1-4 objects whose values cluster (an event's objects fall in one bin more often than
    chance): two samples of one distribution must give p-values uniform when the objects are grouped
    per event and bin, where filling every object on its own makes the chi2 too large."""
    rng = np.random.default_rng(6)
    edges = np.linspace(0, 1, 21)

    def sample(n_events):
        counts = rng.integers(1, 5, n_events)
        event = np.repeat(np.arange(n_events), counts)
        centre = rng.random(n_events)[event]
        values = np.clip(centre + rng.normal(0, 0.02, event.size), 0, 1)
        return values, event, rng.exponential(1.0, n_events)

    grouped, naive = [], []
    for _ in range(200):
        hists = {}
        for key, n in (("a", 3000), ("b", 2000)):
            values, event, w = sample(n)
            h, flat = WeightedHist(edges), WeightedHist(edges)
            v, e, count = h.per_event(values, event)
            assert count.sum() == len(values) and len(v) < len(values)
            h.fill(v, w[e] * count)
            flat.fill(values, w[event])
            np.testing.assert_allclose(h.sumw, flat.sumw)  # the same histogram, other variances
            hists[key] = (h, flat)
        grouped.append(compare(hists["a"][0], hists["b"][0])["p"])
        naive.append(compare(hists["a"][1], hists["b"][1])["p"])
    assert 0.4 < np.mean(grouped) < 0.6 and np.mean(np.array(grouped) < 0.05) < 0.1
    assert np.mean(np.array(naive) < 0.05) > 0.3


def test_ams_at_a_clean_cut_is_the_closed_form():
    scored = BinaryScores()
    scored.fill(np.array([0.9] * 10 + [0.1] * 40), np.array([1] * 10 + [0] * 40), np.full(50, 2.0))
    s, b_r = 20.0, 10.0  # the cut between the two keeps all signal weight and no background
    expected = np.sqrt(2 * ((s + b_r) * np.log(1 + s / b_r) - s))
    result = scored.ams(b_r=b_r)
    assert result["ams"] == pytest.approx(expected) and (result["s"], result["b"]) == (s, 0.0)
    assert 0.1 < result["threshold"] <= 0.9


def test_distance_correlation_limits():
    rng = np.random.default_rng(5)
    x = rng.normal(size=800)
    assert distance_correlation(x, 3 * x - 1) == pytest.approx(1.0)
    assert distance_correlation(x, x**2) > 0.3  # dependent though uncorrelated
    assert distance_correlation(x, rng.normal(size=800)) < 0.1
