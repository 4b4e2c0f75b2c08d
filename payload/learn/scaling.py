"""Input scaling: per-feature transforms, robust min-max (seed 000) or standard scaling, outlier removal.

A ``Scaler`` is fitted on the training split of both samples together, saved as ``scaler.json``
and applied identically at evaluation: x' = (T(x) - offset) / scale, with T the feature's transform.
Padded object slots stay exactly 0 after scaling.

Transforms are defined on every value they can meet.  ``log``/``log10`` take log(max(x, floor)) for
x > 0 and a fitted ``zero`` value for x <= 0: floor is the lower range quantile of the positive
values and ``zero`` lies a tenth of their transformed range below log(floor).  A zero-inflated
feature (MET = 0 in events without a neutrino) then keeps its positive values over ~90 % of the
scaled range instead of being squeezed into its top by log(1e-6).  ``log1p`` is defined for x >= 0
(negative values count as 0).  Ranges come from quantiles of the real objects, not their extremes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from payload.config import ScalingConfig
from payload.errors import ConfigError, InputCorruptError
from payload.ingest.h5layout import object_mask
from payload.ingest.stats import FeatureStats, _quantiles

SCALER_VERSION = 2
#: The floor of scaler.json files written before floors were fitted (version 1).
_LEGACY_FLOOR = 1e-6
#: Where x <= 0 goes under a log transform: this fraction of the positive values' range below them.
ZERO_GAP = 0.1
#: Values kept per feature for the quantiles the scaler is fitted from.
SAMPLE = 200_000
_LOGS = {"log": np.log, "log10": np.log10}


def _transform(name: str, x: np.ndarray, floor: float, zero: float) -> np.ndarray:
    if name in _LOGS:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(x > 0, _LOGS[name](np.maximum(x, floor)), zero)
    if name == "log1p":
        return np.log1p(np.maximum(x, 0.0))
    return x


_INVERSE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "log": np.exp,
    "log10": lambda x: np.power(10.0, x),
    "log1p": np.expm1,
}


@dataclass
class ColumnScaling:
    """Scaling of the named columns of one array (object features or event features).

    ``floor`` and ``zero`` are used by log transforms only (see the module docstring)."""

    names: list[str]
    transforms: list[str]
    offset: np.ndarray
    scale: np.ndarray
    # Filled in by __post_init__ when not given (scaler.json version 1 has neither).
    floor: np.ndarray = None  # type: ignore[assignment]
    zero: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self):
        n = len(self.names)
        if self.floor is None:
            self.floor = np.full(n, _LEGACY_FLOOR)
        if self.zero is None:
            self.zero = np.array([_LOGS[t](_LEGACY_FLOOR) if t in _LOGS else 0.0 for t in self.transforms])

    def transformed(self, x: np.ndarray) -> np.ndarray:
        """A float32 copy of ``x`` with each column of its last axis transformed."""
        out = np.array(x, dtype=np.float32, copy=True)
        for j, t in enumerate(self.transforms):
            if t != "none":
                out[..., j] = _transform(t, out[..., j], self.floor[j], self.zero[j])
        return out

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Scale the last axis of ``x`` (float32 in and out)."""
        out = self.transformed(x)
        out -= self.offset.astype(np.float32)
        out /= self.scale.astype(np.float32)
        return out

    def invert(self, x: np.ndarray) -> np.ndarray:
        """Back from scaled to raw values (what a decoder's output means in physics units)."""
        out = np.asarray(x, dtype=np.float64) * self.scale + self.offset
        for j, t in enumerate(self.transforms):
            if t != "none":
                out[..., j] = _INVERSE[t](out[..., j])
        return out.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "transforms": self.transforms,
            "offset": self.offset.tolist(),
            "scale": self.scale.tolist(),
            "floor": self.floor.tolist(),
            "zero": self.zero.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ColumnScaling:
        def array(key):
            return np.asarray(d[key], dtype=np.float64) if key in d else None

        return cls(
            list(d["names"]), list(d["transforms"]), array("offset"), array("scale"), array("floor"), array("zero")
        )


