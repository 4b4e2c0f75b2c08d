"""A trained job's model bundle: the files that apply a model, found, extracted and checked.

A bundle (a ``payload run`` output directory or its tarball, ``payload merge``'s ``best/`` or
``ensemble/``) is untrusted input when it comes from elsewhere: only its bundle files are extracted,
under a size limit, and each is validated before use, so a bad bundle is one readable error (exit 4)
naming the file and the problem, never a traceback or a silent AUC of 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from payload.config import JobConfig, load_config
from payload.errors import InputCorruptError, InputMissingError, PayloadError
from payload.learn.scaling import Scaler
from payload.results.archive import safe_extract

#: What applies a model; ``metrics.json`` also names the files it was trained on.
FILES = ("model.keras", "scaler.json", "config.yaml", "metrics.json")
REQUIRED = FILES[:3]
#: A bundle's files are small (a model of 100 M parameters is 400 MB): more is refused before writing.
MAX_BYTES = 2 << 30


@dataclass
class Bundle:
    directory: Path
    config: JobConfig
    scaler: Scaler
    model: Any


def locate(source: str | Path, scratch: Path) -> Path:
    """The bundle's directory: ``source`` itself, or its tarball's bundle files extracted into ``scratch``."""
    path = Path(source)
    if not path.exists():
        raise InputMissingError(f"model {path}: no such file or directory")
    if path.is_file():
        path = safe_extract(path, scratch, only=FILES, max_bytes=MAX_BYTES)
    for needed in REQUIRED:
        if not (path / needed).exists():
            raise InputMissingError(
                f"model {source}: no {needed}; give the output directory or tarball of a 'payload run --mode train' job"
            )
    return path


def load(directory: Path, source: str | Path | None = None) -> Bundle:
    """Every file of a bundle read and checked against the others."""
    from payload.learn.models import input_names, load_model

    where = f"model {source or directory}"
    try:
        config = load_config(directory / "config.yaml")
    except PayloadError as err:
        raise InputCorruptError(f"{where}: config.yaml: {err.message}") from None
    scaler = Scaler.load(directory / "scaler.json")
    try:
        model = load_model(directory / "model.keras")
    except Exception as err:  # noqa: BLE001 - Keras raises many types; all mean the same to the user
        raise InputCorruptError(
            f"{where}: model.keras cannot be loaded in safe mode "
            f"({' '.join(str(err).split())[:200]}); only bundles written by payload run "
            "or payload merge can be applied"
        ) from None
    shapes = dict(zip(input_names(model), (tuple(t.shape) for t in model.inputs)))
    for name, columns in (("objects", scaler.objects), ("events", scaler.events)):
        if name in shapes and shapes[name][-1] != len(columns.names):
            raise InputCorruptError(
                f"{where}: model.keras takes {shapes[name][-1]} {name} features but scaler.json "
                f"scales {len(columns.names)}; the files belong to different jobs"
            )
    if "objects" in shapes and len(scaler.objects.names) != len(config.data.object_features):
        raise InputCorruptError(
            f"{where}: scaler.json scales {len(scaler.objects.names)} object features but "
            f"config.yaml lists {len(config.data.object_features)}; the files belong to "
            "different jobs"
        )
    return Bundle(directory, config, scaler, model)
