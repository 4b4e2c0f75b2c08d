"""Keras 3 models (``keras.layers`` / ``keras.ops`` only: TensorFlow, JAX and PyTorch backends)."""

from __future__ import annotations

from payload.config import JobConfig


def build_model(config: JobConfig, max_objects: int, n_object_features: int, n_event_features: int):
    if config.model.type == "deepsets":
        from payload.models.deepsets import build_deepsets

        return build_deepsets(config.model, max_objects, n_object_features, n_event_features)
    from payload.models.dense import build_dense

    return build_dense(config.model, n_event_features)


def build_model_for(config: JobConfig, source):
    """The configured model sized for an event file (an ``EventSource``)."""
    return build_model(config, source.max_objects, len(source.object_names), len(source.event_names))


def load_model(path):
    """Load a saved model in Keras safe mode, with this package's custom layers and schedules registered."""
    import keras

    import payload.models.layers  # noqa: F401 - registers MaskedPool
    import payload.schedules  # noqa: F401 - registers the LR schedules

    return keras.saving.load_model(path, safe_mode=True)
