"""One loadable model averaging the outputs of several trained jobs' models.

Each member keeps its own input scaling, built into the ensemble as a ``FeatureScaling`` layer, so
the ensemble takes raw (unscaled) inputs and is saved with an identity ``scaler.json``: the ensemble
bundle is evaluated by ``payload run --mode evaluate`` like any trained job.
"""

from __future__ import annotations

import numpy as np

from payload.learn.models import input_names
from payload.learn.scaling import ColumnScaling, Scaler


def identity_scaler(like: Scaler) -> Scaler:
    def unit(columns: ColumnScaling) -> ColumnScaling:
        n = len(columns.names)
        return ColumnScaling(list(columns.names), ["none"] * n, np.zeros(n), np.ones(n))

    return Scaler("identity", unit(like.objects), unit(like.events), dict(like.outliers))


def _inputs_like(model) -> dict:
    import keras

    return {name: keras.Input(tuple(t.shape[1:]), name=name) for name, t in zip(input_names(model), model.inputs)}


def _average(inputs: dict, members: list, fed: list[dict] | None = None):
    import keras

    outputs = []
    for i, model in enumerate(members):
        model.name = f"member_{i}"
        given = fed[i] if fed else inputs
        outputs.append(model({k: given[k] for k in input_names(model)}))
    out = outputs[0] if len(outputs) == 1 else keras.layers.Average(name="average")(outputs)
    return keras.Model(inputs, out, name="ensemble")


def average(members: list):
    """One model averaging members that share their inputs and scaling (an ensemble trained in one job)."""
    return _average(_inputs_like(members[0]), members)


def build_ensemble(members: list[tuple[object, Scaler]]):
    """``members``: (loaded Keras model, its scaler).  All members must take the same inputs."""
    from payload.learn.models.layers import FeatureScaling

    names = [tuple(sorted(input_names(m))) for m, _ in members]
    if len(set(names)) != 1:
        raise ValueError(f"ensemble members take different inputs: {sorted(set(names))}")
    inputs = _inputs_like(members[0][0])

    def scaled(columns: ColumnScaling, x, name: str):
        return FeatureScaling(
            columns.transforms,
            columns.offset.tolist(),
            columns.scale.tolist(),
            columns.floor.tolist(),
            columns.zero.tolist(),
            name=name,
        )(x)

    fed = []
    for i, (_, scaler) in enumerate(members):
        given = {}
        if "objects" in inputs:
            given["objects"] = scaled(scaler.objects, [inputs["objects"], inputs["mask"]], f"scale_objects_{i}")
            given["mask"] = inputs["mask"]
        if "events" in inputs:
            given["events"] = scaled(scaler.events, inputs["events"], f"scale_events_{i}")
        fed.append(given)
    return _average(inputs, [m for m, _ in members], fed)
