"""Scaling cannot be fooled by zeros, padding or a few extreme values."""

from __future__ import annotations

import numpy as np
import pytest

from payload.config import ScalingConfig
from payload.learn.models.layers import FeatureScaling
from payload.learn.scaling import ColumnScaling, Scaler, ScalerFitter


def _zero_inflated(n=50_000, seed=0):
    """MET-like: exactly 0 in 12 % of the events, otherwise a falling spectrum from 1 GeV to TeV."""
    rng = np.random.default_rng(seed)
    x = rng.exponential(60.0, n) + 1.0
    x[rng.random(n) < 0.12] = 0.0
    return x.astype(np.float32)


def _fit(x: np.ndarray, **scaling) -> Scaler:
    fitter = ScalerFitter(ScalingConfig(**scaling), [], ["met"])
    for part in np.array_split(x, 7):  # streamed in blocks, as in a job
        fitter.update(np.zeros((len(part), 1, 0), np.float32), np.zeros(len(part), np.int32), part[:, None])
    return fitter.result()


@pytest.mark.parametrize("transform", ["log", "log10", "log1p"])
def test_zero_inflated_feature_keeps_its_nonzero_values_spread(transform):
    x = _zero_inflated()
    scaler = _fit(x, transforms={"met": transform})
    scaled = scaler.apply_events(x[:, None])[:, 0]
    nonzero = scaled[x > 0]
    lo, hi = np.quantile(nonzero, [0.001, 0.999])
    # The positive values fill most of [0, 1]; the zeros stay apart, below all of them.
    assert hi - lo > (0.85 if transform != "log1p" else 0.75), (lo, hi)
    assert scaled[x == 0].max() < nonzero.min()
    assert np.isfinite(scaled).all()
    assert not scaler.warnings


def test_the_old_floor_is_what_the_occupancy_warning_catches():
    """log(max(x, 1e-6)) put zeros at -13.8 and squeezed every real value into the top of [0, 1]:
    the occupancy check names the feature when that happens."""
    x = _zero_inflated()
    scaler = _fit(x, transforms={"met": "log"})
    legacy = ColumnScaling(["met"], ["log"], np.zeros(1), np.ones(1))  # version-1 floor 1e-6
    values = legacy.transformed(x[:, None])[:, 0]
    lo, hi = values.min(), values.max()
    squeezed = (values[x > 0] - lo) / (hi - lo)
    assert squeezed.min() > 0.5  # the failure the issue describes
    from payload.learn.scaling import MIN_OCCUPANCY, occupancy

    assert occupancy((values - lo) / (hi - lo), 0.0, 1.0) < MIN_OCCUPANCY
    assert occupancy(scaler.apply_events(x[:, None])[:, 0], 0.0, 1.0) > MIN_OCCUPANCY


def test_squeezed_feature_is_warned_about_by_name():
    x = _zero_inflated()
    x[:5] = 1e6  # a few extreme values with the exact range
    scaler = _fit(x, range_quantiles=(0.0, 1.0))
    assert len(scaler.warnings) == 1 and "'met'" in scaler.warnings[0]
    robust = _fit(x)  # the default range ignores the few extremes
    assert not robust.warnings
    assert robust.apply_events(np.array([[np.quantile(x, 0.999)]], np.float32))[0, 0] == pytest.approx(1.0, abs=0.01)


def test_exact_range_is_seed000s_min_max():
    x = _zero_inflated()
    scaler = _fit(x, range_quantiles=(0.0, 1.0))
    scaled = scaler.apply_events(x[:, None])[:, 0]
    assert scaled.min() == pytest.approx(0.0, abs=1e-6) and scaled.max() == pytest.approx(1.0, abs=1e-6)


def test_keras_layer_matches_the_scaler_and_round_trips(tmp_path):
    x = _zero_inflated(2000)
    scaler = _fit(x, transforms={"met": "log"})
    columns = scaler.events
    layer = FeatureScaling(
        columns.transforms,
        columns.offset.tolist(),
        columns.scale.tolist(),
        columns.floor.tolist(),
        columns.zero.tolist(),
    )
    got = np.asarray(layer(x[:, None]))
    np.testing.assert_allclose(got, scaler.apply_events(x[:, None]), atol=1e-5)
    scaler.save(tmp_path / "scaler.json")
    again = Scaler.load(tmp_path / "scaler.json")
    np.testing.assert_array_equal(again.apply_events(x[:, None]), scaler.apply_events(x[:, None]))


def test_version_1_scaler_files_keep_their_meaning(tmp_path):
    """A bundle written before floors were fitted is applied as it was trained: log(max(x, 1e-6))."""
    import json

    (tmp_path / "scaler.json").write_text(
        json.dumps(
            {
                "version": 1,
                "method": "minmax",
                "outliers": {},
                "objects": {"names": [], "transforms": [], "offset": [], "scale": []},
                "events": {"names": ["met"], "transforms": ["log"], "offset": [-13.8155], "scale": [20.0]},
            }
        )
    )
    scaler = Scaler.load(tmp_path / "scaler.json")
    out = scaler.apply_events(np.array([[0.0], [1.0]], np.float32))[:, 0]
    np.testing.assert_allclose(out, [(np.log(1e-6) + 13.8155) / 20, 13.8155 / 20], atol=1e-5)


def test_counts_are_not_warned_about():
    """A multiplicity takes a dozen integer values: few bins of its range are filled by nature."""
    counts = np.random.default_rng(3).poisson(6, 50_000).astype(np.float32) + 2
    assert len(np.unique(counts)) > 10
    assert not _fit(counts).warnings


def test_objects_are_scaled_slot_by_slot_and_padding_stays_zero():
    """``apply_objects`` transforms only the slots some event fills; every real object gets the
    column scaling of its feature, whatever slot it sits in, and every padded slot is 0."""
    rng = np.random.default_rng(4)
    n, slots = 500, 45
    counts = rng.integers(0, 12, n)
    objects = np.zeros((n, slots, 2), np.float32)
    real = np.arange(slots) < counts[:, None]
    objects[real] = np.column_stack([rng.exponential(50, real.sum()) + 25, rng.normal(0, 2, real.sum())])
    fitter = ScalerFitter(ScalingConfig(transforms={"pt": "log"}), ["pt", "eta"], [])
    fitter.update(objects, counts.astype(np.int32), np.zeros((n, 0), np.float32))
    scaler = fitter.result()
    got = scaler.apply_objects(objects, counts)
    assert got.shape == objects.shape and got.dtype == np.float32
    np.testing.assert_allclose(got[real], scaler.objects.apply(objects[real]), rtol=1e-6)
    assert not got[~real].any()
    assert not scaler.apply_objects(objects[:0], counts[:0]).size
