"""``payload merge``: the outputs of many jobs (a scan, k folds, an evaluation fan-out) as one result.

Inputs are job tarballs or output directories (globs allowed).  Each is checked: a missing, failed
(``error.json``), incomplete (no ``manifest.json``), truncated or corrupt output is reported in the
summary and skipped (``strict`` makes it an error).  The output directory holds:

    summary.json      every input with its status or the reason it was skipped, the best job, the ensemble;
                      for k folds the points (jobs equal but for the fold) with the metric's mean and
                      spread over folds, and the best point
    jobs.csv, jobs.md every merged job's varying config keys and metrics, best first; jobs.png the metric
    best/             the best job's model bundle (model.keras, scaler.json, config.yaml, metrics.json)
    ensemble/         the average of the jobs' models as one bundle (k folds: the best point's folds;
                      or ``ensemble=True``)
    predictions.h5    per-event predictions of all jobs, keyed by source file and entry (evaluation
                      fan-out: every row; k folds: each event's test-split row from the best point's
                      fold that did not train on it), with metrics and plots over the whole dataset
    friends/          the jobs' ROOT friend trees, one per input file (inputs each held by one job)

Predictions are copied job by job in bounded chunks; the result does not depend on input order, and
merging twice gives the same files.  The directory is built under a temporary name and renamed
(``payload.atomic``).
"""

from __future__ import annotations

import csv
import glob
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from payload.atomic import adler32, atomic_path, hdf5_writing
from payload.config import JobConfig, config_to_dict, load_config
from payload.errors import ConfigError, EmptyInputError, InputCorruptError, InputMissingError, PayloadError
from payload.progress import log
from payload.results import bundle as bundles
from payload.results.schema import HEADLINES, Metrics, parse_metrics

CHUNK = 1 << 20


@dataclass
class Job:
    name: str
    source: str
    directory: Path
    manifest: dict[str, Any]
    metrics: Metrics
    config: JobConfig


def _job_name(path: Path) -> str:
    """A name for the job, also the name of its scratch directory: only letters, digits and ``_.+-``,
    never starting with a dot (a tarball named ``...tgz`` must not extract into the merge root)."""
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        # payload-submit local leaves POINT/out: the point names the job.
        name = path.parent.name if name in ("out", "output") and path.parent.name else name
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name).lstrip(".") or "job"


def expand(inputs: list[str]) -> list[str]:
    """Globs expanded (sorted); plain paths kept even when missing, so they are reported."""
    out: list[str] = []
    for item in inputs:
        for part in item.split(","):
            if not part:
                continue
            matches = sorted(glob.glob(part)) if glob.has_magic(part) else [part]
            out += matches or [part]
    return list(dict.fromkeys(out))


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputCorruptError(f"{what} missing") from None
    except (OSError, ValueError) as err:
        raise InputCorruptError(f"{what} unreadable ({err})") from None


def open_job(source: str, scratch: Path, name: str) -> Job:
    """One job output, checked; raises a ``PayloadError`` whose message is the reason to skip it."""
    from payload.results.archive import safe_extract

    path = Path(source)
    if not path.exists():
        raise InputMissingError("no such file or directory")
    if path.is_file():
        target = scratch / name
        shutil.rmtree(target, ignore_errors=True)
        try:
            directory = safe_extract(path, target)
        except InputCorruptError as err:
            raise InputCorruptError(err.message.split(": ", 1)[-1]) from None
    else:
        directory = path
    if (directory / "error.json").exists():
        error = _read_json(directory / "error.json", "error.json")
        raise InputCorruptError(f"the job failed (exit {error.get('exit_code')}): {error.get('error')}")
    manifest = _read_json(directory / "manifest.json", "manifest.json (the job did not finish)")
    if manifest.get("status") != "success":
        raise InputCorruptError(f"manifest status is {manifest.get('status')!r}")
    metrics = parse_metrics(_read_json(directory / "metrics.json", "metrics.json"))
    try:
        config = load_config(directory / "config.yaml")
    except PayloadError as err:
        raise InputCorruptError(f"config.yaml: {err.message}") from None
    return Job(name, source, directory, manifest, metrics, config)


