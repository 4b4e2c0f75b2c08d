"""Fan-out: one job config per point of a hyperparameter scan and/or per fold.

A scan file names config keys (dotted paths into the job config) and their values:

    method: grid            # grid: every combination; random: n points drawn with seed
    n: 20                   # random only
    seed: 1
    folds: 5                # optional: k-fold, crossed with the points (split.folds / split.fold)
    parameters:
      training.learning_rate: [0.0003, 0.001, 0.003]
      model.phi_widths: [[64, 64], [128, 128, 128]]
      training.batch_size: {low: 256, high: 4096, log: true, integer: true}   # random only

Each point becomes ``points/<name>.yaml``, a complete job config validated like any other, and
``points/points.json`` records every point's name and overrides.  The job dumps its resolved config
into its outputs, so every point is recoverable from the outputs alone.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from payload.config import apply_overrides, config_to_dict, dump_config, parse_config
from payload.errors import ConfigError


@dataclass(frozen=True)
class Point:
    name: str
    overrides: dict[str, Any]


def _draw(rng: random.Random, key: str, spec: Any) -> Any:
    if isinstance(spec, list):
        return rng.choice(spec)
    if isinstance(spec, dict) and {"low", "high"} <= set(spec):
        low, high = spec["low"], spec["high"]
        if spec.get("log"):
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            value = rng.uniform(low, high)
        return round(value) if spec.get("integer") else value
    raise ConfigError(f"scan parameter {key!r}: give a list of values or {{low: .., high: ..}}")


def points(scan: dict[str, Any]) -> list[Point]:
    """The points of a scan (see the module docstring), named p000, p001, ... (with -fK per fold)."""
    params = scan.get("parameters", {}) or {}
    method = scan.get("method", "grid")
    if method == "grid":
        for key, values in params.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"scan parameter {key!r}: a grid scan needs a non-empty list of values")
        combos = [dict(zip(params, values)) for values in itertools.product(*params.values())]
    elif method == "random":
        rng = random.Random(scan.get("seed", 0))
        n = scan.get("n")
        if not isinstance(n, int) or n < 1:
            raise ConfigError("scan: a random scan needs n (the number of points) >= 1")
        combos = [{key: _draw(rng, key, spec) for key, spec in params.items()} for _ in range(n)]
    else:
        raise ConfigError(f"scan method {method!r}: use grid or random")
    folds = int(scan.get("folds", 0) or 0)
    out = []
    for i, combo in enumerate(combos):
        if folds:
            out += [Point(f"p{i:03d}-f{k}", {**combo, "split.folds": folds, "split.fold": k}) for k in range(folds)]
        else:
            out.append(Point(f"p{i:03d}", combo))
    return out


def load_scan(path: str | Path) -> dict[str, Any]:
    try:
        scan = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"scan {path}: no such file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"scan {path}: not valid YAML ({err})") from None
    if not isinstance(scan, dict):
        raise ConfigError(f"scan {path}: expected a mapping with 'parameters'")
    return scan


def write_points(base: dict[str, Any], pts: list[Point], directory: str | Path) -> list[Path]:
    """One validated, complete job config per point in ``directory``, plus ``points.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for point in pts:
        try:
            config = parse_config(apply_overrides(base, point.overrides), source=f"scan point {point.name}")
        except ConfigError as err:
            raise ConfigError(f"{err.message} (overrides {point.overrides})") from None
        path = directory / f"{point.name}.yaml"
        dump_config(config, path)
        paths.append(path)
    (directory / "points.json").write_text(
        json.dumps(
            [{"name": p.name, "config": path.name, "overrides": p.overrides} for p, path in zip(pts, paths)], indent=1
        )
    )
    return paths


def base_config(path: str | Path) -> dict[str, Any]:
    """The job config as a plain dict, validated first (a bad base config fails before any fan-out)."""
    from payload.config import load_config

    return config_to_dict(load_config(path))
