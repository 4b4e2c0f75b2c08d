"""payload merge on real job outputs: k folds trained here, one evaluation fan-out, and broken inputs."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from payload.config import parse_config
from payload.job import evaluate_job, train_job
from payload.results.merge import merge

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[1] / "payload" / "resources"
SAMPLE_A, SAMPLE_B = str(DATA / "sample_A.root"), str(DATA / "sample_B.root")
FOLDS = 3


def fold_config(fold: int, lr: float = 0.003):
    raw = yaml.safe_load((DATA / "demo.yaml").read_text())
    raw["training"].update({"epochs": 1, "batch_size": 512, "learning_rate": lr})
    raw["evaluation"].update(closure_classifier=False, independent_test=False, baseline="none")
    raw["split"].update({"folds": FOLDS, "fold": fold, "validation": 0.2})
    return parse_config(raw)


#: Two points of a scan (learning rates), each trained on every fold: the k-fold x scan case.
RATES = (0.001, 0.006)


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    """Two points x three folds of real jobs as tarballs, named p<point>f<fold>."""
    root = tmp_path_factory.mktemp("folds")
    tarballs = []
    for point, lr in enumerate(RATES):
        for fold in range(FOLDS):
            out = root / f"p{point}f{fold}"
            train_job(fold_config(fold, lr), SAMPLE_A, SAMPLE_B, out, tarball=root / f"{out.name}.tgz", progress=False)
            tarballs.append(root / f"{out.name}.tgz")
    return root, tarballs


def merge_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "payload", "-q", "merge", *args], capture_output=True, text=True, timeout=600
    )


def broken_inputs(root: Path, good: Path) -> list[str]:
    """Every way a job output arrives broken from the grid."""
    truncated = root / "truncated.tgz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    corrupt = root / "corrupt.tgz"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    evil = root / "evil.tgz"
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(good, arcname="../escape.tgz")
    failed = root / "failed"
    failed.mkdir(exist_ok=True)
    (failed / "error.json").write_text(
        json.dumps({"status": "failed", "exit_code": 3, "error": "input x.root: no such file"})
    )
    unfinished = root / "unfinished"
    unfinished.mkdir(exist_ok=True)
    (unfinished / "metrics.json").write_text("{}")
    return [str(root / "deleted.tgz"), str(truncated), str(corrupt), str(evil), str(failed), str(unfinished)]


def test_kfold_merge_groups_points_and_folds(folds, tmp_path):
    root, tarballs = folds
    bad = broken_inputs(tmp_path, tarballs[0])
    proc = merge_cli(str(root / "p*.tgz"), *bad, "--output", str(tmp_path / "merged"))
    assert proc.returncode == 0, proc.stderr
    merged = tmp_path / "merged"
    summary = json.loads((merged / "summary.json").read_text())
    names = [f"p{p}f{f}" for p in range(len(RATES)) for f in range(FOLDS)]
    assert summary["merged"] == names
    reasons = {s["name"]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"deleted", "truncated", "corrupt", "evil", "failed", "unfinished"}
    assert "no such file" in reasons["deleted"] and "escapes" in reasons["evil"]
    assert "failed (exit 3)" in reasons["failed"] and "manifest.json" in reasons["unfinished"]
    assert not (tmp_path / "escape.tgz").exists()

    # Points: jobs equal but for the fold, with the metric's mean and spread over their folds.
    losses = {n: json.loads((root / n / "metrics.json").read_text())["training"]["best_loss"] for n in names}
    points = summary["points"]
    assert len(points) == len(RATES) and all(p["complete"] and p["folds"] == [0, 1, 2] for p in points)
    for point in points:
        values = [losses[j] for j in point["jobs"]]
        assert point["best_loss_mean"] == pytest.approx(np.mean(values))
        assert point["best_loss_std"] == pytest.approx(np.std(values, ddof=1))
        assert set(point["overrides"]) == {"training.learning_rate"}
    assert points[0]["best_loss_mean"] <= points[1]["best_loss_mean"]
    best_point = summary["best_point"]
    assert best_point == points[0]
    best_rate = best_point["overrides"]["training.learning_rate"]
    assert best_point["jobs"] == [f"p{RATES.index(best_rate)}f{f}" for f in range(FOLDS)]

    # The best single job is still reported, with its bundle.
    best = min(losses, key=losses.get)
    assert summary["best"]["job"] == best and summary["best"]["best_loss"] == pytest.approx(losses[best])
    assert (merged / "best" / "model.keras").read_bytes() == (root / best / "model.keras").read_bytes()
    with open(merged / "jobs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == sorted(losses, key=lambda n: (losses[n], n))
    assert {"training.learning_rate", "split.fold"} <= set(rows[0])  # the keys that vary between jobs
    assert (merged / "jobs.png").is_file() and (merged / "jobs.md").read_text().startswith("| job |")

    # Out-of-fold predictions of the best point: every event once, scored by the fold that did not train on it.
    with h5py.File(merged / "predictions.h5") as p:
        jobs = json.loads(p.attrs["jobs"])
        assert jobs == best_point["jobs"]
        key = np.stack([p["sample"][:], p["file_index"][:], p["entry"][:]], axis=1)
        assert len(np.unique(key, axis=0)) == len(key)
        with h5py.File(root / jobs[0] / "predictions.h5") as q:
            assert len(key) == len(q["entry"])  # each fold job predicted every event; the test rows partition them
        for j, name in enumerate(jobs):
            with h5py.File(root / name / "predictions.h5") as q:
                test = q["split"][:] == 2
                mine = p["job"][:] == j
                np.testing.assert_array_equal(p["score"][:][mine], q["score"][:][test])
    assert summary["predictions"]["test"]["events"] > 0 and (merged / "plots" / "roc.png").is_file()

    # The ensemble averages the best point's folds, loadable and usable by evaluate mode.
    assert json.loads((merged / "ensemble" / "members.json").read_text())["members"] == jobs
    applied = tmp_path / "applied"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "payload",
            "-q",
            "run",
            "--mode",
            "evaluate",
            "--model",
            str(merged / "ensemble"),
            "--primary",
            SAMPLE_A,
            "--output",
            str(applied),
            "--no-job-report",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    with h5py.File(applied / "predictions.h5") as e:
        members = []
        for name in jobs:
            with h5py.File(root / name / "predictions.h5") as q:
                members.append(q["score"][:][q["sample"][:] == 0])
        np.testing.assert_allclose(e["score"][:], np.mean(members, axis=0), rtol=1e-4, atol=1e-5)

    # Merging twice gives the same result.
    again = merge_cli(str(root / "p*.tgz"), *bad, "--output", str(tmp_path / "merged"))
    assert again.returncode == 0, again.stderr
    assert json.loads((merged / "summary.json").read_text()) == summary
    with open(merged / "jobs.csv") as f:
        assert list(csv.DictReader(f)) == rows

    # A point missing a fold is not complete: the complete point is the best one whatever its loss.
    partial = merge([str(t) for t in tarballs if t.name != f"p{RATES.index(best_rate)}f1.tgz"], tmp_path / "partial")
    incomplete = next(p for p in partial["points"] if not p["complete"])
    assert incomplete["folds"] == [0, 2] and partial["best_point"]["complete"]
    assert partial["best_point"]["overrides"]["training.learning_rate"] != best_rate


def test_strict_makes_a_bad_job_an_error(folds, tmp_path):
    _root, tarballs = folds
    bad = broken_inputs(tmp_path, tarballs[0])
    proc = merge_cli(*map(str, tarballs), bad[1], "--output", str(tmp_path / "strict"), "--strict")
    assert proc.returncode == 4 and "truncated.tgz" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "strict").exists()
    proc = merge_cli(*bad, "--output", str(tmp_path / "nothing"))
    assert proc.returncode == 8 and "none of the 6 inputs" in proc.stderr


def test_evaluation_fan_out_concatenates_predictions(folds, tmp_path):
    """One evaluation job per input file, as a grid fan-out does; merged predictions cover both files."""
    _root, tarballs = folds
    outs = []
    for name, sample in (("A", SAMPLE_A), ("B", SAMPLE_B)):
        staged = tmp_path / f"{name}.root"
        shutil.copy(sample, staged)
        out = tmp_path / f"eval{name}" / "out"
        evaluate_job(tarballs[0], str(staged), None, out, progress=False)
        outs.append(out)
    summary = merge([str(o) for o in outs], tmp_path / "merged")
    assert summary["merged"] == ["evalA", "evalB"] and "best" not in summary
    with h5py.File(tmp_path / "merged" / "predictions.h5") as p:
        files = json.loads(p.attrs["source_files"])
        assert files == ["A.root", "B.root"]
        rows = 0
        for j, out in enumerate(outs):
            with h5py.File(out / "predictions.h5") as q:
                mine = p["job"][:] == j
                np.testing.assert_array_equal(p["entry"][:][mine], q["entry"][:])
                np.testing.assert_array_equal(p["score"][:][mine], q["score"][:])
                assert set(p["file_index"][:][mine]) == {j}
                rows += len(q["entry"])
        assert len(p["entry"]) == rows == summary["predictions"]["rows"]
    assert summary["predictions"]["duplicate_files"] == []
