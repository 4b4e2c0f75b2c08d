"""Submission helpers, checked with the real clients offline: panda-client's prun builds the full task
parameters from every generated command (dry mode, no proxy, no server), and the HTCondor bindings parse
every submit description and DAG.  The local fan-out trains real (tiny) models."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from payload.config import load_config

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "payload" / "resources"

# panda-client resolves its server name at import unless told it sits behind a real load balancer.
os.environ.setdefault("PANDA_BEHIND_REAL_LB", "1")


def submit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "submit.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def prun_commands(stdout: str) -> list[tuple[Path, list[str]]]:
    """(directory, argv) of each printed ``cd SANDBOX && prun ...`` line."""
    out = []
    for line in stdout.strip().splitlines():
        words = shlex.split(line)
        assert words[0] == "cd" and words[2] == "&&", line
        out.append((Path(words[1]), words[3:]))
    return out


def sandbox_members(argv: list[str], cwd: Path) -> list[str]:
    """The files of the sandbox panda-client's own archiver builds for this prun command (its
    credential checks stubbed, as no proxy or server is reachable here; see submit.sandbox)."""
    from submit.sandbox import archive

    members = archive(argv, cwd)
    assert members is not None, "panda-client is in the test extra"
    return members


def task_params(argv: list[str], cwd: Path, monkeypatch) -> dict:
    """What PanDA would receive for this prun command: the task parameter dict, semantic checks included."""
    pytest.importorskip("pandaclient", reason="pip install panda-client (in the test extra)")
    from pandaclient import PrunScript

    assert argv[0] == "prun"
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["prun"])
    return PrunScript.main(get_taskparams=True, ext_args=argv[1:], dry_mode=True)


def exec_string(params: dict) -> str:
    """The --exec string as the worker runs it (prun URL-encodes it into the job parameters)."""
    parts = [p["value"] for p in params["jobParameters"] if p["type"] == "constant"]
    return unquote(parts[parts.index('-p "') + 1])


@pytest.fixture
def submit_dir(tmp_path):
    d = tmp_path / "my analysis"  # a space in the submission directory must not matter
    d.mkdir()
    raw = yaml.safe_load((DATA / "demo.yaml").read_text())
    raw["training"]["epochs"] = 1
    (d / 'jdoe\'s "job" config.yaml').write_text(yaml.safe_dump(raw))
    return d


def test_prun_single_task(submit_dir, monkeypatch):
    proc = submit(
        "prun",
        "--config",
        'jdoe\'s "job" config.yaml',
        "--image",
        "docker.io/jdoe/grid-payload:0.1.0",
        "--in-ds",
        "mc23_13p6TeV.sherpa.NTUP",
        "--secondary-ds",
        "mc23_13p6TeV.mgpy8.NTUP",
        "--out-ds",
        "user.jdoe.reweight.v1",
        "--nickname",
        "jdoe",
        "--n-files-per-job",
        "5",
        "--secondary-files-per-job",
        "3",
        "--vram-mb",
        "40960",
        "--cuda",
        "12.0",
        "--site",
        "CERN-GPU",
        cwd=submit_dir,
    )
    assert proc.returncode == 0, proc.stderr
    ((box, argv),) = prun_commands(proc.stdout)
    assert box == submit_dir / "prun-sandbox"
    params = task_params(argv, box, monkeypatch)
    assert params["container_name"] == "docker://docker.io/jdoe/grid-payload:0.1.0"
    assert params["architecture"] == "#&nvidia:vram>=40960:cuda>=12.0"
    assert params["nFilesPerJob"] == 5 and params["site"] == "CERN-GPU"
    assert params["taskName"] == "user.jdoe.reweight.v1/"
    inputs = [p for p in params["jobParameters"] if p.get("param_type") == "input"]
    assert [p["dataset"] for p in inputs] == ["mc23_13p6TeV.sherpa.NTUP", "mc23_13p6TeV.mgpy8.NTUP"]
    outputs = [p for p in params["jobParameters"] if p.get("param_type") == "output"]
    assert [p["dataset"] for p in outputs] == ["user.jdoe.reweight.v1_out.tgz/"]
    assert outputs[0]["value"] == "user.jdoe.$JEDITASKID._${SN/P}.out.tgz"
    # The worker runs exactly our command; the config name with a space stays one argument.
    command = shlex.split(exec_string(params))
    assert command[:3] == ["payload", "-q", "run"]
    assert command[command.index("--primary") + 1] == "%IN" and command[command.index("--secondary") + 1] == "%IN2"
    # The user's config (a name with quotes and a space, which panda-client's archiver would drop) is
    # shipped as job.yaml, and panda-client's own sandbox holds it and nothing else.
    assert command[command.index("--config") + 1] == "job.yaml"
    assert (box / "job.yaml").read_text() == (submit_dir / 'jdoe\'s "job" config.yaml').read_text()
    assert sandbox_members(argv, box) == ["job.yaml"]
    assert command[command.index("--tarball") + 1] == "out.tgz"
    assert "--require-gpu" in command  # brokered to a GPU: a node whose GPU is gone fails at once
    assert "--forceStaged" in argv
    # Each job gets 5 primary and 3 secondary files: the proportion stated, not prun's default of one.
    secondary = next(p for p in inputs if p["dataset"] == "mc23_13p6TeV.mgpy8.NTUP")
    assert secondary["nFilesPerJob"] == 3


def test_prun_scan_one_task_per_point(submit_dir, monkeypatch):
    (submit_dir / "scan.yaml").write_text(
        yaml.safe_dump(
            {
                "method": "grid",
                "parameters": {"training.learning_rate": [0.001, 0.003], "model.phi_widths": [[16], [32, 32]]},
            }
        )
    )
    proc = submit(
        "prun",
        "--config",
        'jdoe\'s "job" config.yaml',
        "--scan",
        "scan.yaml",
        "--folds",
        "2",
        "--image",
        "img:1",
        "--in-ds",
        "data.A",
        "--secondary-ds",
        "data.B",
        "--out-ds",
        "user.jdoe.scan",
        "--gpu",
        "none",
        cwd=submit_dir,
    )
    assert proc.returncode == 0, proc.stderr
    commands = prun_commands(proc.stdout)
    assert len(commands) == 2 * 2 * 2
    box = submit_dir / "prun-sandbox"
    points = json.loads((box / "points" / "points.json").read_text())
    seen = set()
    for (cwd, argv), point in zip(commands, points):
        assert cwd == box
        params = task_params(argv, box, monkeypatch)
        # One training job per task: every file of both datasets, so each fold is exactly one training.
        assert params["nFilesPerJob"] == 200
        assert [p["nFilesPerJob"] for p in params["jobParameters"] if p.get("dataset") == "data.B"] == [200]
        assert params["taskName"] == f"user.jdoe.scan.{point['name']}/"
        assert "architecture" not in params or not params["architecture"]
        command = shlex.split(exec_string(params))
        assert "--require-gpu" not in command  # --gpu none: CPU jobs
        config_path = box / command[command.index("--config") + 1]
        assert config_path == box / "points" / point["config"]
        config = load_config(config_path)  # each point is a complete, valid job config
        assert config.training.learning_rate == point["overrides"]["training.learning_rate"]
        assert config.model.phi_widths == point["overrides"]["model.phi_widths"]
        assert (config.split.folds, config.split.fold) == (2, point["overrides"]["split.fold"])
        seen.add((config.training.learning_rate, tuple(config.model.phi_widths), config.split.fold))
    assert len(seen) == 8


def test_prun_training_split_over_jobs_needs_both_file_counts(submit_dir):
    proc = submit(
        "prun",
        "--config",
        'jdoe\'s "job" config.yaml',
        "--image",
        "img:1",
        "--in-ds",
        "data.A",
        "--secondary-ds",
        "data.B",
        "--out-ds",
        "user.jdoe.x",
        "--n-files-per-job",
        "5",
        cwd=submit_dir,
    )
    assert proc.returncode == 2
    assert "--secondary-files-per-job" in proc.stderr and "proportion" in proc.stderr
    assert proc.stdout == ""


def test_prun_evaluation_fan_out_reads_the_model_dataset_in_every_job(submit_dir, monkeypatch):
    proc = submit(
        "prun",
        "--mode",
        "evaluate",
        "--model",
        "user.jdoe.reweight.v1_out.tgz",
        "--image",
        "img:1",
        "--in-ds",
        "mc23.sherpa.NTUP",
        "--out-ds",
        "user.jdoe.applied",
        "--n-files-per-job",
        "3",
        "--gpu",
        "none",
        cwd=submit_dir,
    )
    assert proc.returncode == 0, proc.stderr
    ((box, argv),) = prun_commands(proc.stdout)
    params = task_params(argv, box, monkeypatch)
    inputs = {p["dataset"]: p for p in params["jobParameters"] if p.get("param_type") == "input"}
    assert params["nFilesPerJob"] == 3
    model = inputs["user.jdoe.reweight.v1_out.tgz"]
    assert model["nFilesPerJob"] == 1 and model.get("reusable")  # one tarball, read by every job
    command = shlex.split(exec_string(params))
    assert command[command.index("--mode") + 1] == "evaluate" and "--config" not in command
    assert command[command.index("--model") + 1] == "%MODEL" and command[command.index("--primary") + 1] == "%IN"
    assert sandbox_members(argv, box) == []  # nothing of the submission directory travels


@pytest.mark.slow
def test_prun_evaluation_with_the_model_in_the_sandbox_runs_as_a_worker_would(submit_dir, tmp_path, monkeypatch):
    """A local bundle travels slimmed in the sandbox; the worker (sandbox unpacked, inputs linked in,
    the exec run with %IN replaced) applies it."""
    import tarfile

    from payload.job import train_job
    from tests.helpers import quick_job_config

    trained = tmp_path / "trained"
    train_job(
        load_config(quick_job_config(tmp_path / "q.yaml")),
        str(DATA / "sample_A.root"),
        str(DATA / "sample_B.root"),
        trained,
        progress=False,
    )
    (trained / "plots" / "big.png").write_bytes(os.urandom(3 << 20))  # run outputs must not travel
    proc = submit(
        "prun",
        "--mode",
        "evaluate",
        "--model",
        str(trained),
        "--image",
        "img:1",
        "--in-ds",
        "data.new",
        "--out-ds",
        "user.jdoe.applied",
        "--gpu",
        "none",
        cwd=submit_dir,
    )
    assert proc.returncode == 0, proc.stderr
    ((box, argv),) = prun_commands(proc.stdout)
    assert argv[argv.index("--extFile") + 1] == "model.tgz"
    assert sandbox_members(argv, box) == ["model.tgz"]
    with tarfile.open(box / "model.tgz") as tar:
        assert sorted(tar.getnames()) == ["config.yaml", "metrics.json", "model.keras", "scaler.json"]
    params = task_params(argv, box, monkeypatch)
    assert (
        "reusableSecondary" not in argv
        and len([p for p in params["jobParameters"] if p.get("param_type") == "input"]) == 1
    )

    worker = tmp_path / "worker"
    worker.mkdir()
    shutil.copy(box / "model.tgz", worker)
    (worker / "sample_A.root").symlink_to(DATA / "sample_A.root")
    command = shlex.split(exec_string(params).replace("%IN", "sample_A.root"))
    assert command[0] == "payload"
    run = subprocess.run(
        [sys.executable, "-m", "payload", *command[1:], "--no-job-report"],
        cwd=worker,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert (worker / "out.tgz").stat().st_size > 0 and (worker / "out" / "friends" / "sample_A.friend.root").exists()


@pytest.mark.parametrize(
    ("out_ds", "message"),
    [
        ("user.jdoe.x" + "y" * 130, "characters"),
        ("user.other.test", "user.jdoe."),
        ("mc23.test", "user.NICK."),
        ("user.jdoe.a b", "not allowed"),
        ("user.jdoe.x;rm", "not allowed"),
    ],
)
def test_prun_refuses_bad_output_dataset_names(submit_dir, out_ds, message):
    proc = submit(
        "prun",
        "--config",
        'jdoe\'s "job" config.yaml',
        "--image",
        "img:1",
        "--in-ds",
        "data.A",
        "--out-ds",
        out_ds,
        "--nickname",
        "jdoe",
        cwd=submit_dir,
    )
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr and proc.stdout == ""


def test_our_length_rule_matches_panda_client(submit_dir, monkeypatch):
    """The longest name we accept is accepted by prun, and one character more is refused by both."""
    from submit.prun import MAX_CONTAINER, PrunJob, prun_argv

    longest = "user.jdoe." + "x" * (MAX_CONTAINER - len("user.jdoe.") - len("_out.tgz/"))
    job = PrunJob(image="img:1", in_ds="data.A", out_ds=longest, config='jdoe\'s "job" config.yaml')
    assert task_params(prun_argv(job), submit_dir, monkeypatch)["taskName"] == longest + "/"
    with pytest.raises(SystemExit):
        task_params(prun_argv(job)[:-1] + ["--outDS", longest + "x"], submit_dir, monkeypatch)


def test_condor_scan_submit_file(submit_dir, tmp_path):
    htcondor2 = pytest.importorskip("htcondor2", reason="pip install htcondor (in the test extra)")
    inputs = tmp_path / "in put"
    inputs.mkdir()
    for name in ("a 1.root", "b.root"):
        (inputs / name).write_bytes(b"")
    (submit_dir / "scan.yaml").write_text(
        yaml.safe_dump(
            {
                "method": "random",
                "n": 3,
                "seed": 7,
                "parameters": {"training.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
            }
        )
    )
    out = tmp_path / "condor"
    proc = submit(
        "condor",
        "--config",
        'jdoe\'s "job" config.yaml',
        "--scan",
        "scan.yaml",
        "--image",
        "docker.io/jdoe/gp:1",
        "--primary",
        str(inputs / "a 1.root"),
        "root://eos.example//store/a2.root",
        "--secondary",
        str(inputs / "b.root"),
        "--directory",
        str(out),
        "--gpu-memory-mb",
        "20000",
        cwd=submit_dir,
    )
    assert proc.returncode == 0, proc.stderr
    sub = htcondor2.Submit((out / "train.sub").read_text())
    items = list(sub.itemdata())
    points = json.loads((out / "points.json").read_text())
    assert [i["name"] for i in items] == [p["name"] for p in points] == ["p000", "p001", "p002"]
    assert sub["universe"] == "container" and sub["container_image"] == "docker://docker.io/jdoe/gp:1"
    assert sub["request_gpus"] == "1"
    for item, point in zip(items, points):
        per_item = htcondor2.Submit(dict(sub))
        for key, value in item.items():
            per_item[key] = value
        transfer = [f.strip() for f in per_item.expand("transfer_input_files").split(",")]
        assert transfer == [point["config"], str(inputs / "a 1.root"), str(inputs / "b.root")]
        assert (out / point["config"]).is_file()
        assert load_config(out / point["config"]).training.learning_rate == pytest.approx(
            point["overrides"]["training.learning_rate"]
        )
        assert per_item.expand("transfer_output_files") == f"{point['name']}.tgz, userJobMetadata.json"
        args = condor_split(per_item.expand("arguments"))
        # On the worker the transferred file is a bare name; the URL is read in place.
        assert args[args.index("--primary") + 1] == "a 1.root,root://eos.example//store/a2.root"
        assert args[args.index("--config") + 1] == point["config"]
        assert args[args.index("--tarball") + 1] == f"{point['name']}.tgz"
        assert "--require-gpu" in args  # request_gpus = 1
    # The GPU memory requirement, evaluated against machine GPU ads.
    classad2 = pytest.importorskip("classad2")
    requirement = classad2.ExprTree(sub["require_gpus"])
    assert requirement.eval(classad2.ClassAd({"GlobalMemoryMb": 40000})) is True
    assert requirement.eval(classad2.ClassAd({"GlobalMemoryMb": 16000})) is False


def condor_split(arguments: str) -> list[str]:
    """HTCondor's documented quoted-arguments syntax, parsed independently of submit.condor."""
    assert arguments.startswith('"') and arguments.endswith('"')
    body, args, current, quoted, i = arguments[1:-1].replace('""', '"'), [], "", False, 0
    while i < len(body):
        c = body[i]
        if c == "'":
            if quoted and body[i + 1 : i + 2] == "'":
                current, i = current + "'", i + 2
                continue
            quoted, i = not quoted, i + 1
            continue
        if c.isspace() and not quoted:
            if current:
                args.append(current)
            current = ""
        else:
            current += c
        i += 1
    return args + ([current] if current else [])


