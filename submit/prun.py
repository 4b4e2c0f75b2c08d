"""PanDA ``prun`` command lines for the job, built as argument lists.

On the worker PanDA links the staged input files into the working directory and replaces ``%IN`` and
``%IN2`` by comma-joined lists of their names; ``--outputs out.tgz`` registers
``user.NICK.TASKID._NNNNNN.out.tgz`` in the container ``OUTDS_out.tgz/``.  Commands run in the
sandbox directory the helper stages (``submit.sandbox``), which holds the job configs and nothing else.

Inputs per job.  Training: by default one job over every file of both datasets (as seed 000 trains),
i.e. ``--nFilesPerJob`` = ``--maxNFilesPerJob`` = ``max_files`` for the primary and the same count
for the secondary; or ``n_files_per_job`` primary and ``secondary_files_per_job`` secondary files
per job, stated together so the two samples keep the proportion the user means.  Evaluation (an
evaluation fan-out): ``n_files_per_job`` files per job, and the model reaches every job either as
a Rucio dataset of one tarball, read by every job (``--secondaryDSs MODEL:1:DID``,
``--reusableSecondary MODEL``), or as a slim bundle in the sandbox (``--extFile``: prun skips files
over 1 MB without it).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field, replace

from payload.errors import ConfigError
from submit.images import docker_url

#: Characters the grid refuses in dataset names (panda-client's check_invalid_char, '*' included).
_BAD_DS_CHARS = set("%|;><?'\"()$@:=&^#\\[]{}`*")
#: Rucio limit on container names; each output is a container ``<outDS>_<output>/``.
MAX_CONTAINER = 132
#: panda-client's default and ceiling for input files per job (--maxNFilesPerJob).
MAX_FILES = 200
#: The stream of the model dataset in an evaluation fan-out (``%MODEL`` in the exec).
MODEL_STREAM = "MODEL"


@dataclass
class GpuRequest:
    """A GPU in PanDA's ``--architecture`` shorthand, e.g. ``#&nvidia:vram>=40960:cuda>=12.0``."""

    vendor: str = "nvidia"
    vram_mb: int | None = None  # at least this much GPU memory
    cuda: str | None = None  # at least this CUDA version
    model: str | None = None  # regular expression on the GPU model, e.g. .*A100.*

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
    image: str  # e.g. docker.io/NICK/grid-payload:0.1.0 (docker:// is added)
    in_ds: str  # primary dataset (%IN)
    out_ds: str  # user.NICK.something
    config: str | None = None  # training: the job config, relative to the sandbox
    secondary_ds: str | None = None  # secondary dataset (%IN2)
    mode: str = "train"  # or "evaluate": apply ``model`` to the inputs
    model: str | None = None  # evaluate: a Rucio DID (one tarball) or a file in the sandbox
    model_in_sandbox: bool = False
    n_files_per_job: int | None = None
    secondary_files_per_job: int | None = None
    max_files: int = MAX_FILES
    output: str = "out.tgz"  # the job's tarball, registered with --outputs
    n_files: int | None = None
    site: str | None = None
    dest_se: str | None = None
    gpu: GpuRequest | None = field(default_factory=GpuRequest)
    force_staged: bool = True  # payload reads local files; without it unstaged files arrive as root://
    extra_payload_args: tuple[str, ...] = ()

    def files_per_job(self) -> tuple[int, int | None]:
        """(primary, secondary) files per job, checked for a proportion the user stated."""
        if self.mode == "evaluate":
            if self.secondary_ds and not self.secondary_files_per_job:
                raise ConfigError(
                    "an evaluation with --secondary-ds needs --secondary-files-per-job: how many "
                    "secondary files each job gets beside its primary files"
                )
            return self.n_files_per_job or 5, self.secondary_files_per_job
        if self.n_files_per_job is None:
            if self.secondary_files_per_job:
                raise ConfigError(
                    "--secondary-files-per-job goes with --n-files-per-job (default: one training "
                    "job over all files of both datasets)"
                )
            return self.max_files, self.max_files if self.secondary_ds else None
        if self.secondary_ds and not self.secondary_files_per_job:
            raise ConfigError(
                f"--n-files-per-job {self.n_files_per_job} splits the training: say how many "
                "secondary files each job gets (--secondary-files-per-job), so both samples keep "
                "the proportion you mean, or leave both out for one job over all files"
            )
        return self.n_files_per_job, self.secondary_files_per_job

    def payload_command(self) -> list[str]:
        cmd = ["payload", "-q", "run"]
        if self.mode == "evaluate":
            if not self.model:
                raise ConfigError(
                    "an evaluation needs --model: a Rucio DID of the trained job's tarball, or "
                    "its output directory or tarball here"
                )
            cmd += ["--mode", "evaluate", "--model", self.model if self.model_in_sandbox else f"%{MODEL_STREAM}"]
        cmd += ["--primary", "%IN"]
        if self.secondary_ds:
            cmd += ["--secondary", "%IN2"]
        if self.gpu is not None:  # a job brokered to a GPU that sees none fails at once and is retried
            cmd.append("--require-gpu")
        if self.mode == "train":
            if not self.config:
                raise ConfigError("a training job needs --config")
            cmd += ["--config", self.config]
        return cmd + ["--output", "out", "--tarball", self.output, *self.extra_payload_args]


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
            raise ConfigError(
                f"outDS {out_ds!r}: output container {container!r} has {len(container)} characters; "
                f"the grid allows {MAX_CONTAINER}: shorten the outDS by {len(container) - MAX_CONTAINER}"
            )


