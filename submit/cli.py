"""``payload-submit``: the job's submission commands for PanDA, HTCondor and this machine.

    payload-submit prun   --config job.yaml --image IMG --in-ds DS --secondary-ds DS2 --out-ds user.NICK.x
    payload-submit condor --config job.yaml --image IMG --primary FILES --secondary FILES --directory DIR [--dag]
    payload-submit local  --config job.yaml --primary FILES --secondary FILES --workdir DIR [--image IMG]
    payload-submit phpo   --config job.yaml --search-space space.json --image IMG --training-ds DS ...
    payload-submit ray    --config job.yaml --scan scan.yaml --primary FILES --secondary FILES --workdir DIR

prun, condor, local and ray take ``--scan scan.yaml`` and/or ``--folds K`` to fan out (see ``submit.scan``),
and ``--mode evaluate --model TRAINED`` to apply a trained model to many files, a few per job.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from payload.errors import ConfigError, PayloadError
from payload.ingest.inputs import expand_inputs
from submit import scan


def _sandbox_path(path: str, what: str, tool: str) -> str:
    """``path`` relative to the submission directory, which the grid tool ships as the sandbox."""
    here = Path.cwd()
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(here):
        raise ConfigError(
            f"{what} {path}: must be inside the submission directory {here}, "
            f"which {tool} ships as the task's sandbox; copy it here"
        )
    return resolved.relative_to(here).as_posix()


def _execute(argv: list[str], failed: str, cwd: Path | None = None) -> None:
    """Run a panda-client command; a missing client or a failure is one clear error."""
    if shutil.which(argv[0]) is None:
        raise ConfigError(
            f"{argv[0]} not found: set up panda-client first (e.g. 'lsetup panda' or 'pip install panda-client')"
        )
    if subprocess.run(argv, cwd=cwd).returncode:
        raise PayloadError(failed)


def _check_mode(args: argparse.Namespace, model_is: str = "the trained job's output directory or tarball") -> None:
    """--mode evaluate needs --model (``model_is`` says what it may be); training needs --config."""
    if getattr(args, "mode", "train") == "evaluate":
        if not args.model:
            raise ConfigError(f"--mode evaluate needs --model: {model_is}")
    elif not args.config:
        raise ConfigError("training needs --config (and --scan and/or --folds for several points)")


def _gpu(args: argparse.Namespace):
    from submit.prun import GpuRequest

    return None if args.gpu == "none" else GpuRequest(args.gpu, args.vram_mb, args.cuda, args.gpu_model)


def _points(args: argparse.Namespace, directory: Path) -> tuple[list[Path], list[str]]:
    """(config files, point names): the config itself, or one validated config per point."""
    base = scan.base_config(args.config)
    if not args.scan and not args.folds:
        return [Path(args.config)], ["job"]
    spec = scan.load_scan(args.scan) if args.scan else {"method": "grid", "parameters": {}}
    if args.folds:
        spec["folds"] = args.folds
    pts = scan.points(spec)
    return scan.write_points(base, pts, directory), [p.name for p in pts]


def cmd_prun(args: argparse.Namespace) -> int:
    from submit import sandbox
    from submit.prun import PrunJob, fan_out

    box = sandbox.stage(Path(args.sandbox).resolve())
    job = PrunJob(
        image=args.image,
        in_ds=args.in_ds,
        out_ds=args.out_ds,
        secondary_ds=args.secondary_ds,
        mode=args.mode,
        n_files_per_job=args.n_files_per_job,
        secondary_files_per_job=args.secondary_files_per_job,
        max_files=args.max_files_per_job,
        n_files=args.n_files,
        site=args.site,
        dest_se=args.dest_se,
        gpu=_gpu(args),
        force_staged=not args.no_force_staged,
    )
    reads: set[str] = set()
    _check_mode(args, "a Rucio DID of the trained job's tarball, or its output directory or tarball here")
    if args.mode == "evaluate":
        if Path(args.model).exists():  # a local bundle travels in the sandbox, slimmed to what applies it
            sandbox.slim_bundle(args.model, box / "model.tgz")
            job.model, job.model_in_sandbox = "model.tgz", True
            reads.add("model.tgz")
        else:
            job.model = args.model
        paths: list[Path] = []
        names = ["job"]
    else:
        paths, names = _points(args, box / "points")
        if names == ["job"]:  # under a plain name: panda-client's archiver drops names holding quotes
            shutil.copyfile(args.config, box / "job.yaml")
            paths = [box / "job.yaml"]
        reads.update(p.relative_to(box).as_posix() for p in box.glob("points/points.json"))  # the points' record
    configs = [Path(c).resolve().relative_to(box).as_posix() for c in paths]
    reads.update(configs)
    commands = fan_out(job, configs, None if names == ["job"] else names, args.nickname)
    if not sandbox.check(commands[0], box, reads):
        print(
            "payload-submit: panda-client not installed: the sandbox was not checked (pip install "
            "'grid-payload[submit]')",
            file=sys.stderr,
        )
    for argv in commands:
        print(f"cd {shlex.quote(str(box))} && {shlex.join(argv)}")
        if args.execute:
            out_ds = argv[argv.index("--outDS") + 1]
            _execute(argv, f"prun failed for {out_ds}; the tasks listed before it were submitted", cwd=box)
    return 0


def cmd_phpo(args: argparse.Namespace) -> int:
    from submit.phpo import PhpoJob, phpo_argv

    config = _sandbox_path(args.config, "config", "phpo")
    space = _sandbox_path(args.search_space, "search space", "phpo")
    scan.base_config(args.config)  # a bad base config fails here, not in every evaluation job
    job = PhpoJob(
        args.image,
        args.training_ds,
        args.out_ds,
        config,
        space,
        args.primary_match,
        args.secondary_match,
        args.objective,
        args.max_points,
        args.parallel,
        steering_container=args.steering_container,
        gpu=_gpu(args),
        **({"steering_exec": args.steering_exec} if args.steering_exec else {}),
    )
    argv = phpo_argv(job, Path.cwd(), args.nickname)
    print(shlex.join(argv))
    if args.execute:
        _execute(argv, f"phpo failed for {args.out_ds}")
    return 0


def cmd_condor(args: argparse.Namespace) -> int:
    from submit.condor import CondorJob, write_dag, write_evaluation_dag, write_submit

    _check_mode(args)
    directory = Path(args.directory)
    directory.mkdir(parents=True, exist_ok=True)
    job = CondorJob(
        args.image,
        expand_inputs(args.primary),
        expand_inputs(args.secondary) if args.secondary else [],
        request_gpus=args.request_gpus,
        gpu_memory_mb=args.gpu_memory_mb,
        request_memory=args.request_memory,
        request_disk=args.request_disk,
    )
    if args.mode == "evaluate":
        from submit.groups import file_groups
        from submit.sandbox import slim_bundle

        groups = file_groups(job.primary, job.secondary, args.files_per_job, args.secondary_files_per_job)
        slim_bundle(args.model, directory / "model.tgz")  # transferred to every node
        path = write_evaluation_dag(job, "model.tgz", groups, directory)
        print(
            f"wrote {path} ({len(groups)} evaluation jobs, then the merge); submit with: "
            f"cd {shlex.quote(str(directory))} && condor_submit_dag {path.name}"
        )
        return 0
    configs, names = _points(args, directory)
    items = []
    for config, name in zip(configs, names):
        # Each config sits beside the submit file under its point's name: the queue list and the
        # arguments then hold only names HTCondor cannot misread, whatever the user's file is called.
        target = directory / f"{name}.yaml"
        if config.resolve() != target.resolve():
            shutil.copyfile(config, target)
        items.append((name, target.name))
    path = write_dag(job, items, directory) if args.dag else write_submit(job, items, directory)
    submit = "condor_submit_dag" if args.dag else "condor_submit"
    print(f"wrote {path}; submit with: cd {shlex.quote(str(directory))} && {submit} {path.name}")
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    from submit.local import LocalRun, run_evaluations, run_points

    _check_mode(args)
    workdir = Path(args.workdir)
    run = LocalRun(
        expand_inputs(args.primary),
        expand_inputs(args.secondary) if args.secondary else [],
        image=args.image,
        parallel=args.parallel,
        gpus=args.gpus,
    )
    if args.mode == "evaluate":
        from submit.groups import file_groups

        run.model = args.model
        results = run_evaluations(
            run, file_groups(run.primary, run.secondary, args.files_per_job, args.secondary_files_per_job), workdir
        )
    else:
        configs, names = _points(args, workdir / "points")
        results = run_points(run, configs, names, workdir)
    for r in results:
        auc = r["metrics"].get("test_auc")
        status = (
            "ok"
            if r["exit_code"] == 0 and auc is None
            else f"test AUC {auc:.4f}"
            if auc is not None
            else f"failed: {r['error']}"
        )
        print(f"{r['name']}: exit {r['exit_code']}, {status}")
    print(
        f"summary in {workdir / 'summary.json'}; gather the outputs with: payload merge "
        f"{shlex.quote(str(workdir))}/*/out.tgz --output merged"
    )
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


def cmd_ray(args: argparse.Namespace) -> int:
    from submit.raytune import RayScan, run_scan

    _check_mode(args)
    workdir = Path(args.workdir)
    configs, names = _points(args, workdir / "points")
    scan = RayScan(
        expand_inputs(args.primary),
        expand_inputs(args.secondary) if args.secondary else [],
        workdir,
        address=args.address,
        metric=args.metric,
        scheduler=args.scheduler,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        parallel=args.parallel,
    )
    rows = run_scan(scan, configs, names)
    for r in rows:
        value = r.get(args.metric)
        print(
            f"{r['name']}: {r['status']}"
            + (f" after {r['epochs']} epoch(s)" if r["epochs"] is not None else "")
            + (f", {args.metric} {value:.4g}" if isinstance(value, float) else "")
            # Tune's errors are whole tracebacks (kept in summary.json): their last line says what
            + (f": {r['error'].strip().splitlines()[-1]}" if r["status"] == "error" and r.get("error") else "")
        )
    print(
        f"summary in {workdir / 'summary.json'}; gather the outputs with: payload merge "
        f"{shlex.quote(str(workdir))}/*/out.tgz --output merged"
    )
    return 0 if all(r["status"] != "error" for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="payload-submit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    optional = argparse.ArgumentParser(add_help=False)
    optional.add_argument("--config", help="the job config YAML (training)")
    optional.add_argument("--scan", help="hyperparameter scan YAML: one job per point")
    optional.add_argument("--folds", type=int, default=0, help="k-fold: one job per fold (crossed with --scan)")
    gpu = argparse.ArgumentParser(add_help=False)
    gpu.add_argument("--gpu", default="nvidia", help="GPU vendor to request, or 'none' (default: %(default)s)")
    gpu.add_argument("--vram-mb", type=int, help="at least this much GPU memory")
    gpu.add_argument("--cuda", help="at least this CUDA version, e.g. 12.0")
    gpu.add_argument("--gpu-model", help="regular expression on the GPU model, e.g. '.*A100.*'")

    p = sub.add_parser("prun", parents=[optional, gpu], help="print (and with --execute run) prun commands")
    p.add_argument(
        "--mode",
        choices=["train", "evaluate"],
        default="train",
        help="train (default) or evaluate: apply --model to every file, a few files per job",
    )
    p.add_argument(
        "--model",
        help="evaluate: a Rucio DID holding the trained job's tarball, or its output "
        "directory or tarball here (shipped slimmed in the sandbox, at most 10 MB)",
    )
    p.add_argument("--image", required=True, help="container image, e.g. docker.io/NICK/grid-payload:0.1.0")
    p.add_argument("--in-ds", required=True, help="primary input dataset (%%IN)")
    p.add_argument("--secondary-ds", help="secondary input dataset (%%IN2)")
    p.add_argument("--out-ds", required=True, help="user.NICK.name (points get .pNNN appended)")
    p.add_argument("--nickname", help="your grid nickname, checked against --out-ds")
    p.add_argument(
        "--n-files-per-job",
        type=int,
        help="primary files per job (training default: one job over all files; evaluation: 5)",
    )
    p.add_argument(
        "--secondary-files-per-job",
        type=int,
        help="secondary files per job, required with --n-files-per-job when there is a secondary",
    )
    p.add_argument(
        "--max-files-per-job",
        type=int,
        default=200,
        help="training's one job takes up to this many files of each dataset (default %(default)s)",
    )
    p.add_argument("--n-files", type=int)
    p.add_argument("--site")
    p.add_argument("--dest-se")
    p.add_argument("--no-force-staged", action="store_true", help="let unstaged inputs arrive as root:// URLs")
    p.add_argument(
        "--sandbox",
        default="prun-sandbox",
        help="the directory staged with exactly what the jobs read, where prun runs (default %(default)s)",
    )
    p.add_argument("--execute", action="store_true", help="run the prun commands, not only print them")
    p.set_defaults(func=cmd_prun)

    p = sub.add_parser("phpo", parents=[gpu], help="print (and with --execute run) a PanDA hyperparameter optimisation")
    p.add_argument("--config", required=True, help="the base job config (in the submission directory)")
    p.add_argument("--search-space", required=True, help="JSON search space for the steering, keyed by config keys")
    p.add_argument("--image", required=True)
    p.add_argument("--training-ds", required=True, help="dataset (or container) holding both samples' files")
    p.add_argument("--primary-match", required=True, help="file-name pattern of the primary sample's files")
    p.add_argument("--secondary-match", help="file-name pattern of the secondary sample's files")
    p.add_argument("--objective", choices=["loss", "auc", "closure"], default="loss")
    p.add_argument("--out-ds", required=True)
    p.add_argument("--nickname")
    p.add_argument("--max-points", type=int, default=10)
    p.add_argument("--parallel", type=int, default=1, help="evaluations running at once")
    p.add_argument("--steering-exec", help="steering arguments (default: phpo's documented form)")
    p.add_argument("--steering-container")
    p.add_argument("--execute", action="store_true")
    p.set_defaults(func=cmd_phpo)

    evaluation = argparse.ArgumentParser(add_help=False)
    evaluation.add_argument(
        "--mode",
        choices=["train", "evaluate"],
        default="train",
        help="train (default) or evaluate: apply --model to the inputs, a few files per job",
    )
    evaluation.add_argument("--model", help="evaluate: the trained job's output directory or tarball")
    evaluation.add_argument("--files-per-job", type=int, default=5, help="evaluate: primary files per job")
    evaluation.add_argument("--secondary-files-per-job", type=int, help="evaluate: secondary files per job")

    p = sub.add_parser("condor", parents=[optional, evaluation], help="write an HTCondor submit file or DAG")
    p.add_argument("--image", required=True)
    p.add_argument("--primary", required=True, nargs="+", action="extend")
    p.add_argument("--secondary", nargs="+", action="extend")
    p.add_argument("--directory", required=True, help="where the submit file, configs and logs go")
    p.add_argument("--dag", action="store_true", help="a DAG with a merge node after all training nodes")
    p.add_argument("--request-gpus", type=int, default=1)
    p.add_argument("--gpu-memory-mb", type=int)
    p.add_argument("--request-memory", default="8 GB")
    p.add_argument("--request-disk", default="20 GB")
    p.set_defaults(func=cmd_condor)

    p = sub.add_parser("local", parents=[optional, evaluation], help="run the jobs on this machine")
    p.add_argument("--primary", required=True, nargs="+", action="extend")
    p.add_argument("--secondary", nargs="+", action="extend")
    p.add_argument("--workdir", required=True)
    p.add_argument("--image", help="run each job with docker in this image (default: plain processes)")
    p.add_argument("--gpus", action="store_true", help="docker run --gpus all")
    p.add_argument("--parallel", type=int, default=1)
    p.set_defaults(func=cmd_local)

    p = sub.add_parser("ray", parents=[optional], help="run the points as Ray Tune trials (local or a cluster)")
    p.add_argument("--primary", required=True, nargs="+", action="extend")
    p.add_argument("--secondary", nargs="+", action="extend")
    p.add_argument("--workdir", required=True, help="one directory per point, and Tune's experiment (resumable)")
    p.add_argument("--address", help="an existing Ray cluster ('auto', 'ray://HOST:10001'); default: a local runtime")
    p.add_argument(
        "--scheduler",
        choices=["asha", "fifo"],
        default="asha",
        help="asha stops poor points early on the per-epoch metric (default); fifo runs all to the end",
    )
    p.add_argument(
        "--metric", default="val_loss", help="per-epoch metric the scheduler minimises (default %(default)s)"
    )
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, help="default: 1 when the cluster has GPUs, else 0")
    p.add_argument("--parallel", type=int, help="trials running at once (default: as many as the resources allow)")
    p.set_defaults(func=cmd_ray)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from payload.cli import run_cli

    args = build_parser().parse_args(argv)
    return run_cli(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
