"""What a rerun in the same output directory may reuse, and proof that it still matches.

A rerun (after a kill, an eviction, a retry) reuses the converted work files and resumes from the
training checkpoints, but only when they were made from the same inputs with the same config:

- ``work/<sample>.h5`` has a record ``work/<sample>.json``: the identity of every input (base name,
  size, modification time for local files, adler32), the data config, and the work file's own size
  and adler32.  An input replaced under the same name, another data config, or a damaged work file
  (a truncated write, a flipped byte in a Blosc chunk) means the work file is converted again.  So
  does an input with no checksum to compare (an http URL, an XRootD server that reports none): what
  cannot be proven unchanged is not reused.
- ``checkpoints/binding.json`` holds the inputs' identities and the resolved config but for its
  ``evaluation`` section (which does not change what is trained).  Any difference discards the
  checkpoints, the training history and ensemble members before training starts.

Each decision is logged with its reason.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from payload.atomic import adler32, write_json
from payload.config import JobConfig, config_to_dict
from payload.ingest.convert import convert_files
from payload.learn.splits import base_name
from payload.progress import log


def identity(described: dict[str, Any]) -> dict[str, Any]:
    """What identifies one input (from ``payload.results.manifest.describe_input``)."""
    keys = ("bytes", "mtime_ns", "adler32")
    return {"name": base_name(described["location"]), **{k: described[k] for k in keys if k in described}}


def _difference(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> str:
    if [i["name"] for i in old] != [i["name"] for i in new]:
        return "the input files are not the same list"
    for a, b in zip(old, new):
        changed = [k for k in ("bytes", "mtime_ns", "adler32") if a.get(k) != b.get(k)]
        if changed:
            return f"input {b['name']} changed ({', '.join(changed)})"
    return "the inputs differ"


def _unverifiable(inputs: list[dict[str, Any]]) -> str | None:
    """The first input whose identity holds no checksum, so that a replacement could not be seen."""
    return next((i["name"] for i in inputs if "adler32" not in i), None)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def work_file(config: JobConfig, files: list[str], inputs: list[dict[str, Any]], target: Path, progress: bool) -> Path:
    """``target`` converted from ``files`` (their identities ``inputs``), reused when its record says
    it was made from exactly these and it is intact."""
    record_path = target.with_suffix(".json")
    data = config_to_dict(config)["data"]
    if target.exists():
        record = _read(record_path)
        unverified = _unverifiable(inputs)
        if unverified:
            reason = f"input {unverified} has no checksum to prove it unchanged"
        elif record is None:
            reason = "it has no record of its inputs"
        elif record.get("inputs") != inputs:
            reason = _difference(record.get("inputs", []), inputs)
        elif record.get("data") != data:
            reason = "the data config changed"
        elif record.get("bytes") != target.stat().st_size or record.get("adler32") != adler32(target):
            reason = "it is damaged (its size or checksum no longer matches)"
        else:
            log.info("reusing %s (same inputs, same data config, checksum verified)", target)
            return target
        log.warning("converting %s again: %s", target, reason)
    record_path.unlink(missing_ok=True)
    convert_files(config, files, target, progress=progress)
    write_json(
        record_path, {"inputs": inputs, "data": data, "bytes": target.stat().st_size, "adler32": adler32(target)}
    )
    return target


def bind_checkpoints(output: Path, config: JobConfig, inputs: dict[str, list[dict[str, Any]]]) -> None:
    """Discard checkpoints made from other inputs or another config; record what the current ones
    are made from."""
    resolved = config_to_dict(config)
    resolved.pop("evaluation")
    binding = {"inputs": inputs, "config": resolved}
    checkpoints = output / "checkpoints"
    path = checkpoints / "binding.json"
    old = _read(path)
    unverified = next((name for files in inputs.values() if (name := _unverifiable(files))), None)
    made = path.exists() or (checkpoints / "state.json").exists() or (output / "members").exists()
    if made and (old != binding or unverified):
        if unverified:
            reason = f"input {unverified} has no checksum to prove it unchanged"
        elif old is None:
            reason = "they have no record of what they were made from"
        elif old.get("config") != binding["config"]:
            keys = sorted(k for k in binding["config"] if old["config"].get(k) != binding["config"][k])
            reason = f"the config changed ({', '.join(keys) or 'structure'})"
        else:
            reason = next(
                (_difference(old["inputs"].get(s, []), v) for s, v in inputs.items() if old["inputs"].get(s) != v),
                "the inputs differ",
            )
        log.warning("discarding the checkpoints in %s and training from the start: %s", output, reason)
        shutil.rmtree(checkpoints, ignore_errors=True)
        shutil.rmtree(output / "members", ignore_errors=True)
        (output / "history.csv").unlink(missing_ok=True)
    checkpoints.mkdir(parents=True, exist_ok=True)
    if old != binding:
        write_json(path, binding)
