"""Deep Sets: O(p_1..p_M) = F(pool_i Phi(p_i)) (seed 000), with padded objects masked out."""

from __future__ import annotations

import keras
from keras import layers

from payload.config import ModelConfig
from payload.models.layers import MaskedPool


def _mlp(x, widths: list[int], activation: str, dropout: float, prefix: str):
    for i, width in enumerate(widths):
        x = layers.Dense(width, activation=activation, name=f"{prefix}_dense{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"{prefix}_dropout{i}")(x)
    return x


def build_deepsets(cfg: ModelConfig, max_objects: int, n_features: int, n_event_features: int) -> keras.Model:
    objects = keras.Input((max_objects, n_features), name="objects")
    mask = keras.Input((max_objects,), name="mask")
    inputs = {"objects": objects, "mask": mask}
    # Dense on a (batch, objects, features) tensor acts on each object with shared weights: Phi.
    phi = _mlp(objects, cfg.phi_widths, cfg.activation, 0.0, "phi")
    h = MaskedPool(cfg.pooling, name="pool")([phi, mask])
    if n_event_features:
        events = keras.Input((n_event_features,), name="events")
        inputs["events"] = events
        h = layers.Concatenate(name="with_events")([h, events])
    h = _mlp(h, cfg.f_widths, cfg.activation, cfg.dropout, "F")
    # float32 output keeps probabilities exact under mixed precision.
    out = layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(h)
    return keras.Model(inputs, out, name="deepsets")
