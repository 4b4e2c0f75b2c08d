"""The seed-000 Deep Sets on an accelerator, in one bounded run: throughput, utilisation, input wait.

    KERAS_BACKEND=jax python benchmarks/gpu.py --data DIR [--events 4300000] [--steps 400] [--out DIR]

``DIR`` holds ``ttbar_A.root`` and ``ttbar_B.root``; they are listed under as many names as it takes
to reach ``--events`` per sample (seed 000: 4.3 M), converted once (``payload convert``), and the
seed-000 model (``--config``) is trained from the streaming pipeline ``payload run`` uses for
``--steps`` steps per variant: mixed precision on and off, XLA (jit) on and off.  For each variant:
steady samples/s (after a compiling warm-up), the share of the steady time the training loop spent
waiting for its next batch, and GPU utilisation and memory sampled by ``nvidia-smi -lms 500`` over
that variant's steps.  Then an inference pass over the test split, and the full-size job's
estimated epoch and training time.  Everything goes into ``OUT/gpu.json``.

Without a GPU (no ``nvidia-smi``, or the backend sees none) the same run happens on the CPU at the
sizes given, the GPU parts skipped with a message: that is how it is tested.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class GpuSampler:
    """``nvidia-smi`` sampling utilisation and memory every 500 ms in the background."""

    def __init__(self, path: Path):
        self.path, self.proc = path, None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "500",
                ],
                stdout=path.open("w"),
                stderr=subprocess.DEVNULL,
            )
            self.start = time.time()

    def window(self, t0: float, t1: float) -> dict | None:
        """Mean and median utilisation (%) and the largest memory used (MiB) between two times."""
        if self.proc is None:
            return None
        rows = [line.split(",") for line in self.path.read_text().splitlines() if line.count(",") == 1]
        # One row every 500 ms from the start: the row's time is its position.
        picked = [(float(u), float(m)) for i, (u, m) in enumerate(rows) if t0 <= self.start + 0.5 * i <= t1]
        if not picked:
            return None
        utils = sorted(u for u, _ in picked)
        return {
            "samples": len(picked),
            "util_mean": sum(utils) / len(utils),
            "util_median": utils[len(utils) // 2],
            "memory_used_max_mib": max(m for _, m in picked),
        }

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()


class Waiting:
    """Counts the time a consumer of ``batches()`` waits for each next item (after ``start()``)."""

    def __init__(self, inner):
        self.inner, self.waited, self.counting = inner, 0.0, False

    def start(self):
        self.counting, self.waited = True, 0.0

    def batches(self):
        while True:
            t = time.perf_counter()
            item = next(self.inner)
            if self.counting:
                self.waited += time.perf_counter() - t
            yield item


def steady_timer(keras, warmup: int, waiting: Waiting):
    """A callback timing the steps after ``warmup`` (compilation left out), in CPU and wall-clock time."""

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == warmup:
                waiting.start()
                self.t0, self.w0 = time.perf_counter(), time.time()

        def on_train_end(self, logs=None):
            self.seconds, self.w1 = time.perf_counter() - self.t0, time.time()

    return Timer()


def inputs(data: Path, work: Path, events: int) -> dict[str, list[str]]:
    """Symbolic links to the reference files under distinct names (each name is its own file to the
    split hash) until ``events`` per sample are reached."""
    import uproot

    out = {}
    for name, sample in (("primary", "A"), ("secondary", "B")):
        source = data / f"ttbar_{sample}.root"
        with uproot.open(source) as f:
            per_file = f["nominal"].num_entries
        copies = max(1, -(-events // per_file))
        links = []
        for i in range(copies):
            link = work / "inputs" / f"ttbar_{sample}_{i:04d}.root"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(source.resolve())
            links.append(str(link))
        out[name] = links
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="folder with ttbar_A.root and ttbar_B.root")
    p.add_argument("--events", type=int, default=4_300_000, help="events per sample (seed 000: 4.3 M)")
    p.add_argument("--steps", type=int, default=400, help="timed training steps per variant")
    p.add_argument("--warmup", type=int, default=40, help="steps before timing (compilation)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--config", type=Path, default=REPO / "examples" / "seed000_reweight.yaml")
    p.add_argument("--work", type=Path, default=Path("/tmp/payload-gpu"))
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/payload-gpu-out")))
    p.add_argument("--epochs", type=int, default=20, help="epochs of the full-size job, for the estimate")
    p.add_argument("--variants", default="mp-jit,fp32-jit,mp-nojit,fp32-nojit")
    p.add_argument("--nojit-steps", type=int, default=40, help="timed steps without jit (eager steps are slow)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    import keras

    from payload.config import load_config
    from payload.device import describe, gpus
    from payload.ingest.convert import convert
    from payload.learn.dataset import EventSource
    from payload.learn.feed import fit_input
    from payload.learn.models import build_model_for
    from payload.learn.splits import TEST, TRAIN, VALIDATION
    from payload.learn.train import Tally, compile_model, make_stream_factory, prepare
    from payload.results.evaluate import predict

    result: dict = {
        "device": describe(),
        "events_per_sample": args.events,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "config": str(args.config),
    }
    on_gpu = bool(gpus())
    if not on_gpu:
        result["note"] = "no GPU visible to the backend: ran on the CPU, utilisation not sampled"
        print("payload-gpu: no GPU visible; running the same measurements on the CPU", file=sys.stderr)
    sampler = GpuSampler(args.out / "nvidia-smi.csv")

    config = load_config(args.config)
    config.data.compression = "lzf"  # no hdf5plugin needed where only wheels were carried
    config.training.batch_size = args.batch_size
    t0 = time.perf_counter()
    files = inputs(args.data, args.work, args.events)
    converted = {}
    for name, listed in files.items():
        target = args.work / f"{name}-{args.events}.h5"
        if not target.exists():
            convert(config, listed, target, progress=False)
        converted[name] = target
    result["convert_s"] = time.perf_counter() - t0
    print(f"payload-gpu: converted {2 * args.events} events in {result['convert_s']:.1f} s", file=sys.stderr)

    # The scaler from the first 200 k events of each sample (enough for the quantiles); split counts
    # from the split fractions, as a full pass over 8.6 M events would only repeat them.
    small = [EventSource(converted[n], config, None) for n in ("primary", "secondary")]
    for s in small:
        s.size = min(s.size, 200_000)
    scaler, _ = prepare(config, small)
    sources = [(EventSource(converted[n], config, scaler), label) for n, label in (("primary", 0), ("secondary", 1))]
    sc = config.split
    tallies = []
    for source, _ in sources:
        n = source.size
        counts = {TRAIN: int(n * sc.train), VALIDATION: int(n * sc.validation), TEST: int(n * sc.test)}
        tallies.append(Tally(counts, {k: float(v) for k, v in counts.items()}))

    variants = []
    for name in args.variants.split(","):
        mp, jit = name.split("-")
        config.training.mixed_precision = "on" if mp == "mp" else "off"
        keras.mixed_precision.set_global_policy("mixed_float16" if mp == "mp" else "float32")
        keras.utils.set_random_seed(1)
        model = build_model_for(config, sources[0][0])
        steps, warmup = (args.steps, args.warmup) if jit == "jit" else (args.nojit_steps, max(2, args.warmup // 10))
        compile_model(model, config, steps_per_epoch=warmup + steps)
        model.jit_compile = jit == "jit"
        streams = make_stream_factory(config, sources, tallies, (TRAIN,), 1, shuffle=True)

        with fit_input(streams) as batches:
            waiting = Waiting(iter(batches))
            timer = steady_timer(keras, warmup, waiting)
            # tf.data (TensorFlow) pulls batches in its own threads: the wait is measured for other backends.
            model.fit(
                waiting.batches() if keras.backend.backend() != "tensorflow" else batches,
                steps_per_epoch=warmup + steps,
                epochs=1,
                verbose=0,
                shuffle=False,
                callbacks=[timer],
            )
        row = {
            "variant": name,
            "mixed_precision": mp == "mp",
            "jit": jit == "jit",
            "steps": steps,
            "samples_per_s": steps * args.batch_size / timer.seconds,
            "input_wait_share": waiting.waited / timer.seconds,
            "gpu": sampler.window(timer.w0, timer.w1),
        }
        variants.append(row)
        print(
            f"payload-gpu: {name}: {row['samples_per_s']:,.0f} samples/s, input wait "
            f"{100 * row['input_wait_share']:.1f} %, gpu {row['gpu']}",
            file=sys.stderr,
        )
    result["training"] = variants
    keras.mixed_precision.set_global_policy("float32")

    # Inference over the test split of the primary, block by block, as evaluation does.
    source = sources[0][0]
    n, t0, w0 = 0, time.perf_counter(), time.time()
    for block in source.iterate((TEST,)):
        predict(model, block.inputs)
        n += len(block)
        if n >= min(1_000_000, source.size):
            break
    seconds = time.perf_counter() - t0
    result["inference"] = {"events": n, "events_per_s": n / seconds, "gpu": sampler.window(w0, time.time())}
    sampler.stop()

    best = max(variants, key=lambda r: r["samples_per_s"])
    train_events = 2 * args.events * sc.train
    result["estimate"] = {
        "variant": best["variant"],
        "epoch_s": train_events / best["samples_per_s"],
        "training_h": args.epochs * train_events / best["samples_per_s"] / 3600,
        "epochs": args.epochs,
        "training_events_per_epoch": train_events,
    }
    (args.out / "gpu.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("training", "inference", "estimate")}, indent=1))
    with contextlib.suppress(OSError):
        for s in small:
            s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