def test_condor_dag_merge_after_every_training_node(submit_dir, tmp_path):
    htcondor2 = pytest.importorskip("htcondor2", reason="pip install htcondor (in the test extra)")
    out = tmp_path / "dag"
    (submit_dir / "a.root").write_bytes(b"")
    proc = submit(
        "condor",
        "--config",
        'jdoe\'s "job" config.yaml',
        "--folds",
        "3",
        "--image",
        "img:1",
        "--primary",
        "a.root",
        "--directory",
        str(out),
        "--dag",
        cwd=submit_dir,
    )
    assert proc.returncode == 0, proc.stderr
    text = (out / "scan.dag").read_text()
    jobs = [line.split()[1] for line in text.splitlines() if line.startswith("JOB ")]
    assert len(jobs) == 4 and sum(j.startswith("train") for j in jobs) == 3
    merge = next(j for j in jobs if j.startswith("merge"))
    parents = set()
    for line in text.splitlines():
        if line.startswith("PARENT ") and f"CHILD {merge}" in line:
            parents |= set(line.split("CHILD")[0].split()[1:])
    assert parents == {j for j in jobs if j.startswith("train")}
    # A failed training node (its tarball holds error.json) must not stop the merge node from running.
    post = [line.split() for line in text.splitlines() if line.startswith("SCRIPT") and " POST " in line]
    assert sorted(p[-2] for p in post) == sorted(j for j in jobs if j.startswith("train"))
    assert {p[-1] for p in post} == {"/bin/true"}
    node_vars = [line for line in text.splitlines() if line.startswith("VARS ")]
    assert sorted(v.split('config="')[1].split('"')[0] for v in node_vars) == [f"p000-f{k}.yaml" for k in range(3)]
    for sub_file in out.glob("*.sub"):
        htcondor2.Submit(sub_file.read_text())  # every description parses
    train = htcondor2.Submit((out / "train.sub").read_text())
    assert train["executable"] == "/opt/payload/bin/payload" and "$(config)" in train["arguments"]


