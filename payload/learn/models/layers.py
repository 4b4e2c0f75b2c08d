"""Custom layers, registered so saved models load with ``safe_mode=True``."""

from __future__ import annotations

import math

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
    T as in ``payload.learn.scaling`` (log transforms with their fitted floor and value for x <= 0), with
    padded objects set back to 0 when a mask is given.  Lets an ensemble of members with different
    scalers take one (raw) input."""

    def __init__(
        self,
        transforms: list[str],
        offset: list[float],
        scale: list[float],
        floor: list[float] | None = None,
        zero: list[float] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.transforms, self.offset, self.scale = list(transforms), list(offset), list(scale)
        n = len(self.transforms)
        # Models saved before floors were fitted used log(max(x, 1e-6)).
        self.floor = list(floor) if floor is not None else [1e-6] * n
        self.zero = (
            list(zero)
            if zero is not None
            else [math.log(1e-6) if t == "log" else math.log10(1e-6) if t == "log10" else 0.0 for t in self.transforms]
        )

    def call(self, inputs):
        x, mask = inputs if isinstance(inputs, (list, tuple)) else (inputs, None)
        columns = []
        for j, t in enumerate(self.transforms):
            c = x[..., j]
            if t in ("log", "log10"):
                logged = ops.log(ops.maximum(c, ops.cast(self.floor[j], x.dtype)))
                if t == "log10":
                    logged = logged / math.log(10.0)
                c = ops.where(c > 0, logged, ops.cast(self.zero[j], x.dtype))
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
        return {
            **super().get_config(),
            "transforms": self.transforms,
            "offset": self.offset,
            "scale": self.scale,
            "floor": self.floor,
            "zero": self.zero,
        }


@keras.saving.register_keras_serializable(package="payload")
class CategoryEmbedding(keras.layers.Layer):
    """A learnt vector per listed integer code (entity embedding); unlisted codes share one extra row.
    Input (...,) codes stored as floats; output (..., dim)."""

    def __init__(self, values: list[int], dim: int, **kwargs):
        super().__init__(**kwargs)
        self.values, self.dim = [int(v) for v in values], int(dim)

    def build(self, input_shape):
        self.table = self.add_weight(shape=(len(self.values) + 1, self.dim), initializer="uniform", name="table")

    def call(self, codes):
        vocabulary = ops.convert_to_tensor(self.values, dtype="float32")
        hit = ops.equal(ops.expand_dims(ops.round(ops.cast(codes, "float32")), -1), vocabulary)
        index = ops.where(ops.any(hit, axis=-1), ops.argmax(ops.cast(hit, "int32"), axis=-1), len(self.values))
        return ops.take(self.table, index, axis=0)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.dim)

    def get_config(self):
        return {**super().get_config(), "values": self.values, "dim": self.dim}


#: Batch-norm moving-average momentum: 0.9 rather than Keras' 0.99, so that the statistics used at
#: inference settle within the few hundred steps of a small job.
MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="payload")
class MaskedBatchNorm(keras.layers.Layer):
    """Batch normalisation of (batch, objects, width) whose batch statistics skip padded objects."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norm = keras.layers.BatchNormalization(momentum=MOMENTUM)

    def build(self, input_shape):
        self.norm.build(input_shape[0])

    def call(self, inputs, training=None):
        x, mask = inputs
        # ``call``, not ``__call__``: the mask only selects the statistics and must not be attached
        # to the output as a Keras mask for later layers.
        return self.norm.call(x, training=training, mask=ops.cast(mask, "bool"))

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package="payload")
class MotherAdjacency(keras.layers.Layer):
    """Seed 003's graph: G = D^-1/2 (A + A^T + I) D^-1/2 with A[i, j] = 1 when object j is object i's
    mother, restricted to real objects.  Inputs ``[mother index (batch, M), mask (batch, M)]``."""

    def call(self, inputs):
        mother, mask = inputs
        m = ops.cast(mask, "float32")
        slots = ops.cast(ops.arange(ops.shape(mother)[1]), "float32")
        a = ops.cast(ops.equal(ops.expand_dims(ops.round(ops.cast(mother, "float32")), -1), slots), "float32")
        a = ops.minimum(a + ops.transpose(a, (0, 2, 1)) + ops.eye(ops.shape(mother)[1]), 1.0)
        a = a * ops.expand_dims(m, -1) * ops.expand_dims(m, 1)
        degree = ops.sum(a, axis=-1)
        inv = ops.where(degree > 0, 1.0 / ops.sqrt(ops.maximum(degree, 1.0)), 0.0)
        return a * ops.expand_dims(inv, -1) * ops.expand_dims(inv, 1)

    def compute_output_shape(self, input_shape):
        batch, slots = input_shape[0]
        return (batch, slots, slots)


