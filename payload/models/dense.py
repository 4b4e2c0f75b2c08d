"""A dense network on flat per-event features."""

from __future__ import annotations

import keras
from keras import layers

from payload.config import ModelConfig
from payload.models.deepsets import _mlp


def build_dense(cfg: ModelConfig, n_event_features: int) -> keras.Model:
    events = keras.Input((n_event_features,), name="events")
    h = _mlp(events, cfg.f_widths, cfg.activation, cfg.dropout, "F")
    out = layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(h)
    return keras.Model({"events": events}, out, name="dense")
