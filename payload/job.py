"""The job: inputs -> convert -> scale -> train -> evaluate -> outputs, in one output directory.

Output directory of a finished job:

    model.keras        the best model (Keras 3, loads with safe_mode=True)
    saved_model/       the same model exported for serving (TensorFlow backend)
    model.onnx         the same for ONNX Runtime, checked against Keras (TensorFlow backend, ``[onnx]`` extra)
    scaler.json        input scaling, applied identically at evaluation
    config.yaml        the resolved job config
    metrics.json       test metrics, closure, closure-classifier AUC
    history.csv        per-epoch training history
    predictions.h5     per-event scores and NN weights keyed by input file and entry
    friends/*.friend.root  the same per input file as a ROOT friend tree (entries aligned with the input's)
    plots/*.png        ROC, learning curves, calibration, NN weights, closure per variable
    job.log            the job's log
    manifest.json      versions, inputs with sizes and checksums, device, timings, status (written last)

Working files (``work/`` converted HDF5 and scaled network inputs, ``checkpoints/``) stay for
resuming.  A failed job leaves ``error.json`` with the reason and no ``manifest.json``: it never
looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from payload.atomic import atomic_path, check_writable_dir, write_json
from payload.config import ClassifierModel, JobConfig, dump_config
from payload.errors import EXIT_INTERNAL, ConfigError, OutputError, PayloadError
from payload.ingest.inputs import expand_inputs
from payload.learn.splits import base_name
from payload.lock import output_lock
from payload.progress import log
from payload.results.manifest import Timer, build_manifest, describe_input
from payload.resume import bind_checkpoints, identity, work_file
from payload.signals import Terminated, terminate_on_signals


@dataclass
class JobResult:
    output: Path
    metrics: dict[str, Any]
    manifest: dict[str, Any]


def labels(config: JobConfig) -> tuple[int, int]:
    """(primary label, secondary label): reweight learns P(secondary); classify: primary = signal."""
    return (0, 1) if config.task == "reweight" else (1, 0)


def labelled_sources(
    config: JobConfig, files: dict[str, Path], scaler, trained_on: dict[str, list[str]] | None = None
) -> list[tuple[Any, int]]:
    """(EventSource, label) for each converted sample, primary first.  ``trained_on``: the base names
    of the files a model was trained on, per sample, when applying it (other files are all test)."""
    from payload.learn.dataset import EventSource

    seen = None if trained_on is None else {n for names in trained_on.values() for n in names}
    return [
        (EventSource(files[name], config, scaler, seen), label)
        for name, label in zip(("primary", "secondary"), labels(config))
        if name in files
    ]


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


#: What every finished job leaves, by task (the rest depends on the options); a job missing any of
#: them is not a success.
REQUIRED = ("model.keras", "scaler.json", "config.yaml", "metrics.json", "predictions.h5", "job.log")


def train_job(
    config: JobConfig,
    primary: str | list[str],
    secondary: str | list[str] | None,
    output: str | Path,
    *,
    tarball: str | Path | None = None,
    progress: bool = True,
    require_gpu: bool = False,
) -> JobResult:
    """Train ``config``'s model on the primary (and secondary) sample, evaluate it on their test split,
    and write the outputs into ``output`` (``_guarded``: locked, logged, failures recorded)."""
    if not secondary and config.task != "autoencode":
        raise ConfigError(f"task {config.task} needs a secondary sample")
    return _guarded(
        output,
        tarball,
        require_gpu,
        lambda timer, started: _train(config, primary, secondary, Path(output), tarball, progress, timer, started),
    )


def evaluate_job(
    model: str | Path,
    primary: str | list[str],
    secondary: str | list[str] | None,
    output: str | Path,
    *,
    tarball: str | Path | None = None,
    progress: bool = True,
    require_gpu: bool = False,
) -> JobResult:
    """Apply a trained job's output (directory or tarball) to the inputs: every event of files the model
    never saw, the test split of those it trained on; the outputs into ``output`` as ``train_job``."""
    return _guarded(
        output,
        tarball,
        require_gpu,
        lambda timer, started: _evaluate(model, primary, secondary, Path(output), tarball, progress, timer, started),
    )


def _guarded(
    output: str | Path,
    tarball: str | Path | None,
    require_gpu: bool,
    body: Callable[[Timer, float], JobResult],
) -> JobResult:
    """Run ``body`` holding ``output`` locked (``payload.lock``).  A failure at any stage (a signal
    included, ``payload.signals``) leaves ``error.json`` naming the stage and no ``manifest.json`` or
    ``metrics.json``: a job never looks complete unless it is.  ``require_gpu``: stop before any work
    (``DeviceError``, exit 13) when the backend sees no GPU."""
    output = Path(output)
    check_writable_dir(output, "output")
    if tarball:
        check_writable_dir(Path(tarball).parent, "tarball")
    timer = Timer()
    started = time.time()
    with output_lock(output) as removed, terminate_on_signals():
        for stale in ("manifest.json", "error.json"):
            (output / stale).unlink(missing_ok=True)
        if tarball and Path(tarball).is_file():  # a former run's: it must not outlive a failure of this one
            Path(tarball).unlink()
        try:
            with _JobLog(output / "job.log"):
                if removed:
                    log.info("removed %d temporary file(s) left by killed runs in %s", len(removed), output)
                if require_gpu:
                    with timer.stage("device"):
                        from payload.device import require_gpu as check_gpu

                        found = check_gpu()
                    log.info(
                        "device: %d GPU(s) on the %s backend: %s",
                        found["gpus"],
                        found["backend"],
                        ", ".join(found["gpu_names"]),
                    )
                return body(timer, started)
        except BaseException as err:  # noqa: BLE001 - recorded in error.json, then re-raised
            _fail(output, err, timer)
            if tarball:
                _failure_tarball(output, Path(tarball))
            raise disk_full(err) or err from None


def _open(stack: contextlib.ExitStack, sources: list[tuple[Any, int]]) -> list[tuple[Any, int]]:
    """``sources``, each closed when ``stack`` closes, whether the job succeeds or fails."""
    for source, _ in sources:
        stack.callback(source.close)
    return sources


def _train(
    config: JobConfig, primary, secondary, output: Path, tarball, progress: bool, timer: Timer, started: float
) -> JobResult:
    described, identities, converted = convert_samples(
        config, {"primary": primary, "secondary": secondary}, output / "work", progress, timer
    )
    bind_checkpoints(output, config, identities)
    # Keras loads after conversion: a job failing on its inputs never waits for a backend, and its
    # report names no device (payload.results.gridreport).
    import keras

    from payload.learn.train import prepare

    metrics = _new_metrics(config, "train", output)
    with contextlib.ExitStack() as stack:
        raw = _open(stack, labelled_sources(config, converted, None))
        # An autoencoder learns the primary alone; a secondary is only its out-of-distribution test.
        trained = raw[:1] if config.task == "autoencode" else raw
        with timer.stage("prepare"):
            scaler, tallies = prepare(config, [s for s, _ in trained], fit=True)
        assert scaler is not None  # prepare fits one when asked to
        with atomic_path(output / "scaler.json") as tmp:
            scaler.save(tmp)
        for warning in scaler.warnings:
            log.warning("%s", warning)
        metrics["warnings"] += scaler.warnings
        sources = _open(stack, labelled_sources(config, converted, scaler))
        if config.training.cache_inputs:
            from payload.learn.inputcache import attach

            with timer.stage("cache_inputs"):
                for source, _ in sources:
                    attach(source)
        with timer.stage("train"):
            model, metrics["training"], members = _train_members(
                config, sources[: len(trained)], tallies, output, progress
            )
        metrics["training"]["files"] = {
            name: [base_name(f) for f in source.source_files]
            for name, (source, _) in zip(("primary", "secondary"), raw)
        }
        with atomic_path(output / "model.keras") as tmp:
            model.save(tmp)
        if keras.backend.backend() == "tensorflow":
            with timer.stage("export"):
                shutil.rmtree(output / "saved_model", ignore_errors=True)
                model.export(str(output / "saved_model"), verbose=False)
        _assess(config, model, sources, tallies, members, output, metrics, timer, progress)
        _export_onnx(config, model, sources, output, metrics, timer)
    return _finish(config, "train", described, converted, metrics, output, tarball, timer, started)


def _evaluate(
    model, primary, secondary, output: Path, tarball, progress: bool, timer: Timer, started: float
) -> JobResult:
    from payload.learn.train import prepare
    from payload.results import bundle as bundles

    bundle = bundles.load(bundles.locate(model, output / "work" / "model"), model)
    config = bundle.config
    described, _, converted = convert_samples(
        config, {"primary": primary, "secondary": secondary}, output / "work", progress, timer
    )
    metrics = _new_metrics(config, "evaluate", output)
    trained_on = _trained_files(bundle.directory)
    with contextlib.ExitStack() as stack:
        raw = _open(stack, labelled_sources(config, converted, None, trained_on))
        trained = raw[:1] if config.task == "autoencode" else raw
        tallies = None
        if len(trained) == 2 or config.task == "autoencode":  # the split counts the checks weigh by
            with timer.stage("prepare"):
                _, tallies = prepare(config, [s for s, _ in trained], fit=False)
        shutil.copyfile(bundle.directory / "scaler.json", output / "scaler.json")
        sources = _open(stack, labelled_sources(config, converted, bundle.scaler, trained_on))
        shutil.copyfile(bundle.directory / "model.keras", output / "model.keras")
        _assess(config, bundle.model, sources, tallies, None, output, metrics, timer, progress)
    return _finish(config, "evaluate", described, converted, metrics, output, tarball, timer, started)


def _new_metrics(config: JobConfig, mode: str, output: Path) -> dict[str, Any]:
    # A former run's export must not sit beside this run's model when this one writes none.
    (output / "model.onnx").unlink(missing_ok=True)
    return {"task": config.task, "mode": mode, "warnings": []}


def _finish(
    config: JobConfig,
    mode: str,
    described: dict[str, list[dict[str, Any]]],
    converted: dict[str, Path],
    metrics: dict[str, Any],
    output: Path,
    tarball,
    timer: Timer,
    started: float,
) -> JobResult:
    """Friend trees, data-quality warnings, config.yaml, metrics.json, and manifest.json written last."""
    friends = []
    shutil.rmtree(output / "friends", ignore_errors=True)  # a former run's, perhaps of other inputs
    if config.evaluation.friend_trees:
        from payload.results.friends import write_friends

        with timer.stage("friends"):
            friends = write_friends(output / "predictions.h5", output / "friends")
    quality = data_quality(converted)
    for name, q in quality.items():
        if q["nonfinite"]["values"]:
            metrics["warnings"].append(
                f"{name}: NaN or infinite values (data.nonfinite {q['nonfinite']['mode']}): {q['nonfinite']['values']}"
            )
        if q["negative_energies"]:
            metrics["warnings"].append(f"{name}: negative values of energy features: {q['negative_energies']}")
    with timer.stage("outputs"):
        dump_config(config, output / "config.yaml")
        write_json(output / "metrics.json", metrics)
        missing = [name for name in REQUIRED if not (output / name).exists()]
        if missing:
            raise RuntimeError(f"the job finished without writing {', '.join(missing)}")
        from payload.device import describe

        manifest = build_manifest("success", 0, mode, config.task, described, describe(), timer, output, started)
        manifest["data_quality"] = quality
        manifest["friends"] = friends
    if tarball:
        from payload.results.archive import make_tarball

        write_json(output / "manifest.json", manifest)
        with timer.stage("tarball"):
            make_tarball(output, Path(tarball))
        manifest["timings"] = timer.stages
        manifest["tarball"] = str(tarball)
    write_json(output / "manifest.json", manifest)
    return JobResult(output, metrics, manifest)


def convert_samples(
    config: JobConfig, given: dict[str, str | None], work: Path, progress: bool, timer: Timer | None = None
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[Any]], dict[str, Path]]:
    """Each given sample's inputs expanded once, checked, described (size, checksum) and converted to
    its work file ``work/<sample>.h5``, or the work file reused when it was made from these very inputs:
    (descriptions, identities, work files) per sample.  Shared by the job and ``payload lr-find``."""

    def stage(name: str):
        return timer.stage(name) if timer is not None else contextlib.nullcontext()

    inputs = {name: expand_inputs(spec) for name, spec in given.items() if spec}
    check_samples_differ(inputs)
    with stage("inputs"):
        described = {name: [describe_input(f) for f in files] for name, files in inputs.items()}
    identities = {name: [identity(d) for d in described[name]] for name in inputs}
    work.mkdir(parents=True, exist_ok=True)
    converted = {}
    for name, files in inputs.items():
        with stage(f"convert_{name}"):
            converted[name] = work_file(config, files, identities[name], work / f"{name}.h5", progress)
    return described, identities, converted


def data_quality(converted: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Per sample: the NaN/inf values met and what was done with them, and negative energies kept (from
    each work file's provenance)."""
    from payload.ingest.h5layout import json_attr, open_event_file

    out = {}
    for name, path in converted.items():
        with open_event_file(path) as f:
            provenance = json_attr(f, "provenance")
        out[name] = {
            "nonfinite": provenance.get("nonfinite", {"mode": "error", "values": {}}),
            "negative_energies": provenance.get("negative_energies", {}),
        }
    return out


