"""The job: inputs -> convert -> scale -> train -> evaluate -> outputs, in one output directory.

Output directory of a finished job:

    model.keras        the best model (Keras 3, loads with safe_mode=True)
    saved_model/       the same model exported for serving (TensorFlow backend)
    scaler.json        input scaling, applied identically at evaluation
    config.yaml        the resolved job config
    metrics.json       test metrics, closure, closure-classifier AUC
    history.csv        per-epoch training history
    predictions.h5     per-event scores and NN weights keyed by input file and entry
    plots/*.png        ROC, learning curves, calibration, NN weights, closure per variable
    job.log            the job's log
    manifest.json      versions, inputs with sizes and checksums, device, timings, status (written last)

Working files (``work/`` converted HDF5, ``checkpoints/``) stay for resuming.  A failed job leaves
``error.json`` with the reason and no ``manifest.json``: it never looks complete.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from payload.atomic import atomic_path, write_json
from payload.config import JobConfig, config_to_dict, dump_config, load_config
from payload.convert import convert
from payload.errors import EXIT_INTERNAL, ConfigError, InputMissingError, PayloadError
from payload.h5layout import json_attr, open_event_file
from payload.inputs import expand_inputs
from payload.manifest import Timer, build_manifest, describe_input
from payload.progress import log


@dataclass
class JobResult:
    output: Path
    metrics: dict[str, Any]
    manifest: dict[str, Any]


def labels(config: JobConfig) -> tuple[int, int]:
    """(primary label, secondary label): reweight learns P(secondary); classify: primary = signal."""
    return (0, 1) if config.task == "reweight" else (1, 0)


def labelled_sources(config: JobConfig, files: dict[str, Path], scaler,
                     trained_on: dict[str, list[str]] | None = None) -> list[tuple[Any, int]]:
    """(EventSource, label) for each converted sample, primary first.  ``trained_on``: the base names
    of the files a model was trained on, per sample, when applying it (other files are all test)."""
    from payload.dataset import EventSource

    seen = None if trained_on is None else {n for names in trained_on.values() for n in names}
    return [(EventSource(files[name], config, scaler, seen), label)
            for name, label in zip(("primary", "secondary"), labels(config)) if name in files]


def converted_file(config: JobConfig, files: list[str], target: Path, progress: bool) -> Path:
    """Convert unless ``target`` already holds exactly these inputs with this data config (resume)."""
    if target.exists():
        try:
            with open_event_file(target) as f:
                same = (json_attr(f, "source_files") == files
                        and json_attr(f, "config")["data"] == config_to_dict(config)["data"])
        except PayloadError:
            same = False
        if same:
            log.info("reusing %s", target)
            return target
    convert(config, files, target, progress=progress)
    return target


class _JobLog:
    """Copies the payload log into OUTPUT/job.log for the duration of the job."""

    def __init__(self, path: Path):
        self.handler = logging.FileHandler(path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))

    def __enter__(self):
        logger = logging.getLogger("payload")
        logger.addHandler(self.handler)
        # The job log keeps INFO lines even when the caller (a library user) left the level at WARNING.
        self.level = logger.level
        if not logger.isEnabledFor(logging.INFO):
            logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        logger = logging.getLogger("payload")
        logger.removeHandler(self.handler)
        logger.setLevel(self.level)
        self.handler.close()


def _model_bundle(model_path: str | Path, output: Path) -> Path:
    """A trained job's output directory, or a tarball of it extracted safely into OUTPUT."""
    from payload.archive import safe_extract

    path = Path(model_path)
    if not path.exists():
        raise InputMissingError(f"model {path}: no such file or directory")
    if path.is_file():
        path = safe_extract(path, output / "work" / "model")
    for needed in ("model.keras", "scaler.json", "config.yaml"):
        if not (path / needed).exists():
            raise InputMissingError(f"model {model_path}: no {needed}; give the output directory or tarball of a "
                                    "'payload run --mode train' job")
    return path


