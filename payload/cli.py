"""The ``payload`` command: a thin layer over the plain functions of each stage.

Exit codes (documented in the README): 0 success; 2 bad config or arguments; 3 input missing;
4 input corrupt; 5 tree missing; 6 branch missing; 7 inconsistent data; 8 no events; 9 output not
writable or disk full; 10 Rucio; 11 output directory held by another job; 12 training diverged; 70
internal error (a bug, traceback printed); 128 + N terminated by signal N (SIGINT 130, SIGTERM 143,
SIGUSR1 138).  All stay below 255, as the PanDA pilot records exit codes modulo 255.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from payload import __version__
from payload.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, ConfigError, OutputError, PayloadError
from payload.runtime import prepare_environment, quiet_backend_import
from payload.signals import Terminated

log = logging.getLogger("payload")


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("payload: %(message)s"))
    root = logging.getLogger("payload")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def _config(path: str | None):
    from payload.config import default_config_path, load_config

    return load_config(path or default_config_path())


def cmd_convert(args: argparse.Namespace) -> int:
    from payload.ingest.convert import convert

    result = convert(_config(args.config), args.inputs, args.output, progress=not args.quiet)
    log.info(
        "wrote %s: %d events from %d entries in %.1f s", result.output, result.events, result.entries, result.seconds
    )
    return 0


def _run(args: argparse.Namespace):
    """The train or evaluate job the flags ask for."""
    from payload.job import evaluate_job, train_job

    given = {"tarball": args.tarball, "progress": not args.quiet, "require_gpu": args.require_gpu}
    if args.mode == "evaluate":
        if not args.model:
            raise ConfigError("--mode evaluate needs --model (a trained job's output directory or tarball)")
        return evaluate_job(args.model, args.primary, args.secondary, args.output, **given)
    if not args.config:
        raise ConfigError("--mode train needs --config")
    config = _config(args.config)
    if not args.secondary and config.task != "autoencode":
        raise ConfigError(f"task {config.task} needs --secondary")
    return train_job(config, args.primary, args.secondary, args.output, **given)


def cmd_run(args: argparse.Namespace) -> int:
    from payload.results.gridreport import write_report

    report_dir = Path.cwd()  # where the PanDA pilot looks for userJobMetadata.json
    if args.job_report and not os.access(report_dir, os.W_OK | os.X_OK):
        raise OutputError(
            f"working directory {report_dir}: not writable, and the job report userJobMetadata.json "
            "goes there; run from a writable directory or pass --no-job-report"
        )
    try:
        result = _run(args)
    except (PayloadError, Terminated) as err:
        if args.job_report:
            _report(report_dir, err.exit_code, args.output, error=err.message)
        raise
    except Exception as err:
        if args.job_report:
            _report(report_dir, EXIT_INTERNAL, args.output, error=f"{type(err).__name__}: {err}")
        raise
    if args.job_report:
        write_report(report_dir, 0, args.output, metrics=result.metrics)
    _summary(result)
    return 0


def _report(directory: Path, code: int, output, error: str) -> None:
    """The failed job's report, where space allows (a full disk must not hide the job's own error)."""
    from payload.results.gridreport import write_report

    with contextlib.suppress(OSError):
        write_report(directory, code, output, error=error)


def _summary(result) -> None:
    """The job's last lines: what was done, the headline figures, where the outputs are."""
    from payload.progress import duration
    from payload.results.schema import parse_metrics

    m, manifest = parse_metrics(result.metrics), result.manifest
    timings = manifest.get("timings", {})
    done = f"{m.mode} {m.task}"
    if m.training and m.training.epochs_run is not None:
        done += f", {m.training.epochs_run} epoch(s)"
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in sorted(timings.items(), key=lambda kv: -kv[1])[:4] if v >= 1)
    log.info("done: %s in %s%s", done, duration(sum(timings.values())), f" ({stages})" if stages else "")
    parts = [f"test AUC {m.test.auc:.4f}"] if m.test and m.test.auc is not None else []
    if m.closure_classifier_auc is not None:
        parts.append(f"closure-classifier AUC {m.closure_classifier_auc:.4f}")
    extra = m.model_extra or {}
    if "ams" in extra:
        parts.append(f"best AMS {extra['ams']['ams']:.3f}")
    if "autoencoder" in extra:
        ae = extra["autoencoder"]
        parts.append(f"test MSE {ae['test_mse']:.4g} (predicting the mean: {ae['baseline_mse']:.4g})")
    log.info("%s", ", ".join(parts))
    verdict = m.closure.verdict if m.closure else None
    if verdict is not None:
        state = "closed" if verdict.closed else "NOT closed"
        beats = {
            "better": ", better than the GBReweighter baseline",
            "level": ", level with the GBReweighter baseline within the statistics of these events",
            "worse": ", worse than the GBReweighter baseline",
            None: "",
        }[verdict.against_baseline]
        log.info(
            "reweighting %s on the test events%s%s",
            state,
            beats,
            f": {len(m.warnings)} warning(s) above and in metrics.json" if m.warnings else "",
        )
    friends = manifest.get("friends", [])
    shown = [
        name
        for name in ("model.keras", "model.onnx", "predictions.h5", "metrics.json")
        if name in manifest.get("outputs", {})
    ]
    if friends:
        shown.append(f"friends/ ({len(friends)} ROOT friend tree file(s))")
    shown += ["plots/"] * any(k.startswith("plots/") for k in manifest.get("outputs", {}))
    log.info(
        "outputs in %s: %s%s",
        result.output,
        ", ".join(shown),
        f"; tarball {manifest['tarball']}" if manifest.get("tarball") else "",
    )