def collect(inputs: list[str], scratch: Path, strict: bool) -> tuple[list[Job], list[dict[str, str]]]:
    jobs, skipped, names = [], [], set()
    for source in expand(inputs):
        base = name = _job_name(Path(source))
        k = 1
        while name in names:
            k += 1
            name = f"{base}-{k}"
        names.add(name)
        try:
            jobs.append(open_job(source, scratch, name))
        except PayloadError as err:
            if strict:
                raise type(err)(f"job output {source}: {err.message} (--strict)") from None
            log.warning("skipping %s: %s", source, err.message)
            skipped.append({"name": name, "input": source, "reason": err.message})
    return sorted(jobs, key=lambda j: j.name), sorted(skipped, key=lambda s: s["name"])


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _varying(flat: list[dict[str, Any]]) -> list[str]:
    """The dotted config keys whose values differ between the flattened configs, sorted."""
    keys = sorted({k for f in flat for k in f})
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]


def metric_value(job: Job, metric: str) -> float | None:
    return job.metrics.headline(metric)


def job_table(jobs: list[Job], metric: str) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows): the config keys that differ between jobs and the headline metrics, best first."""
    flat = [_flatten(config_to_dict(j.config)) for j in jobs]
    varying = _varying(flat)
    rows = []
    for job, f in zip(jobs, flat):
        row: dict[str, Any] = {"job": job.name}
        row.update({k: json.dumps(f.get(k)) if isinstance(f.get(k), (list, dict)) else f.get(k) for k in varying})
        row.update({m: metric_value(job, m) for m in HEADLINES})
        row["epochs_run"] = job.metrics.training.epochs_run if job.metrics.training else None
        rows.append(row)
    sign = 1 if HEADLINES[metric] == "min" else -1
    rows.sort(key=lambda r: (r[metric] is None, sign * (r[metric] or 0.0), r["job"]))
    return ["job", *varying, *HEADLINES, "epochs_run"], rows


def _write_table(columns: list[str], rows: list[dict[str, Any]], metric: str, out: Path) -> None:
    with open(out / "jobs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def cell(v: Any) -> str:
        return "" if v is None else f"{v:.5g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    (out / "jobs.md").write_text("\n".join(lines) + "\n")

    from payload.results.plots import bar

    bar(
        [r["job"] for r in rows if r[metric] is not None],
        [r[metric] for r in rows if r[metric] is not None],
        metric,
        out / "jobs.png",
    )


def _copy_bundle(job: Job, dest: Path) -> None:
    dest.mkdir(parents=True)
    for name in bundles.FILES:
        shutil.copyfile(job.directory / name, dest / name)


def _ensemble(jobs: list[Job], dest: Path) -> dict[str, Any]:
    from payload.config import dump_config
    from payload.learn.models.ensemble import build_ensemble, identity_scaler

    data = [config_to_dict(j.config)["data"] for j in jobs]
    if any(d != data[0] for d in data):
        raise ConfigError("ensemble: the jobs were trained on different data layouts (data sections differ)")
    members, used, skipped = [], [], []
    for job in jobs:
        try:
            loaded = bundles.load(job.directory, job.source)
        except PayloadError as err:
            log.warning("ensemble: leaving out %s: %s", job.name, err.message)
            skipped.append({"job": job.name, "reason": err.message})
            continue
        members.append((loaded.model, loaded.scaler))
        used.append(job)
    if not members:
        raise InputCorruptError(f"ensemble: no member can be loaded ({skipped[0]['reason']})")
    model = build_ensemble(members)
    dest.mkdir(parents=True)
    model.save(dest / "model.keras")
    identity_scaler(members[0][1]).save(dest / "scaler.json")
    dump_config(used[0].config, dest / "config.yaml")
    _check_applies(dest, model)
    info = {"members": [j.name for j in used], "left_out": skipped}
    (dest / "members.json").write_text(json.dumps(info, indent=1))
    return info


def _check_applies(dest: Path, built) -> None:
    """The saved ensemble loads as a bundle and gives the built model's finite scores on a test batch:
    an ensemble that would fail later is not written."""
    from payload.learn.models import input_names
    from payload.results.evaluate import predict

    loaded = bundles.load(dest)
    rng = np.random.default_rng(0)
    shapes = dict(zip(input_names(built), (tuple(t.shape) for t in built.inputs)))
    slots = shapes.get("objects", (None, 8))[1] or 8
    batch = {}
    if "objects" in shapes:
        batch["mask"] = (np.arange(slots) < rng.integers(1, slots + 1, 16)[:, None]).astype(np.float32)
        batch["objects"] = (
            np.abs(rng.normal(size=(16, slots, shapes["objects"][-1]))) * 10 * batch["mask"][:, :, None]
        ).astype(np.float32)
    if "events" in shapes:
        batch["events"] = np.abs(rng.normal(size=(16, shapes["events"][-1]))).astype(np.float32)
    scores = predict(loaded.model, batch)
    if not np.isfinite(scores).all() or not np.allclose(scores, predict(built, batch), rtol=1e-4, atol=1e-6):
        raise InputCorruptError("ensemble: the saved ensemble does not reproduce its members' scores; not written")


def fold_points(jobs: list[Job], metric: str) -> list[dict[str, Any]]:
    """k-fold jobs grouped by point (configs equal but for ``split.fold``), best first: per point its
    jobs, folds, whether every fold is there exactly once, and the metric's mean and spread over folds."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        config = config_to_dict(job.config)
        config["split"].pop("fold", None)
        groups.setdefault(json.dumps(config, sort_keys=True), []).append(job)
    flat = {key: _flatten(json.loads(key)) for key in groups}
    varying = _varying(list(flat.values()))
    points: list[dict[str, Any]] = []
    for key, members in groups.items():
        folds = sorted(j.config.split.fold for j in members)
        values = [v for v in (metric_value(j, metric) for j in members) if v is not None]
        points.append(
            {
                "jobs": [j.name for j in sorted(members, key=lambda j: j.config.split.fold)],
                "overrides": {k: flat[key].get(k) for k in varying},
                "folds": folds,
                "complete": folds == list(range(members[0].config.split.folds)),
                f"{metric}_mean": float(np.mean(values)) if values else None,
                f"{metric}_std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            }
        )
    sign = 1 if HEADLINES[metric] == "min" else -1
    mean = f"{metric}_mean"
    points.sort(key=lambda p: (not p["complete"], p[mean] is None, sign * float(p[mean] or 0.0)))
    for i, point in enumerate(points):
        point["point"] = f"p{i:03d}"
    return points


def merge_predictions(jobs: list[Job], path: Path, test_only: bool) -> dict[str, Any]:
    """Concatenate the jobs' predictions (streamed), keyed by a global source-file table."""
    import h5py

    from payload.learn.splits import TEST
    from payload.results.evaluate import PRED_FIELDS
    from payload.results.metrics import BinaryScores, WeightedHist

    files: list[str] = []
    index: dict[str, int] = {}
    seen: dict[tuple[int, str], str] = {}
    duplicates: list[str] = []
    scores = BinaryScores()
    reweight = jobs[0].config.task == "reweight"
    max_w = jobs[0].config.evaluation.max_weight
    weight_hist = WeightedHist(np.geomspace(1.0 / max_w, max_w, 61)) if reweight else None
    labelled = True
    out = h5py.File(path, "w")
    with hdf5_writing(out, path):
        fields = {**PRED_FIELDS, "job": np.int32}
        # Handles kept for the file's life (see payload.results.evaluate.PredictionWriter).
        columns = {
            name: out.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(65536,))
            for name, dtype in fields.items()
        }
        size = 0
        for j, job in enumerate(jobs):
            pred = job.directory / "predictions.h5"
            try:
                src = h5py.File(pred, "r")
            except OSError as err:
                raise InputCorruptError(f"job output {job.source}: predictions.h5 unreadable ({err})") from None
            with src:
                per_sample = json.loads(src.attrs["source_files"])
                labelled &= len(per_sample) == 2
                remap: dict[int, np.ndarray] = {}
                for sample, names in per_sample.items():
                    table: list[int] = []
                    for fname in names:
                        key = fname.rstrip("/").rsplit("/", 1)[-1]
                        if key not in index:
                            index[key] = len(files)
                            files.append(key)
                        if not test_only:
                            owner = seen.setdefault((int(sample), key), job.name)
                            if owner != job.name:
                                duplicates.append(f"{key} (sample {sample}) in {owner} and {job.name}")
                        table.append(index[key])
                    remap[int(sample)] = np.array(table, dtype=np.int32)
                n = len(src["entry"])
                for a in range(0, n, CHUNK):
                    cols = {k: src[k][a : a + CHUNK] for k in PRED_FIELDS}
                    keep = cols["split"] == TEST if test_only else np.ones(len(cols["entry"]), dtype=bool)
                    cols = {k: v[keep] for k, v in cols.items()}
                    file_index = np.empty(len(cols["entry"]), dtype=np.int32)
                    for sample, table in remap.items():  # type: ignore[assignment]
                        sel = cols["sample"] == sample
                        file_index[sel] = table[cols["file_index"][sel]]
                    cols["file_index"] = file_index
                    cols["job"] = np.full(len(file_index), j, dtype=np.int32)
                    m = len(file_index)
                    for k, ds in columns.items():
                        ds.resize(size + m, axis=0)
                        ds[size:] = cols[k]
                    size += m
                    test = (cols["split"] == TEST) & ~cols["outlier"]
                    if len(per_sample) == 2 and test.any():
                        scores.fill(cols["score"][test], cols["label"][test], cols["weight"][test].astype(np.float64))
                    if weight_hist is not None:
                        prim = test & (cols["sample"] == 0)
                        weight_hist.fill(cols["nn_weight"][prim], cols["weight"][prim].astype(np.float64))
        out.attrs["source_files"] = json.dumps(files)
        out.attrs["jobs"] = json.dumps([j.name for j in jobs])
        out.attrs["fields"] = (
            "one row per event: sample, file_index (into the source_files attribute: file base "
            "names), entry, split, outlier, label, score, weight, nn_weight, job (into jobs)"
        )
    result: dict[str, Any] = {
        "rows": size,
        "rows_kept": "test split of each fold" if test_only else "all",
        "source_files": len(files),
        "duplicate_files": duplicates,
    }
    if labelled and scores.count:
        result["test"] = scores.summary()
    return {"metrics": result, "scores": scores if labelled and scores.count else None, "weight_hist": weight_hist}


