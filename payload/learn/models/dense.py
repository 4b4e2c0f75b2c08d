"""A dense network on flat per-event features, optionally with the padded objects flattened in
(seed 002's HiggsML recipe: swish/SELU, dense connections, entity embeddings)."""

from __future__ import annotations

import keras
from keras import layers

from payload.config import DenseModel, JobConfig
from payload.learn.models.blocks import features, mlp, probability


def build_dense(
    config: JobConfig, cfg: DenseModel, max_objects: int, object_names: list[str], event_names: list[str]
) -> keras.Model:
    inputs, parts = {}, []
    if cfg.flatten_objects:
        inputs["objects"] = keras.Input((max_objects, len(object_names)), name="objects")
        inputs["mask"] = keras.Input((max_objects,), name="mask")  # padding is already 0 in the objects
        parts.append(layers.Flatten(name="objects_flat")(features(inputs["objects"], object_names, cfg, "objects")))
    if event_names:
        inputs["events"] = keras.Input((len(event_names),), name="events")
        parts.append(features(inputs["events"], event_names, cfg, "events"))
    h = parts[0] if len(parts) == 1 else layers.Concatenate(name="inputs")(parts)
    h = mlp(h, cfg.f_widths, cfg, "F")
    return keras.Model(inputs, probability(h, config.training, inputs), name="dense")
