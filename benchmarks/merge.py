"""Merging many job outputs: wall time and peak RSS, beside plain extraction of the same tarballs.

    python benchmarks/merge.py [--jobs 50 200] [--workdir /tmp/payload-bench/merge]

One real job (the demo config, one epoch, on the bundled samples) is run once; its tarball is copied
to stand for each job of a fan-out.  Each measurement runs in a fresh process: first extracting every
tarball (the baseline: the least any merge must do), then ``payload.results.merge.merge`` with every job's
predictions concatenated (``predictions="all"``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from common import peak_rss_mb  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]


def child(mode: str, workdir: str, n: int) -> None:
    work = Path(workdir)
    inputs = sorted(str(p) for p in (work / f"jobs{n}").glob("*.tgz"))
    start = time.perf_counter()
    if mode == "extract":
        target = work / "extracted"
        shutil.rmtree(target, ignore_errors=True)
        for path in inputs:
            with tarfile.open(path) as tar:
                tar.extractall(target / Path(path).stem, filter="data")
        shutil.rmtree(target)
    else:
        from payload.results.merge import merge

        merge(inputs, work / f"merged{n}", predictions="all")
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def measure(mode: str, workdir: Path, n: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(workdir), str(n)], capture_output=True, text=True, cwd=REPO
    )
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/payload-bench/merge"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return

    import yaml

    from payload.config import parse_config
    from payload.job import train_job

    args.workdir.mkdir(parents=True, exist_ok=True)
    tarball = args.workdir / "job.tgz"
    if not tarball.exists():
        raw = yaml.safe_load((REPO / "payload" / "resources" / "demo.yaml").read_text())
        raw["training"]["epochs"] = 1
        raw["evaluation"]["closure_classifier"] = False
        data = REPO / "payload" / "resources"
        train_job(
            parse_config(raw),
            str(data / "sample_A.root"),
            str(data / "sample_B.root"),
            args.workdir / "job",
            tarball=tarball,
            progress=False,
        )
    print(f"one job tarball: {tarball.stat().st_size / 1e6:.1f} MB")
    print(
        f"{'jobs':>6} {'extract s':>10} {'merge s':>9} {'merge/extract':>14} {'extract RSS MB':>15} {'merge RSS MB':>13}"
    )
    for n in args.jobs:
        jobs = args.workdir / f"jobs{n}"
        if not jobs.exists():
            jobs.mkdir()
            for i in range(n):
                shutil.copyfile(tarball, jobs / f"user.nick.1234._{i:06d}.out.tgz")
        extract, merged = measure("extract", args.workdir, n), measure("merge", args.workdir, n)
        print(
            f"{n:>6} {extract['seconds']:>10.1f} {merged['seconds']:>9.1f} {merged['seconds'] / extract['seconds']:>14.2f} "
            f"{extract['peak_rss_mb']:>15.0f} {merged['peak_rss_mb']:>13.0f}"
        )


if __name__ == "__main__":
    main()
