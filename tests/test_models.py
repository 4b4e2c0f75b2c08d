"""Model properties a user relies on, for the active Keras backend (and JAX in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import JAGGED_CONFIG, REPO

from payload.config import parse_config


def _model(pooling="sum", events=0):
    from payload.learn.models import build_model

    raw = {**JAGGED_CONFIG, "model": {"phi_widths": [16, 16], "f_widths": [16], "pooling": pooling}}
    return build_model(parse_config(raw), 8, ["pt", "eta", "phi", "m", "type"], [f"e{i}" for i in range(events)])


def _inputs(rng, n=32, m=8, f=5):
    counts = rng.integers(1, m, n)
    mask = (np.arange(m) < counts[:, None]).astype(np.float32)
    objects = rng.normal(size=(n, m, f)).astype(np.float32) * mask[:, :, None]
    return objects, mask, counts


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_padded_objects_change_nothing(pooling):
    rng = np.random.default_rng(0)
    model = _model(pooling)
    objects, mask, _ = _inputs(rng)
    before = model.predict_on_batch({"objects": objects, "mask": mask})
    junk = objects + rng.normal(size=objects.shape).astype(np.float32) * 100 * (1 - mask[:, :, None])
    after = model.predict_on_batch({"objects": junk, "mask": mask})
    np.testing.assert_allclose(np.asarray(before), np.asarray(after), rtol=1e-5, atol=1e-6)
    assert not np.allclose(objects, junk)


def test_trimmed_padding_gives_the_same_predictions():
    """Cutting the padded slots beyond the last real object (what training batches and evaluation
    blocks do) changes no prediction: 45 slots with at most 13 real objects run as 16, and
    ``predict`` (events grouped by the 8 or 16 slots each needs) gives every event its own score."""
    from payload.learn.dataset import cut_padding
    from payload.results.evaluate import predict, variable_objects

    rng = np.random.default_rng(1)
    model = _model("sum", events=2)
    objects, mask, counts = _inputs(rng, n=256, m=45)
    mask = (np.arange(45) < np.minimum(counts, 13)[:, None]).astype(np.float32)
    objects *= mask[:, :, None]
    inputs = {"objects": objects, "mask": mask, "events": rng.normal(size=(256, 2)).astype(np.float32)}
    cut = cut_padding(inputs)
    assert cut["objects"].shape[1] == cut["mask"].shape[1] == 16
    assert variable_objects(model)
    full = np.asarray(model.predict_on_batch(inputs)).ravel()
    assert 0 < (mask.sum(axis=1) <= 8).mean() < 1  # both groups occur
    np.testing.assert_allclose(predict(model, inputs), full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(model.predict_on_batch(cut)).ravel(), full, rtol=1e-5, atol=1e-6)


def test_a_model_compiled_per_shape_predicts_blocks_of_any_size_in_a_few_shapes(monkeypatch):
    """Where every new input shape is compiled (XLA here; JAX always), ``predict`` hands the model
    fixed numbers of rows, padded with empty events, and every event keeps its own score: blocks of
    1 to 3000 events cost a few programs, not one per block and slot count."""
    from payload.results import evaluate

    rng = np.random.default_rng(3)
    model, compiled = _model("sum", events=2), _model("sum", events=2)
    compiled.set_weights(model.get_weights())
    compiled.jit_compile = True
    assert compiled.jit_compile
    shapes = []
    call = compiled.predict_on_batch
    monkeypatch.setattr(compiled, "predict_on_batch", lambda x: shapes.append(x["objects"].shape[:2]) or call(x))
    monkeypatch.setattr(evaluate, "PREDICT_ROWS", 1024)
    for n in (1, 7, 300, 1000, 1024, 3000):
        objects, mask, counts = _inputs(rng, n=n, m=45)
        mask = (np.arange(45) < np.minimum(counts, 13)[:, None]).astype(np.float32)
        inputs = {
            "objects": objects * mask[:, :, None],
            "mask": mask,
            "events": rng.normal(size=(n, 2)).astype(np.float32),
        }
        np.testing.assert_allclose(
            evaluate.predict(compiled, inputs), evaluate.predict(model, inputs), rtol=1e-5, atol=1e-6
        )
    assert {rows for rows, _ in shapes} <= {256, 512, 1024} and {slots for _, slots in shapes} == {8, 16}
    assert len(set(shapes)) <= 6 < len(shapes)


def test_permutation_invariance():
    rng = np.random.default_rng(1)
    model = _model("sum", events=3)
    objects, mask, counts = _inputs(rng)
    events = rng.normal(size=(len(objects), 3)).astype(np.float32)
    permuted = objects.copy()
    for i, c in enumerate(counts):
        permuted[i, :c] = objects[i, rng.permutation(c)]
    a = model.predict_on_batch({"objects": objects, "mask": mask, "events": events})
    b = model.predict_on_batch({"objects": permuted, "mask": mask, "events": events})
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # ... and it does depend on the objects.
    c = model.predict_on_batch({"objects": objects * 2, "mask": mask, "events": events})
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_saved_model_loads_in_safe_mode(tmp_path):
    import keras

    rng = np.random.default_rng(2)
    model = _model("mean")
    objects, mask, _ = _inputs(rng)
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        np.asarray(model.predict_on_batch({"objects": objects, "mask": mask})),
        np.asarray(again.predict_on_batch({"objects": objects, "mask": mask})),
        rtol=1e-6,
    )


def test_mixed_precision_computes_in_float16_with_a_float32_output(tmp_path):
    """``training.mixed_precision: on`` (what ``auto`` picks on a GPU): hidden layers compute in
    float16, the probability stays float32, and the model trains, saves and loads in safe mode.
    Forced on here, on the CPU: no GPU is needed to check the policy and the model under it."""
    import keras

    from payload.config import parse_config
    from payload.learn.models import load_model
    from payload.learn.train import configure_precision

    assert not configure_precision(parse_config(JAGGED_CONFIG))  # auto without a GPU: float32
    config = parse_config({**JAGGED_CONFIG, "training": {"mixed_precision": "on"}})
    try:
        assert configure_precision(config)
        model = _model()
        dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        assert dense[0].compute_dtype == "float16" and dense[0].variable_dtype == "float32"
        assert model.get_layer("probability").compute_dtype == "float32"
        objects, mask, _ = _inputs(np.random.default_rng(3), n=64)
        model.compile(optimizer="adam", loss="binary_crossentropy")
        y = (mask.sum(axis=1) > 4).astype(np.float32)[:, None]
        model.fit({"objects": objects, "mask": mask}, y, epochs=2, batch_size=32, verbose=0)
        out = np.asarray(model.predict_on_batch({"objects": objects, "mask": mask}))
        assert out.dtype == np.float32 and np.all((out >= 0) & (out <= 1))
        model.save(tmp_path / "model.keras")
        again = np.asarray(load_model(tmp_path / "model.keras").predict_on_batch({"objects": objects, "mask": mask}))
        np.testing.assert_allclose(again, out, rtol=1e-3, atol=1e-3)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    "example",
    ["seed001_nanoaod_vae.yaml", "seed002_higgsml_dense.yaml", "seed003_gcn_skim.yaml", "seed004_jet_compression.yaml"],
)
def test_zoo_model_trains_saves_and_loads(example, tmp_path):
    """Each example's model fits a few steps (loss finite, weights move), and saves and loads in safe mode
    with the same predictions."""
    import yaml

    from payload.learn.dataset import flat_inputs
    from payload.learn.models import build_model, inference_model, load_model
    from payload.learn.train import compile_model

    config = parse_config(yaml.safe_load((REPO / "examples" / example).read_text()))
    names, events = config.data.object_features, list(config.data.event_features)
    model = build_model(config, 8, names, events)
    compile_model(model, config, 10)
    rng = np.random.default_rng(0)
    objects, mask, _ = _inputs(rng, n=64, m=8, f=len(names))
    x = {"objects": objects, "mask": mask}
    if events:
        x["events"] = rng.normal(size=(64, len(events))).astype(np.float32)
    if config.training.decorrelation:
        x["decorrelate"] = rng.normal(size=(64, 1)).astype(np.float32)
    if config.task == "autoencode":
        level = config.autoencoder.level
        y, w = flat_inputs(x, level), (mask if level == "object" else np.ones(64, np.float32))
    else:
        y, w = rng.integers(0, 2, (64, 1)).astype(np.float32), np.ones(64, np.float32)
    before = [np.array(v) for v in model.get_weights()]
    history = model.fit(x, y, sample_weight=w, epochs=2, batch_size=32, verbose=0).history["loss"]
    assert np.isfinite(history).all()
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
    served = inference_model(model)
    wanted = {t.name: x[t.name] for t in served.inputs}
    model.save(tmp_path / "m.keras")
    again = inference_model(load_model(tmp_path / "m.keras"))
    np.testing.assert_allclose(
        np.asarray(again.predict_on_batch(wanted)), np.asarray(served.predict_on_batch(wanted)), rtol=1e-5, atol=1e-6
    )


def test_backend_is_the_requested_one():
    import keras

    assert keras.backend.backend() == os.environ.get("KERAS_BACKEND", "tensorflow")


def test_seed000_schedule():
    from payload.learn.schedules import HoldThenExpDecay

    s = HoldThenExpDecay(1e-3, steps_per_epoch=10)
    lr = [float(np.asarray(s(step))) for step in (0, 9, 10, 19, 20, 30, 45)]
    expected = [1e-3, 1e-3, 1e-3, 1e-3, 1e-3 * np.exp(-0.1), 1e-3 * np.exp(-0.2), 1e-3 * np.exp(-0.3)]
    np.testing.assert_allclose(lr, expected, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(
    not any(p for p in ("jax",) if __import__("importlib").util.find_spec(p)), reason="JAX is not installed"
)
def test_models_run_on_the_jax_backend(tmp_path):
    """The same masking and invariance checks under KERAS_BACKEND=jax (a backend is chosen per process)."""
    import xml.etree.ElementTree as ET

    env = {**os.environ, "KERAS_BACKEND": "jax"}
    report = tmp_path / "jax.xml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(REPO / "tests" / "test_models.py"),
            "-k",
            "padded or permutation or safe_mode or backend_is or zoo",
            f"--junitxml={report}",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO / "tests",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Every selected test ran and passed on JAX: none skipped (a skip would hide a backend gap).
    suite = ET.parse(report).getroot().find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
    assert counts["tests"] >= 5 and counts["failures"] == counts["errors"] == counts["skipped"] == 0, counts


@pytest.mark.parametrize("setting", ["on", "off"])
def test_training_jit_compile_decides_whether_xla_compiles_the_step(setting):
    from payload.learn.train import compile_model

    model = _model()
    compile_model(model, parse_config({**JAGGED_CONFIG, "training": {"jit_compile": setting}}), 10)
    assert model.jit_compile is (setting == "on")


def test_a_dense_network_on_the_high_level_features_alone_is_fed_exactly_those_columns(tmp_path):
    """``model.type dense`` with ``model.high_level_inputs`` and no event features or flattened objects:
    the network sees only the columns built from the objects (multiplicities, leading objects, sums),
    and the stream feeds it exactly those; with none of the three the config names what is missing."""
    from conftest import make_events, write_jagged_root

    from payload.errors import ConfigError
    from payload.ingest.convert import convert
    from payload.learn.dataset import EventSource
    from payload.learn.models import build_model
    from payload.learn.train import prepare

    raw = {**JAGGED_CONFIG, "data": {**JAGGED_CONFIG["data"], "event_features": []}}
    with pytest.raises(ConfigError, match=r"model\.high_level_inputs"):
        parse_config({**raw, "model": {"type": "dense"}})
    config = parse_config({**raw, "model": {"type": "dense", "f_widths": [8], "high_level_inputs": True}})
    root = write_jagged_root(tmp_path / "s.root", make_events(300, seed=5))
    source = EventSource(convert(config, [str(root)], tmp_path / "s.h5", progress=False).output, config, None)
    scaler, _ = prepare(config, [source])
    source = EventSource(source.path, config, scaler)
    assert source.network_event_names == source.high_level.object_names_ and source.network_event_names
    block = next(iter(source.iterate(None)))
    assert block.inputs["events"].shape[1] == len(source.network_event_names)
    model = build_model(config, source.max_objects, source.object_names, source.network_event_names)
    assert [i.name for i in model.inputs] == ["events"]
    p = np.asarray(model.predict_on_batch({"events": block.inputs["events"]})).ravel()
    assert p.shape == (len(block.inputs["events"]),) and np.all((p > 0) & (p < 1))
