"""Training: streams batches from the event files, checkpoints every epoch, resumes after a kill.

Checkpoints live in ``OUTPUT/checkpoints``: ``epoch-NNNN.keras`` (model and optimizer state),
``best.keras`` and ``state.json``, written last and atomically, which names the epoch to resume
from.  Rerunning the same job in the same directory continues from there.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from payload.atomic import atomic_path, write_json
from payload.config import JobConfig
from payload.errors import EmptyInputError, TrainingError
from payload.learn.dataset import EventSource, TrainingStream, training_weights
from payload.learn.distribute import replicated
from payload.learn.feed import fit_input, validation_input
from payload.learn.scaling import Scaler, ScalerFitter
from payload.learn.splits import NAMES, TRAIN, VALIDATION
from payload.progress import Progress, duration, log


@dataclass
class Tally:
    """Selected events and their training weight sum per split, for one source, and the same per
    block of ``EventSource.block_ranges()`` (``blocks``, as ``prepare`` counts them)."""

    counts: dict[int, int] = field(default_factory=dict)
    sumw: dict[int, float] = field(default_factory=dict)
    blocks: list[Tally] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        for code, n in other.counts.items():
            self.counts[code] = self.counts.get(code, 0) + n
            self.sumw[code] = self.sumw.get(code, 0.0) + other.sumw[code]

    def events(self, splits: tuple[int, ...]) -> int:
        return sum(self.counts.get(s, 0) for s in splits)

    def of_blocks(self, index: list[int]) -> Tally:
        """The tally of only the blocks ``index``."""
        part = Tally()
        for i in index:
            part.add(self.blocks[i])
        return part


def spread_blocks(tallies: list[Tally], splits: tuple[int, ...], limit: int) -> list[list[int]] | None:
    """Evenly spaced blocks of every source holding about ``limit`` events of ``splits`` in all (the
    same share of each source's blocks, so the classes keep their proportions), or None when all of
    them hold no more.  Spread over the whole file, they span every input file in it."""
    total = sum(t.events(splits) for t in tallies)
    if total <= limit:
        return None
    stride = total / limit
    chosen = [
        sorted({min(len(t.blocks) - 1, int((k + 0.5) * stride)) for k in range(max(1, round(len(t.blocks) / stride)))})
        for t in tallies
    ]
    if any(not t.of_blocks(index).counts.get(s) for t, index in zip(tallies, chosen) for s in splits):
        return None  # too few events per block to spread: all of them
    return chosen


def prepare(config: JobConfig, sources: list[EventSource], fit: bool = True) -> tuple[Scaler | None, list[Tally]]:
    """One pass over both samples: fit the scaler on their training split (unless ``fit`` is off:
    applying a trained model), count every split in every block."""
    first = sources[0]
    aliases = first.high_level.derived if first.high_level else {}
    fitter = ScalerFitter(config.scaling, first.object_names, first.network_event_names, aliases) if fit else None
    tallies = []
    for source in sources:
        tally = Tally()
        for start, stop in source.block_ranges():
            block = source.read(start, stop, None)
            w = training_weights(block, config, 1.0)
            counted = Tally()
            for code in np.unique(block.split):
                sel = block.split == code
                counted.counts[int(code)] = int(sel.sum())
                counted.sumw[int(code)] = float(w[sel].sum())
            tally.add(counted)
            tally.blocks.append(counted)
            train = block.split == TRAIN
            if fitter is not None and train.any():
                events = source.network_events(block.raw_objects[train], block.n_objects[train], block.events[train])
                fitter.update(block.raw_objects[train], block.n_objects[train], events)
        if fitter is not None and not tally.counts.get(TRAIN):
            raise EmptyInputError(f"event file {source.path}: no events in the training split")
        tallies.append(tally)
    return (fitter.result() if fitter is not None else None), tallies


def compile_model(
    model, config: JobConfig, steps_per_epoch: int, epochs: int | None = None, learning_rate=None
) -> None:
    from payload.learn.schedules import make_schedule

    if learning_rate is None:
        learning_rate = make_schedule(config.training, steps_per_epoch, epochs)
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    jit_compile = {"auto": "auto", "on": True, "off": False}[config.training.jit_compile]
    if config.task == "autoencode":
        loss = {"mse": keras.losses.MeanSquaredError(), "l1": keras.losses.MeanAbsoluteError()}
        model.compile(optimizer=optimizer, loss=loss[config.autoencoder.loss], jit_compile=jit_compile)
        return
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.BinaryCrossentropy(),
        weighted_metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )


def configure_precision(config: JobConfig) -> bool:
    """Mixed precision when a GPU is present (or forced on); returns whether it is on."""
    from payload.device import gpus

    on = config.training.mixed_precision == "on" or (config.training.mixed_precision == "auto" and bool(gpus()))
    keras.mixed_precision.set_global_policy("mixed_float16" if on else "float32")
    return on


class FiniteLoss(keras.callbacks.Callback):
    """Stops training with a ``TrainingError`` once the loss is NaN or infinite (checked at the end of
    each epoch, before the checkpoint: a dead model is never saved or resumed from)."""

    def on_epoch_end(self, epoch, logs=None):
        bad = {k: v for k, v in (logs or {}).items() if k.endswith("loss") and not np.isfinite(float(v))}
        if bad:
            raise TrainingError(
                f"training: the loss became {', '.join(f'{k} {v}' for k, v in bad.items())} in "
                f"epoch {epoch + 1}; lower training.learning_rate, check the inputs' scaling "
                "warnings, or use data.nonfinite to deal with NaN inputs"
            )


#: Functions called with (epoch, logs) after every epoch's checkpoint, e.g. to report to a tuner
#: (``submit.raytune``); set for the duration of a job with ``epoch_hooks.set([...])``.
epoch_hooks: contextvars.ContextVar[tuple[Callable[[int, dict[str, float]], None], ...]] = contextvars.ContextVar(
    "epoch_hooks", default=()
)


class EpochHooks(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        for hook in epoch_hooks.get():
            hook(epoch, {k: float(v) for k, v in (logs or {}).items()})


class TrainingProgress(keras.callbacks.Callback):
    """Epoch, batch, samples/s and the time left (this epoch and the job): a live line on a terminal,
    a log line every 30 s in grid logs, where an epoch of the seed-000 job takes many minutes."""

    def __init__(self, steps: int, batch_size: int, epochs: int):
        super().__init__()
        self.steps, self.batch_size, self.epochs = steps, batch_size, epochs
        self.bar: Progress | None = None
        self.epoch = 0
        self.epoch_seconds: list[float] = []

    def _detail(self, bar: Progress) -> str:
        batch = f"batch {bar.done // self.batch_size}/{self.steps}"
        later = self.epochs - self.epoch - 1
        if not later:
            return batch
        per_epoch = (
            sum(self.epoch_seconds) / len(self.epoch_seconds)
            if self.epoch_seconds
            else bar.total / max(bar.rate(), 1e-9)
        )
        return f"{batch}, training ends in ~{duration(bar.remaining() + later * per_epoch)}"

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.bar = Progress(
            self.steps * self.batch_size, f"epoch {epoch + 1}/{self.epochs}", "samples", detail=self._detail
        )

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is not None:
            self.bar.update(self.batch_size)
            if batch == 0:  # the first step of a run compiles the graph
                self.bar.restart_clock()

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.clear()  # before the Checkpointer's epoch line
            self.epoch_seconds.append(time.perf_counter() - self.bar.start)


class Checkpointer(keras.callbacks.Callback):
    """Per-epoch checkpoint, best model, CSV history, early stopping and the resume state."""

    def __init__(self, directory: Path, history: Path, patience: int, state: dict[str, Any]):
        super().__init__()
        self.directory, self.history, self.patience, self.state = directory, history, patience, state

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        # The rate of this epoch's last step (the optimizer reports the next step's).
        schedule = self.model.optimizer._learning_rate
        step = int(np.asarray(self.model.optimizer.iterations)) - 1
        logs["learning_rate"] = float(np.asarray(schedule(step) if callable(schedule) else schedule))
        monitor = logs.get("val_loss", logs.get("loss"))
        name = f"epoch-{epoch:04d}.keras"
        with atomic_path(self.directory / name) as tmp:
            self.model.save(tmp)
        if monitor is not None and monitor < self.state.get("best", np.inf):
            with atomic_path(self.directory / "best.keras") as tmp:
                shutil.copyfile(self.directory / name, tmp)
            self.state.update(best=monitor, best_epoch=epoch, wait=0)
        else:
            self.state["wait"] = self.state.get("wait", 0) + 1
        new = not self.history.exists()
        with self.history.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", *sorted(logs)])
            if new:
                writer.writeheader()
            writer.writerow({"epoch": epoch, **logs})
        previous = self.state.get("checkpoint")
        self.state.update(epoch=epoch, checkpoint=name)
        write_json(self.directory / "state.json", self.state)  # the commit point
        if previous and previous not in (name, "best.keras"):  # best.keras may be the resume point
            (self.directory / previous).unlink(missing_ok=True)
        log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4g}" for k, v in sorted(logs.items())))
        if self.patience and self.state["wait"] >= self.patience:
            log.info("early stopping: no improvement for %d epochs", self.patience)
            self.model.stop_training = True


def _truncate_history(path: Path, last_epoch: int) -> None:
    """Drop history rows written after the last committed checkpoint (a kill between the two)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
        fields = rows[0].keys() if rows else None
    rows = [r for r in rows if int(r["epoch"]) <= last_epoch]
    if fields is None:
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)


