"""A job's per-event results as ROOT friend trees, one file per input file.

``friends/<input name>.friend.root`` holds one tree, ``payload`` (``FRIEND_TREE``), with exactly as
many entries as the input's tree, in the same order, so ROOT's ``AddFriend``, RDataFrame and uproot
line them up entry by entry with no join.  Branches (``FIELDS``):

``nn_weight``  the NN weight (reweighting jobs; 1 for the secondary sample, for events the
               selection, the NaN policy or the outlier cuts left out)
``score``      the network output (-1 where the event was not scored)
``split``      0 train, 1 validation, 2 test, -1 not scored
``selected``   the event passed ``data.selection`` and the data checks, and was scored
``outlier``    left out of training by ``scaling.outliers`` (weight 1)
``baseline_weight``  the GBReweighter baseline's weight, when the job ran it

Written from ``predictions.h5`` alone (its ``source_files`` and ``source_entries`` attributes), a
group of input files at a time so memory is bounded by ``ENTRY_BUDGET``, not by the dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from payload.atomic import adler32, atomic_path
from payload.learn.splits import base_name
from payload.progress import log

FRIEND_TREE = "payload"
SUFFIX = ".friend.root"
FIELDS = {"nn_weight": np.float32, "score": np.float32, "split": np.int8, "selected": np.bool_, "outlier": np.bool_}
DEFAULTS = {"nn_weight": 1.0, "score": -1.0, "split": -1, "selected": False, "outlier": False}
OPTIONAL = {"baseline_weight": np.float32}
ENTRY_BUDGET = 1 << 24  # entries held at once (about 12 bytes each)
CHUNK = 1 << 20


def friend_name(location: str) -> str:
    stem = base_name(location)
    return (stem[:-5] if stem.endswith(".root") else stem) + SUFFIX


def write_friends(predictions: Path, directory: Path) -> list[dict[str, Any]]:
    """One friend file per input of ``predictions``; returns their descriptions (input, file, entries,
    scored events, adler32) for the manifest."""
    with h5py.File(predictions, "r") as f:
        files = json.loads(f.attrs["source_files"])
        entries = json.loads(f.attrs.get("source_entries", "{}"))
        if set(entries) != set(files):
            log.warning("%s has no entry counts for its inputs: no friend trees written", predictions)
            return []
        fields = {k: v for k, v in {**FIELDS, **OPTIONAL}.items() if k in f or k == "selected"}
        todo = [
            (int(sample), i, location, int(entries[sample][i]))
            for sample in sorted(files, key=int)
            for i, location in enumerate(files[sample])
        ]
        names = _unique_names([location for _, _, location, _ in todo])
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for group in _groups(todo):
            arrays: dict[tuple[int, int], dict[str, np.ndarray]] = {
                (s, i): {k: np.full(n, DEFAULTS.get(k, 1.0), dtype=t) for k, t in fields.items()}
                for s, i, _, n in group
            }
            filled = {key: 0 for key in arrays}
            _fill(f, arrays, filled)
            for s, i, location, n in group:
                target = directory / names[location]
                with atomic_path(target) as tmp:
                    _write_tree(tmp, arrays[(s, i)])
                written.append(
                    {
                        "input": location,
                        "sample": s,
                        "file": target.name,
                        "entries": n,
                        "scored": filled[(s, i)],
                        "adler32": adler32(target),
                    }
                )
    log.info(
        "friend trees: %d file(s) in %s (tree %r, entries aligned with each input's tree)",
        len(written),
        directory,
        FRIEND_TREE,
    )
    return written


def _unique_names(locations: list[str]) -> dict[str, str]:
    """Input location -> friend file name; inputs of one name from different places get a number."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for location in locations:
        name = friend_name(location)
        n = 1
        while name in used:
            n += 1
            name = friend_name(location)[: -len(SUFFIX)] + f".{n}{SUFFIX}"
        used.add(name)
        out[location] = name
    return out


def _groups(todo: list[tuple[int, int, str, int]]) -> list[list[tuple[int, int, str, int]]]:
    groups: list[list[tuple[int, int, str, int]]] = [[]]
    held = 0
    for item in todo:
        if groups[-1] and held + item[3] > ENTRY_BUDGET:
            groups.append([])
            held = 0
        groups[-1].append(item)
        held += item[3]
    return groups


def _fill(
    f: h5py.File, arrays: dict[tuple[int, int], dict[str, np.ndarray]], filled: dict[tuple[int, int], int]
) -> None:
    """One streamed pass over the predictions, filling the files of this group."""
    n = len(f["entry"])
    names = [k for k in next(iter(arrays.values())) if k != "selected"]
    for a in range(0, n, CHUNK):
        sample, file_index, entry = (f[k][a : a + CHUNK] for k in ("sample", "file_index", "entry"))
        cols = {k: f[k][a : a + CHUNK] for k in names}
        for (s, i), out in arrays.items():
            sel = np.flatnonzero((sample == s) & (file_index == i))
            if not len(sel):
                continue
            rows = entry[sel]
            if rows.max() >= len(out["selected"]) or out["selected"][rows].any():
                raise RuntimeError(f"predictions: entries of input {i} (sample {s}) out of range or repeated")
            out["selected"][rows] = True
            for k in names:
                out[k][rows] = cols[k][sel]
            filled[(s, i)] += len(sel)


def _write_tree(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import uproot

    n = len(arrays["selected"])
    with uproot.recreate(path) as out:
        out.mktree(FRIEND_TREE, {k: v.dtype for k, v in arrays.items()})
        for a in range(0, max(n, 1), CHUNK):
            out[FRIEND_TREE].extend({k: v[a : a + CHUNK] for k, v in arrays.items()})
