"""model.onnx: ONNX Runtime gives what Keras gives, and docs/onnx.md's numpy recipe gives the job's weights."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (the work files' Blosc filter)
import numpy as np
import pytest
import yaml

from payload.config import load_config, parse_config
from payload.job import train_job
from tests.helpers import DATA, quick_job_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        __import__("keras").backend.backend() != "tensorflow", reason="the ONNX export runs on the TensorFlow backend"
    ),
]
ort = pytest.importorskip("onnxruntime", reason="the onnx extra: pip install 'grid-payload[onnx]'")
REPO = DATA.parents[1]


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_equals_keras_for_the_seed000_model(tmp_path):
    """The seed-000 example (type embedding, high-level event inputs beside the object set)."""
    from payload.learn.dataset import EventSource
    from payload.learn.models import load_model
    from payload.learn.scaling import Scaler

    raw = yaml.safe_load((REPO / "examples" / "seed000_reweight.yaml").read_text())
    raw["training"].update(epochs=1, batch_size=512)
    raw["evaluation"].update(independent_test=False, baseline="none")
    config = parse_config(raw)
    result = train_job(config, str(DATA / "sample_A.root"), str(DATA / "sample_B.root"), tmp_path, progress=False)
    check = result.metrics["onnx"]["check"]
    assert check["events"] == 256 and check["max_abs_difference"] <= 1e-4
    assert set(result.metrics["onnx"]["inputs"]) == {"events", "mask", "objects"}

    model = load_model(tmp_path / "model.keras")
    session = _session(tmp_path / "model.onnx")
    source = EventSource(tmp_path / "work" / "secondary.h5", config, Scaler.load(tmp_path / "scaler.json"))
    try:
        block = source.read(0, 3000, None)
    finally:
        source.close()
    for rows, slots in ((slice(0, 3000), None), (slice(7, 12), 9)):  # any batch size, any number of slots
        inputs = {k: v[rows] for k, v in block.inputs.items()}
        if slots:
            real = inputs["mask"].sum(axis=1) <= slots
            inputs = {k: v[real] for k, v in inputs.items()}
            inputs["objects"], inputs["mask"] = inputs["objects"][:, :slots], inputs["mask"][:, :slots]
        got = session.run(None, {i.name: inputs[i.name] for i in session.get_inputs()})[0]
        np.testing.assert_allclose(got, np.asarray(model.predict_on_batch(inputs)), atol=1e-5)
        assert got.std() > 0


def test_the_documented_recipe_gives_the_jobs_weights(tmp_path):
    """docs/onnx.md's code, run as written on raw objects read from the job's work file, reproduces
    predictions.h5: the score, and the NN weight up to the one normalisation constant."""
    config = load_config(quick_job_config(tmp_path / "job.yaml"))
    out = tmp_path / "job"
    train_job(config, str(DATA / "sample_A.root"), str(DATA / "sample_B.root"), out, progress=False)
    code = re.search(r"```python\n(.*?)```", (REPO / "docs" / "onnx.md").read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/onnx.md", "exec"), namespace)  # the documentation's own code

    with h5py.File(out / "work" / "primary.h5") as f:
        objects, n_objects, entry = f["objects"][:4000], f["n_objects"][:4000], f["entry"][:4000]
    mask = (np.arange(objects.shape[1]) < n_objects[:, None]).astype(np.float32)
    weights = namespace["nn_weights"](objects, mask, str(out), config.evaluation.max_weight)
    with h5py.File(out / "predictions.h5") as f:
        assert np.array_equal(f["entry"][:4000], entry) and not f["sample"][:4000].any()
        score, nn_weight, outlier = f["score"][:4000], f["nn_weight"][:4000], f["outlier"][:4000]
    p = np.clip(weights / (1 + weights), 0, 1)
    inside = ~outlier & (weights > 1 / config.evaluation.max_weight) & (weights < config.evaluation.max_weight)
    np.testing.assert_allclose(p[inside], score[inside], atol=1e-5)
    ratio = nn_weight[~outlier] / weights[~outlier]
    np.testing.assert_allclose(ratio, np.median(ratio), rtol=1e-4)
    assert weights.std() > 0.01


def test_a_converter_failure_leaves_no_model_onnx(tmp_path, monkeypatch):
    """A network the converter cannot express is a recorded skip, and whatever the converter wrote
    before failing is removed, not put in place as model.onnx (nor a former run's left there)."""
    import keras

    from payload.results import onnx

    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    batch = np.ones((4, 3), np.float32)

    def broken_export(path, **kwargs):
        Path(path).write_bytes(b"half an ONNX file")
        raise NotImplementedError("no ONNX op for this layer")

    monkeypatch.setattr(model, "export", broken_export)
    result = onnx.export_onnx(model, tmp_path / "model.onnx", batch)
    assert result == {"skipped": "the ONNX converter failed: NotImplementedError: no ONNX op for this layer"}
    assert list(tmp_path.iterdir()) == []


def test_a_graph_onnx_runtime_cannot_load_is_a_skip_not_a_failed_job(tmp_path):
    """Exact GELU (``model.activation: gelu``) becomes TensorFlow's Erfc, which has no ONNX op: the
    converter writes the graph anyway, and ONNX Runtime refuses it.  That ended a finished training in
    an internal error; it is the converter's limit, a recorded skip with no model.onnx left behind."""
    import keras

    from payload.results import onnx

    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(8, activation="gelu")(inputs)))
    result = onnx.export_onnx(model, tmp_path / "model.onnx", np.ones((4, 3), np.float32))
    assert result["skipped"].startswith("the ONNX converter failed: ONNX Runtime cannot load the graph")
    assert "Erfc" in result["skipped"]
    assert list(tmp_path.iterdir()) == []