def cmd_hpo(args: argparse.Namespace) -> int:
    from payload.hpo import run_point

    out = run_point(
        _config(args.config),
        Path.cwd(),
        Path(args.output),
        args.primary_match,
        args.secondary_match,
        args.objective,
        progress=not args.quiet,
    )
    if out["status"]:
        print(f"payload: error: {out['message']}", file=sys.stderr)
    else:
        log.info("%s", out["message"])
    return out["status"]


def cmd_merge(args: argparse.Namespace) -> int:
    from payload.results.merge import merge

    summary = merge(
        args.inputs,
        args.output,
        metric=args.metric,
        ensemble=args.ensemble,
        predictions=args.predictions,
        strict=args.strict,
    )
    for s in summary["skipped"]:
        log.info("skipped %s: %s", s["input"], s["reason"])
    if "best" in summary:
        log.info("best job %s (%s %.5g)", summary["best"]["job"], args.metric, summary["best"][args.metric])
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from payload.lrfind import lr_range_test

    summary = lr_range_test(
        _config(args.config),
        args.primary,
        args.secondary,
        args.output,
        start=args.start,
        stop=args.stop,
        steps=args.steps,
        progress=not args.quiet,
    )
    print(
        f"suggested learning rate {summary['suggested_learning_rate']:.3g}: "
        f"plot in {(Path(args.output) / 'lr_range.png').resolve()}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from payload.config import load_config
    from payload.job import train_job

    data_dir = Path(__file__).parent / "resources"
    result = train_job(
        load_config(data_dir / "demo.yaml"),
        str(data_dir / "sample_A.root"),
        str(data_dir / "sample_B.root"),
        args.output,
        progress=not args.quiet,
    )
    _summary(result)
    print(
        f"demo finished: plots in {(Path(args.output) / 'plots').resolve()}, "
        f"metrics in {(Path(args.output) / 'metrics.json').resolve()}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="payload", description="Train and apply neural networks on ROOT ntuples.")
    parser.add_argument("--version", action="version", version=f"grid-payload {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    # -v/-q work before or after the subcommand; SUPPRESS keeps the subparser from resetting them.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress display")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", parents=[common], help="ROOT trees -> padded HDF5 event file")
    p.add_argument("--config", help="job config YAML (default: the bundled seed-000 style config)")
    p.add_argument(
        "--inputs",
        required=True,
        nargs="+",
        action="extend",
        help="files, comma-separated lists (PanDA %%IN), globs, directories or root:// URLs",
    )
    p.add_argument("--output", required=True, help="HDF5 file to write")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("run", parents=[common], help="the job: convert, train or evaluate, write one output directory")
    p.add_argument(
        "--primary",
        required=True,
        nargs="+",
        action="extend",
        help="primary dataset (PanDA %%IN): files, comma-separated lists, globs, directories, URLs",
    )
    p.add_argument("--secondary", nargs="+", action="extend", help="secondary dataset (PanDA %%IN2)")
    p.add_argument("--config", help="job config YAML (train mode; evaluate mode uses the model's)")
    p.add_argument("--output", default="output", help="output directory (default: %(default)s)")
    p.add_argument("--mode", choices=["train", "evaluate"], default="train")
    p.add_argument("--model", help="evaluate mode: a trained job's output directory or tarball")
    p.add_argument("--tarball", help="also pack the outputs into this .tar.gz (for PanDA --outputs)")
    p.add_argument(
        "--no-job-report",
        dest="job_report",
        action="store_false",
        help="do not write the grid summary userJobMetadata.json into the working directory",
    )
    p.add_argument(
        "--require-gpu",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("PAYLOAD_REQUIRE_GPU", "") not in ("", "0"),
        help="fail at once (exit 13) when no GPU is usable, instead of training on the CPU "
        "(default: on when PAYLOAD_REQUIRE_GPU=1; the submission helpers set it for GPU requests)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "hpo", parents=[common], help="one PanDA phpo evaluation: input.json + input_ds.json in, output.json out"
    )
    p.add_argument("--config", required=True, help="the base job config; the point's keys override it")
    p.add_argument("--primary-match", required=True, help="file-name pattern of the primary sample, e.g. '*sherpa*'")
    p.add_argument("--secondary-match", help="file-name pattern of the secondary sample")
    p.add_argument(
        "--objective",
        choices=["loss", "auc", "closure"],
        default="loss",
        help="what the steering minimises (default: best validation loss)",
    )
    p.add_argument("--output", default="output", help="output directory (default: %(default)s)")
    p.set_defaults(func=cmd_hpo)

    p = sub.add_parser("merge", parents=[common], help="gather many job outputs into one summary, best model, ensemble")
    p.add_argument("inputs", nargs="+", help="job tarballs or output directories (globs allowed)")
    p.add_argument("--output", required=True, help="directory to write")
    p.add_argument(
        "--metric",
        default="best_loss",
        help="what picks the best job: best_loss (validation), test_loss, test_auc, test_accuracy, "
        "closure (default: %(default)s)",
    )
    p.add_argument(
        "--ensemble",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average the jobs' models into one (default: for k folds only)",
    )
    p.add_argument(
        "--predictions",
        choices=["auto", "all", "test", "none"],
        default="auto",
        help="concatenate per-event predictions: all rows (evaluation fan-out), the test split of "
        "each job (k folds: out-of-fold), or none; auto picks by the jobs",
    )
    p.add_argument("--strict", action="store_true", help="any bad job output is an error, not skipped")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser(
        "lr-find",
        parents=[common],
        help="learning-rate range test: loss against an exponentially rising rate, with a plot",
    )
    p.add_argument("--primary", required=True, nargs="+", action="extend", help="primary dataset, as for run")
    p.add_argument("--secondary", nargs="+", action="extend", help="secondary dataset, as for run")
    p.add_argument("--config", help="job config YAML")
    p.add_argument("--output", default="lr-find", help="output directory (default: %(default)s)")
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate (default: %(default)s)")
    p.add_argument("--stop", type=float, default=10.0, help="last learning rate (default: %(default)s)")
    p.add_argument("--steps", type=int, default=200, help="batches, one rate each (default: %(default)s)")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("demo", parents=[common], help="run the main job on the bundled sample")
    p.add_argument("--output", default="demo-output", help="output directory (default: %(default)s)")
    p.set_defaults(func=cmd_demo)
    return parser


def run_cli(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return func(args)
    except PayloadError as err:
        print(f"payload: error: {err.message}", file=sys.stderr)
        return err.exit_code
    except Terminated as err:
        print(f"payload: {err.message}; a rerun in the same directory resumes", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("payload: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # noqa: BLE001 - a bug: show everything
        import traceback

        traceback.print_exc()
        print("payload: internal error (this is a bug; please report it with the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL


def main(argv: Sequence[str] | None = None) -> int:
    prepare_environment()
    args = build_parser().parse_args(argv)
    # TensorFlow's C++ start-up chatter (oneDNN, CUDA plugin registration, absl) would bury the job's
    # own lines in grid logs; -v shows it.  Set before TensorFlow loads (no command imports it earlier).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if args.verbose else "3")
    quiet_backend_import()
    _setup_logging(args.verbose)
    return run_cli(args.func, args)
