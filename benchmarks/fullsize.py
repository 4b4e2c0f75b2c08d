"""The seed-000 job at the talk's size: 4.3 M + 4.3 M events through one whole ``payload run``.

    python benchmarks/fullsize.py [--events 4300000] [--epochs N] [--workdir DIR] [--json OUT]

The reference samples (``../shared/data/ttbar_{A,B}_large.root``, 200 000 events each) are copied as
whole ROOT files until each sample holds at least ``--events`` events (22 copies for 4.3 M: 4.4 M), and
``examples/seed000_reweight.yaml`` runs on them unchanged except for ``--epochs`` (default: the config's
own; ``--no-cache-inputs`` measures the former training stream, which scaled every block every
epoch). The job's manifest gives every stage's wall time and its own peak RSS (the kernel's high-water
mark is reset at each stage); training samples/s come from the events trained on. With fewer epochs
than configured, the training time of the configured epochs is estimated from the measured epochs.
The figures are printed as the table docs/benchmarks.md shows, beside the seed-000 talk's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import ALLOCATORS, allocator_env  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
REFERENCE_EVENTS = 200_000
#: The seed-000 talk, for comparison: preprocessing, memory and training of the same job size.
#: The job's stages in the order they run; any others follow.
ORDER = [
    "inputs",
    "convert_primary",
    "convert_secondary",
    "prepare",
    "cache_inputs",
    "train",
    "export",
    "onnx",
    "evaluate",
]
TALK = {"preprocessing": "40 min", "memory": "> 250 GB", "training": "5-6 h on a GPU"}


def replicate(source: Path, copies: int, workdir: Path) -> list[str]:
    """``copies`` byte copies of one ROOT file: real files, read back as any input would be."""
    paths = []
    for i in range(copies):
        path = workdir / f"{source.stem}_{i:02d}.root"
        if not path.exists() or path.stat().st_size != source.stat().st_size:
            shutil.copyfile(source, path)
        paths.append(str(path))
    return paths


def run_job(
    primary: list[str], secondary: list[str], epochs: int | None, workdir: Path, env: dict, cache_inputs: bool = True
) -> dict:
    raw = yaml.safe_load((REPO / "examples" / "seed000_reweight.yaml").read_text())
    configured = raw["training"]["epochs"]
    if epochs is not None:
        raw["training"]["epochs"] = epochs
    raw["training"]["cache_inputs"] = cache_inputs
    config = workdir / "job.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = workdir / "job"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "payload", "-q", "run", "--no-job-report", "--config", str(config)]
        + ["--output", str(out), "--primary", ",".join(primary), "--secondary", ",".join(secondary)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"payload run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    epochs_run = metrics["training"]["epochs_run"]
    # Whole batches: the last one of an epoch may be short, which this overstates by under one batch.
    train_events = metrics["training"]["steps_per_epoch"] * raw["training"]["batch_size"]
    train_s = manifest["timings"]["train"]
    return {
        "events_per_sample": metrics["events"] // 2,
        "wall_s": round(wall, 1),
        "timings": manifest["timings"],
        "peak_rss_mb": manifest["peak_rss_mb"],
        "epochs_run": epochs_run,
        "epochs_configured": configured,
        "train_samples_per_s": round(train_events * epochs_run / train_s),
        "train_s_configured_epochs": round(train_s / epochs_run * configured),
        "verdict": metrics.get("closure", {}).get("verdict"),
    }


def markdown(r: dict) -> str:
    t, m = r["timings"], r["peak_rss_mb"]
    stages = [s for s in ORDER if s in t] + sorted(set(t) - set(ORDER))
    convert = t.get("convert_primary", 0) + t.get("convert_secondary", 0)
    estimate = r["wall_s"] - t["train"] + r["train_s_configured_epochs"]
    lines = [
        f"{r['events_per_sample']:,} + {r['events_per_sample']:,} events, {r['epochs_run']} epoch(s) of "
        f"{r['epochs_configured']} configured, {r['machine']}, {r['allocator']}, {r['date']}:",
        "",
        "| stage | wall s | peak RSS MB |",
        "|---|---|---|",
        *(f"| {s} | {t[s]:.1f} | {m.get(s, 0):.0f} |" for s in stages),
        f"| whole job (process) | {r['wall_s']:.0f} | {max(m.values()):.0f} |",
        "",
        "| | this job | seed-000 talk |",
        "|---|---|---|",
        f"| preprocessing (convert both samples) | {convert:.0f} s | {TALK['preprocessing']} |",
        f"| peak memory | {max(m.values()) / 1024:.1f} GB | {TALK['memory']} |",
        f"| training samples/s | {r['train_samples_per_s']:,} | |",
        f"| training, {r['epochs_configured']} epochs | {r['train_s_configured_epochs'] / 3600:.1f} h"
        f"{' (estimated)' if r['epochs_run'] < r['epochs_configured'] else ''} | {TALK['training']} |",
        f"| whole job, {r['epochs_configured']} epochs | {estimate / 3600:.1f} h | |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=4_300_000, help="events per sample, at least")
    parser.add_argument("--epochs", type=int, help="train this many epochs (default: the config's)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of ttbar_{A,B}_large.root")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/payload-fullsize"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--allocator", choices=ALLOCATORS, default="auto")
    parser.add_argument(
        "--no-cache-inputs",
        action="store_true",
        help="scale the network inputs block by block every epoch (training.cache_inputs off), the former way",
    )
    args = parser.parse_args(argv)
    env, allocator = allocator_env(args.allocator)
    args.workdir.mkdir(parents=True, exist_ok=True)
    copies = -(-args.events // REFERENCE_EVENTS)
    primary = replicate(args.data / "ttbar_A_large.root", copies, args.workdir)
    secondary = replicate(args.data / "ttbar_B_large.root", copies, args.workdir)
    result = run_job(primary, secondary, args.epochs, args.workdir, env, not args.no_cache_inputs)
    result |= {
        "cache_inputs": not args.no_cache_inputs,
        "machine": f"{os.cpu_count()} cores",
        "allocator": allocator,
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
