"""HTCondor submit descriptions and DAGs for the job (container universe).

Local input files are transferred to the worker, where they land as bare names in the job's
scratch directory; ``root://`` URLs are read in place.  Each job brings back its tarball and its
summary (``userJobMetadata.json`` renamed per point).  A scan is one ``queue ... from`` submit file,
and a DAG runs the points as one layer with the merge step as a child of every one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from payload.errors import ConfigError
from payload.ingest.inputs import is_url
from submit.images import docker_url

#: Where the image installs the ``payload`` command (Dockerfile).
IMAGE_EXECUTABLE = "/opt/payload/bin/payload"


def _one_line(value: str) -> str:
    """A newline would start a new submit command: it cannot be written at all."""
    if "\n" in value or "\r" in value:
        raise ConfigError(f"{value!r}: a newline cannot be written into an HTCondor submit file; rename it")
    return value


def literal(value: str) -> str:
    """A value written into a submit description as it is: HTCondor expands ``$(...)`` and
    ``$ENV(...)`` macros anywhere, so every ``$`` becomes ``$(DOLLAR)``."""
    return _one_line(value).replace("$", "$(DOLLAR)")


def condor_arguments(args: list[str]) -> str:
    """HTCondor's quoted ``arguments`` syntax: the whole in double quotes, an argument holding
    whitespace or a single quote in single quotes with ' doubled, and every " doubled.  Arguments
    must already be ``literal`` where they hold user text (macros of our own stay macros)."""
    out = []
    for arg in map(_one_line, args):
        if arg == "" or any(c.isspace() for c in arg) or "'" in arg:
            arg = "'" + arg.replace("'", "''") + "'"
        out.append(arg.replace('"', '""'))
    return '"' + " ".join(out) + '"'


def _list(values: list[str]) -> str:
    """A file list (macros of our own, such as ``$(config)``, pass as they are)."""
    for value in values:
        if "," in value:
            raise ConfigError(f"file {value!r}: HTCondor file lists cannot hold commas; rename it")
    return ", ".join(_one_line(v) if v.startswith("$(") else literal(v) for v in values)


def _container_job(image: str, args: list[str], inputs: list[str]) -> list[str]:
    """The lines every node shares: ``payload`` in the image with ``args``, files in and out."""
    # The absolute path in the image, as HTCondor documents for containers: Apptainer runs it
    # directly, and the image's entrypoint runs a first word that is a command as it is (docker).
    return [
        "universe = container",
        f"container_image = {docker_url(image)}",
        f"executable = {IMAGE_EXECUTABLE}",
        "transfer_executable = false",
        f"arguments = {condor_arguments(args)}",
        "should_transfer_files = YES",
        "when_to_transfer_output = ON_EXIT",
        f"transfer_input_files = {_list(inputs)}",
    ]


@dataclass
class CondorJob:
    image: str  # docker.io/NICK/grid-payload:0.1.0 (docker:// is added)
    primary: list[str]  # local files or root:// URLs
    secondary: list[str]
    request_gpus: int = 1
    gpu_memory_mb: int | None = None  # require_gpus = GlobalMemoryMb >= N
    request_memory: str = "8 GB"
    request_disk: str = "20 GB"
    request_cpus: int = 2

    def _inputs(self, files: list[str]) -> tuple[list[str], str]:
        """(files to transfer, the comma list the job sees on the worker)."""
        transfer = [f for f in files if not is_url(f)]
        seen = [f if is_url(f) else Path(f).name for f in files]
        return transfer, ",".join(seen)

    def _resources(self) -> list[str]:
        lines = [
            f"request_cpus = {self.request_cpus}",
            f"request_memory = {self.request_memory}",
            f"request_disk = {self.request_disk}",
            f"request_gpus = {self.request_gpus}",
        ]
        if self.request_gpus and self.gpu_memory_mb:
            lines.append(f"require_gpus = GlobalMemoryMb >= {int(self.gpu_memory_mb)}")
        return lines + ["output = logs/$(name).out", "error = logs/$(name).err", "log = logs/jobs.log"]

    def evaluation_body(self, model: str) -> str:
        """One evaluation node applying the bundle ``model`` (a file beside the submit file) to its
        inputs: the node variables ``primary``/``secondary`` (names as the job sees them) and
        ``primary_files``/``secondary_files`` (what is transferred) say which."""
        args = ["-q", "run", "--mode", "evaluate", "--model", literal(model), "--primary", "$(primary)"]
        if self.secondary:
            args += ["--secondary", "$(secondary)"]
        args += ["--output", "out", "--tarball", "$(name).tgz"]
        if self.request_gpus:
            args.append("--require-gpu")
        inputs = [model, "$(primary_files)"] + (["$(secondary_files)"] if self.secondary else [])
        lines = _container_job(self.image, args, inputs) + [
            "transfer_output_files = $(name).tgz, userJobMetadata.json",
            'transfer_output_remaps = "userJobMetadata.json = $(name).json"',
            *self._resources(),
            "queue",
        ]
        return "\n".join(lines) + "\n"

    def evaluation_vars(self, primary: list[str], secondary: list[str]) -> dict[str, str]:
        p_files, p_names = self._inputs(primary)
        s_files, s_names = self._inputs(secondary)
        out = {"primary": literal(p_names), "primary_files": _list(p_files)}
        if self.secondary:
            out.update(secondary=literal(s_names), secondary_files=_list(s_files))
        return out

    def description(self, items: list[tuple[str, str]]) -> str:
        """A submit description running ``payload run`` once per (name, config) item."""
        if not items:
            raise ConfigError("nothing to submit: no job configs")
        for name, _ in items:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ConfigError(f"point name {name!r}: use letters, digits, '-' and '_' only")
        primary_files, primary = self._inputs(self.primary)
        secondary_files, secondary = self._inputs(self.secondary)
        args = ["-q", "run", "--primary", literal(primary)]
        if secondary:
            args += ["--secondary", literal(secondary)]
        # $(config) and $(name) are filled per queued item; $(config) is transferred, so the job
        # sees its base name: items give configs by base name, placed beside the submit file.
        args += ["--config", "$(config)", "--output", "out", "--tarball", "$(name).tgz"]
        if self.request_gpus:
            args.append("--require-gpu")
        lines = _container_job(self.image, args, ["$(config)", *primary_files, *secondary_files]) + [
            "transfer_output_files = $(name).tgz, userJobMetadata.json",
            'transfer_output_remaps = "userJobMetadata.json = $(name).json"',
            *self._resources(),
            "queue name, config from (",
        ]
        lines += [f"  {name}, {config}" for name, config in items] + [")"]
        return "\n".join(lines) + "\n"


def write_submit(job: CondorJob, items: list[tuple[str, str]], directory: str | Path, name: str = "train.sub") -> Path:
    directory = Path(directory)
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(job.description(items))
    return path


def write_dag(
    job: CondorJob, items: list[tuple[str, str]], directory: str | Path, merge_args: list[str] | None = None
) -> Path:
    """A DAG: one training node per (name, config) item, then a merge node whose parents are all of them."""
    description = job.description(items)
    # The layer holds the per-node variables; the submit description keeps everything else.
    body = description[: description.index("queue name, config from (")] + "queue\n"
    return _dag(job, "train", body, [{"name": n, "config": c} for n, c in items], directory, merge_args)


def write_evaluation_dag(
    job: CondorJob, model: str, groups: list[tuple[str, list[str], list[str]]], directory: str | Path
) -> Path:
    """An evaluation fan-out: one node per (name, primary files, secondary files) group applying the
    bundle ``model`` (a file in ``directory``), then the merge node gathering their outputs."""
    node_vars = [{"name": name, **job.evaluation_vars(primary, secondary)} for name, primary, secondary in groups]
    return _dag(job, "evaluate", job.evaluation_body(model), node_vars, directory, None)


def _dag(
    job: CondorJob,
    layer: str,
    body: str,
    node_vars: list[dict[str, str]],
    directory: str | Path,
    merge_args: list[str] | None,
) -> Path:
    """The nodes of ``layer`` then a merge node running ``payload merge`` (the default arguments) on
    their tarballs, in the same image, on the submit side's files."""
    import htcondor2
    from htcondor2 import dags

    directory = Path(directory)
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    dag = dags.DAG()
    # A failed job still hands back its tarball (holding error.json); the POST script makes its node
    # succeed so the merge node runs and reports it, instead of DAGMan stopping before the merge.
    nodes = dag.layer(
        name=layer, submit_description=htcondor2.Submit(body), vars=node_vars, post=dags.Script(executable="/bin/true")
    )
    tarballs = [f"{v['name']}.tgz" for v in node_vars]
    merge_args = [literal(a) for a in merge_args] if merge_args else ["-q", "merge", *tarballs, "--output", "merged"]
    merge = htcondor2.Submit(
        "\n".join(
            [
                *_container_job(job.image, merge_args, tarballs),
                "transfer_output_files = merged",
                "request_cpus = 1",
                "request_memory = 4 GB",
                "request_gpus = 0",
                "output = logs/merge.out",
                "error = logs/merge.err",
                "log = logs/jobs.log",
                "queue",
            ]
        )
    )
    nodes.child_layer(name="merge", submit_description=merge)
    return dags.write_dag(dag, directory, dag_file_name="scan.dag")
