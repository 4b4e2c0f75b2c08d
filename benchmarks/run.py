"""All benchmarks in one run: conversion, training, inference and a whole job at two sizes.

    python benchmarks/run.py [--quick] [--allocator auto|tcmalloc|glibc] [--workdir DIR] [--out DIR]

Writes ``results.json`` and ``results.md`` (the tables the README shows) into ``--out``:
- conversion against the raw uproot read of the same branches (benchmarks/convert.py);
- training samples/s streaming from HDF5 against in-memory arrays (benchmarks/train.py);
- ``payload run`` end to end on toy seed-000-shaped samples (the seed-000 Deep Sets, 2 epochs): wall time
  and peak RSS of every stage, from the job's own manifest;
- inference: ``payload run --mode evaluate`` of that job's model on the same inputs, events/s of its
  evaluate stage.
``--quick`` uses small sizes and one repeat, to check the runner itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import ALLOCATORS, allocator_env  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
#: The stages of a training job, in the order they run.
STAGES = [
    "convert_primary",
    "convert_secondary",
    "prepare",
    "train",
    "export",
    "evaluate",
    "closure_classifier",
    "plots",
]


def _script(name: str, args: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, str(HERE / name), *args, "--json", out.name], check=True, cwd=REPO)
        return json.loads(Path(out.name).read_text())


def _payload(*args: str, cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "payload", "-q", *args, "--no-job-report"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode:
        raise SystemExit(f"payload {' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def job(size: int, workdir: Path, env: dict[str, str]) -> dict:
    """A whole training job and an evaluation job on ``size`` events per sample."""
    from payload.ingest.samples import write_sample

    inputs = []
    for name in ("A", "B"):
        path = workdir / f"train_{name}_{size}.root"
        if not path.exists():
            write_sample(path, size, name)
        inputs.append(str(path))
    raw = yaml.safe_load((REPO / "payload" / "resources" / "demo.yaml").read_text())
    raw["model"] = yaml.safe_load((REPO / "examples" / "seed000_reweight.yaml").read_text())["model"]
    raw["training"].update(epochs=2, batch_size=1024)
    raw["evaluation"].update(closure_epochs=1)
    run_dir = workdir / f"job_{size}"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "job.yaml").write_text(yaml.safe_dump(raw))
    for old in ("train", "evaluate"):
        subprocess.run(["rm", "-rf", str(run_dir / old)], check=True)
    start = time.perf_counter()
    _payload(
        "run",
        "--primary",
        inputs[0],
        "--secondary",
        inputs[1],
        "--config",
        "job.yaml",
        "--output",
        "train",
        cwd=run_dir,
        env=env,
    )
    wall = time.perf_counter() - start
    train = json.loads((run_dir / "train" / "manifest.json").read_text())
    _payload(
        "run",
        "--mode",
        "evaluate",
        "--model",
        "train",
        "--primary",
        inputs[0],
        "--secondary",
        inputs[1],
        "--output",
        "evaluate",
        cwd=run_dir,
        env=env,
    )
    evaluate = json.loads((run_dir / "evaluate" / "manifest.json").read_text())
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    events = metrics["events"]  # all events of both inputs: evaluate mode applies the model to every one
    return {
        "events_per_sample": size,
        "wall_s": round(wall, 1),
        "timings": train["timings"],
        "peak_rss_mb": train["peak_rss_mb"],
        "evaluate_s": evaluate["timings"]["evaluate"],
        "inference_events": events,
        "inference_events_per_s": events / evaluate["timings"]["evaluate"],
    }


def markdown(results: dict) -> str:
    lines = [
        f"Machine: {results['machine']}; allocator: {results['allocator']}; {results['date']}.",
        "",
        "Conversion (events/s; ratio to the raw uproot read of the same branches; peak RSS):",
        "",
        "| events | raw ev/s | convert ev/s | convert MB/s | ratio | raw RSS MB | convert RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["convert"]:
        lines.append(
            f"| {r['events']:,} | {r['raw_events_per_s']:,.0f} | {r['convert_events_per_s']:,.0f} | "
            f"{r['convert_mb_per_s']:.0f} | {r['ratio']:.2f} | {r['raw_peak_rss_mb']:.0f} | "
            f"{r['convert_peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "Training (samples/s, seed-000 Deep Sets, batch 1024; ratio streaming / in-memory):",
        "",
        "| events per sample | streaming | per-batch generator | in-memory | ratio | streaming RSS MB | "
        "in-memory RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["train"]["rows"]:
        lines.append(
            f"| {r['events_per_sample']:,} | {r['stream']['samples_per_s']:,.0f} | "
            f"{r['generator']['samples_per_s']:,.0f} | {r['memory']['samples_per_s']:,.0f} | "
            f"{r['ratio']:.2f} | {r['stream']['peak_rss_mb']:.0f} | {r['memory']['peak_rss_mb']:.0f} |"
        )
    stages = [s for s in STAGES if s in results["job"][0]["timings"]]
    stages += [s for s in results["job"][0]["timings"] if s not in stages]
    lines += [
        "",
        "`payload run` end to end (2 epochs), seconds and peak RSS (MB) per stage; inference = evaluate "
        "mode on the same events:",
        "",
        "| events per sample | wall s | " + " | ".join(stages) + " | inference ev/s |",
        "|---|---|" + "---|" * len(stages) + "---|",
    ]
    for r in results["job"]:
        cells = [f"{r['timings'].get(s, 0):.1f} s / {r['peak_rss_mb'].get(s, 0):.0f}" for s in stages]
        lines.append(
            f"| {r['events_per_sample']:,} | {r['wall_s']:.0f} | "
            + " | ".join(cells)
            + f" | {r['inference_events_per_s']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/payload-bench"))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument(
        "--allocator",
        choices=ALLOCATORS,
        default="auto",
        help="memory allocator of every measured process (default: tcmalloc where installed, as in the image)",
    )
    args = parser.parse_args()
    env, allocator = allocator_env(args.allocator)
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    convert_sizes, train_sizes = (
        (["50000", "400000"], ["20000", "160000"]) if args.quick else (["500000", "4000000"], ["100000", "800000"])
    )
    common = ["--workdir", str(args.workdir), "--repeat", "1" if args.quick else "3"]
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "allocator": allocator,
        "date": time.strftime("%Y-%m-%d"),
        # The scripts set their measured processes' allocator themselves.
        "convert": _script("convert.py", ["--sizes", *convert_sizes, *common, "--allocator", args.allocator])["rows"],
        "train": _script(
            "train.py",
            [
                "--sizes",
                *train_sizes,
                *common,
                "--allocator",
                args.allocator,
                *(["--steps", "100"] if args.quick else []),
            ],
        ),
        "job": [job(int(size), args.workdir, env) for size in train_sizes],
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
