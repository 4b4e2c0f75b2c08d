"""The workflows of seeds 001-004 as payload jobs, trained for real on small real ROOT files, each
checked for the property a user relies on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from payload.config import parse_config
from payload.job import evaluate_job, train_job

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "payload" / "resources"


def _example(name: str, **sections) -> dict:
    raw = yaml.safe_load((REPO / "examples" / name).read_text())
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def test_jet_autoencoder_beats_the_mean_and_is_saved_as_encoder_and_decoder(tmp_path):
    """Seed 004: the 4D jet AE reconstructs better than predicting every jet's mean; the saved
    encoder and decoder reproduce the model; latent codes of padded jets are 0."""
    from payload.learn.dataset import EventSource
    from payload.learn.models import load_model
    from payload.learn.scaling import Scaler

    raw = _example("seed004_jet_compression.yaml", training={"epochs": 6})
    result = train_job(
        parse_config(raw), str(DATA / "sample_A.root"), str(DATA / "sample_B.root"), tmp_path, progress=False
    )
    ae = result.metrics["autoencoder"]
    assert ae["test_mse"] < 0.5 * ae["baseline_mse"]
    assert ae["compression"] == {"latent_bytes": 12, "input_bytes": 16, "ratio": 0.75, "per": "object"}
    assert set(ae["residuals"]) == {"m", "pt", "phi", "eta"}
    assert 0.0 <= ae["ood_auc"] <= 1.0 and ae["secondary_mse"] > 0
    for plot in ("residuals.png", "residual_correlation.png", "loss.png"):
        assert (tmp_path / "plots" / plot).stat().st_size > 0

    model, encoder, decoder = (load_model(tmp_path / n) for n in ("model.keras", "encoder.keras", "decoder.keras"))
    source = EventSource(tmp_path / "work" / "primary.h5", parse_config(raw), Scaler.load(tmp_path / "scaler.json"))
    block = source.read(0, 500, None)
    source.close()
    direct = np.asarray(model.predict_on_batch(block.inputs))
    chained = np.asarray(decoder.predict_on_batch(encoder.predict_on_batch(block.inputs["objects"])))
    real = block.inputs["mask"] > 0
    np.testing.assert_allclose(chained[real], direct[real], rtol=1e-4, atol=1e-5)
    # model.onnx (TensorFlow backend): ONNX Runtime reconstructs as Keras does.
    import keras

    if keras.backend.backend() == "tensorflow":
        assert result.metrics["onnx"]["check"]["max_abs_difference"] <= 1e-4
        ort = pytest.importorskip("onnxruntime", reason="the onnx extra: pip install 'grid-payload[onnx]'")
        session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
        onnx_out = session.run(None, {i.name: block.inputs[i.name] for i in session.get_inputs()})[0]
        np.testing.assert_allclose(onnx_out, direct, atol=1e-5)
    else:
        assert "skipped" in result.metrics["onnx"] and not (tmp_path / "model.onnx").exists()
    # The MSE recomputed from the model's output on these events is of the reported size.
    mse = float(
        (((direct - block.inputs["objects"]) ** 2).sum(-1) * block.inputs["mask"]).sum()
        / (block.inputs["mask"].sum() * 4)
    )
    assert mse < 0.5 * ae["baseline_mse"]
    with h5py.File(tmp_path / "predictions.h5") as f:
        latent, sample = f["latent"][:500], f["sample"][:]
    assert latent.shape == (500, 16, 3)
    assert not latent[~real].any() and latent[real].any()
    assert set(np.unique(sample)) == {0, 1}

    # Evaluate mode applies the trained bundle to a new file: the secondary's per-event errors again.
    applied = evaluate_job(tmp_path, str(DATA / "sample_B.root"), None, tmp_path / "applied", progress=False)
    assert applied.metrics["autoencoder"]["test_mse"] == pytest.approx(ae["secondary_mse"], rel=1e-4)
    with h5py.File(tmp_path / "predictions.h5") as f, h5py.File(tmp_path / "applied" / "predictions.h5") as g:
        np.testing.assert_allclose(g["score"][:], f["score"][:][f["sample"][:] == 1], rtol=1e-4, atol=1e-7)


def test_event_vae_on_a_nanoaod_style_file(tmp_path):
    """Seed 001: a whole-event VAE on flat + jagged branches of a real CMS Open Data file."""
    skhep_testdata = pytest.importorskip("skhep_testdata")
    from payload.learn.models import load_model

    raw = _example("seed001_nanoaod_vae.yaml", training={"epochs": 2})
    result = train_job(parse_config(raw), skhep_testdata.data_path("uproot-HZZ.root"), None, tmp_path, progress=False)
    ae = result.metrics["autoencoder"]
    width = 8 * 5 + 3  # padded objects x features, then event features
    assert ae["compression"] == {
        "latent_bytes": 32,
        "input_bytes": 4 * width,
        "ratio": 32 / (4 * width),
        "per": "event",
    }
    assert {"met_x", "met_y", "vertices", "px", "e"} <= set(ae["residuals"])
    encoder = load_model(tmp_path / "encoder.keras")
    mean, log_var = encoder.predict_on_batch(np.zeros((3, width), np.float32))
    assert np.asarray(mean).shape == (3, 8) and np.asarray(log_var).shape == (3, 8)


def _scaler(names=("pt", "eta", "phi", "m")):
    from payload.learn.scaling import ColumnScaling, Scaler

    n = len(names)
    offset = np.array([0.0, -2.5, -np.pi, 0.0])[:n]
    scale = np.array([100.0, 5.0, 2 * np.pi, 10.0])[:n]
    return Scaler(
        "minmax",
        ColumnScaling(list(names), ["none"] * n, offset, scale),
        ColumnScaling([], [], np.zeros(0), np.ones(0)),
    )


def test_augmentation_moves_only_what_the_symmetry_moves():
    from payload.learn.augment import Augmenter

    raw = {
        "task": "classify",
        "data": {
            "collections": [{"name": "j", "branches": {"pt": "a", "eta": "b", "phi": "c", "m": "d"}}],
            "object_features": ["pt", "eta", "phi", "m"],
        },
        "training": {"augment": ["phi_rotation", "eta_flip", "y_flip"]},
    }
    scaler = _scaler()
    augmenter = Augmenter(parse_config(raw), scaler)
    rng = np.random.default_rng(3)
    n, m = 200, 6
    counts = rng.integers(1, m + 1, n)
    mask = (np.arange(m) < counts[:, None]).astype(np.float32)
    physical = np.stack(
        [
            rng.uniform(20, 100, (n, m)),
            rng.uniform(-2.4, 2.4, (n, m)),
            rng.uniform(-np.pi, np.pi, (n, m)),
            rng.uniform(0, 10, (n, m)),
        ],
        -1,
    )
    scaled = (scaler.objects.apply(physical) * mask[..., None]).astype(np.float32)
    out = augmenter.random(scaled, mask, rng)
    back = scaler.objects.invert(out)
    real = mask > 0
    np.testing.assert_allclose(out[..., [0, 3]], scaled[..., [0, 3]])  # pt and m untouched
    assert not out[~real].any()  # padding stays 0
    np.testing.assert_allclose(np.abs(back[..., 1])[real], np.abs(physical[..., 1])[real], atol=1e-4)
    assert (np.abs(back[..., 2][real]) <= np.pi + 1e-5).all()
    # One transformation per event: the azimuthal angle between two objects of an event is kept
    # up to the sign of a flip, so |delta phi| is unchanged.
    two = counts >= 2

    def dphi(p):
        return np.abs((p[two, 0, 2] - p[two, 1, 2] + np.pi) % (2 * np.pi) - np.pi)

    np.testing.assert_allclose(dphi(back), dphi(physical), atol=1e-4)
    assert not np.allclose(back[..., 2][real], physical[..., 2][real], atol=1e-2)


def test_higgsml_recipe_ensemble_ams_and_invariant_test_time_augmentation(tmp_path):
    """Seed 002: an ensemble trained in one job with augmentation; test-time augmentation over a
    symmetry group makes predictions exactly invariant under its transformations; AMS as the seed."""
    from payload.learn.augment import Augmenter
    from payload.learn.dataset import EventSource
    from payload.learn.models import load_model
    from payload.learn.scaling import Scaler
    from payload.results.evaluate import make_predictor, predict

    raw = _example("seed002_higgsml_dense.yaml", training={"epochs": 1}, evaluation={"test_time_augment": 4})
    raw["model"].update(ensemble=2, f_widths=[16, 16])
    raw["data"]["event_features"] = ["njets"]
    config = parse_config(raw)
    result = train_job(config, str(DATA / "sample_B.root"), str(DATA / "sample_A.root"), tmp_path, progress=False)
    assert len(result.metrics["training"]["members"]) == 2
    assert (tmp_path / "members" / "01" / "checkpoints" / "best.keras").exists()

    # AMS recomputed from the per-event predictions at the reported threshold.
    ams = result.metrics["ams"]
    with h5py.File(tmp_path / "predictions.h5") as f:
        test = f["split"][:] == 2
        score, label, weight = f["score"][:][test], f["label"][:][test], f["weight"][:][test]
    chosen = score >= ams["threshold"]
    s = weight[chosen & (label == 1)].sum() / config.split.test
    b = weight[chosen & (label == 0)].sum() / config.split.test
    expected = np.sqrt(2 * ((s + b + 10) * np.log(1 + s / (b + 10)) - s))
    assert ams["ams"] == pytest.approx(expected, rel=1e-3)

    model = load_model(tmp_path / "model.keras")
    scaler = Scaler.load(tmp_path / "scaler.json")
    source = EventSource(tmp_path / "work" / "primary.h5", config, scaler)
    inputs = source.read(0, 300, None).inputs
    source.close()
    moved = {
        **inputs,
        "objects": Augmenter(config, scaler).transformed(inputs["objects"], inputs["mask"], 2 * np.pi / 4, -1.0, -1.0),
    }
    tta = make_predictor(config, model, scaler)
    np.testing.assert_allclose(tta(moved), tta(inputs), atol=2e-5)
    assert not np.allclose(predict(model, moved), predict(model, inputs), atol=2e-5)


def _graph_config(**training) -> dict:
    raw = _example(
        "seed003_gcn_skim.yaml", training={"epochs": 5, "batch_size": 128, "learning_rate": 0.003, **training}
    )
    raw["model"].update(phi_widths=[32], f_widths=[32])
    raw["model"]["graph"]["gcn_widths"] = [32, 32]
    return raw


def test_gcn_adjacency_and_node_permutation_invariance():
    """Seed 003: the adjacency from mother indices matches D^-1/2 (A + A^T + I) D^-1/2 computed by
    hand, and relabelling the nodes (mother indices remapped) leaves the prediction unchanged."""
    from payload.learn.models import build_model
    from payload.learn.models.layers import MotherAdjacency

    config = parse_config(_graph_config(decorrelation=None))
    names = config.data.object_features
    model = build_model(config, 10, names, [])
    rng = np.random.default_rng(5)
    n, m = 16, 10
    counts = rng.integers(3, m + 1, n)
    mask = (np.arange(m) < counts[:, None]).astype(np.float32)
    mother = np.full((n, m), 0.0)
    for i, c in enumerate(counts):
        mother[i, 0] = -1
        mother[i, 1:c] = [rng.integers(0, j) for j in range(1, c)]
    objects = rng.normal(size=(n, m, len(names))).astype(np.float32)
    objects[..., names.index("pdg")] = rng.choice([511, 421, 211, -321, 22, 999], (n, m))
    objects[..., names.index("mother")] = mother
    objects *= mask[..., None]

    g = np.asarray(MotherAdjacency()([objects[..., names.index("mother")], mask]))
    for i, c in enumerate(counts):
        a = np.eye(c)
        for child in range(1, c):
            a[child, int(mother[i, child])] = a[int(mother[i, child]), child] = 1
        d = 1 / np.sqrt(a.sum(1))
        np.testing.assert_allclose(g[i, :c, :c], a * d[:, None] * d[None, :], atol=1e-6)
        assert not g[i, c:].any() and not g[i, :, c:].any()

    before = np.asarray(model.predict_on_batch({"objects": objects, "mask": mask}))
    permuted = objects.copy()
    for i, c in enumerate(counts):
        perm = rng.permutation(c)  # new slot k holds old node perm[k]
        where = np.argsort(perm)  # old node j sits in new slot where[j]
        nodes = objects[i, :c][perm]
        old_mother = nodes[:, names.index("mother")].astype(int)
        nodes[:, names.index("mother")] = np.where(old_mother >= 0, where[np.maximum(old_mother, 0)], -1)
        permuted[i, :c] = nodes
    after = np.asarray(model.predict_on_batch({"objects": permuted, "mask": mask}))
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-6)
    assert not np.allclose(permuted, objects)


def test_gcn_skim_filter_decorrelation_penalty_lowers_distance_correlation(tmp_path):
    """Seed 003: trained on decay trees with and without the dCorr penalty on the spectator mbc, the
    penalised network's output is less dependent on mbc; the speed-up matches the seed's formula."""
    from payload.ingest.samples import write_graph_samples

    passed, failed = write_graph_samples(tmp_path / "data", 4000)
    measured = {}
    for strength in (0.0, 5.0):
        raw = _graph_config(decorrelation={"features": ["mbc"], "strength": strength})
        out = tmp_path / f"lambda{strength}"
        result = train_job(parse_config(raw), str(passed), str(failed), out, progress=False)
        measured[strength] = result.metrics["distance_correlation"]["mbc"]
        speedup = result.metrics["speedup"]
        with h5py.File(out / "predictions.h5") as f:
            test = f["split"][:] == 2
            score, label = f["score"][:][test], f["label"][:][test]
        chosen = score >= speedup["threshold"]
        tpr, fpr = chosen[label == 1].mean(), chosen[label == 0].mean()
        assert speedup["tpr"] == pytest.approx(tpr, abs=1e-3) and speedup["fpr"] == pytest.approx(fpr, abs=1e-3)
        assert speedup["speedup"] == pytest.approx(tpr * 1001 / (11 + (tpr * 0.05 + fpr * 0.95) * 1000), rel=1e-3)
    assert measured[5.0] < 0.7 * measured[0.0]


def test_lr_range_test_writes_the_curve_and_a_suggestion(tmp_path):
    from helpers import quick_job_config

    from payload.cli import main

    config = quick_job_config(tmp_path / "job.yaml")
    code = main(
        [
            "-q",
            "lr-find",
            "--config",
            str(config),
            "--primary",
            str(DATA / "sample_A.root"),
            "--secondary",
            str(DATA / "sample_B.root"),
            "--output",
            str(tmp_path / "lr"),
            "--steps",
            "60",
            "--start",
            "1e-6",
            "--stop",
            "1",
        ]
    )
    assert code == 0
    with (tmp_path / "lr" / "lr_range.csv").open() as f:
        rows = list(csv.DictReader(f))
    rates = [float(r["learning_rate"]) for r in rows]
    assert len(rows) >= 20 and rates == sorted(rates) and rates[0] == pytest.approx(1e-6)
    summary = json.loads((tmp_path / "lr" / "lr_range.json").read_text())
    assert 1e-6 <= summary["suggested_learning_rate"] <= summary["min_loss_learning_rate"] <= 1
    assert (tmp_path / "lr" / "lr_range.png").stat().st_size > 0
    losses = [float(r["smoothed_loss"]) for r in rows]
    assert min(losses) < losses[0]  # training does start somewhere in the range


def test_lr_suggestion_is_the_steepest_fall_of_a_noisy_curve():
    from payload.lrfind import _steepest_fall

    rng = np.random.default_rng(1)
    x = np.linspace(-7, 1, 200)  # log10 of the rate
    y = 1 - 0.5 / (1 + np.exp(-3 * (x + 3))) + np.where(x > -0.5, (x + 0.5) ** 2, 0)
    noisy = y + rng.normal(0, 0.01, len(x))
    noisy[:5] -= np.linspace(0.1, 0, 5)  # a falling start that is only noise
    assert abs(x[_steepest_fall(x, noisy)] + 3) < 0.5


def test_rank_auc_matches_pairwise_counting():
    from payload.results.reconstruct import rank_auc

    rng = np.random.default_rng(0)
    background, signal = np.round(rng.normal(size=700), 1), np.round(rng.normal(0.4, 1, size=500), 1)  # with ties
    pairwise = (signal[:, None] > background).mean() + 0.5 * (signal[:, None] == background).mean()
    assert rank_auc(background, signal) == pytest.approx(pairwise, rel=1e-12)
