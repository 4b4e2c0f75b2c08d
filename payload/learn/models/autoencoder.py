"""Autoencoders of seeds 001 and 004: dense AE, deep AE with dropout, VAE.

``level: object`` encodes every object's features on its own (the same weights for all objects of
the padded array; padded objects carry no loss weight and do not enter batch-norm statistics).
``level: event`` encodes one flat vector per event (``payload.learn.dataset.flat_inputs``): the padded
objects flattened (row-major, padding 0) followed by the event features, all scaled.  The model outputs the reconstruction of its
input in scaled units; ``split`` gives the trained encoder and decoder as models of their own.
"""

from __future__ import annotations

import keras
from keras import layers

from payload.config import AutoencoderModel, JobConfig
from payload.learn.models.blocks import mlp
from payload.learn.models.layers import MaskedBatchNorm, Sampling


def build_autoencoder(
    config: JobConfig, cfg: AutoencoderModel, max_objects: int, object_names: list[str], event_names: list[str]
) -> keras.Model:
    ae = cfg.autoencoder
    objects = keras.Input((max_objects, len(object_names)), name="objects")
    mask = keras.Input((max_objects,), name="mask")
    inputs = {"objects": objects, "mask": mask}
    if ae.level == "object":
        x, per_object = objects, mask
    else:
        parts = [layers.Flatten(name="objects_flat")(objects)]
        if event_names:
            inputs["events"] = keras.Input((len(event_names),), name="events")
            parts.append(inputs["events"])
        x = parts[0] if len(parts) == 1 else layers.Concatenate(name="flat")(parts)
        per_object = None
    h = mlp(x, ae.widths, cfg, "encoder", mask=per_object)
    z = layers.Dense(ae.latent, name="encoder_mean")(h)
    if ae.variational:
        log_var = layers.Dense(ae.latent, name="encoder_log_var")(h)
        sampled = [z, log_var] + ([per_object] if per_object is not None else [])
        z = Sampling(ae.kl_weight, seed=config.training.seed, name="sampling")(sampled)
    h = mlp(z, ae.widths[::-1], cfg, "decoder", mask=per_object)
    out = layers.Dense(x.shape[-1], dtype="float32", name="reconstruction")(h)
    return keras.Model(inputs, out, name="autoencoder")


def _chain(model: keras.Model, prefix: str, x):
    """Re-apply the trained layers named ``prefix``_* in order (inference: batch norm uses its
    moving statistics, so no mask is needed)."""
    for layer in model.layers:
        name = layer.name
        if not name.startswith(prefix) or name in ("encoder_mean", "encoder_log_var"):
            continue
        x = layer.norm(x) if isinstance(layer, MaskedBatchNorm) else layer(x)
    return x


def split(model: keras.Model, config: JobConfig) -> tuple[keras.Model, keras.Model]:
    """(encoder, decoder) sharing the trained weights.  Object level: (batch, n, F) <-> (batch, n,
    latent) for any n; event level: (batch, D) <-> (batch, latent).  A VAE's encoder outputs
    [mean, log_var]."""
    ae = config.autoencoder
    width = model.get_layer("reconstruction").units
    lead = (None,) if ae.level == "object" else ()
    x = keras.Input((*lead, width), name="inputs")
    h = _chain(model, "encoder_", x)
    outputs = model.get_layer("encoder_mean")(h)
    if ae.variational:
        outputs = [outputs, model.get_layer("encoder_log_var")(h)]
    encoder = keras.Model(x, outputs, name="encoder")
    z = keras.Input((*lead, ae.latent), name="latent")
    decoder = keras.Model(z, model.get_layer("reconstruction")(_chain(model, "decoder_", z)), name="decoder")
    return encoder, decoder
