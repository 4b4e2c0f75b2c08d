"""Training throughput streaming from HDF5 against in-memory arrays, and peak memory at two sizes.

    python benchmarks/train.py [--sizes 100000 800000] [--steps 400] [--repeat 3] [--workdir /tmp/payload-bench]

For each size, toy samples A and B are written and converted once (cached).  Each measurement runs in
a fresh process (its own peak RSS): the same Deep Sets model and batch size trained for ``--steps``
steps (after a warm-up that compiles the step) either from the streaming pipeline that ``payload run``
uses, or from numpy arrays of the whole training split loaded into memory, the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import peak_rss_mb  # benchmarks/ is on sys.path when a script runs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]


def steady_rate(warm: int):
    """A callback timing steps ``warm`` to the end of one fit: compilation and the data adapter's
    set-up (for in-memory arrays, a copy of the whole dataset) are left out of both modes alike."""
    import keras

    class SteadyRate(keras.callbacks.Callback):
        seconds = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            if batch == warm:
                self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.start

    return SteadyRate()


def child(mode: str, a: str, b: str, steps: int) -> None:
    import numpy as np

    from payload.config import load_config
    from payload.dataset import EventSource, concat
    from payload.models import build_model_for
    from payload.prefetch import prefetched
    from payload.splits import TRAIN
    from payload.train import _epoch_batches, compile_model, make_stream_factory, prepare

    config = load_config(REPO / "payload" / "data" / "demo.yaml")
    config.training.batch_size = 1024
    raw = [EventSource(a, config, None), EventSource(b, config, None)]
    scaler, tallies = prepare(config, raw)
    sources = [(EventSource(a, config, scaler), 0), (EventSource(b, config, scaler), 1)]
    model = build_model_for(config, raw[0])
    compile_model(model, config, steps)
    bs = config.training.batch_size
    warm = 30
    rate = steady_rate(warm)
    if mode == "stream":
        with prefetched(_epoch_batches(make_stream_factory(config, sources, tallies, (TRAIN,), 1, True), 0)) as batches:
            model.fit(batches, steps_per_epoch=warm + steps, epochs=1, verbose=0, shuffle=False, callbacks=[rate])
    else:
        blocks = [blk for src, _ in sources for blk in src.iterate((TRAIN,))]
        labels = np.concatenate([np.full(len(blk), lab, np.float32) for (src, lab) in sources
                                 for blk in src.iterate((TRAIN,))])
        data = concat(blocks)
        # Repeated when the split is shorter than the run: fit stops early when its arrays run out.
        order = np.resize(np.random.default_rng(0).permutation(len(data)), (warm + steps) * bs)
        x = {k: v[order] for k, v in data.inputs.items()}
        y, w = labels[order][:, None], data.weights[order].astype(np.float32)
        model.fit(x, y, sample_weight=w, batch_size=bs, steps_per_epoch=warm + steps, epochs=1, verbose=0,
                  callbacks=[rate])
    seconds = rate.seconds
    rss = peak_rss_mb()
    print(json.dumps({"samples_per_s": steps * bs / seconds, "peak_rss_mb": rss}))


def measure(mode: str, a: Path, b: Path, steps: int, repeat: int) -> dict:
    """Best of ``repeat`` fresh processes: a shared machine only ever slows a run down."""
    runs = []
    for _ in range(repeat):
        proc = subprocess.run([sys.executable, __file__, "--child", mode, str(a), str(b), str(steps)],
                              capture_output=True, text=True, cwd=REPO)
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return max(runs, key=lambda r: r["samples_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 800_000], help="events per sample")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement, best kept")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/payload-bench"))
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, a, b, steps = args.child
        child(mode, a, b, int(steps))
        return

    from payload.config import load_config
    from payload.convert import convert
    from payload.samples import write_sample

    config = load_config(REPO / "payload" / "data" / "demo.yaml")
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        h5 = []
        for name in ("A", "B"):
            path = args.workdir / f"train_{name}_{size}.h5"
            if not path.exists():
                root = write_sample(args.workdir / f"train_{name}_{size}.root", size, name)
                convert(config, str(root), path, progress=False)
            h5.append(path)
        stream = measure("stream", *h5, args.steps, args.repeat)
        memory = measure("memory", *h5, args.steps, args.repeat)
        rows.append((size, stream, memory))
    print(f"{'events/sample':>14} {'stream samples/s':>17} {'in-memory samples/s':>20} {'ratio':>6} "
          f"{'stream RSS MB':>14} {'in-memory RSS MB':>17}")
    for size, s, m in rows:
        print(f"{size:>14} {s['samples_per_s']:>17,.0f} {m['samples_per_s']:>20,.0f} "
              f"{s['samples_per_s'] / m['samples_per_s']:>6.2f} {s['peak_rss_mb']:>14.0f} {m['peak_rss_mb']:>17.0f}")


if __name__ == "__main__":
    main()