def prun_argv(job: PrunJob, nickname: str | None = None) -> list[str]:
    """The ``prun`` command for one task, as an argument list (``shlex.join`` it to print), run in
    the sandbox directory."""
    check_out_ds(job.out_ds, nickname, [job.output])
    primary, secondary = job.files_per_job()
    argv = [
        "prun",
        "--containerImage",
        docker_url(job.image),
        "--exec",
        shlex.join(job.payload_command()),
        "--inDS",
        job.in_ds,
        "--outDS",
        job.out_ds,
        "--outputs",
        job.output,
        "--nFilesPerJob",
        str(primary),
    ]
    if max(primary, secondary or 0) > MAX_FILES:
        argv += ["--maxNFilesPerJob", str(max(primary, secondary or 0))]
    streams = []
    if job.secondary_ds:
        streams.append(f"IN2:{secondary}:{job.secondary_ds}")
    if job.mode == "evaluate" and not job.model_in_sandbox:
        streams.append(f"{MODEL_STREAM}:1:{job.model}")
    if streams:
        argv += ["--secondaryDSs", ",".join(streams)]
    if job.mode == "evaluate" and not job.model_in_sandbox:
        argv += ["--reusableSecondary", MODEL_STREAM]  # the one tarball serves every job
    if job.mode == "evaluate" and job.model_in_sandbox and job.model:
        argv += ["--extFile", job.model]  # prun leaves files over 1 MB out of the sandbox without it
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


def fan_out(job: PrunJob, configs: list[str], names: list[str] | None, nickname: str | None = None) -> list[list[str]]:
    """The prun commands for one task per point, each running its own config (a path relative to the
    sandbox) and writing to ``OUTDS.<point>``; with ``names`` None, the one config is one task
    writing to ``OUTDS`` itself.

    One task per point (rather than one task with a job per point) because a prun task runs one
    ``--exec`` string over its input files: a point is a config, not a slice of the input.  With the
    default inputs per job, each task is one job, so a k-fold point's fold is exactly one training.
    """
    if names is None:
        return [prun_argv(replace(job, config=configs[0] if configs else None), nickname)]
    return [prun_argv(replace(job, config=c, out_ds=f"{job.out_ds}.{n}"), nickname) for c, n in zip(configs, names)]