def merge_friends(jobs: list[Job], dest: Path) -> dict[str, Any]:
    """The jobs' friend trees side by side (an evaluation fan-out: each input in one job), each
    checked against its job's manifest: a missing or altered one is listed as damaged and not copied
    (the job's model and predictions still merge).  An input in several jobs (k folds, a scan) has no
    single answer: it is listed, not merged; each job's own friends stay in its output."""
    owners: dict[str, list[tuple[Job, dict[str, Any]]]] = {}
    for job in jobs:
        for entry in job.manifest.get("friends", []):
            owners.setdefault(entry["file"], []).append((job, entry))
    copied, several, damaged = [], [], []
    for name, held in sorted(owners.items()):
        if len(held) > 1:
            several.append(f"{name} ({', '.join(j.name for j, _ in held)})")
            continue
        job, entry = held[0]
        source = job.directory / "friends" / name
        if not source.is_file() or adler32(source) != entry["adler32"]:
            log.warning("job %s: friends/%s missing or not the file its manifest lists; not merged", job.name, name)
            damaged.append({"file": name, "job": job.name})
            continue
        dest.mkdir(exist_ok=True)
        shutil.copyfile(source, dest / name)
        copied.append({**entry, "job": job.name})
    if several:
        log.info(
            "friend trees of %d input(s) come from several jobs and were not merged: %s",
            len(several),
            "; ".join(several[:3]),
        )
    return {"files": copied, "in_several_jobs": several, "damaged": damaged}


