"""PanDA ``prun`` command lines for the job, built as argument lists.

On the worker PanDA links the staged input files into the working directory and replaces ``%IN`` and
``%IN2`` by comma-joined lists of their names; ``--outputs out.tgz`` registers
``user.NICK.TASKID._NNNNNN.out.tgz`` in the container ``OUTDS_out.tgz/``.  The job config travels in
the task's sandbox (the submission directory); data files are kept out of it with ``--excludeFile``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path

from payload.errors import ConfigError
from submit.images import docker_url

#: Characters the grid refuses in dataset names (panda-client's check_invalid_char, '*' included).
_BAD_DS_CHARS = set("%|;><?'\"()$@:=&^#\\[]{}`*")
#: Rucio limit on container names; each output is a container ``<outDS>_<output>/``.
MAX_CONTAINER = 132
#: Files never shipped in the sandbox: the data travel through the grid's data management.
DEFAULT_EXCLUDE = ("*.root", "*.root.*", "*.h5", "*.tgz", "output", "demo-output")


@dataclass
class GpuRequest:
    """A GPU in PanDA's ``--architecture`` shorthand, e.g. ``#&nvidia:vram>=40960:cuda>=12.0``."""

    vendor: str = "nvidia"
    vram_mb: int | None = None    # at least this much GPU memory
    cuda: str | None = None       # at least this CUDA version
    model: str | None = None      # regular expression on the GPU model, e.g. .*A100.*

    def architecture(self) -> str:
        spec = f"#&{self.vendor}"
        if self.vram_mb:
            spec += f":vram>={int(self.vram_mb)}"
        if self.cuda:
            spec += f":cuda>={self.cuda}"
        if self.model:
            spec += f":model={self.model}"
        return spec


@dataclass
class PrunJob:
    image: str                       # e.g. docker.io/NICK/grid-payload:0.1.0 (docker:// is added)
    in_ds: str                       # primary dataset (%IN)
    out_ds: str                      # user.NICK.something
    config: str                      # job config path, relative to the submission directory
    secondary_ds: str | None = None  # secondary dataset (%IN2)
    secondary_files_per_job: int = 1
    output: str = "out.tgz"          # the job's tarball, registered with --outputs
    n_files_per_job: int | None = None
    n_files: int | None = None
    site: str | None = None
    dest_se: str | None = None
    gpu: GpuRequest | None = field(default_factory=GpuRequest)
    force_staged: bool = True        # payload reads local files; without it unstaged files arrive as root://
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    extra_payload_args: tuple[str, ...] = ()

    def payload_command(self) -> list[str]:
        cmd = ["payload", "-q", "run", "--primary", "%IN"]
        if self.secondary_ds:
            cmd += ["--secondary", "%IN2"]
        if self.gpu is not None:  # a job brokered to a GPU that sees none fails at once and is retried
            cmd.append("--require-gpu")
        return cmd + ["--config", self.config, "--output", "out", "--tarball", self.output,
                      *self.extra_payload_args]


def check_out_ds(out_ds: str, nickname: str | None, outputs: list[str]) -> None:
    """The grid's rules for an output dataset name, checked before anything is submitted."""
    bad = sorted(set(out_ds) & _BAD_DS_CHARS) or (["space"] if re.search(r"\s", out_ds) else [])
    if bad:
        raise ConfigError(f"outDS {out_ds!r}: character {bad[0]!r} is not allowed in dataset names")
    if not out_ds.startswith("user."):
        raise ConfigError(f"outDS {out_ds!r}: must start with 'user.NICK.' (your grid nickname)")
    if nickname and not out_ds.startswith(f"user.{nickname}."):
        raise ConfigError(f"outDS {out_ds!r}: must start with 'user.{nickname}.' for nickname {nickname!r}")
    for container in [f"{out_ds}_{o}/" for o in outputs] + [f"{out_ds}.log/"]:
        if len(container) > MAX_CONTAINER:
            raise ConfigError(f"outDS {out_ds!r}: output container {container!r} has {len(container)} characters; "
                              f"the grid allows {MAX_CONTAINER}: shorten the outDS by {len(container) - MAX_CONTAINER}")


def prun_argv(job: PrunJob, nickname: str | None = None) -> list[str]:
    """The ``prun`` command for one task, as an argument list (``shlex.join`` it to print)."""
    check_out_ds(job.out_ds, nickname, [job.output])
    image = docker_url(job.image)
    argv = ["prun", "--containerImage", image, "--exec", shlex.join(job.payload_command()),
            "--inDS", job.in_ds, "--outDS", job.out_ds, "--outputs", job.output,
            "--excludeFile", ",".join(job.exclude)]
    if job.secondary_ds:
        argv += ["--secondaryDSs", f"IN2:{job.secondary_files_per_job}:{job.secondary_ds}"]
    if job.n_files_per_job:
        argv += ["--nFilesPerJob", str(job.n_files_per_job)]
    if job.n_files:
        argv += ["--nFiles", str(job.n_files)]
    if job.site:
        argv += ["--site", job.site]
    if job.dest_se:
        argv += ["--destSE", job.dest_se]
    if job.gpu is not None:
        argv += ["--architecture", job.gpu.architecture()]
    if job.force_staged:
        argv.append("--forceStaged")
    return argv


def fan_out(job: PrunJob, configs: list[Path], names: list[str] | None, submit_dir: Path,
            nickname: str | None = None) -> list[list[str]]:
    """The prun commands for one task per point, each running its own config and writing to
    ``OUTDS.<point>``; with ``names`` None, the one config is one task writing to ``OUTDS`` itself.

    One task per point (rather than one task with a job per point) because a prun task runs one
    ``--exec`` string over its input files: a point is a config, not a slice of the input.
    """
    def rel(config: Path) -> str:
        return Path(config).resolve().relative_to(Path(submit_dir).resolve()).as_posix()

    if names is None:
        return [prun_argv(replace(job, config=rel(configs[0])), nickname)]
    return [prun_argv(replace(job, config=rel(c), out_ds=f"{job.out_ds}.{n}"), nickname)
            for c, n in zip(configs, names)]