@pytest.mark.slow
def test_local_scan_trains_every_point(submit_dir, tmp_path):
    (submit_dir / "scan.yaml").write_text(
        yaml.safe_dump({"method": "grid", "parameters": {"training.learning_rate": [0.0003, 0.003]}})
    )
    work = tmp_path / "runs"
    proc = submit(
        "local",
        "--config",
        'jdoe\'s "job" config.yaml',
        "--scan",
        "scan.yaml",
        "--primary",
        str(DATA / "sample_A.root"),
        "--secondary",
        str(DATA / "sample_B.root"),
        "--workdir",
        str(work),
        "--parallel",
        "2",
        cwd=submit_dir,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((work / "summary.json").read_text())
    assert [s["name"] for s in summary] == ["p000", "p001"]
    for s in summary:
        assert s["exit_code"] == 0 and 0.4 < s["metrics"]["test_auc"] < 1
        manifest = json.loads((work / s["name"] / "out" / "manifest.json").read_text())
        assert manifest["status"] == "success"
        # The point is recoverable from its outputs: the resolved config carries its value.
        lr = load_config(work / s["name"] / "out" / "config.yaml").training.learning_rate
        assert lr == {"p000": 0.0003, "p001": 0.003}[s["name"]]


def test_phpo_task_parameters(submit_dir, monkeypatch):
    pytest.importorskip("pandaclient", reason="pip install panda-client (in the test extra)")
    from pandaclient import PhpoScript

    (submit_dir / "space.json").write_text(
        json.dumps({"training.learning_rate": {"method": "uniform", "dimension": 1, "bounds": [1e-4, 1e-2]}})
    )
    proc = submit(
        "phpo",
        "--config",
        'jdoe\'s "job" config.yaml',
        "--search-space",
        "space.json",
        "--image",
        "docker.io/jdoe/gp:1",
        "--training-ds",
        "user.jdoe.ttbar.both",
        "--primary-match",
        "*_A*",
        "--secondary-match",
        "*_B*",
        "--out-ds",
        "user.jdoe.hpo.v1",
        "--max-points",
        "12",
        "--parallel",
        "3",
        "--vram-mb",
        "16000",
        cwd=submit_dir,
    )
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout.strip())
    assert argv[0] == "phpo"
    monkeypatch.chdir(submit_dir)
    monkeypatch.setattr(sys, "argv", ["phpo"])
    params = PhpoScript.main(get_taskparams=True, ext_args=argv[1:], dry_mode=True)
    assert params["container_name"] == "docker://docker.io/jdoe/gp:1"
    assert params["architecture"] == "#&nvidia:vram>=16000"
    hpo = params["hpoRequestData"]
    assert hpo["max_points"] == 12 and hpo["opt_space"] == json.loads((submit_dir / "space.json").read_text())
    inputs = [p for p in params["jobParameters"] if p.get("param_type") == "input"]
    assert [p["dataset"] for p in inputs] == ["user.jdoe.ttbar.both"]
    command = shlex.split(exec_string(params))
    assert (
        command[:3] == ["payload", "-q", "hpo"]
        and command[command.index("--config") + 1] == 'jdoe\'s "job" config.yaml'
    )
    assert command[command.index("--primary-match") + 1] == "*_A*"


