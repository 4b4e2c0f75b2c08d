"""Custom layers, registered so saved models load with ``safe_mode=True``."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="payload")
class MaskedPool(keras.layers.Layer):
    """Sum or mean over objects of per-object embeddings, padded objects excluded.

    Inputs: ``[x, mask]`` with x (batch, objects, width) and mask (batch, objects) in {0, 1}.
    """

    def __init__(self, mode: str = "sum", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("sum", "mean"):
            raise ValueError(f"MaskedPool mode must be 'sum' or 'mean', not {mode!r}")
        self.mode = mode

    def call(self, inputs):
        x, mask = inputs
        m = ops.expand_dims(ops.cast(mask, x.dtype), -1)
        pooled = ops.sum(x * m, axis=1)
        if self.mode == "mean":
            pooled = pooled / ops.maximum(ops.sum(m, axis=1), ops.cast(1.0, x.dtype))
        return pooled

    def compute_output_shape(self, input_shape):
        x_shape, _ = input_shape
        return (x_shape[0], x_shape[2])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