def merge(
    inputs: list[str],
    output: str | Path,
    metric: str = "best_loss",
    ensemble: bool | None = None,
    predictions: str = "auto",
    strict: bool = False,
) -> dict[str, Any]:
    if metric not in HEADLINES:
        raise ConfigError(f"merge metric {metric!r}: choose one of {', '.join(HEADLINES)}")
    output = Path(output)
    with atomic_path(output, "merge output") as tmp:
        tmp.mkdir()
        jobs, skipped = collect(inputs, tmp / "work", strict)
        if not jobs:
            raise EmptyInputError(
                f"merge: none of the {len(skipped)} inputs is a usable job output "
                f"({'; '.join(s['name'] + ': ' + s['reason'] for s in skipped[:3])})"
            )
        summary: dict[str, Any] = {
            "inputs": len(jobs) + len(skipped),
            "merged": [j.name for j in jobs],
            "skipped": skipped,
            "metric": metric,
        }
        trained = [j for j in jobs if j.metrics.mode == "train"]
        kfold = any(j.config.split.folds >= 2 for j in trained)
        chosen = trained  # the jobs an ensemble and out-of-fold predictions are built from
        if kfold:
            points = fold_points(trained, metric)
            summary["points"] = points
            best_point = points[0]
            if not best_point["complete"]:
                log.warning(
                    "no point has every fold exactly once (folds %s): the best incomplete point is used",
                    best_point["folds"],
                )
            summary["best_point"] = best_point
            chosen = [j for j in trained if j.name in best_point["jobs"]]
            log.info(
                "best point %s (%s mean %.5g over folds %s)",
                best_point["point"],
                metric,
                best_point[f"{metric}_mean"] or float("nan"),
                best_point["folds"],
            )
        if trained:
            columns, rows = job_table(trained, metric)
            _write_table(columns, rows, metric, tmp)
            best = rows[0]
            if best[metric] is not None:
                best_job = next(j for j in trained if j.name == best["job"])
                _copy_bundle(best_job, tmp / "best")
                summary["best"] = {"job": best_job.name, metric: best[metric], "directory": "best"}
        if trained and (ensemble or (ensemble is None and kfold)):
            summary["ensemble"] = _ensemble(chosen, tmp / "ensemble")
        mode = predictions
        if mode == "auto":
            mode = "all" if all(j.metrics.mode == "evaluate" for j in jobs) else "test" if kfold else "none"
        if mode != "none":
            from payload.results import plots
            from payload.results.evaluate import Evaluation

            merged = merge_predictions(
                chosen if mode == "test" else jobs, tmp / "predictions.h5", test_only=mode == "test"
            )
            summary["predictions"] = merged["metrics"]
            (tmp / "plots").mkdir()
            if merged["scores"] is not None:
                plots.roc(Evaluation(merged["metrics"], merged["scores"], []), tmp / "plots" / "roc.png")
            if merged["weight_hist"] is not None and merged["weight_hist"].sumw.sum() > 0:
                plots.weights({"nn": (merged["weight_hist"], 1.0)}, tmp / "plots" / "nn_weights.png")
        summary["friends"] = merge_friends(jobs, tmp / "friends")
        shutil.rmtree(tmp / "work", ignore_errors=True)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True, default=str))
    log.info("merged %d of %d job outputs into %s", len(jobs), summary["inputs"], output)
    return summary
