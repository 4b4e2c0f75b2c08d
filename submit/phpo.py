"""PanDA hyperparameter optimisation: the ``phpo`` command for the job.

The steering (a container named by the user, or phpo's default) proposes points from the search
space file, whose keys are dotted job-config keys (``training.learning_rate``); each evaluation job
runs ``payload hpo`` in the image, which applies the point to the shipped config, trains on the
training dataset's files (split into the two samples by file-name patterns) and reports the loss
in ``output.json``.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from payload.errors import ConfigError
from submit.images import docker_url
from submit.prun import GpuRequest, check_out_ds

#: phpo's documented steering arguments; %IN / %OUT are the steering's own input and output files.
DEFAULT_STEERING_EXEC = "run --n-point=%NUM_POINTS --max-points=%MAX_POINTS --ifile=%IN --ofile=%OUT"


@dataclass
class PhpoJob:
    image: str
    training_ds: str
    out_ds: str
    config: str  # job config, relative to the submission directory
    search_space: str  # JSON search-space file, relative to the submission directory
    primary_match: str
    secondary_match: str | None = None
    objective: str = "loss"
    max_points: int = 10
    n_parallel: int = 1
    steering_exec: str = DEFAULT_STEERING_EXEC
    steering_container: str | None = None
    gpu: GpuRequest | None = None

    def evaluation_command(self) -> list[str]:
        cmd = ["payload", "-q", "hpo", "--config", self.config, "--primary-match", self.primary_match]
        if self.secondary_match:
            cmd += ["--secondary-match", self.secondary_match]
        return cmd + ["--objective", self.objective, "--output", "out"]


def phpo_argv(job: PhpoJob, submit_dir: Path, nickname: str | None = None) -> list[str]:
    check_out_ds(job.out_ds, nickname, [])
    space_path = Path(submit_dir) / job.search_space
    try:
        space = json.loads(space_path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"search space {space_path}: cannot be read as JSON ({err})") from None
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"search space {space_path}: expected a non-empty JSON object keyed by config keys")
    image = docker_url(job.image)
    argv = [
        "phpo",
        "--evaluationContainer",
        image,
        "--evaluationExec",
        shlex.join(job.evaluation_command()),
        "--trainingDS",
        job.training_ds,
        "--outDS",
        job.out_ds,
        "--searchSpaceFile",
        job.search_space,
        "--maxPoints",
        str(job.max_points),
        "--nParallelEvaluation",
        str(job.n_parallel),
        "--steeringExec",
        job.steering_exec,
    ]
    if job.steering_container:
        argv += ["--steeringContainer", job.steering_container]
    if job.gpu is not None:
        argv += ["--architecture", job.gpu.architecture()]
    return argv
