"""Deep Sets: O(p_1..p_M) = F(pool_i Phi(p_i)) (seed 000), with padded objects masked out."""

from __future__ import annotations

import keras
from keras import layers

from payload.config import DeepSetsModel, JobConfig
from payload.learn.models.blocks import features, mlp, probability
from payload.learn.models.layers import MaskedPool


def build_deepsets(
    config: JobConfig, cfg: DeepSetsModel, max_objects: int, object_names: list[str], event_names: list[str]
) -> keras.Model:
    # Any number of objects: a batch cut to its largest real multiplicity runs the same weights.
    objects = keras.Input((None, len(object_names)), name="objects")
    mask = keras.Input((None,), name="mask")
    inputs = {"objects": objects, "mask": mask}
    # Dense on a (batch, objects, features) tensor acts on each object with shared weights: Phi.
    phi = mlp(features(objects, object_names, cfg, "objects"), cfg.phi_widths, cfg, "phi", dropout=0.0, mask=mask)
    h = MaskedPool(cfg.pooling, name="pool")([phi, mask])
    if event_names:
        events = keras.Input((len(event_names),), name="events")
        inputs["events"] = events
        h = layers.Concatenate(name="with_events")([h, features(events, event_names, cfg, "events")])
    h = mlp(h, cfg.f_widths, cfg, "F")
    return keras.Model(inputs, probability(h, config.training, inputs), name="deepsets")