@pytest.mark.slow
def test_phpo_evaluation_job_contract(submit_dir, tmp_path):
    """A phpo evaluation as the pilot runs it: input.json and input_ds.json in the working directory,
    output.json out; then a point the config rejects gives a non-zero status and no loss."""
    work = tmp_path / "evaluation"
    work.mkdir()
    for name in ("sample_A.root", "sample_B.root"):
        (work / name).symlink_to(DATA / name)
    (work / "input_ds.json").write_text(json.dumps(["sample_A.root", "sample_B.root"]))
    (work / "input.json").write_text(json.dumps({"training.learning_rate": 0.002, "model.phi_widths": [16]}))
    args = [
        sys.executable,
        "-m",
        "payload",
        "-q",
        "hpo",
        "--config",
        str(submit_dir / 'jdoe\'s "job" config.yaml'),
        "--primary-match",
        "*_A*",
        "--secondary-match",
        "*_B*",
    ]
    proc = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads((work / "output.json").read_text())
    metrics = json.loads((work / "output" / "metrics.json").read_text())
    assert out["status"] == 0 and out["loss"] == pytest.approx(metrics["training"]["best_loss"])
    config = load_config(work / "output" / "config.yaml")
    assert config.training.learning_rate == 0.002 and config.model.phi_widths == [16]

    (work / "input.json").write_text(json.dumps({"training.learning_rate": -1}))
    proc = subprocess.run(args + ["--output", "bad"], cwd=work, capture_output=True, text=True, timeout=600)
    out = json.loads((work / "output.json").read_text())
    assert proc.returncode == 2 and out["status"] == 2 and out["loss"] is None
    assert "learning_rate" in out["message"] and "Traceback" not in proc.stderr