def run_job(config: JobConfig | None, primary: str | list[str], secondary: str | list[str] | None,
            output: str | Path, mode: str = "train", model: str | Path | None = None,
            tarball: str | Path | None = None, progress: bool = True) -> JobResult:
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    for stale in ("manifest.json", "error.json"):
        (output / stale).unlink(missing_ok=True)
    timer = Timer()
    started = time.time()
    stage = "setup"
    try:
        with _JobLog(output / "job.log"):
            if mode == "evaluate":
                if model is None:
                    raise ConfigError("--mode evaluate needs --model (a trained job's output directory or tarball)")
                bundle = _model_bundle(model, output)
                config = load_config(bundle / "config.yaml")
            elif config is None:
                raise ConfigError("--mode train needs --config")
            if mode == "train" and not secondary and config.task != "autoencode":
                raise ConfigError(f"task {config.task} needs --secondary")
            inputs = {"primary": expand_inputs(primary)}
            if secondary:
                inputs["secondary"] = expand_inputs(secondary)
            stage = "convert"
            work = output / "work"
            work.mkdir(exist_ok=True)
            converted = {}
            for name, files in inputs.items():
                with timer.stage(f"convert_{name}"):
                    converted[name] = converted_file(config, files, work / f"{name}.h5", progress)
            metrics = _train_and_evaluate(config, converted, output, timer, mode,
                                          bundle if mode == "evaluate" else None)
            stage = "outputs"
            dump_config(config, output / "config.yaml")
            write_json(output / "metrics.json", metrics)
            from payload.device import describe

            described = {name: [describe_input(f) for f in files] for name, files in inputs.items()}
            manifest = build_manifest("success", 0, mode, config.task, described, describe(), timer, output, started)
            if tarball:
                from payload.archive import make_tarball

                write_json(output / "manifest.json", manifest)
                with timer.stage("tarball"):
                    make_tarball(output, Path(tarball))
                manifest["timings"] = timer.stages
                manifest["tarball"] = str(tarball)
            write_json(output / "manifest.json", manifest)
            log.info("job finished: outputs in %s", output)
            return JobResult(output, metrics, manifest)
    except PayloadError as err:
        write_json(output / "error.json", {"status": "failed", "exit_code": err.exit_code, "stage": stage,
                                           "error": err.message, "timings": timer.stages})
        raise
    except BaseException as err:
        write_json(output / "error.json", {"status": "failed", "exit_code": EXIT_INTERNAL, "stage": stage,
                                           "error": f"{type(err).__name__}: {err}", "timings": timer.stages})
        raise


