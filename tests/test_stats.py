from __future__ import annotations

import numpy as np
import pytest

from payload.ingest.stats import QUANTILES, FeatureStats


def test_streaming_matches_numpy_over_uneven_chunks():
    rng = np.random.default_rng(3)
    values = rng.lognormal(3.0, 1.0, 250_000)
    stats = FeatureStats(capacity=20_000)
    for chunk in np.array_split(values, [7, 1000, 1001, 90_000, 200_000]):
        stats.update(chunk)
    out = stats.to_dict()
    assert out["count"] == values.size
    assert out["min"] == values.min() and out["max"] == values.max()
    assert out["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert out["std"] == pytest.approx(values.std(), rel=1e-9)
    assert not out["quantiles_exact"]
    # The reservoir is a uniform sample: quantiles within a few per cent of the truth.
    for q in (0.25, 0.5, 0.75, 0.95):
        assert out["quantiles"][f"{q:g}"] == pytest.approx(np.quantile(values, q), rel=0.05)


def test_nonfinite_values_are_counted_not_used():
    stats = FeatureStats()
    stats.update(np.array([1.0, np.nan, 3.0, np.inf]))
    out = stats.to_dict()
    assert out["count"] == 2 and out["nonfinite"] == 2
    assert out["mean"] == 2.0
    assert out["quantiles_exact"]


def test_merging_partial_statistics_equals_one_pass():
    rng = np.random.default_rng(5)
    values = rng.normal(10, 3, 60_000)
    whole = FeatureStats(capacity=10_000)
    whole.update(values)
    parts = [FeatureStats(capacity=10_000, seed=i) for i in range(3)]
    for part, chunk in zip(parts, np.array_split(values, 3)):
        part.update(chunk)
    merged = FeatureStats(capacity=10_000)
    for part in parts:
        merged.merge(part)
    a, b = whole.to_dict(), merged.to_dict()
    for key in ("count", "min", "max"):
        assert a[key] == b[key]
    assert b["mean"] == pytest.approx(a["mean"], rel=1e-12)
    assert b["std"] == pytest.approx(a["std"], rel=1e-9)
    assert b["quantiles"]["0.5"] == pytest.approx(np.median(values), abs=0.1)


def test_stratified_samples_at_different_rates_stay_unbiased():
    """Chunks sampled in proportion to their share (a small chunk of high values kept whole beside
    a large, thinly sampled chunk of low ones) must not be pooled as if equally weighted."""
    rng = np.random.default_rng(7)
    low, high = rng.normal(0, 1, 200_000), rng.normal(10, 1, 2_000)
    stats = FeatureStats(capacity=10_000)
    stats.update(low, sample_size=2_000)  # 1 % of its values
    stats.update(high, sample_size=5_000)  # all of its values
    out = stats.to_dict()
    values = np.concatenate([low, high])
    assert not out["quantiles_exact"]
    # Pooled naively, the high values would be half of the sample and the median near 5.
    assert out["quantiles"]["0.5"] == pytest.approx(np.median(values), abs=0.1)
    assert out["quantiles"]["0.999"] > 8  # the top 1 % is still the high chunk


def test_quantiles_stay_exact_while_every_value_is_kept():
    values = np.random.default_rng(7).exponential(40, 3000)
    stats = FeatureStats(capacity=10_000)
    for chunk in np.array_split(values, 3):
        stats.update(chunk, sample_size=1_500)
    out = stats.to_dict()
    assert out["quantiles_exact"]
    for q in QUANTILES:  # numpy's default (linear) interpolation between order statistics
        assert out["quantiles"][f"{q:g}"] == pytest.approx(np.quantile(values, q), rel=1e-12)
    stats.update(values[:10], sample_size=5)  # one value left out: no longer exact
    assert not stats.to_dict()["quantiles_exact"]
