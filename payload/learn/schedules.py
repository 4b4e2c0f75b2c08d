"""Learning-rate schedules as serialisable Keras schedules: they live in the optimizer, so a
resumed job continues the schedule exactly where the checkpoint left it."""

from __future__ import annotations

import math

import keras
from keras import ops

from payload.config import TrainingConfig


@keras.saving.register_keras_serializable(package="payload")
class HoldThenExpDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Seed 000: constant for ``hold`` epochs, then multiplied by exp(-rate) every epoch."""

    def __init__(self, initial: float, steps_per_epoch: int, hold: int = 2, rate: float = 0.1):
        self.initial, self.steps_per_epoch, self.hold, self.rate = initial, steps_per_epoch, hold, rate

    def __call__(self, step):
        epoch = ops.floor(ops.cast(step, "float32") / self.steps_per_epoch)
        decays = ops.maximum(epoch - (self.hold - 1), 0.0)
        return self.initial * ops.exp(-self.rate * decays)

    def get_config(self):
        return {"initial": self.initial, "steps_per_epoch": self.steps_per_epoch, "hold": self.hold, "rate": self.rate}


@keras.saving.register_keras_serializable(package="payload")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """1cycle (seed 002): linear warm-up from peak/25 over ``warmup`` of the steps, cosine down to peak/1e4."""

    def __init__(self, peak: float, total_steps: int, warmup: float = 0.3):
        self.peak, self.total_steps, self.warmup = peak, total_steps, warmup

    def __call__(self, step):
        step = ops.cast(step, "float32")
        up = max(1.0, self.warmup * self.total_steps)
        start, end = self.peak / 25.0, self.peak / 1e4
        rising = start + (self.peak - start) * step / up
        frac = ops.clip((step - up) / max(1.0, self.total_steps - up), 0.0, 1.0)
        falling = end + (self.peak - end) * 0.5 * (1.0 + ops.cos(math.pi * frac))
        return ops.where(step < up, rising, falling)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup": self.warmup}


def make_schedule(cfg: TrainingConfig, steps_per_epoch: int, epochs: int | None = None):
    epochs = epochs or cfg.epochs
    if cfg.schedule == "seed000":
        return HoldThenExpDecay(cfg.learning_rate, steps_per_epoch)
    if cfg.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=steps_per_epoch * epochs)
    if cfg.schedule == "onecycle":
        return OneCycle(cfg.learning_rate, steps_per_epoch * epochs)
    return cfg.learning_rate
