"""The hand-off of training streams to Keras: grouping batches for tf.data keeps every batch, in order."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from payload.feed import epoch_batches, fit_input


class CountingStream:
    """Epoch ``epoch`` of a stream: ``steps`` batches whose values say (epoch, step, row)."""

    def __init__(self, epoch: int, steps: int = 5, size: int = 6):
        self.epoch, self.steps, self.size = epoch, steps, size

    def batches(self):
        for step in range(self.steps):
            base = (self.epoch * 100 + step) * self.size
            values = np.arange(base, base + self.size, dtype=np.float32)
            yield ({"objects": np.repeat(values[:, None, None], 3, axis=1), "mask": np.ones((self.size, 3), np.float32)},
                   (values % 2)[:, None], values)


def _as_numpy(batch):
    x, y, w = batch
    return {k: np.asarray(v) for k, v in x.items()}, np.asarray(y), np.asarray(w)


@pytest.mark.parametrize("group", [1, 4])
def test_grouped_feed_yields_the_stream_in_order_across_epochs(group):
    expected = epoch_batches(CountingStream, start_epoch=2)
    before = threading.active_count()
    with fit_input(CountingStream, start_epoch=2, group=group) as feed:
        got = [_as_numpy(b) for _, b in zip(range(13), feed)]  # 2.6 epochs: groups straddle epoch ends
    for (x, y, w), (ex, ey, ew) in zip(got, expected):
        np.testing.assert_array_equal(w, ew)
        np.testing.assert_array_equal(y, ey)
        for key in ex:
            np.testing.assert_array_equal(x[key], ex[key])
    assert got[0][2][0] == 1200 and got[5][2][0] == 1800  # epoch 2 step 0, then epoch 3 step 0
    assert threading.active_count() <= before  # the producer stopped with the block