def check_samples_differ(inputs: dict[str, list[str]]) -> None:
    """The same file in both samples makes the classifier learn nothing and the weights meaningless."""
    if "secondary" in inputs:
        shared = sorted(set(map(base_name, inputs["primary"])) & set(map(base_name, inputs["secondary"])))
        if shared:
            raise ConfigError(
                f"--primary and --secondary share {len(shared)} file(s) ({', '.join(shared[:3])}): "
                "the two samples must be different datasets"
            )


def disk_full(err: BaseException) -> OutputError | None:
    """A full disk anywhere in the exception chain, as the user error it is (exit 9).  HDF5 reports it
    inside its own message (a RuntimeError or OSError naming errno 28 and the file)."""
    seen = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        err = current
        seen.add(id(err))
        text = str(err)
        if (
            (isinstance(err, OSError) and err.errno == errno.ENOSPC)
            or "No space left on device" in text
            or "errno = 28" in text
        ):
            where = getattr(err, "filename", None)
            if not where:
                found = re.search(r"filename = '([^']+)'", text)
                where = found.group(1) if found else None
            at = f" at {where}" if where else ""
            return OutputError(f"no space left on device{at}; free space or choose another --output")
        current = err.__cause__ or err.__context__
    return None


def _fail(output: Path, err: BaseException, timer: Timer) -> None:
    """error.json naming the stage; the outputs that would make the job look complete are removed.
    Written where space allows: a full disk must not hide the original error."""
    known = disk_full(err) or err
    if isinstance(known, (Terminated, PayloadError)):
        code, message = known.exit_code, known.message
    else:
        code, message = EXIT_INTERNAL, f"{type(err).__name__}: {err}"
    for name in ("manifest.json", "metrics.json"):
        with contextlib.suppress(OSError):
            (output / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        write_json(
            output / "error.json",
            {
                "status": "failed",
                "exit_code": code,
                "stage": timer.failed or timer.current,
                "error": message,
                "timings": timer.stages,
            },
        )


def _failure_tarball(output: Path, tarball: Path) -> None:
    """The declared tarball of a failed job, holding its error.json and job.log: batch systems that
    transfer declared outputs (HTCondor holds a job whose output is missing) get it back, and
    ``payload merge`` reports the job with its error instead of a missing file.  Best effort: the
    failure may be the tarball itself, or a full disk."""
    from payload.results.archive import make_tarball

    with contextlib.suppress(Exception):
        make_tarball(output, tarball, only=("error.json", "job.log"))


def _trained_files(bundle: Path) -> dict[str, list[str]] | None:
    """Base names of the files a bundle's model was trained on (None for bundles that predate the record,
    which are then scored on the test split as before)."""
    import json

    try:
        return json.loads((bundle / "metrics.json").read_text())["training"]["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _assess(
    config: JobConfig, model, sources, tallies, members, output: Path, metrics: dict[str, Any], timer: Timer, progress
) -> None:
    """The trained or applied model judged on the test events, into ``metrics`` and plots/."""
    plot_dir = output / "plots"
    plot_dir.mkdir(exist_ok=True)
    if config.task == "autoencode":
        _assess_autoencoder(config, model, sources, output, metrics, timer)
    else:
        _assess_classifier(config, model, sources, tallies, members, output, metrics, timer, progress)


def _assess_autoencoder(config: JobConfig, model, sources, output: Path, metrics: dict[str, Any], timer: Timer) -> None:
    from payload.results import plots
    from payload.results.reconstruct import evaluate_autoencoder

    with timer.stage("evaluate"):
        metrics["autoencoder"], hists, matrix, names = evaluate_autoencoder(config, model, sources, output)
    with timer.stage("plots"):
        plots.history(output / "history.csv", output / "plots" / "loss.png")
        plots.residuals(hists, metrics["autoencoder"]["residuals"], output / "plots" / "residuals.png")
        plots.correlation(matrix, names, output / "plots" / "residual_correlation.png")


def _fit_baseline(config: JobConfig, sources, tallies, metrics: dict[str, Any], timer: Timer):
    """hep_ml's GBReweighter on the training events' high-level features (``evaluation.baseline``), or
    None where the job has none to compare with."""
    if not (config.task == "reweight" and len(sources) == 2 and config.evaluation.baseline == "gbreweighter"):
        return None
    from payload.learn.highlevel import HighLevel
    from payload.learn.splits import TRAIN
    from payload.results.baseline import Baseline

    expected = [t.counts.get(TRAIN, 0) for t in tallies or []]
    if not all(expected):  # applying a model to files it never saw: they hold no training events
        metrics["baseline"] = {
            "skipped": "no training-split events among these inputs (files the model never "
            "saw are all test events); the training job's outputs compare it"
        }
        return None
    first = sources[0][0]
    with timer.stage("baseline"):
        baseline = Baseline(config, HighLevel(config, first.object_names, first.event_names, first.spectator_names))
        baseline.fit([s for s, _ in sources], expected)
    return baseline


def _assess_classifier(
    config: JobConfig, model, sources, tallies, members, output: Path, metrics: dict[str, Any], timer: Timer, progress
) -> None:
    from payload.results import plots
    from payload.results.evaluate import closure_classifier, evaluate

    baseline = _fit_baseline(config, sources, tallies, metrics, timer)
    with timer.stage("evaluate"):
        evaluation = evaluate(config, model, sources, output / "predictions.h5", baseline, members, progress)
    metrics.update(evaluation.metrics)
    if "closure" in metrics:
        metrics["warnings"] += [f"closure: {m}" for m in metrics["closure"]["verdict"]["messages"]]
    if len(sources) == 2 and config.task == "reweight" and config.evaluation.closure_classifier:
        with timer.stage("closure_classifier"):
            factor = evaluation.metrics["nn_weights"]["normalisation"]
            metrics["closure_classifier_auc"] = closure_classifier(config, model, sources, tallies, factor)
    plot_dir = output / "plots"
    with timer.stage("plots"):
        if len(sources) == 2:
            plots.roc(evaluation, plot_dir / "roc.png")
            plots.calibration(evaluation, plot_dir / "calibration.png")
        plots.history(output / "history.csv", plot_dir / "loss.png")
        if evaluation.weight_hists:
            plots.weights(evaluation.weight_hists, plot_dir / "nn_weights.png")
        if "closure" in metrics:
            plots.closure(evaluation, plot_dir)


def _export_onnx(config: JobConfig, model, sources, output: Path, metrics: dict[str, Any], timer: Timer) -> None:
    """model.onnx, checked against Keras on up to 256 test events (``payload.results.onnx``)."""
    from payload.learn.dataset import flat_inputs
    from payload.learn.models import input_names
    from payload.learn.splits import TEST
    from payload.results import onnx

    why = onnx.available()
    if why:
        log.info("no model.onnx: %s", why)
        metrics["onnx"] = {"skipped": why}
        return
    with timer.stage("onnx"):
        block = next(sources[0][0].iterate(splits=(TEST,)), None)
        if block is None:
            metrics["onnx"] = {"skipped": "no test events to check the export on"}
            return
        inputs = {k: v[:256] for k, v in block.inputs.items()}
        names = input_names(model)
        batch = (
            {n: inputs[n] for n in names}
            if set(names) <= set(inputs)
            else flat_inputs(inputs, config.autoencoder.level)
        )  # an event-level autoencoder
        metrics["onnx"] = onnx.export_onnx(model, output / "model.onnx", batch)


def _train_members(
    config: JobConfig, sources, tallies, output: Path, progress: bool = True
) -> tuple[Any, dict[str, Any], list | None]:
    """Train the model, or ``model.ensemble`` members with seeds seed, seed+1, ... each in
    OUTPUT/members/NN (resumable one by one) averaged into one model.  With ``ensemble_split: folds``
    member k also leaves part k of the training split out.  Returns (model, metrics, the members
    when cross-fitted, for out-of-fold scoring)."""
    from payload.learn.models import inference_model
    from payload.learn.models.ensemble import average
    from payload.learn.train import train

    def summary(result) -> dict[str, Any]:
        return {
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "best_loss": result.best_loss,
            "resumed_from_epoch": result.resumed_from,
            "steps_per_epoch": result.steps_per_epoch,
            "replicas": result.replicas,
        }

    n = config.model.ensemble if isinstance(config.model, ClassifierModel) else 1
    if n == 1:
        result = train(config, sources, tallies, output, progress=progress)
        return inference_model(result.model), summary(result), None
    folds = isinstance(config.model, ClassifierModel) and config.model.ensemble_split == "folds"
    members, results = [], []
    for k in range(n):
        member = config.model_copy(deep=True)
        member.training.seed = config.training.seed + k
        directory = output / "members" / f"{k:02d}"
        log.info("ensemble member %d of %d%s", k + 1, n, f" (training part {k + 1} left out)" if folds else "")
        results.append(
            train(member, sources, tallies, directory, leave_out=(n, k) if folds else None, progress=progress)
        )
        members.append(inference_model(results[-1].model))
    shutil.copyfile(output / "members" / "00" / "history.csv", output / "history.csv")
    best = min(results, key=lambda r: r.best_loss)
    info = {**summary(best), "members": [summary(r) for r in results], "ensemble_split": "folds" if folds else "seeds"}
    return average(members), info, members if folds else None