def _resume_point(checkpoints: Path) -> tuple[dict[str, Any], Any]:
    """The saved state and the model to resume from, verified by loading it: the last epoch's
    checkpoint, or else the best one (a damaged or truncated file), or else nothing (train from the
    start).  Each fallback is logged with its reason."""
    from payload.learn.models import load_model

    path = checkpoints / "state.json"
    if not path.exists():
        return {}, None
    try:
        state = json.loads(path.read_text())
        candidates = [(state["checkpoint"], state["epoch"])]
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("checkpoints: %s unreadable (%s); training from the start", path, err)
        return {}, None
    if "best_epoch" in state:
        candidates.append(("best.keras", state["best_epoch"]))
    for name, epoch in candidates:
        try:
            model = load_model(checkpoints / name)
        except Exception as err:  # noqa: BLE001 - any damage (truncated zip, bad weights) means: not this one
            log.warning("checkpoints: %s cannot be loaded (%s)", name, " ".join(str(err).split())[:200])
            continue
        if name != state["checkpoint"]:
            log.warning("checkpoints: resuming from the best epoch, %d, instead", epoch + 1)
            state.update(epoch=epoch, checkpoint=name, wait=0)
        return state, model
    log.warning("checkpoints: none can be loaded; training from the start")
    return {}, None


