"""Keras 3 models (``keras.layers`` / ``keras.ops`` only: TensorFlow, JAX and PyTorch backends).

Every model takes a dict of the event file's arrays by name: ``objects`` (batch, M, F), ``mask``
(batch, M), ``events`` (batch, E) when event features are configured, and ``decorrelate`` while a
decorrelation penalty is trained.
"""

from __future__ import annotations

from payload.config import DeepSetsModel, DenseModel, GCNModel, JobConfig


def build_model(config: JobConfig, max_objects: int, object_names: list[str], event_names: list[str]):
    cfg = config.model
    if isinstance(cfg, DeepSetsModel):
        from payload.learn.models.deepsets import build_deepsets

        return build_deepsets(config, cfg, max_objects, object_names, event_names)
    if isinstance(cfg, DenseModel):
        from payload.learn.models.dense import build_dense

        return build_dense(config, cfg, max_objects, object_names, event_names)
    if isinstance(cfg, GCNModel):
        from payload.learn.models.gcn import build_gcn

        return build_gcn(config, cfg, max_objects, object_names, event_names)
    from payload.learn.models.autoencoder import build_autoencoder

    return build_autoencoder(config, cfg, max_objects, object_names, event_names)


def build_model_for(config: JobConfig, source):
    """The configured model sized for an event file (an ``EventSource``)."""
    return build_model(config, source.max_objects, source.object_names, source.network_event_names)


def load_model(path):
    """Load a saved model in Keras safe mode, with this package's custom layers and schedules registered."""
    import keras

    import payload.learn.models.layers  # registers the custom layers, which loading resolves by name
    import payload.learn.schedules  # noqa: F401 - registers the LR schedules

    return keras.saving.load_model(path, safe_mode=True)


def input_names(model) -> list[str]:
    """The names of a model's inputs, as the keys of the dict it takes."""
    return [t.name.split(":")[0] if hasattr(t, "name") else str(t) for t in model.inputs]


def inference_model(model):
    """The model without its training-only decorrelation penalty (which needs the observables as input)."""
    import keras

    try:
        model.get_layer("decorrelation")
    except ValueError:
        return model
    inputs = {name: t for name, t in zip(input_names(model), model.inputs) if name != "decorrelate"}
    return keras.Model(inputs, model.get_layer("probability").output, name=model.name)
