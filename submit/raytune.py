"""A scan as Ray Tune trials: on this machine (a local Ray runtime) or an existing cluster (``address``).

The same scan file and point configs as PanDA, HTCondor and local runs.  Each trial is one ordinary
``payload run`` in ``WORKDIR/<point>/`` (output ``out/``, tarball ``out.tgz``), holding one GPU when
the cluster has any; every epoch's metrics are reported to Tune, so a scheduler such as ASHA stops
poor points early (their outputs stay unfinished, and ``payload merge`` lists them as skipped).
Rerunning the same command resumes: Tune restores its experiment from ``WORKDIR/tune`` and each
unfinished trial's job resumes from its last checkpoint in its directory.
"""

from __future__ import annotations

import contextlib
import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from payload.atomic import write_json
from payload.errors import ConfigError
from payload.results.schema import read_metrics
from payload.signals import Terminated

INSTALL = "pip install 'grid-payload[ray]'"
EXPERIMENT = "tune"


@dataclass
class RayScan:
    primary: list[str]
    secondary: list[str]
    workdir: Path
    address: str | None = None  # an existing cluster ("auto", "ray://host:10001"); None: a local runtime
    metric: str = "val_loss"
    scheduler: str = "asha"  # or "fifo": every point runs to its last epoch
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: one GPU per trial when the cluster has GPUs
    parallel: int | None = None  # trials running at once (None: as many as the resources allow)


class StoppedEarly(Terminated):
    """Tune's scheduler stopped the trial: recorded in the job's error.json as the stop it is."""

    def __init__(self, epoch: int):
        super().__init__(signal.SIGTERM)
        self.message = f"stopped early by the Tune scheduler after epoch {epoch}"
        self.args = (self.message,)


def _trial(config: dict[str, Any]) -> None:
    """One point (``config["point"]``): the job in its own directory, epoch metrics reported to Tune."""
    from ray import tune

    from payload.config import load_config
    from payload.job import train_job
    from payload.learn.train import epoch_hooks

    point = config["point"]
    directory = Path(point["workdir"]) / point["name"]
    directory.mkdir(parents=True, exist_ok=True)

    job = load_config(point["config"])
    epochs = job.training.epochs
    last: dict[str, float] = {}

    def report(epoch: int, logs: dict[str, float]) -> None:
        if epoch + 1 >= epochs:  # trained to the end: nothing left to stop, the job goes on to evaluate
            last.update(epoch=epoch + 1, **logs)
            return
        try:
            tune.report({"epoch": epoch + 1, **logs})
        except SystemExit:  # how Tune stops a function trial: the job records why, then Tune ends it
            raise StoppedEarly(epoch + 1) from None

    token = epoch_hooks.set((report,))
    try:
        train_job(
            job,
            ",".join(point["primary"]),
            ",".join(point["secondary"]) or None,
            directory / "out",
            tarball=directory / "out.tgz",
            progress=False,
        )
    except StoppedEarly:
        raise SystemExit(0) from None
    finally:
        epoch_hooks.reset(token)
    # The last epoch, once the job is complete: Tune requires the metric in a trial's results (a
    # one-epoch point reported none, and Tune ended the whole scan), and may now stop the trial.
    if last:
        with contextlib.suppress(SystemExit):
            tune.report(last)


def _status(out: Path, epochs: int | None, failed: bool) -> tuple[str, str | None]:
    """What the job's own files say: finished (manifest.json), failed or stopped (error.json).  A trial
    Tune stopped before its job could write error.json gets one, so merge reports it as stopped."""
    if (out / "manifest.json").exists():
        return "finished", None
    try:
        error = json.loads((out / "error.json").read_text())["error"]
    except (OSError, ValueError, KeyError):
        if failed or not out.exists():
            return "error", None
        error = f"stopped early by the Tune scheduler after epoch {epochs}"
        write_json(
            out / "error.json",
            {"status": "failed", "exit_code": 128 + signal.SIGTERM, "stage": "train", "error": error},
        )
    return ("stopped early" if error.startswith("stopped early") else "error"), error


def _check_same_experiment(workdir: Path, points: list[dict[str, Any]], scan: RayScan) -> None:
    """Rerunning resumes the experiment in ``WORKDIR/tune``, whose points are fixed when it starts: a
    changed scan, config or input list there would be silently ignored, so it is refused instead."""
    record = workdir / "experiment.json"
    current = {
        "points": [{**p, "config_text": Path(p["config"]).read_text()} for p in points],
        "metric": scan.metric,
        "scheduler": scan.scheduler,
    }
    if (workdir / EXPERIMENT).exists() and record.exists():
        if json.loads(record.read_text()) != current:
            raise ConfigError(
                f"--workdir {workdir}: holds a Ray Tune experiment of another scan (points, configs, inputs, "
                "metric or scheduler differ); give a new --workdir to start this one"
            )
        return
    write_json(record, current)


def run_scan(scan: RayScan, configs: list[Path], names: list[str]) -> list[dict[str, Any]]:
    """Run every point as a Tune trial; one summary row per point, also in ``WORKDIR/summary.json``."""
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    except ImportError:
        raise ConfigError(f"payload-submit ray needs Ray Tune: {INSTALL}") from None

    from payload.config import load_config

    workdir = scan.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    epochs = max(load_config(c).training.epochs for c in configs)
    points = [
        {
            "name": n,
            "config": str(Path(c).resolve()),
            "workdir": str(workdir),
            "primary": [str(Path(p).resolve()) for p in scan.primary],
            "secondary": [str(Path(p).resolve()) for p in scan.secondary],
        }
        for c, n in zip(configs, names)
    ]
    _check_same_experiment(workdir, points, scan)
    ray.init(
        address=scan.address,
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
        configure_logging=False,
    )
    try:
        gpus = scan.gpus_per_trial
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        trainable = tune.with_resources(_trial, {"cpu": scan.cpus_per_trial, "gpu": gpus})
        scheduler = (
            ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=1, reduction_factor=2)
            if scan.scheduler == "asha"
            else FIFOScheduler()
        )
        path = workdir / EXPERIMENT
        if tune.Tuner.can_restore(str(path)):
            tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"point": tune.grid_search(points)},
                tune_config=tune.TuneConfig(
                    metric=scan.metric, mode="min", scheduler=scheduler, max_concurrent_trials=scan.parallel
                ),
                run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(workdir), verbose=0),
            )
        grid = tuner.fit()
        rows = []
        for result in (grid[i] for i in range(len(grid))):
            point = (result.config or {})["point"]
            metrics = result.metrics or {}
            status, error = _status(workdir / point["name"] / "out", metrics.get("epoch"), result.error is not None)
            ran: int | None = metrics.get("epoch")
            if status == "finished":  # its last epoch is not reported to Tune: the job's own record
                job = read_metrics(workdir / point["name"] / "out" / "metrics.json")
                ran = job.training.epochs_run if job.training else ran
            rows.append(
                {
                    "name": point["name"],
                    "directory": str(workdir / point["name"]),
                    "status": status,
                    "epochs": ran,
                    scan.metric: metrics.get(scan.metric),
                    "error": error or (str(result.error) if result.error else None),
                }
            )
    finally:
        ray.shutdown()
    rows.sort(key=lambda r: r["name"])
    (workdir / "summary.json").write_text(json.dumps(rows, indent=1, default=str))
    return rows