@dataclass
class TrainResult:
    model: Any
    epochs_run: int
    resumed_from: int | None
    best_epoch: int
    best_loss: float
    steps_per_epoch: int
    replicas: int = 1


def make_stream_factory(
    config: JobConfig,
    sources: list[tuple[EventSource, int]],
    tallies: list[Tally],
    splits: tuple[int, ...],
    seed: int,
    shuffle: bool,
    extra_weight: Callable[[dict[str, np.ndarray], int], np.ndarray] | None = None,
    half: int | None = None,
    augment: bool = False,
    leave_out: tuple[int, int] | None = None,
    limit: int | None = None,
) -> Callable[[int], TrainingStream]:
    """Epoch -> stream of the events of ``splits``; ``limit``: at most about that many of them in
    all, from evenly spaced blocks (``spread_blocks``), which is all a pass then reads."""
    blocks = spread_blocks(tallies, splits, limit) if limit is not None else None
    if blocks is not None:
        every = sum(t.events(splits) for t in tallies)
        n_blocks = sum(len(t.blocks) for t in tallies)
        tallies = [t.of_blocks(index) for t, index in zip(tallies, blocks)]
        used = sum(t.events(splits) for t in tallies)
        log.info(
            "%s: %s of the %s events, from %d of %d blocks spread over the files (at most about %s)",
            "+".join(NAMES[s] for s in splits),
            f"{used:,}",
            f"{every:,}",
            sum(map(len, blocks)),
            n_blocks,
            f"{limit:,}",
        )
    share = 1.0 if half is None else 0.5
    if leave_out is not None and TRAIN in splits:
        share *= 1.0 - 1.0 / leave_out[0]
    counts = [max(1, int(share * t.events(splits))) for t in tallies]
    sumw = [share * sum(t.sumw.get(s, 0.0) for s in splits) for t in tallies]

    def make(epoch: int) -> TrainingStream:
        return TrainingStream(
            sources,
            counts,
            sumw,
            config,
            splits,
            seed=seed * 1000 + epoch,
            shuffle=shuffle,
            extra_weight=extra_weight,
            half=half,
            augment=augment,
            leave_out=leave_out,
            blocks=blocks,
        )

    return make


