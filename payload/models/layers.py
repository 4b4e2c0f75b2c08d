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


@keras.saving.register_keras_serializable(package="payload")
class FeatureScaling(keras.layers.Layer):
    """A ``scaler.json`` column scaling inside the model: x' = (T(x) - offset) / scale per feature,
    T = none, log or log1p (as ``payload.scaling``), with padded objects set back to 0 when a mask
    is given.  Lets an ensemble of members with different scalers take one (raw) input."""

    def __init__(self, transforms: list[str], offset: list[float], scale: list[float], **kwargs):
        super().__init__(**kwargs)
        self.transforms, self.offset, self.scale = list(transforms), list(offset), list(scale)

    def call(self, inputs):
        x, mask = inputs if isinstance(inputs, (list, tuple)) else (inputs, None)
        tiny = ops.cast(1e-6, x.dtype)
        columns = []
        for j, t in enumerate(self.transforms):
            c = x[..., j]
            if t == "log":
                c = ops.log(ops.maximum(c, tiny))
            elif t == "log1p":
                c = ops.log1p(ops.maximum(c, ops.cast(0.0, x.dtype)))
            columns.append((c - self.offset[j]) / self.scale[j])
        out = ops.stack(columns, axis=-1)
        if mask is not None:
            out = out * ops.expand_dims(ops.cast(mask, x.dtype), -1)
        return out

    def compute_output_shape(self, input_shape):
        first = input_shape[0]
        return tuple(first) if isinstance(first, (tuple, list)) else input_shape  # [x, mask] or x

    def get_config(self):
        return {**super().get_config(), "transforms": self.transforms, "offset": self.offset, "scale": self.scale}