@dataclass
class Scaler:
    method: str
    objects: ColumnScaling
    events: ColumnScaling
    outliers: dict[str, float] = field(default_factory=dict)
    #: Features whose real values occupy little of the scaled range (see ``occupancy``), with why.
    warnings: list[str] = field(default_factory=list)

    def apply_objects(self, objects: np.ndarray, n_objects: np.ndarray) -> np.ndarray:
        """Scaled objects, padding 0.  Only the slots some event fills are transformed: most slots of
        a padded layout are padding (6 of 45 real on the reference events)."""
        out = np.zeros(objects.shape, dtype=np.float32)
        used = min(objects.shape[1], int(n_objects.max())) if len(n_objects) else 0
        if used:
            part = self.objects.apply(objects[:, :used])
            part[~object_mask(n_objects, used)] = 0.0
            out[:, :used] = part
        return out

    def apply_events(self, events: np.ndarray) -> np.ndarray:
        return self.events.apply(events)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SCALER_VERSION,
            "method": self.method,
            "outliers": self.outliers,
            "objects": self.objects.to_dict(),
            "events": self.events.to_dict(),
            "warnings": self.warnings,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Scaler:
        """Read and check a ``scaler.json``: every column list of one length, known transforms, finite
        numbers, non-zero scales (a scale of 0 would turn every input into inf)."""
        try:
            d = json.loads(Path(path).read_text())
            scaler = cls(
                d["method"],
                ColumnScaling.from_dict(d["objects"]),
                ColumnScaling.from_dict(d["events"]),
                dict(d.get("outliers", {})),
                list(d.get("warnings", [])),
            )
        except FileNotFoundError:
            raise InputCorruptError(f"scaler {path}: not found") from None
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise InputCorruptError(f"scaler {path}: not a valid scaler file ({err})") from None
        for group, columns in (("objects", scaler.objects), ("events", scaler.events)):
            n = len(columns.names)
            arrays: dict[str, Any] = {
                "transforms": columns.transforms,
                "offset": columns.offset,
                "scale": columns.scale,
                "floor": columns.floor,
                "zero": columns.zero,
            }
            wrong = [k for k, v in arrays.items() if len(v) != n]
            if wrong:
                raise InputCorruptError(
                    f"scaler {path}: {group}: {', '.join(wrong)} do not have one entry per feature ({n} names)"
                )
            unknown = sorted(set(columns.transforms) - {"none", *_INVERSE})
            if unknown:
                raise InputCorruptError(f"scaler {path}: {group}: unknown transform(s) {unknown}")
            for key in ("offset", "scale", "floor", "zero"):
                if not np.isfinite(arrays[key]).all():
                    raise InputCorruptError(f"scaler {path}: {group}: {key} holds NaN or infinite values")
            if (columns.scale == 0).any():
                raise InputCorruptError(f"scaler {path}: {group}: a scale of 0 would make inputs infinite")
        return scaler


def outlier_mask(
    objects: np.ndarray, n_objects: np.ndarray, object_names: list[str], cuts: dict[str, float]
) -> np.ndarray:
    """True for events to keep: no real object above any configured threshold."""
    keep = np.ones(len(objects), dtype=bool)
    if not cuts:
        return keep
    real = object_mask(n_objects, objects.shape[1])
    for name, limit in cuts.items():
        if name in object_names:
            keep &= ~((objects[:, :, object_names.index(name)] > limit) & real).any(axis=1)
    return keep


#: A feature whose real values fill fewer than this fraction of the scaled range is warned about.
MIN_OCCUPANCY = 0.4


def occupancy(scaled: np.ndarray, lo: float, hi: float, bins: int = 50, threshold: float = 1e-3) -> float:
    """Fraction of [lo, hi] covered by the bins (of ``bins``) holding at least ``threshold`` of the
    values: ~1 for values spread over the range, small when they are squeezed into a corner or
    split into distant clusters (zeros under log(max(x, 1e-6)))."""
    if not hi > lo or not scaled.size:
        return 1.0
    counts, _ = np.histogram(np.clip(scaled, lo, hi), np.linspace(lo, hi, bins + 1))
    return float((counts >= threshold * scaled.size).sum() / bins)


