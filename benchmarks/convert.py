"""Conversion speed against the raw uproot read of the same branches, and peak memory at two sizes.

    python benchmarks/convert.py [--sizes 500000 4000000] [--allocator auto|tcmalloc|glibc] [--workdir DIR]

For each size a seed-000-shaped toy file (jets, leptons, MET; 45 x 5 objects) is written once and
cached.  Each measurement runs in a fresh subprocess so its peak RSS is its own: first the raw
``uproot`` read of exactly the branches conversion needs (the baseline), then ``payload.ingest.convert``.
Prints events/s, MB/s (file bytes), the convert/raw ratio and peak RSS per size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ALLOCATORS, allocator_env, peak_rss_mb  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]


def child(mode: str, path: str, out: str) -> None:
    from payload.config import default_config_path, load_config

    config = load_config(default_config_path())
    if mode == "raw":
        import uproot

        from payload.ingest.convert import ChunkBuilder

        branches = ChunkBuilder(config.data).branches()
        start = time.perf_counter()
        events = 0
        with uproot.open(path) as f:
            for arrays in f[config.data.tree].iterate(filter_name=branches, step_size=config.data.chunk_size):
                events += len(arrays)
        seconds = time.perf_counter() - start
    else:
        from payload.ingest.convert import convert

        Path(out).unlink(missing_ok=True)  # deleting the last run's output is not part of this one
        start = time.perf_counter()
        events = convert(config, path, out, progress=False).events
        seconds = time.perf_counter() - start
    print(json.dumps({"events": events, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def measure(path: Path, out: Path, repeat: int, env: dict[str, str]) -> dict[str, dict]:
    """Best of ``repeat`` fresh processes per mode (page-cache noise only ever slows a run), raw
    read and conversion taking turns so that a slow spell hits both alike."""
    runs: dict[str, list[dict]] = {"raw": [], "convert": []}
    for _ in range(repeat):
        for mode in runs:
            # The last conversion's output is still being written back to disk by the kernel, on
            # these same cores: each run starts once that is done, so it pays for its own writes only.
            os.sync()
            proc = subprocess.run(
                [sys.executable, __file__, "--child", mode, str(path), str(out)],
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO,
                env=env,
            )
            runs[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {mode: min(r, key=lambda x: x["seconds"]) for mode, r in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500_000, 4_000_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/payload-bench"))
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement, best kept")
    parser.add_argument(
        "--allocator",
        choices=ALLOCATORS,
        default="auto",
        help="memory allocator of the measured processes (default: tcmalloc where installed, as in the image)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from payload.ingest.samples import write_sample

    env, allocator = allocator_env(args.allocator)

    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        path = args.workdir / f"toy_{size}.root"
        if not path.exists():
            print(f"writing {path} ...", flush=True)
            write_sample(path, size)
        mb = path.stat().st_size / 1e6
        best = measure(path, args.workdir / f"toy_{size}.h5", args.repeat, env)
        raw, conv = best["raw"], best["convert"]
        rows.append(
            {
                "events": size,
                "file_mb": round(mb, 1),
                "raw_events_per_s": raw["events"] / raw["seconds"],
                "raw_mb_per_s": mb / raw["seconds"],
                "convert_events_per_s": conv["events"] / conv["seconds"],
                "convert_mb_per_s": mb / conv["seconds"],
                "ratio": raw["seconds"] / conv["seconds"],
                "raw_peak_rss_mb": raw["peak_rss_mb"],
                "convert_peak_rss_mb": conv["peak_rss_mb"],
            }
        )
    print(f"allocator: {allocator}")
    print(
        f"{'events':>10} {'file MB':>8} {'raw ev/s':>10} {'raw MB/s':>9} {'conv ev/s':>10} {'conv MB/s':>10} "
        f"{'ratio':>6} {'raw RSS MB':>11} {'conv RSS MB':>12}"
    )
    for r in rows:
        print(
            f"{r['events']:>10} {r['file_mb']:>8.1f} {r['raw_events_per_s']:>10,.0f} {r['raw_mb_per_s']:>9.1f} "
            f"{r['convert_events_per_s']:>10,.0f} {r['convert_mb_per_s']:>10.1f} {r['ratio']:>6.2f} "
            f"{r['raw_peak_rss_mb']:>11.0f} {r['convert_peak_rss_mb']:>12.0f}"
        )
    if len(rows) > 1:
        growth = rows[-1]["convert_peak_rss_mb"] / rows[0]["convert_peak_rss_mb"]
        print(f"convert peak RSS {rows[-1]['events'] / rows[0]['events']:.0f}x events: x{growth:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
