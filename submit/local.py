"""Run a fan-out on this machine, as plain processes or ``docker run``, to try a scan on a laptop.

Each point runs ``payload run`` in its own directory ``WORKDIR/<name>`` (so its
``userJobMetadata.json`` and outputs stay apart) with at most ``parallel`` running at once;
``WORKDIR/summary.json`` lists every point's exit code and headline metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


@dataclass
class LocalRun:
    primary: list[str]
    secondary: list[str]
    image: str | None = None  # run in this image with docker; None: plain processes
    parallel: int = 1
    gpus: bool = False  # docker --gpus all
    model: str | None = None  # evaluate: apply this trained output (directory or tarball) instead of training

    def argv(self, config: Path | None, point_dir: Path) -> list[str]:
        primary = ",".join(str(Path(p).resolve()) for p in self.primary)
        secondary = ",".join(str(Path(p).resolve()) for p in self.secondary)
        run = ["-q", "run"]
        if self.model:
            run += ["--mode", "evaluate", "--model", str(Path(self.model).resolve())]
        run += ["--primary", primary]
        if secondary:
            run += ["--secondary", secondary]
        if self.gpus:
            run.append("--require-gpu")
        tail = (["--config", str(config.resolve())] if config is not None else []) + [
            "--output",
            "out",
            "--tarball",
            "out.tgz",
        ]
        if self.image is None:
            return [sys.executable, "-m", "payload", *run, *tail]
        # The inputs and the config are mounted read-only at their own paths; the point's
        # directory is the working directory, as on the grid.  --mount, not -v: a path holding ':'
        # would split -v's SRC:DST:MODE, and --mount's CSV value quotes commas.
        paths: list[str | Path] = [*self.primary, *self.secondary]
        paths += [config] if config is not None else []
        paths += [self.model] if self.model else []
        mounts = {str(Path(p).resolve().parent) for p in paths}
        argv = [
            "docker",
            "run",
            "--rm",
            "--user",
            f"{os.getuid()}:{os.getgid()}",
            "--mount",
            bind_mount(point_dir.resolve(), "/job"),
            "-w",
            "/job",
        ]
        for mount in sorted(mounts):
            argv += ["--mount", bind_mount(mount, mount, readonly=True)]
        if self.gpus:
            argv += ["--gpus", "all"]
        return argv + [self.image, *run, *tail]


def bind_mount(source: str | Path, target: str | Path, readonly: bool = False) -> str:
    """``docker run --mount`` value for a bind mount: CSV fields, each quoted when it holds a comma or a
    quote (docker parses the value as CSV)."""
    import csv
    import io

    fields = ["type=bind", f"source={source}", f"target={target}"] + (["readonly"] if readonly else [])
    line = io.StringIO()
    csv.writer(line, lineterminator="").writerow(fields)
    return line.getvalue()


def run_points(run: LocalRun, configs: list[Path], names: list[str], workdir: str | Path) -> list[dict[str, Any]]:
    """One training per (name, config)."""
    return _run_all([(name, run, Path(config)) for name, config in zip(names, configs)], run.parallel, workdir)


def run_evaluations(
    run: LocalRun, groups: list[tuple[str, list[str], list[str]]], workdir: str | Path
) -> list[dict[str, Any]]:
    """An evaluation fan-out: ``run.model`` applied to each (name, primary files, secondary files) group."""
    return _run_all(
        [(name, replace(run, primary=p, secondary=s), None) for name, p, s in groups], run.parallel, workdir
    )


def _run_all(
    items: list[tuple[str, LocalRun, Path | None]], parallel: int, workdir: str | Path
) -> list[dict[str, Any]]:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    names = [name for name, _, _ in items]
    queue = list(items)
    running: list[tuple[str, Path, subprocess.Popen, float]] = []
    results: dict[str, dict[str, Any]] = {}
    while queue or running:
        while queue and len(running) < max(1, parallel):
            name, run, config = queue.pop(0)
            point_dir = workdir / name
            point_dir.mkdir(exist_ok=True)
            log = open(point_dir / "stderr.log", "w")  # noqa: SIM115 - closed when the process ends
            proc = subprocess.Popen(run.argv(config, point_dir), cwd=point_dir, stdout=log, stderr=log)
            log.close()
            running.append((name, point_dir, proc, time.time()))
        time.sleep(0.2)
        for item in list(running):
            name, point_dir, proc, started = item
            if proc.poll() is None:
                continue
            running.remove(item)
            report_path = point_dir / "userJobMetadata.json"
            report = json.loads(report_path.read_text()) if report_path.exists() else {}
            results[name] = {
                "name": name,
                "exit_code": proc.returncode,
                "seconds": round(time.time() - started, 1),
                "directory": str(point_dir),
                "metrics": report.get("metrics", {}),
                "error": report.get("error"),
            }
    ordered = [results[n] for n in names]
    (workdir / "summary.json").write_text(json.dumps(ordered, indent=1))
    return ordered
