"""The PanDA hyperparameter-optimisation (phpo) job contract.

phpo's steering proposes points; for each, an evaluation job starts in the working directory with
``input.json`` (the point: ``{"training.learning_rate": 0.001, ...}``, dotted job-config keys) and
``input_ds.json`` (a JSON list of the training files).  The job trains with the point applied to
its config and leaves ``output.json`` = ``{"status": 0, "loss": <float>, "message": "..."}`` for the
steering (status non-zero, loss null, when it failed).
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from payload.atomic import write_json
from payload.config import apply_overrides, config_to_dict, parse_config
from payload.errors import EXIT_INTERNAL, ConfigError, InputMissingError, PayloadError
from payload.results.schema import parse_metrics


@dataclass
class HpoPoint:
    overrides: dict[str, Any]
    primary: list[str]
    secondary: list[str]


def _json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputMissingError(f"{what} {path}: not found; phpo places it in the working directory") from None
    except ValueError as err:
        raise ConfigError(f"{what} {path}: not valid JSON ({err})") from None


def read_point(input_json: Path, input_ds_json: Path, primary_match: str, secondary_match: str | None) -> HpoPoint:
    """The point and the training files, split into the two samples by file-name patterns."""
    overrides = _json(input_json, "hyperparameter point")
    if not isinstance(overrides, dict):
        raise ConfigError(f"hyperparameter point {input_json}: expected a JSON object of config keys")
    files = _json(input_ds_json, "training file list")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ConfigError(f"training file list {input_ds_json}: expected a JSON list of file names")
    primary = [f for f in files if fnmatch.fnmatch(Path(f).name, primary_match)]
    secondary = [f for f in files if secondary_match and fnmatch.fnmatch(Path(f).name, secondary_match)]
    if not primary or (secondary_match and not secondary):
        raise ConfigError(
            f"training file list {input_ds_json}: no files match --primary-match {primary_match!r}"
            f"{f' or --secondary-match {secondary_match!r}' if secondary_match else ''} among {files[:5]}"
        )
    if set(primary) & set(secondary):
        raise ConfigError("--primary-match and --secondary-match both match some files; make them exclusive")
    return HpoPoint(overrides, primary, secondary)


def objective(metrics: dict[str, Any], name: str) -> float:
    """The number the steering minimises: best validation loss, 1 - test AUC, or the closure
    classifier's distance from 0.5 (0 when the reweighted primary cannot be told from the secondary)."""
    typed = parse_metrics(metrics)
    if name == "closure" and typed.closure_classifier_auc is None:
        raise ConfigError("objective 'closure' needs task reweight with evaluation.closure_classifier on")
    value = typed.headline({"auc": "test_auc", "loss": "best_loss", "closure": "closure"}[name])
    if value is None:
        raise ConfigError(f"objective {name!r}: the job's metrics hold no such figure")
    return 1.0 - value if name == "auc" else value


def run_point(
    base_config: Any,
    directory: Path,
    output: Path,
    primary_match: str,
    secondary_match: str | None,
    objective_name: str = "loss",
    input_json: str = "input.json",
    input_ds_json: str = "input_ds.json",
    output_json: str = "output.json",
    progress: bool = False,
) -> dict[str, Any]:
    """Run one phpo evaluation and write ``output.json``; returns what was written."""
    from payload.job import train_job

    try:
        point = read_point(directory / input_json, directory / input_ds_json, primary_match, secondary_match)
        config = parse_config(apply_overrides(config_to_dict(base_config), point.overrides), source=input_json)
        result = train_job(config, point.primary, point.secondary or None, output, progress=progress)
        loss = objective(result.metrics, objective_name)
        if not math.isfinite(loss):
            raise PayloadError(f"objective {objective_name} is {loss}: training diverged")
        out = {"status": 0, "loss": loss, "message": f"{objective_name} {loss:.6g} for {point.overrides}"}
    except PayloadError as err:
        out = {"status": err.exit_code, "loss": None, "message": err.message}
    except Exception as err:  # the steering must hear of every failure, whatever it was
        out = {"status": EXIT_INTERNAL, "loss": None, "message": f"{type(err).__name__}: {err}"}
        write_json(directory / output_json, out)
        raise
    write_json(directory / output_json, out)
    return out