class ScalerFitter:
    """Accumulates raw-feature statistics of real objects over streamed blocks, then makes a ``Scaler``.

    Transformed quantiles are transforms of raw quantiles (the transforms are monotonic), so one pass
    suffices even though a log transform's floor is itself fitted."""

    def __init__(
        self,
        config: ScalingConfig,
        object_names: list[str],
        event_names: list[str],
        aliases: dict[str, str] | None = None,
    ):
        """``aliases``: event columns built from an object feature (the leading jet's pT from ``pt``)
        take that feature's transform."""
        self.config = config
        self.object_names, self.event_names = object_names, event_names
        aliases = aliases or {}
        self.obj_tf: list[str] = [config.transforms.get(n, "none") for n in object_names]
        self.evt_tf: list[str] = [
            config.transforms.get(n, config.transforms.get(aliases.get(n, n), "none")) for n in event_names
        ]
        self.obj_stats = [FeatureStats(SAMPLE, seed=j) for j in range(len(object_names))]
        self.evt_stats = [FeatureStats(SAMPLE, seed=100 + j) for j in range(len(event_names))]

    def update(self, objects: np.ndarray, n_objects: np.ndarray, events: np.ndarray) -> None:
        real = objects[object_mask(n_objects, objects.shape[1])]
        for j, s in enumerate(self.obj_stats):
            s.update(real[:, j])
        for j, s in enumerate(self.evt_stats):
            s.update(events[:, j])

    def _columns(
        self, names: list[str], transforms: list[str], stats: list[FeatureStats], warnings: list[str]
    ) -> ColumnScaling:
        cfg = self.config
        n = len(names)
        offset, scale, floor, zero = np.zeros(n), np.ones(n), np.full(n, _LEGACY_FLOOR), np.zeros(n)
        q_lo, q_hi = cfg.range_quantiles
        for j, (name, t, s) in enumerate(zip(names, transforms, stats)):
            raw = s.values().astype(np.float64)
            if t in _LOGS:
                positive = raw[raw > 0]
                if positive.size:
                    floor[j] = max(float(_quantiles(positive, (q_lo,))[0]), np.finfo(np.float32).tiny)
                    low = _LOGS[t](floor[j])
                    high = _LOGS[t](float(_quantiles(positive, (q_hi,))[0]))
                    zero[j] = low - ZERO_GAP * (high - low if high > low else 1.0)
            if name in cfg.passthrough or cfg.method == "none" or s.count == 0:
                continue
            column = ColumnScaling([name], [t], np.zeros(1), np.ones(1), floor[j : j + 1], zero[j : j + 1])
            values = column.transformed(raw[:, None])[:, 0].astype(np.float64)
            if cfg.method == "fixed":
                offset[j], scale[j] = cfg.fixed.get(name, (0.0, 1.0))
            elif cfg.method == "minmax":
                if (q_lo, q_hi) == (0.0, 1.0):  # exact extremes from the streamed statistics
                    lo, hi = column.transformed(np.array([[s.min], [s.max]]))[:, 0]
                else:
                    lo, hi = _quantiles(values, (q_lo, q_hi))
                offset[j], scale[j] = lo, (hi - lo) if hi > lo else 1.0
            else:
                if t == "none":
                    mean, std = s.mean, math.sqrt(s.m2 / s.count)
                else:
                    mean, std = float(values.mean()), float(values.std())
                offset[j], scale[j] = mean, std if std > 0 else 1.0
            # Counts, codes and flags take few values by nature: only continuous features are checked.
            if len(np.unique(raw[:1000])) > 10 and not np.array_equal(raw, np.round(raw)):
                scaled = (values - offset[j]) / scale[j]
                lo, hi = _quantiles(scaled, (q_lo, q_hi)) if cfg.method != "minmax" else (0.0, 1.0)
                used = occupancy(scaled, lo, hi)
                if used < MIN_OCCUPANCY:
                    warnings.append(
                        f"scaling: feature {name!r} ({t} transform, {cfg.method}) fills only {used:.0%} of its scaled "
                        f"range: its values are squeezed into a corner or split into distant clusters; try "
                        f"scaling.transforms {{{name}: log}} or an outlier cut"
                    )
        return ColumnScaling(list(names), transforms, offset, scale, floor, zero)

    def result(self) -> Scaler:
        if self.obj_stats and all(s.count == 0 for s in self.obj_stats):
            raise ConfigError(
                "scaling: no training objects left to fit the scaler (check split fractions and outliers)"
            )
        warnings: list[str] = []
        objects = self._columns(self.object_names, self.obj_tf, self.obj_stats, warnings)
        events = self._columns(self.event_names, self.evt_tf, self.evt_stats, warnings)
        return Scaler(self.config.method, objects, events, dict(self.config.outliers), warnings)
