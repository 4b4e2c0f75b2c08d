"""One loadable model averaging the outputs of several trained jobs' models.

Each member keeps its own input scaling, built into the ensemble as a ``FeatureScaling`` layer, so
the ensemble takes raw (unscaled) inputs and is saved with an identity ``scaler.json``: the ensemble
bundle is evaluated by ``payload run --mode evaluate`` like any trained job.
"""

from __future__ import annotations

import numpy as np

from payload.scaling import ColumnScaling, Scaler


def identity_scaler(like: Scaler) -> Scaler:
    def unit(columns: ColumnScaling) -> ColumnScaling:
        n = len(columns.names)
        return ColumnScaling(list(columns.names), ["none"] * n, np.zeros(n), np.ones(n))

    return Scaler("identity", unit(like.objects), unit(like.events), dict(like.outliers))


def build_ensemble(members: list[tuple[object, Scaler]]):
    """``members``: (loaded Keras model, its scaler).  All members must take the same inputs."""
    import keras

    from payload.models.layers import FeatureScaling

    names = [tuple(sorted(t.name.split(":")[0] for t in m.inputs)) for m, _ in members]
    if len(set(names)) != 1:
        raise ValueError(f"ensemble members take different inputs: {sorted(set(names))}")
    first = {t.name.split(":")[0]: t for t in members[0][0].inputs}
    inputs = {name: keras.Input(tuple(t.shape[1:]), name=name) for name, t in first.items()}
    outputs = []
    for i, (model, scaler) in enumerate(members):
        fed = {}
        if "objects" in inputs:
            o = scaler.objects
            fed["objects"] = FeatureScaling(o.transforms, o.offset.tolist(), o.scale.tolist(), name=f"scale_objects_{i}")(
                [inputs["objects"], inputs["mask"]])
            fed["mask"] = inputs["mask"]
        if "events" in inputs:
            e = scaler.events
            fed["events"] = FeatureScaling(e.transforms, e.offset.tolist(), e.scale.tolist(), name=f"scale_events_{i}")(
                inputs["events"])
        model.name = f"member_{i}"
        outputs.append(model({k: fed[k] for k in (t.name.split(":")[0] for t in model.inputs)}))
    out = outputs[0] if len(outputs) == 1 else keras.layers.Average(name="average")(outputs)
    return keras.Model(inputs, out, name="ensemble")