@keras.saving.register_keras_serializable(package="payload")
class GraphConv(keras.layers.Layer):
    """Kipf-Welling graph convolution H' = act(G H W + b).  Inputs ``[H (batch, M, d), G (batch, M, M)]``."""

    def __init__(self, units: int, activation: str = "relu", **kwargs):
        super().__init__(**kwargs)
        self.units, self.activation = int(units), keras.activations.get(activation)

    def build(self, input_shape):
        self.dense = keras.layers.Dense(self.units, name="weights")
        self.dense.build(input_shape[0])

    def call(self, inputs):
        h, g = inputs
        return self.activation(ops.matmul(ops.cast(g, h.dtype), self.dense(h)))

    def compute_output_shape(self, input_shape):
        return (*input_shape[0][:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": keras.activations.serialize(self.activation)}


def distance_correlation_squared(x, y):
    """Sample dCorr^2 of two (batch,) tensors (Szekely et al.): 0 only for independent variables."""

    def centred(v):
        d = ops.abs(ops.expand_dims(v, 0) - ops.expand_dims(v, 1))
        return d - ops.mean(d, axis=0, keepdims=True) - ops.mean(d, axis=1, keepdims=True) + ops.mean(d)

    a, b = centred(ops.cast(x, "float32")), centred(ops.cast(y, "float32"))
    return ops.mean(a * b) / ops.sqrt(ops.maximum(ops.mean(a * a) * ops.mean(b * b), 1e-12))


@keras.saving.register_keras_serializable(package="payload")
class DecorrelationPenalty(keras.layers.Layer):
    """Passes the prediction through and adds strength * sum_k dCorr^2(x_k, prediction) to the loss.
    Inputs ``[prediction (batch, 1), observables (batch, K)]``."""

    def __init__(self, strength: float, **kwargs):
        super().__init__(**kwargs)
        self.strength = float(strength)

    def call(self, inputs):
        y, x = inputs
        y1 = ops.reshape(ops.cast(y, "float32"), (-1,))
        penalty = sum(distance_correlation_squared(x[:, k], y1) for k in range(x.shape[-1]))
        self.add_loss(self.strength * penalty)
        return y

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "strength": self.strength}


@keras.saving.register_keras_serializable(package="payload")
class Sampling(keras.layers.Layer):
    """VAE latent: z = mean + exp(log_var / 2) * eps while training (mean otherwise), adding
    kl_weight * KL(N(mean, var) || N(0, 1)) to the loss, averaged over real objects when masked."""

    def __init__(self, kl_weight: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.kl_weight, self.seed = float(kl_weight), seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        mean, log_var, mask = (*inputs, None) if len(inputs) == 2 else inputs
        kl = -0.5 * ops.sum(1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=-1)
        if mask is None:
            kl = ops.mean(kl)
        else:
            m = ops.cast(mask, kl.dtype)
            kl = ops.sum(kl * m) / ops.maximum(ops.sum(m), 1.0)
        self.add_loss(self.kl_weight * kl)
        if not training:
            return mean
        return mean + ops.exp(0.5 * log_var) * keras.random.normal(ops.shape(mean), seed=self.generator)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "kl_weight": self.kl_weight, "seed": self.seed}


@keras.saving.register_keras_serializable(package="payload")
class Columns(keras.layers.Layer):
    """The listed columns of the last axis (one column without that axis when ``squeeze``)."""

    def __init__(self, indices: list[int], squeeze: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.indices, self.squeeze = [int(i) for i in indices], bool(squeeze)

    def call(self, x):
        if self.squeeze:
            return x[..., self.indices[0]]
        return ops.take(x, self.indices, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) if self.squeeze else (*input_shape[:-1], len(self.indices))

    def get_config(self):
        return {**super().get_config(), "indices": self.indices, "squeeze": self.squeeze}