def _trained_files(bundle: Path) -> dict[str, list[str]] | None:
    """Base names of the files a bundle's model was trained on (None for bundles that predate the record,
    which are then scored on the test split as before)."""
    import json

    try:
        return json.loads((bundle / "metrics.json").read_text())["training"]["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _train_and_evaluate(config: JobConfig, converted: dict[str, Path], output: Path, timer: Timer, mode: str,
                        bundle: Path | None) -> dict[str, Any]:
    import keras

    from payload import plots
    from payload.evaluate import closure_classifier, evaluate
    from payload.models import load_model
    from payload.reconstruct import evaluate_autoencoder
    from payload.scaling import Scaler
    from payload.splits import TRAIN, base_name
    from payload.train import prepare

    autoencode = config.task == "autoencode"
    trained_on = _trained_files(bundle) if mode == "evaluate" else None
    raw = [source for source, _ in labelled_sources(config, converted, None, trained_on)]
    # An autoencoder learns the primary alone; a secondary is only its out-of-distribution test.
    trained = raw[:1] if autoencode else raw
    with timer.stage("prepare"):
        fitted, tallies = prepare(config, trained, fit=mode == "train") if len(trained) == 2 or autoencode \
            else (None, None)
    metrics: dict[str, Any] = {"task": config.task, "mode": mode, "warnings": []}
    if mode == "train":
        scaler = fitted
        with atomic_path(output / "scaler.json") as tmp:
            scaler.save(tmp)
        for warning in scaler.warnings:
            log.warning("%s", warning)
        metrics["warnings"] += scaler.warnings
    else:
        scaler = Scaler.load(bundle / "scaler.json")
        shutil.copyfile(bundle / "scaler.json", output / "scaler.json")
    sources = labelled_sources(config, converted, scaler, trained_on)

    members = None
    if mode == "train":
        with timer.stage("train"):
            model, metrics["training"], members = _train_members(config, sources[:len(trained)], tallies, output)
        metrics["training"]["files"] = {name: [base_name(f) for f in source.source_files]
                                        for name, source in zip(("primary", "secondary"), raw)}
        with atomic_path(output / "model.keras") as tmp:
            model.save(tmp)
        if keras.backend.backend() == "tensorflow":
            with timer.stage("export"):
                shutil.rmtree(output / "saved_model", ignore_errors=True)
                model.export(str(output / "saved_model"), verbose=False)
    else:
        model = load_model(bundle / "model.keras")
        shutil.copyfile(bundle / "model.keras", output / "model.keras")

    if autoencode:
        with timer.stage("evaluate"):
            metrics["autoencoder"], hists, matrix, names = evaluate_autoencoder(config, model, sources, output)
        with timer.stage("plots"):
            plot_dir = output / "plots"
            plot_dir.mkdir(exist_ok=True)
            plots.history(output / "history.csv", plot_dir / "loss.png")
            plots.residuals(hists, metrics["autoencoder"]["residuals"], plot_dir / "residuals.png")
            plots.correlation(matrix, names, plot_dir / "residual_correlation.png")
        _close(sources, raw)
        return metrics
    baseline = None
    if config.task == "reweight" and len(sources) == 2 and config.evaluation.baseline == "gbreweighter":
        from payload.baseline import Baseline
        from payload.highlevel import HighLevel

        first = sources[0][0]
        expected = [t.counts.get(TRAIN, 0) for t in tallies]
        if all(expected):
            with timer.stage("baseline"):
                baseline = Baseline(config, HighLevel(config, first.object_names, first.event_names,
                                                      first.spectator_names))
                baseline.fit([s for s, _ in sources], expected)
        else:  # applying a model to files it never saw: they hold no training events to fit the baseline on
            metrics["baseline"] = {"skipped": "no training-split events among these inputs (files the model never "
                                              "saw are all test events); the training job's outputs compare it"}
    with timer.stage("evaluate"):
        evaluation = evaluate(config, model, sources, output / "predictions.h5", baseline, members)
    metrics.update(evaluation.metrics)
    if "closure" in metrics:
        metrics["warnings"] += [f"closure: {m}" for m in metrics["closure"]["verdict"]["messages"]]
    if len(sources) == 2 and config.task == "reweight" and config.evaluation.closure_classifier:
        with timer.stage("closure_classifier"):
            factor = evaluation.metrics["nn_weights"]["normalisation"]
            metrics["closure_classifier_auc"] = closure_classifier(config, model, sources, tallies, factor)
    with timer.stage("plots"):
        plot_dir = output / "plots"
        plot_dir.mkdir(exist_ok=True)
        if len(sources) == 2:
            plots.roc(evaluation, plot_dir / "roc.png")
            plots.calibration(evaluation, plot_dir / "calibration.png")
        plots.history(output / "history.csv", plot_dir / "loss.png")
        if evaluation.weight_hists:
            plots.weights(evaluation.weight_hists, plot_dir / "nn_weights.png")
        if "closure" in metrics:
            plots.closure(evaluation, plot_dir)
    _close(sources, raw)
    return metrics


def _close(sources, raw) -> None:
    for source, _ in sources + [(r, None) for r in raw]:
        source.close()


def _train_members(config: JobConfig, sources, tallies, output: Path) -> tuple[Any, dict[str, Any], list | None]:
    """Train the model, or ``model.ensemble`` members with seeds seed, seed+1, ... each in
    OUTPUT/members/NN (resumable one by one) averaged into one model.  With ``ensemble_split: folds``
    member k also leaves part k of the training split out.  Returns (model, metrics, the members
    when cross-fitted, for out-of-fold scoring)."""
    from payload.models import inference_model
    from payload.models.ensemble import average
    from payload.train import train

    def summary(result) -> dict[str, Any]:
        return {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "best_loss": result.best_loss,
                "resumed_from_epoch": result.resumed_from, "steps_per_epoch": result.steps_per_epoch,
                "replicas": result.replicas}

    n = config.model.ensemble
    if n == 1:
        result = train(config, sources, tallies, output)
        return inference_model(result.model), summary(result), None
    folds = config.model.ensemble_split == "folds"
    members, results = [], []
    for k in range(n):
        member = config.model_copy(deep=True)
        member.training.seed = config.training.seed + k
        directory = output / "members" / f"{k:02d}"
        log.info("ensemble member %d of %d%s", k + 1, n, f" (training part {k + 1} left out)" if folds else "")
        results.append(train(member, sources, tallies, directory, leave_out=(n, k) if folds else None))
        members.append(inference_model(results[-1].model))
    shutil.copyfile(output / "members" / "00" / "history.csv", output / "history.csv")
    best = min(results, key=lambda r: r.best_loss)
    info = {**summary(best), "members": [summary(r) for r in results], "ensemble_split": config.model.ensemble_split}
    return average(members), info, members if folds else None