def _run_dag(dag_dir: Path) -> dict[str, int]:
    """Run a DAG as DAGMan and HTCondor's file transfer would, on this machine: each node in its own
    scratch directory with its transferred inputs, its declared outputs copied back (a missing one is
    a held job), its POST script deciding its success, a child only after every parent succeeded.
    There is no HTCondor pool here; the node's executable is the installed payload rather than the
    image's (tests/test_image.py runs that command line in the image).  Returns each node's status:
    its exit code or POST script's, -1 not run, -2 held (a declared output missing)."""
    import shutil

    import htcondor2

    jobs, node_vars, post, parents = {}, {}, {}, {}
    for line in (dag_dir / "scan.dag").read_text().splitlines():
        words = shlex.split(line)
        if not words:
            continue
        if words[0] == "JOB":
            jobs[words[1]] = words[2]
        elif words[0] == "VARS":
            node_vars[words[1]] = dict(w.split("=", 1) for w in words[2:])
        elif words[0] == "SCRIPT" and words[1] == "POST":
            post[words[2]] = words[3:]
        elif words[0] == "PARENT":
            split = words.index("CHILD")
            for child in words[split + 1 :]:
                parents.setdefault(child, []).extend(words[1:split])
    status: dict[str, int] = {}
    for node in sorted(jobs, key=lambda n: n in parents):  # parents first (a two-level DAG)
        if any(status[p] != 0 for p in parents.get(node, [])):
            status[node] = -1  # DAGMan does not run it
            continue
        sub = htcondor2.Submit((dag_dir / jobs[node]).read_text())
        for key, value in node_vars.get(node, {}).items():
            sub[key] = value
        scratch = dag_dir / f"scratch-{node.replace(':', '-')}"
        scratch.mkdir()
        for item in sub.expand("transfer_input_files").split(","):
            source = Path(item.strip())
            shutil.copyfile(source if source.is_absolute() else dag_dir / source, scratch / source.name)
        assert sub["executable"] == "/opt/payload/bin/payload"
        args = condor_split(sub.expand("arguments"))
        code = subprocess.run(
            [sys.executable, "-m", "payload", *args], cwd=scratch, capture_output=True, timeout=600
        ).returncode
        outputs = [scratch / item.strip() for item in sub.expand("transfer_output_files").split(",")]
        if not all(p.exists() for p in outputs):
            status[node] = -2  # HTCondor holds a job whose declared output is missing: it never ends
            continue
        for produced in outputs:
            if produced.is_dir():
                shutil.copytree(produced, dag_dir / produced.name)
            else:
                shutil.copyfile(produced, dag_dir / produced.name)
        if node in post:
            code = subprocess.run(post[node], env={**os.environ, "RETURN": str(code)}).returncode
        status[node] = code
    return status


