"""Input scaling: per-feature transforms, min-max (seed 000) or standard scaling, outlier removal.

A ``Scaler`` is fitted on the training split of both samples together, saved as ``scaler.json``
and applied identically at evaluation: x' = (T(x) - offset) / scale, with T the feature's transform.
Padded object slots stay exactly 0 after scaling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from payload.config import ScalingConfig
from payload.errors import ConfigError, InputCorruptError
from payload.h5layout import object_mask
from payload.stats import GroupStats

SCALER_VERSION = 1
_TINY = 1e-6


def _transform(name: str, x: np.ndarray) -> np.ndarray:
    if name == "log":
        return np.log(np.maximum(x, _TINY))
    if name == "log10":
        return np.log10(np.maximum(x, _TINY))
    if name == "log1p":
        return np.log1p(np.maximum(x, 0.0))
    return x


_INVERSE = {"log": np.exp, "log10": lambda x: np.power(10.0, x), "log1p": np.expm1}


def _transformed(x: np.ndarray, transforms: list[str]) -> np.ndarray:
    """A float32 copy of ``x`` with each column of its last axis transformed."""
    out = np.array(x, dtype=np.float32, copy=True)
    for j, t in enumerate(transforms):
        if t != "none":
            out[..., j] = _transform(t, out[..., j])
    return out


@dataclass
class ColumnScaling:
    """Scaling of the named columns of one array (object features or event features)."""

    names: list[str]
    transforms: list[str]
    offset: np.ndarray
    scale: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Scale the last axis of ``x`` (float32 in and out)."""
        out = _transformed(x, self.transforms)
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
        return {"names": self.names, "transforms": self.transforms,
                "offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ColumnScaling:
        return cls(list(d["names"]), list(d["transforms"]), np.asarray(d["offset"], dtype=np.float64),
                   np.asarray(d["scale"], dtype=np.float64))


@dataclass
class Scaler:
    method: str
    objects: ColumnScaling
    events: ColumnScaling
    outliers: dict[str, float] = field(default_factory=dict)

    def apply_objects(self, objects: np.ndarray, n_objects: np.ndarray) -> np.ndarray:
        out = self.objects.apply(objects)
        out[~object_mask(n_objects, out.shape[1])] = 0.0
        return out

    def apply_events(self, events: np.ndarray) -> np.ndarray:
        return self.events.apply(events)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({
            "version": SCALER_VERSION, "method": self.method, "outliers": self.outliers,
            "objects": self.objects.to_dict(), "events": self.events.to_dict(),
        }, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Scaler:
        try:
            d = json.loads(Path(path).read_text())
            return cls(d["method"], ColumnScaling.from_dict(d["objects"]), ColumnScaling.from_dict(d["events"]),
                       dict(d.get("outliers", {})))
        except FileNotFoundError:
            raise InputCorruptError(f"scaler {path}: not found") from None
        except (ValueError, KeyError, TypeError) as err:
            raise InputCorruptError(f"scaler {path}: not a valid scaler file ({err})") from None


def outlier_mask(objects: np.ndarray, n_objects: np.ndarray, object_names: list[str],
                 cuts: dict[str, float]) -> np.ndarray:
    """True for events to keep: no real object above any configured threshold."""
    keep = np.ones(len(objects), dtype=bool)
    if not cuts:
        return keep
    real = object_mask(n_objects, objects.shape[1])
    for name, limit in cuts.items():
        if name in object_names:
            keep &= ~((objects[:, :, object_names.index(name)] > limit) & real).any(axis=1)
    return keep


class ScalerFitter:
    """Accumulates transformed-feature statistics over streamed blocks, then makes a ``Scaler``."""

    def __init__(self, config: ScalingConfig, object_names: list[str], event_names: list[str]):
        self.config = config
        self.object_names, self.event_names = object_names, event_names
        self.obj_tf = [config.transforms.get(n, "none") for n in object_names]
        self.evt_tf = [config.transforms.get(n, "none") for n in event_names]
        self.obj_stats = GroupStats(object_names, capacity=1000)
        self.evt_stats = GroupStats(event_names, capacity=1000)

    def update(self, objects: np.ndarray, n_objects: np.ndarray, events: np.ndarray) -> None:
        self.obj_stats.update(_transformed(objects[object_mask(n_objects, objects.shape[1])], self.obj_tf))
        self.evt_stats.update(_transformed(events, self.evt_tf))

    def _columns(self, names: list[str], transforms: list[str], stats: GroupStats) -> ColumnScaling:
        offset, scale = np.zeros(len(names)), np.ones(len(names))
        for j, name in enumerate(names):
            s = stats.features[name]
            if name in self.config.passthrough or self.config.method == "none" or s.count == 0:
                continue
            if self.config.method == "fixed":
                offset[j], scale[j] = self.config.fixed.get(name, (0.0, 1.0))
                continue
            if self.config.method == "minmax":
                offset[j], width = s.min, s.max - s.min
            else:
                offset[j], width = s.mean, np.sqrt(s.m2 / s.count)
            scale[j] = width if width > 0 else 1.0
        return ColumnScaling(list(names), transforms, offset, scale)

    def result(self) -> Scaler:
        if self.obj_stats.features and all(f.count == 0 for f in self.obj_stats.features.values()):
            raise ConfigError("scaling: no training objects left to fit the scaler (check split fractions and outliers)")
        return Scaler(self.config.method, self._columns(self.object_names, self.obj_tf, self.obj_stats),
                      self._columns(self.event_names, self.evt_tf, self.evt_stats), dict(self.config.outliers))