def train(
    config: JobConfig,
    sources: list[tuple[EventSource, int]],
    tallies: list[Tally],
    output: Path,
    resume: bool = True,
    leave_out: tuple[int, int] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the configured model (``leave_out``: (parts, part) of the training split left out, for a
    cross-fitted ensemble member)."""
    from payload.learn.models import build_model_for, load_model

    checkpoints = output / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    history = output / "history.csv"
    seed = config.training.seed
    keras.utils.set_random_seed(seed)
    configure_precision(config)

    train_streams = make_stream_factory(
        config, sources, tallies, (TRAIN,), seed, shuffle=True, augment=True, leave_out=leave_out
    )
    steps = train_streams(0).steps
    has_validation = all(t.counts.get(VALIDATION, 0) for t in tallies)
    val_streams = (
        make_stream_factory(
            config, sources, tallies, (VALIDATION,), seed + 1, shuffle=False, limit=config.training.validation_events
        )
        if has_validation
        else None
    )

    # Model building, loading and fitting happen on every replica when data parallel.
    with replicated(config) as replicas:
        state, model = _resume_point(checkpoints) if resume else ({}, None)
        resumed_from: int | None = state.get("epoch") if model is not None else None
        if resumed_from is not None:
            _truncate_history(history, resumed_from)
            log.info("resuming after epoch %d from %s", resumed_from + 1, state["checkpoint"])
        else:
            state = {}
            history.unlink(missing_ok=True)
            model = build_model_for(config, sources[0][0])
            compile_model(model, config, steps)
        initial_epoch = 0 if resumed_from is None else resumed_from + 1
        done = initial_epoch >= config.training.epochs or (
            config.training.early_stopping_patience and state.get("wait", 0) >= config.training.early_stopping_patience
        )
        if not done:
            with contextlib.ExitStack() as streams:
                fit_kwargs: dict[str, Any] = {}
                if val_streams is not None:
                    fit_kwargs = {"validation_data": streams.enter_context(validation_input(lambda: val_streams(0)))}
                batches = streams.enter_context(fit_input(train_streams, initial_epoch))
                assert model is not None  # resumed or built above
                model.fit(
                    batches,
                    steps_per_epoch=steps,
                    epochs=config.training.epochs,
                    initial_epoch=initial_epoch,
                    verbose=0,
                    shuffle=False,
                    **fit_kwargs,
                    callbacks=[
                        FiniteLoss(),
                        *(
                            [TrainingProgress(steps, config.training.batch_size, config.training.epochs)]
                            if progress
                            else []
                        ),
                        Checkpointer(checkpoints, history, config.training.early_stopping_patience, state),
                        EpochHooks(),
                    ],
                )
    kept = load_model(checkpoints / ("best.keras" if config.training.keep == "best" else state["checkpoint"]))
    return TrainResult(
        kept,
        state["epoch"] + 1,
        resumed_from,
        state.get("best_epoch", state["epoch"]),
        state.get("best", float("nan")),
        steps,
        replicas,
    )