@pytest.mark.slow
def test_a_dag_with_a_failing_node_still_merges(tmp_path):
    pytest.importorskip("htcondor2", reason="pip install htcondor (in the test extra)")
    raw = yaml.safe_load((DATA / "demo.yaml").read_text())
    raw["training"]["epochs"] = 1
    raw["evaluation"].update(closure_classifier=False, independent_test=False, baseline="none")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    # The second point diverges (exit 12): its node fails, the merge must still run.
    (tmp_path / "scan.yaml").write_text(
        yaml.safe_dump({"method": "grid", "parameters": {"training.learning_rate": [0.003, 1e12]}})
    )
    dag = tmp_path / "dag"
    proc = submit(
        "condor",
        "--config",
        "job.yaml",
        "--scan",
        "scan.yaml",
        "--image",
        "img:1",
        "--request-gpus",
        "0",
        "--primary",
        str(DATA / "sample_A.root"),
        "--secondary",
        str(DATA / "sample_B.root"),
        "--directory",
        str(dag),
        "--dag",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    status = _run_dag(dag)
    assert status["merge:0"] == 0, status
    summary = json.loads((dag / "merged" / "summary.json").read_text())
    assert summary["merged"] == ["p000"]
    (skipped,) = summary["skipped"]
    assert skipped["name"] == "p001" and "loss" in skipped["reason"]


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    """A trained job output and three new files of the primary's configuration to apply it to."""
    from payload.ingest.samples import write_sample
    from payload.job import train_job
    from tests.helpers import quick_job_config

    root = tmp_path_factory.mktemp("trained")
    train_job(
        load_config(quick_job_config(root / "q.yaml")),
        str(DATA / "sample_A.root"),
        str(DATA / "sample_B.root"),
        root / "out",
        progress=False,
    )
    files = [str(write_sample(root / f"new_{k}.root", 800 + 100 * k, "A", batch=500)) for k in range(3)]
    return root / "out", files


@pytest.mark.slow
def test_condor_evaluation_fan_out_dag_applies_and_merges(trained_model, tmp_path):
    htcondor2 = pytest.importorskip("htcondor2", reason="pip install htcondor (in the test extra)")
    model, files = trained_model
    dag = tmp_path / "dag"
    proc = submit(
        "condor",
        "--mode",
        "evaluate",
        "--model",
        str(model),
        "--image",
        "img:1",
        "--request-gpus",
        "0",
        "--primary",
        *files,
        "--files-per-job",
        "2",
        "--directory",
        str(dag),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 evaluation jobs" in proc.stdout
    body = htcondor2.Submit((dag / "evaluate.sub").read_text())
    assert "--mode evaluate --model model.tgz" in body["arguments"] and "model.tgz" in body["transfer_input_files"]
    status = _run_dag(dag)
    assert status == {"evaluate:0": 0, "evaluate:1": 0, "merge:0": 0}, status
    summary = json.loads((dag / "merged" / "summary.json").read_text())
    assert summary["merged"] == ["e000", "e001"]
    assert sorted(f["file"] for f in summary["friends"]["files"]) == [f"new_{k}.friend.root" for k in range(3)]
    assert summary["predictions"]["rows"] == 800 + 900 + 1000


@pytest.mark.slow
def test_local_evaluation_fan_out(trained_model, tmp_path):
    from payload.results.merge import merge

    model, files = trained_model
    proc = submit(
        "local",
        "--mode",
        "evaluate",
        "--model",
        str(model),
        "--primary",
        *files,
        "--files-per-job",
        "1",
        "--workdir",
        str(tmp_path / "runs"),
        "--parallel",
        "2",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [line.split(":")[0] for line in proc.stdout.splitlines()[:3]] == ["e000", "e001", "e002"]
    summary = merge([str(tmp_path / "runs" / f"e00{k}" / "out.tgz") for k in range(3)], tmp_path / "merged")
    assert len(summary["friends"]["files"]) == 3 and summary["predictions"]["rows"] == 2700


def _trial_errors(workdir: Path) -> str:
    """What a failed trial left (its error.json, the end of its job.log), to tell a failure apart."""
    parts = []
    for path in sorted(workdir.glob("p*/out/error.json")) + sorted(workdir.glob("p*/out/job.log")):
        parts.append(f"\n--- {path.relative_to(workdir)}\n{path.read_text()[-2000:]}")
    return "".join(parts)


def _ray_scan(tmp_path: Path, epochs: int, parameters: dict, *options: str) -> list[str]:
    """The demo job (``epochs``, no closure checks) and a grid scan over ``parameters`` written in
    ``tmp_path``; the ``payload-submit ray`` arguments that run it, one CPU per trial."""
    raw = yaml.safe_load((DATA / "demo.yaml").read_text())
    raw["training"].update(epochs=epochs, early_stopping_patience=0)
    raw["evaluation"].update(closure_classifier=False, independent_test=False, baseline="none")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "scan.yaml").write_text(yaml.safe_dump({"method": "grid", "parameters": parameters}))
    inputs = ["--primary", str(DATA / "sample_A.root"), "--secondary", str(DATA / "sample_B.root")]
    return [
        "ray",
        "--config",
        "job.yaml",
        "--scan",
        "scan.yaml",
        *inputs,
        "--workdir",
        "runs",
        "--cpus-per-trial",
        "1",
        *options,
    ]


@pytest.mark.slow
def test_ray_tune_scan_stops_poor_points_early_and_resumes(tmp_path):
    """A real local Ray runtime runs a 4-point scan as Tune trials; ASHA stops the points whose
    validation loss lags after their first epoch; the finished points' outputs merge; rerunning the
    command restores the experiment instead of training again."""
    pytest.importorskip("ray", reason="pip install 'grid-payload[ray]' (in the test extra)")
    from payload.results.merge import merge

    # Two good learning rates first, then two that barely move the loss.  Two trials at a time, so the
    # poor ones reach ASHA's rung after epoch 1 after the good ones and are stopped there; of the two
    # good ones, whichever reaches a rung first goes on, so at least one trains to the end.
    args = _ray_scan(tmp_path, 4, {"training.learning_rate": [0.003, 0.002, 1e-7, 2e-7]}, "--parallel", "2")
    proc = submit(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:] + _trial_errors(tmp_path / "runs")
    rows = {r["name"]: r for r in json.loads((tmp_path / "runs" / "summary.json").read_text())}
    assert set(rows) == {"p000", "p001", "p002", "p003"}
    stopped = [n for n, r in rows.items() if r["status"] == "stopped early"]
    finished = [n for n, r in rows.items() if r["status"] == "finished"]
    assert {"p002", "p003"} <= set(stopped) and rows["p002"]["epochs"] == rows["p003"]["epochs"] == 1, rows
    assert finished and set(finished) <= {"p000", "p001"} and set(finished) | set(stopped) == set(rows), rows
    assert all(rows[n]["epochs"] == 4 for n in finished) and all(rows[n]["epochs"] < 4 for n in stopped)
    summary = merge([str(tmp_path / "runs" / n / "out") for n in rows], tmp_path / "merged")
    assert summary["merged"] == sorted(finished)
    skipped = {s["name"]: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == set(stopped) and all("stopped early by the Tune scheduler" in r for r in skipped.values())

    # The same command again: Tune restores the experiment; no finished point trains again.
    before = {n: (tmp_path / "runs" / n / "out.tgz").stat().st_mtime_ns for n in finished}
    again = submit(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {n: (tmp_path / "runs" / n / "out.tgz").stat().st_mtime_ns for n in finished} == before

    # Another scan in the same directory would be ignored by the restored experiment: refused.
    (tmp_path / "scan.yaml").write_text(
        yaml.safe_dump({"method": "grid", "parameters": {"training.learning_rate": [0.01]}})
    )
    changed = submit(*args, cwd=tmp_path)
    assert changed.returncode == 2 and "another scan" in changed.stderr, changed.stderr[-2000:]


@pytest.mark.slow
def test_ray_tune_reports_why_a_point_failed(tmp_path):
    """A point whose job fails (here: a tree the inputs do not have) is an error with the job's own
    reason on its line, the other points run on, and the command exits 1."""
    pytest.importorskip("ray", reason="pip install 'grid-payload[ray]' (in the test extra)")
    args = _ray_scan(tmp_path, 1, {"data.tree": ["nominal", "no_such_tree"]}, "--scheduler", "fifo")
    proc = submit(*args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if line[:4] in ("p000", "p001"))
    assert lines["p000"].startswith("finished after 1 epoch(s)"), proc.stdout
    assert lines["p001"].startswith("error: ") and "no_such_tree" in lines["p001"], proc.stdout


def test_prun_never_empties_a_directory_it_did_not_stage(submit_dir):
    """The sandbox is emptied on every submission: a directory holding the user's own files is refused."""
    (submit_dir / "analysis.C").write_text("// the user's work\n")
    args = ["prun", "--config", 'jdoe\'s "job" config.yaml', "--image", "img:1", "--in-ds", "data.A"]
    args += ["--secondary-ds", "data.B", "--out-ds", "user.jdoe.x", "--gpu", "none"]
    proc = submit(*args, "--sandbox", ".", cwd=submit_dir)
    assert proc.returncode == 2 and "did not stage" in proc.stderr
    assert (submit_dir / "analysis.C").read_text() == "// the user's work\n"
    # A staged sandbox is reused: the second submission replaces the first one's files.
    for _ in range(2):
        proc = submit(*args, cwd=submit_dir)
        assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (submit_dir / "prun-sandbox").iterdir()) == [".payload-sandbox", "job.yaml"]
