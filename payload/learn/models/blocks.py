"""Building blocks shared by the models: the configured dense stack, categorical embeddings, the output."""

from __future__ import annotations

import keras
from keras import layers

from payload.config import ClassifierModel, Layers, TrainingConfig
from payload.learn.models.layers import MOMENTUM, CategoryEmbedding, Columns, DecorrelationPenalty, MaskedBatchNorm


def mlp(x, widths: list[int], cfg: Layers, prefix: str, dropout: float | None = None, mask=None):
    """Dense layers of ``widths`` with the configured activation, batch norm (statistics over real
    objects only when ``mask`` is given), dropout and dense (concatenating) connections."""
    dropout = cfg.dropout if dropout is None else dropout
    connect = isinstance(cfg, ClassifierModel) and cfg.dense_connections
    # SELU is self-normalising only with LeCun-normal initial weights.
    init = "lecun_normal" if cfg.activation == "selu" else "glorot_uniform"
    for i, width in enumerate(widths):
        h = layers.Dense(
            width,
            activation=None if cfg.batch_norm else cfg.activation,
            kernel_initializer=init,
            name=f"{prefix}_dense{i}",
        )(x)
        if cfg.batch_norm:
            norm = f"{prefix}_norm{i}"
            h = (
                MaskedBatchNorm(name=norm)([h, mask])
                if mask is not None
                else layers.BatchNormalization(momentum=MOMENTUM, name=norm)(h)
            )
            h = layers.Activation(cfg.activation, name=f"{prefix}_act{i}")(h)
        if dropout:
            h = layers.Dropout(dropout, name=f"{prefix}_dropout{i}")(h)
        x = layers.Concatenate(name=f"{prefix}_concat{i}")([x, h]) if connect else h
    return x


def features(x, names: list[str], cfg: ClassifierModel, prefix: str, skip: tuple[str, ...] = ()):
    """The numeric columns of ``x`` with each embedded categorical column replaced by its embedding."""
    numeric = [i for i, n in enumerate(names) if n not in cfg.embeddings and n not in skip]
    parts = [Columns(numeric, name=f"{prefix}_numeric")(x)] if numeric else []
    for i, name in enumerate(names):
        if name in cfg.embeddings:
            spec = cfg.embeddings[name]
            code = Columns([i], squeeze=True, name=f"{prefix}_{name}_code")(x)
            parts.append(CategoryEmbedding(spec.values, spec.dim, name=f"{prefix}_{name}_embedding")(code))
    return parts[0] if len(parts) == 1 else layers.Concatenate(name=f"{prefix}_features")(parts)


def probability(h, training: TrainingConfig, inputs: dict):
    """The sigmoid output (float32, exact under mixed precision); with a decorrelation penalty, the
    observables become an input named ``decorrelate`` that the penalty reads while training."""
    out = layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(h)
    if training.decorrelation:
        observables = keras.Input((len(training.decorrelation.features),), name="decorrelate")
        inputs["decorrelate"] = observables
        out = DecorrelationPenalty(training.decorrelation.strength, name="decorrelation")([out, observables])
    return out
