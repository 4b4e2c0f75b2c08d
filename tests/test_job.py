"""The job end to end: real ROOT files in, real (tiny) training, every output checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import uproot
import yaml
from conftest import REPO, run_payload

from payload.config import load_config, parse_config
from payload.job import evaluate_job, train_job

pytestmark = pytest.mark.slow

DATA = REPO / "payload" / "resources"
SAMPLE_A, SAMPLE_B = str(DATA / "sample_A.root"), str(DATA / "sample_B.root")


def tiny_config(**training):
    raw = yaml.safe_load((DATA / "demo.yaml").read_text())
    raw["training"].update({"epochs": 3, "batch_size": 512, **training})
    raw["evaluation"]["closure_epochs"] = 2
    return parse_config(raw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("job") / "out"
    result = train_job(tiny_config(), SAMPLE_A, SAMPLE_B, out, tarball=out.parent / "job.tgz", progress=False)
    return result


def test_outputs_are_complete(trained):
    out = trained.output
    for name in (
        "model.keras",
        "scaler.json",
        "config.yaml",
        "metrics.json",
        "history.csv",
        "predictions.h5",
        "job.log",
        "manifest.json",
        "plots/roc.png",
        "plots/loss.png",
        "plots/calibration.png",
        "plots/nn_weights.png",
        "plots/closure_mjj.png",
        "saved_model/saved_model.pb",
    ):
        assert (out / name).exists(), name
    assert not (out / "error.json").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "success" and manifest["exit_code"] == 0
    assert set(manifest["timings"]) >= {"convert_primary", "convert_secondary", "prepare", "train", "evaluate"}
    peaks = manifest["peak_rss_mb"]  # each stage's own peak (Linux resets the high-water mark per stage)
    assert set(peaks) == set(manifest["timings"]) and all(v > 0 for v in peaks.values())
    assert peaks["train"] > peaks["convert_primary"]  # TensorFlow and the model are loaded only for training
    primary = manifest["inputs"]["primary"][0]
    assert primary["bytes"] == Path(SAMPLE_A).stat().st_size and len(primary["adler32"]) == 8
    assert manifest["device"]["backend"] in ("tensorflow", "jax", "torch")
    assert "model.keras" in manifest["outputs"]
    assert load_config(out / "config.yaml") == tiny_config()
    with open(out / "history.csv") as f:
        assert len(f.readlines()) == 1 + 3


def test_predictions_join_back_to_root(trained):
    with h5py.File(trained.output / "predictions.h5") as f:
        sample, entry, fidx = f["sample"][:], f["entry"][:], f["file_index"][:]
        score, nnw, w, split = f["score"][:], f["nn_weight"][:], f["weight"][:], f["split"][:]
        sources = json.loads(f.attrs["source_files"])
    with uproot.open(SAMPLE_A) as r:
        n_a = r["nominal"].num_entries
    assert sources["0"] == [SAMPLE_A] and sources["1"] == [SAMPLE_B]
    np.testing.assert_array_equal(entry[sample == 0], np.arange(n_a))
    assert (fidx == 0).all()
    assert ((score > 0) & (score < 1)).all()
    # NN weights: p/(1-p) for the primary, normalised so its weighted sum is unchanged; 1 for the secondary.
    assert np.sum((w * nnw)[sample == 0]) == pytest.approx(np.sum(w[sample == 0]), rel=1e-4)
    assert (nnw[sample == 1] == 1).all()
    ratio = score[sample == 0] / (1 - score[sample == 0])
    assert np.corrcoef(ratio, nnw[sample == 0])[0, 1] > 0.99
    assert set(np.unique(split)) == {0, 1, 2}


def test_reweighting_moves_primary_towards_secondary(trained):
    m = trained.metrics
    closure = m["closure"]
    # The toy B has harder jets and more of them: the reweighted A must close the gap, on the event-level
    # variables (p-values from chi2 with ndf = bins - 1) and on every object of each collection.
    for name in ("mjj", "n_jets", "jets1_pt", "sum_pt"):
        c = closure["event_level"][name]
        assert c["nn"]["chi2"] < c["unweighted"]["chi2"], (name, c)
        assert c["unweighted"]["p"] < 0.01 and c["nn"]["ndf"] == c["unweighted"]["ndf"] >= 5
    for name in ("jets_pt", "jets_m"):
        c = closure["object_level"][name]
        assert c["nn"]["ks"] < c["unweighted"]["ks"], (name, c)
    assert closure["event_level_total"]["nn"]["chi2_ndf"] < closure["event_level_total"]["unweighted"]["chi2_ndf"]
    # The independent classifier (no model or scaling shared with the network) sees the raw difference.
    test = closure["independent_test"]
    assert test["results"]["unweighted"]["significant"]
    assert test["results"]["nn"]["auc"] < test["results"]["unweighted"]["auc"]
    assert len(test["permutation_null"]["aucs"]) == 5
    # The baseline is trained and compared on the same test events.
    assert set(closure["event_level"]["mjj"]) == {"unweighted", "nn", "baseline"}
    assert m["baseline"]["method"] == "hep_ml GBReweighter" and min(m["baseline"]["trained_on"]) > 1000
    assert 0 < m["nn_weights"]["test_ess_fraction"] <= 1 and m["nn_weights"]["test_max"] >= 1
    assert m["test"]["auc"] > 0.55
    assert abs(m["closure_classifier_auc"] - 0.5) < abs(m["test"]["auc"] - 0.5)
    assert isinstance(closure["verdict"]["messages"], list) and closure["verdict"]["beats_baseline"] in (True, False)
    assert closure["verdict"]["against_baseline"] in ("better", "level", "worse")
    with h5py.File(trained.output / "predictions.h5") as f:
        primary = f["sample"][:] == 0
        bw = f["baseline_weight"][:]
        assert np.sum((f["weight"][:] * bw)[primary]) == pytest.approx(np.sum(f["weight"][:][primary]), rel=1e-4)
    for name in ("closure_summary.png", "closure_mjj.png", "closure_objects_jets_m.png", "closure_n_leptons.png"):
        assert (trained.output / "plots" / name).stat().st_size > 1000, name


def test_evaluate_on_files_the_model_never_saw_scores_every_event(trained, tmp_path):
    """Copies under new names stand for held-out files: every event is a test event (on the training
    files it is the test split only), and the output says which."""
    import shutil

    a, b = tmp_path / "heldout_A.root", tmp_path / "heldout_B.root"
    shutil.copyfile(SAMPLE_A, a)
    shutil.copyfile(SAMPLE_B, b)
    out = tmp_path / "heldout"
    result = evaluate_job(trained.output, str(a), str(b), out, progress=False)
    m = result.metrics
    with uproot.open(a) as fa, uproot.open(b) as fb:
        total = fa["nominal"].num_entries + fb["nominal"].num_entries
    assert m["test"]["events"] == total
    assert m["scored_on"] == "every event of files the model never trained on"
    assert m["closure"]["events"]["primary"] + m["closure"]["events"]["secondary"] == total
    with h5py.File(out / "predictions.h5") as f:
        assert (f["split"][:] == 2).all()
    assert trained.metrics["test"]["events"] < 0.5 * total  # on the training files: the test split
    assert trained.metrics["scored_on"] == "the test split"
    assert "skipped" in m["baseline"]  # no training events among held-out files to fit it on


def test_evaluate_mode_reproduces_predictions(trained, tmp_path):
    for model in (trained.output, trained.output.parent / "job.tgz"):
        out = tmp_path / f"eval-{Path(model).name}"
        proc = run_payload(
            "run",
            "--mode",
            "evaluate",
            "--model",
            str(model),
            "--primary",
            SAMPLE_A,
            "--secondary",
            SAMPLE_B,
            "--output",
            str(out),
            "-q",
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        with h5py.File(trained.output / "predictions.h5") as a, h5py.File(out / "predictions.h5") as b:
            for key in ("sample", "entry", "split", "nn_weight"):
                np.testing.assert_array_equal(a[key][:], b[key][:])
            np.testing.assert_allclose(a["score"][:], b["score"][:], rtol=1e-5, atol=1e-6)
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["mode"] == "evaluate"
        assert metrics["test"]["auc"] == pytest.approx(trained.metrics["test"]["auc"], abs=1e-4)


def test_resume_after_kill(tmp_path):
    cfg = tmp_path / "job.yaml"
    raw = yaml.safe_load((DATA / "demo.yaml").read_text())
    raw["training"].update({"epochs": 6, "batch_size": 256, "early_stopping_patience": 0})
    raw["evaluation"]["closure_classifier"] = False
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "payload",
        "-q",
        "run",
        "--primary",
        SAMPLE_A,
        "--secondary",
        SAMPLE_B,
        "--config",
        str(cfg),
        "--output",
        str(out),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    state = out / "checkpoints" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 1:
            break
        if proc.poll() is not None:
            pytest.fail("the job ended before it could be killed")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["epoch"]
    assert killed_at < 5, "killed too late to test resuming"
    assert not (out / "manifest.json").exists()
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    log = (out / "job.log").read_text()
    assert f"resuming after epoch {killed_at + 1}" in log
    # The network inputs written before the kill are the rerun's: same event files, same scaler.
    assert "network inputs of primary.h5: reusing primary.inputs.h5" in log
    assert "network inputs of secondary.h5: reusing secondary.inputs.h5" in log
    with open(out / "history.csv") as f:
        epochs = [int(line.split(",")[0]) for line in f.readlines()[1:]]
    assert epochs == list(range(6))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["epochs_run"] == 6
    assert metrics["training"]["resumed_from_epoch"] == killed_at
    # The grid summary the PanDA pilot picks up from the working directory.
    report = json.loads((tmp_path / "userJobMetadata.json").read_text())
    assert report["status"] == "success" and report["exit_code"] == 0
    assert report["metrics"]["epochs_run"] == 6
    assert report["metrics"]["test_auc"] == pytest.approx(metrics["test"]["auc"])
    total = metrics["closure"]["event_level_total"]
    assert report["metrics"]["closure_chi2_ndf_nn"] == pytest.approx(total["nn"]["chi2_ndf"])
    assert report["metrics"]["closure_closed"] == metrics["closure"]["verdict"]["closed"]


def test_failed_job_leaves_error_json(tmp_path):
    out = tmp_path / "out"
    cfg = tmp_path / "job.yaml"
    cfg.write_text((DATA / "demo.yaml").read_text())
    proc = run_payload(
        "run",
        "--primary",
        SAMPLE_A,
        "--secondary",
        str(tmp_path / "missing.root"),
        "--config",
        str(cfg),
        "--output",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 3
    assert "missing.root" in proc.stderr and "Traceback" not in proc.stderr
    error = json.loads((out / "error.json").read_text())
    assert error["status"] == "failed" and error["exit_code"] == 3 and "missing.root" in error["error"]
    assert not (out / "manifest.json").exists() and not (out / "metrics.json").exists()
    report = json.loads((tmp_path / "userJobMetadata.json").read_text())
    assert report == {"status": "failed", "exit_code": 3, "output": str(out), "error": error["error"]}


def test_a_job_failing_after_conversion_closes_its_event_files(tmp_path, monkeypatch):
    """The event files a job opens are closed however it ends, so a rerun (or an in-process caller
    such as the Ray trials) can rewrite them.  The failure is injected into the evaluation stage,
    because no real input makes a job fail after its files are open and before it finishes."""
    import payload.results.evaluate

    def fail(*args, **kwargs):
        raise RuntimeError("injected failure in the evaluation stage")

    monkeypatch.setattr(payload.results.evaluate, "evaluate", fail)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="injected failure"):
        train_job(tiny_config(epochs=1), SAMPLE_A, SAMPLE_B, out, progress=False)
    assert json.loads((out / "error.json").read_text())["stage"] == "evaluate"
    still_open = [f.name.decode() for f in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)]
    assert not [name for name in still_open if name.startswith(str(out))]
    assert not (out / "manifest.json").exists()


def test_evaluate_refuses_a_tarball_that_escapes(tmp_path):
    import io
    import tarfile

    evil = tmp_path / "evil.tgz"
    with tarfile.open(evil, "w:gz") as tar:
        data = b"x"
        info = tarfile.TarInfo("../outside.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    proc = run_payload(
        "run",
        "--mode",
        "evaluate",
        "--model",
        str(evil),
        "--primary",
        SAMPLE_A,
        "--output",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert proc.returncode == 4 and "escapes" in proc.stderr
    assert not (tmp_path / "outside.txt").exists()


def test_batches_mix_both_classes_in_proportion(trained):
    from payload.learn.dataset import EventSource
    from payload.learn.scaling import Scaler
    from payload.learn.splits import TRAIN
    from payload.learn.train import make_stream_factory, prepare

    config = tiny_config()
    work = trained.output / "work"
    raw = [EventSource(work / "primary.h5", config, None), EventSource(work / "secondary.h5", config, None)]
    _, tallies = prepare(config, raw)
    scaler = Scaler.load(trained.output / "scaler.json")
    sources = [
        (EventSource(work / "primary.h5", config, scaler), 0),
        (EventSource(work / "secondary.h5", config, scaler), 1),
    ]
    stream = make_stream_factory(config, sources, tallies, (TRAIN,), seed=3, shuffle=True)(0)
    expected = tallies[1].counts[TRAIN] / (tallies[0].counts[TRAIN] + tallies[1].counts[TRAIN])
    batches = stream.batches()
    seen = set()
    for _ in range(stream.steps):
        inputs, y, w = next(batches)
        assert abs(y.mean() - expected) < 2 / len(y)
        # Class balancing: both classes carry the same total weight.
        assert w[y[:, 0] == 1].sum() == pytest.approx(w[y[:, 0] == 0].sum(), rel=0.02)
        assert inputs["objects"].shape[1:] == (20, 5)
        seen.update(map(tuple, inputs["objects"][:, 0, :2].tolist()))
    # One epoch covers (nearly) every training event once.
    total = tallies[0].counts[TRAIN] + tallies[1].counts[TRAIN]
    assert len(seen) > 0.95 * total


def test_evaluate_one_sample_gives_weights_without_metrics(trained, tmp_path):
    out = tmp_path / "applied"
    proc = run_payload(
        "run",
        "--mode",
        "evaluate",
        "--model",
        str(trained.output),
        "--primary",
        SAMPLE_A,
        "--output",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert "test" not in metrics and "closure" not in metrics
    with h5py.File(out / "predictions.h5") as a, h5py.File(trained.output / "predictions.h5") as b:
        primary = b["sample"][:] == 0
        np.testing.assert_allclose(a["score"][:], b["score"][:][primary], rtol=1e-5, atol=1e-6)
        # Normalised over the same primary events, the weights are the training job's.
        np.testing.assert_allclose(a["nn_weight"][:], b["nn_weight"][:][primary], rtol=1e-4)


def test_cross_fitted_members_weight_only_events_they_did_not_train_on(tmp_path):
    """model.ensemble 2 with ensemble_split folds: each member leaves one part of the training split out;
    a training event's NN weight comes from the member that left it out, every other event's from the
    average of both (recomputed here from the members' own saved models)."""
    from payload.learn.dataset import EventSource
    from payload.learn.models import load_model
    from payload.learn.scaling import Scaler
    from payload.learn.splits import TRAIN, part

    raw = yaml.safe_load((DATA / "demo.yaml").read_text())
    raw["training"].update(epochs=1)
    raw["model"].update(ensemble=2, ensemble_split="folds", high_level_inputs=True)
    raw["evaluation"].update(closure_classifier=False, independent_test=False, baseline="none")
    config = parse_config(raw)
    out = tmp_path / "out"
    result = train_job(config, SAMPLE_A, SAMPLE_B, out, progress=False)
    assert result.metrics["training"]["ensemble_split"] == "folds"
    members = [load_model(out / "members" / f"{k:02d}" / "checkpoints" / "best.keras") for k in range(2)]
    scaler = Scaler.load(out / "scaler.json")
    assert (
        "jets1_pt" in scaler.events.names and scaler.events.transforms[scaler.events.names.index("jets1_pt")] == "log"
    )
    source = EventSource(out / "work" / "primary.h5", config, scaler)
    block = next(source.iterate(splits=None, drop_outliers=False))
    each = np.stack(
        [
            np.asarray(m.predict_on_batch({k: block.inputs[k] for k in ("objects", "mask", "events")})).ravel()
            for m in members
        ]
    )
    owner = part(block.entry, source.file_keys[block.file_index], config.split.seed, 2)
    train = block.split == TRAIN
    expected = each.mean(axis=0)
    expected[train] = each[owner[train], np.flatnonzero(train)]
    with h5py.File(out / "predictions.h5") as f:
        score = f["score"][: len(block)]
    np.testing.assert_allclose(score, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(each[0], each[1], atol=1e-4)  # the members differ: the choice matters
    # What member 0 trains on: the training split without part 0 (validation and test untouched).
    kept = source.read(0, source.size, (TRAIN,), leave_out=(2, 0))
    assert len(kept) and (part(kept.entry, source.file_keys[kept.file_index], config.split.seed, 2) == 1).all()
    everything = source.read(0, source.size, (TRAIN,))
    assert 0.4 < len(kept) / len(everything) < 0.6
    steps = [m["steps_per_epoch"] for m in result.metrics["training"]["members"]]
    assert steps[0] == steps[1] < 0.6 * np.ceil(2 * len(everything) / config.training.batch_size)
    source.close()


def test_closure_checks_work_from_a_bounded_sample(trained, tmp_path):
    """evaluation.closure_events caps the test events per sample that the event-level tables and the
    independent test hold (hash-drawn), whatever the number of events; predictions still cover all."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(trained.output, bundle, ignore=shutil.ignore_patterns("work", "checkpoints", "saved_model"))
    raw = yaml.safe_load((bundle / "config.yaml").read_text())
    raw["evaluation"].update(closure_events=1000, permutations=0)
    (bundle / "config.yaml").write_text(yaml.safe_dump(raw))
    result = evaluate_job(bundle, SAMPLE_A, SAMPLE_B, tmp_path / "out", progress=False)
    kept = result.metrics["closure"]["events"]
    assert 800 < kept["primary"] < 1200 and 800 < kept["secondary"] < 1200, kept
    assert result.metrics["closure"]["independent_test"]["events"] == {k: kept[k] for k in ("primary", "secondary")}
    assert result.metrics["test"]["events"] == trained.metrics["test"]["events"] > 3 * 1000
