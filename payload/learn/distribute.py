"""Data parallelism: the model replicated on several devices, every batch split between them.

``training.data_parallel``: ``auto`` replicates over all GPUs when more than one is visible, ``all``
over every device of the backend's default kind (GPUs, or the CPU devices when there is none: how the
path is tested without GPUs), ``off`` never.  TensorFlow uses ``tf.distribute.MirroredStrategy``,
JAX Keras' ``DataParallel`` distribution; other backends train on one device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from payload.config import JobConfig
from payload.device import backend, gpus
from payload.errors import ConfigError
from payload.progress import log


def devices(config: JobConfig) -> list[str]:
    """The devices to replicate over; empty for single-device training."""
    mode = config.training.data_parallel
    name = backend()
    if mode == "off" or name not in ("tensorflow", "jax"):
        return []
    if name == "tensorflow":
        import tensorflow as tf

        found = [d.name for d in tf.config.list_logical_devices("GPU")]
        if mode == "all" and not found:
            found = [d.name for d in tf.config.list_logical_devices("CPU")]
    else:
        import keras

        found = keras.distribution.list_devices("gpu") if gpus() else []
        if mode == "all" and not found:
            found = keras.distribution.list_devices("cpu")
    return found if len(found) > 1 else []


@contextlib.contextmanager
def replicated(config: JobConfig) -> Iterator[int]:
    """Build, compile and fit the model inside this block; yields the number of replicas (1 = none)."""
    found = devices(config)
    if not found:
        yield 1
        return
    if config.training.batch_size % len(found):
        raise ConfigError(
            f"training.batch_size {config.training.batch_size} must be a multiple of the "
            f"{len(found)} devices it is split between (or set training.data_parallel: off)"
        )
    log.info("data parallel over %d devices: %s", len(found), ", ".join(found))
    if backend() == "tensorflow":
        import tensorflow as tf

        with tf.distribute.MirroredStrategy(found).scope():
            yield len(found)
        return
    import keras

    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=found))
    try:
        yield len(found)
    finally:
        keras.distribution.set_distribution(None)
