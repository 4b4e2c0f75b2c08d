"""Training with the padding cut from every batch against training on every padded slot, same run.

    python benchmarks/padding.py [--steps 300] [--repeat 3] [--modes MODE ...] [--json OUT]

Two samples: the reference Pythia events (``../shared/data/ttbar_{A,B}.root``, the seed-000 config:
about 6 real objects in 45 slots) and a wide-multiplicity toy (2 + Poisson(14) jets, leptons and MET in
45 slots).  Each is converted once; then the seed-000 Deep Sets is trained from the streaming pipeline
``payload run`` uses, in fresh processes taking turns (best of ``--repeat``), four ways: every slot
(``training.trim_padding`` off), each group of 32 batches cut to its largest multiplicity (trimmed,
``bucket_by_multiplicity`` off) and each batch cut to its own after the group's rows were sorted by
multiplicity (bucketed, the default), and that with the training step compiled by XLA
(``training.jit_compile: on``) or with the network inputs computed once and read back
(``bucketed+cached``, ``training.cache_inputs`` as a job runs it; the other modes compute them block by
block): steady samples/s after a compiling warm-up; ``step`` times the bucketed
step alone, its first 64 batches repeated from memory, the ceiling of any input pipeline.  The bucketed run
then predicts its test events from the cut and from the fully padded inputs: the largest difference is
printed beside the speeds (masked pooling makes the two equal to float rounding).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import allocator_env  # benchmarks/ is on sys.path when a script runs
from train import steady_rate

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
WARM = 30


#: mode -> (training.trim_padding, training.bucket_by_multiplicity, training.jit_compile, training.cache_inputs)
MODES = {
    "padded": (False, False, "off", False),
    "trimmed": (True, False, "off", False),
    "bucketed": (True, True, "off", False),
    "bucketed+xla": (True, True, "on", False),
    # The network inputs scaled once (payload/learn/inputcache.py), as a job does by default.
    "bucketed+cached": (True, True, "off", True),
    # The bucketed step alone: its first 64 batches repeated from memory, what no input pipeline beats.
    "step": (True, True, "off", False),
}


def child(mode: str, config_path: str, a: str, b: str, steps: int) -> None:
    import numpy as np

    from payload.config import load_config
    from payload.learn.dataset import EventSource
    from payload.learn.feed import fit_input
    from payload.learn.inputcache import attach
    from payload.learn.models import build_model_for, input_names
    from payload.learn.splits import TEST, TRAIN
    from payload.learn.train import compile_model, make_stream_factory, prepare
    from payload.results.evaluate import predict

    config = load_config(config_path)
    training = config.training
    training.trim_padding, training.bucket_by_multiplicity, training.jit_compile, training.cache_inputs = MODES[mode]
    raw = [EventSource(a, config, None), EventSource(b, config, None)]
    scaler, tallies = prepare(config, raw)
    sources = [(EventSource(a, config, scaler), 0), (EventSource(b, config, scaler), 1)]
    if training.cache_inputs:
        for source, _ in sources:
            attach(source)
    model = build_model_for(config, raw[0])
    compile_model(model, config, steps)
    rate = steady_rate(WARM)
    streams = make_stream_factory(config, sources, tallies, (TRAIN,), 1, True)
    with fit_input(streams) as batches:
        if mode == "step":
            import tensorflow as tf

            feed = iter(batches)
            held = tf.data.Dataset.from_tensors(next(feed))
            for _ in range(63):  # the stream's mix of slot counts, held in memory
                held = held.concatenate(tf.data.Dataset.from_tensors(next(feed)))
            batches = held.repeat()
        model.fit(batches, steps_per_epoch=WARM + steps, epochs=1, verbose=0, shuffle=False, callbacks=[rate])
    difference, real = 0.0, []
    for block in sources[0][0].iterate((TEST,)):
        padded = np.asarray(model.predict_on_batch({k: block.inputs[k] for k in input_names(model)})).ravel()
        difference = max(difference, float(np.abs(predict(model, block.inputs) - padded).max()))  # predict cuts
        real.append(block.inputs["mask"].sum(axis=1))
    counts = np.concatenate(real)
    print(
        json.dumps(
            {
                "samples_per_s": steps * config.training.batch_size / rate.seconds,
                "max_prediction_difference": difference,
                "mean_real_objects": float(counts.mean()),
                "max_real_objects": int(counts.max()),
                "slots": int(block.inputs["mask"].shape[1]),
            }
        )
    )


def _once(mode: str, config: Path, a: Path, b: Path, steps: int, env: dict[str, str]) -> dict:
    args = [sys.executable, __file__, "--child", mode, str(config), str(a), str(b), str(steps)]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def samples(workdir: Path) -> dict[str, tuple[Path, Path, Path]]:
    """name -> (job config, converted primary, converted secondary)."""
    import yaml

    from payload.config import load_config
    from payload.ingest.convert import convert
    from payload.ingest.samples import write_sample

    seed000 = yaml.safe_load((REPO / "examples" / "seed000_reweight.yaml").read_text())
    wide = yaml.safe_load((REPO / "payload" / "resources" / "demo.yaml").read_text())
    wide["data"]["max_objects"] = 45
    wide.update(model=seed000["model"], scaling=seed000["scaling"], training=seed000["training"])
    wide["scaling"]["outliers"] = {}
    out = {}
    for name, raw, inputs in (
        ("reference", seed000, [DATA / "ttbar_A.root", DATA / "ttbar_B.root"]),
        ("wide", wide, [workdir / f"wide_{s}.root" for s in "AB"]),
    ):
        config = workdir / f"{name}.yaml"
        config.write_text(yaml.safe_dump(raw))
        converted = []
        for path, sample in zip(inputs, "AB"):
            if not path.exists():
                write_sample(path, 40_000, sample, extra_jets=14.0)
            h5 = workdir / f"{name}_{sample}.h5"
            if not h5.exists():
                convert(load_config(config), str(path), h5, progress=False)
            converted.append(h5)
        out[name] = (config, *converted)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/payload-padding"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="padded is always run")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, config, a, b, steps = args.child
        child(mode, config, a, b, int(steps))
        return
    modes = ["padded", *(m for m in args.modes if m != "padded")]
    env, allocator = allocator_env("auto")
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (config, a, b) in samples(args.workdir).items():
        runs: dict[str, list[dict]] = {mode: [] for mode in modes}
        for _ in range(args.repeat):
            for mode in modes:
                runs[mode].append(_once(mode, config, a, b, args.steps, env))
        best = {mode: max(r, key=lambda x: x["samples_per_s"]) for mode, r in runs.items()}
        rows.append({"sample": name, **best})
    print(f"allocator: {allocator}; seed-000 Deep Sets, batch 2048, best of {args.repeat}; samples/s, ratio to padded")
    print(f"{'sample':>10} {'real objects':>13}" + "".join(f" {m + ' /s':>12}" for m in modes) + f" {'max |dp|':>9}")
    for r in rows:
        b, p = r.get("bucketed", r[modes[-1]]), r["padded"]["samples_per_s"]
        rates = "".join(f" {r[m]['samples_per_s']:>7,.0f} {r[m]['samples_per_s'] / p:>4.2f}" for m in modes)
        print(
            f"{r['sample']:>10} {b['mean_real_objects']:>6.1f} of {b['slots']:<3}{rates} {b['max_prediction_difference']:>9.1e}"
        )
    if args.json:
        args.json.write_text(json.dumps({"allocator": allocator, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
