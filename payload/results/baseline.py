"""The field's standard reweighter as a baseline in every reweight job: hep_ml's GBReweighter (gradient
boosted trees maximising a symmetrised binned chi2) on the high-level features of the training split.

It is trained on a bounded sample of training events (``evaluation.baseline_events`` per sample,
drawn by a hash of file and entry) and evaluated on the same test events and with the same closure
metrics as the network, so a user sees on their own data whether the network beats it.
"""

from __future__ import annotations

import numpy as np

from payload.config import JobConfig
from payload.learn.dataset import EventSource, training_weights
from payload.learn.highlevel import HighLevel
from payload.learn.splits import TRAIN, uniform
from payload.progress import log

#: Hash seed offset that draws the baseline's training events (apart from the split's own hash).
_DRAW = 7


def _draw(source: EventSource, splits: tuple[int, ...], cap: int, expected: int, seed: int):
    """Blocks of ``source`` restricted to a uniform random ~``cap`` of the ``expected`` events in ``splits``."""
    rate = min(1.0, cap / max(expected, 1))
    for block in source.iterate(splits=splits):
        if rate < 1.0:
            u = uniform(block.entry, source.file_keys[block.file_index], seed + _DRAW)
            block = block.take(np.flatnonzero(u < rate))
        if len(block):
            yield block


class Baseline:
    """A fitted GBReweighter: ``factors(features)`` is its density ratio, secondary over primary."""

    def __init__(self, config: JobConfig, high_level: HighLevel):
        self.config, self.high_level = config, high_level
        self.model = None
        self.trained_on = (0, 0)

    def fit(self, sources: list[EventSource], expected: list[int]) -> Baseline:
        """``sources``: primary and secondary; ``expected``: their training-split sizes."""
        from hep_ml.reweight import GBReweighter

        cfg = self.config.evaluation
        seed = self.config.training.seed
        data = []
        for source, n in zip(sources, expected):
            parts = [
                (self.high_level.compute(b), training_weights(b, self.config, 1.0))
                for b in _draw(source, (TRAIN,), cfg.baseline_events, n, seed)
            ]
            data.append((np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])))
        (x0, w0), (x1, w1) = data
        self.trained_on = (len(x0), len(x1))
        log.info(
            "baseline: GBReweighter on %d + %d training events, %d high-level features", len(x0), len(x1), x0.shape[1]
        )
        self.model = GBReweighter(
            n_estimators=cfg.baseline_trees,
            learning_rate=0.1,
            max_depth=3,
            min_samples_leaf=max(100, min(1000, len(x0) // 100)),
            gb_args={"subsample": 0.4, "random_state": seed},
        )
        self.model.fit(x0.astype(np.float64), x1.astype(np.float64), original_weight=w0, target_weight=w1)  # type: ignore[attr-defined]
        return self

    def factors(self, features: np.ndarray) -> np.ndarray:
        return self.model.predict_weights(features.astype(np.float64), np.ones(len(features)))  # type: ignore[attr-defined]
