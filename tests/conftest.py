"""Shared fixtures: real ROOT files written with uproot, and the reference samples when present."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from payload.config import parse_config
from payload.runtime import preload_xrootd

# Tests read root:// in this process after others have loaded TensorFlow: load the XRootD client first,
# as the CLI does.
preload_xrootd()

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """Tests that need an engine or servers are slow too, so `-m "not slow"` leaves them out."""
    for item in items:
        if item.get_closest_marker("docker") or item.get_closest_marker("servers"):
            item.add_marker(pytest.mark.slow)


SHARED_DATA = Path(os.environ.get("PAYLOAD_SHARED_DATA", REPO.parent / "shared" / "data"))


def make_events(n: int, seed: int = 0, max_jets: int = 9, max_leps: int = 3) -> dict[str, list]:
    """Per-event python lists, the ground truth the tests compare against."""
    rng = np.random.default_rng(seed)
    events = {"jet": [], "lep": [], "met": [], "met_phi": [], "w": [], "ht": []}
    for _ in range(n):
        nj = int(rng.integers(0, max_jets + 1))
        nl = int(rng.integers(0, max_leps + 1))
        jets = [
            (float(rng.uniform(20, 500)), float(rng.normal()), float(rng.uniform(-3, 3)), float(rng.uniform(0, 30)))
            for _ in range(nj)
        ]
        leps = [(float(rng.uniform(20, 300)), float(rng.normal()), float(rng.uniform(-3, 3)), 0.1) for _ in range(nl)]
        events["jet"].append(jets)
        events["lep"].append(leps)
        events["met"].append(float(rng.uniform(0, 200)))
        events["met_phi"].append(float(rng.uniform(-3, 3)))
        events["w"].append(float(rng.choice([-1.0, 1.0, 2.5])))
        events["ht"].append(float(sum(j[0] for j in jets)))
    return events


def write_jagged_root(path: Path, events: dict[str, list], tree: str = "nominal") -> Path:
    """Write std::vector-like jagged branches (jet_pt, ...) plus flat ones."""

    def col(key: str, i: int) -> ak.Array:
        return ak.Array([[np.float32(o[i]) for o in ev] for ev in events[key]], with_name=None)

    branches = {}
    for key in ("jet", "lep"):
        for i, f in enumerate(("pt", "eta", "phi", "m")):
            branches[f"{key}_{f}"] = ak.values_astype(col(key, i), np.float32)
    branches["met"] = np.array(events["met"], dtype=np.float32)
    branches["met_phi"] = np.array(events["met_phi"], dtype=np.float32)
    branches["mcweight"] = np.array(events["w"], dtype=np.float32)
    branches["ht"] = np.array(events["ht"], dtype=np.float32)
    branches["njet"] = np.array([len(j) for j in events["jet"]], dtype=np.int32)
    with uproot.recreate(path) as f:
        f[tree] = branches
    return path


JAGGED_CONFIG = {
    "data": {
        "tree": "nominal",
        "collections": [
            {
                "name": "jets",
                "type_code": 1,
                "branches": {"pt": "jet_pt", "eta": "jet_eta", "phi": "jet_phi", "m": "jet_m"},
            },
            {
                "name": "leptons",
                "type_code": 2,
                "branches": {"pt": "lep_pt", "eta": "lep_eta", "phi": "lep_phi", "m": "lep_m"},
            },
            {"name": "met", "type_code": 3, "branches": {"pt": "met", "eta": 0, "phi": "met_phi", "m": 0}},
        ],
        "max_objects": 8,
        "sort_by": "pt",
        "event_features": ["njet"],
        "spectators": {"HT": "ht"},
        "weight": "mcweight",
        "chunk_size": 100,
    }
}


def expected_objects(events: dict[str, list], max_objects: int, i: int) -> list[tuple]:
    """Independent re-implementation: all objects with a type code, sorted by pT, clipped."""
    objs = [(*o, 1.0) for o in events["jet"][i]] + [(*o, 2.0) for o in events["lep"][i]]
    objs.append((events["met"][i], 0.0, events["met_phi"][i], 0.0, 3.0))
    # Stable sort on descending pT: equal pT keeps collection order.
    objs = sorted(objs, key=lambda o: -np.float32(o[0]))
    return objs[:max_objects]


@pytest.fixture(scope="session")
def jagged_events() -> dict[str, list]:
    return make_events(1000, seed=42)


@pytest.fixture(scope="session")
def jagged_file(tmp_path_factory, jagged_events) -> Path:
    return write_jagged_root(tmp_path_factory.mktemp("root") / "jagged.root", jagged_events)


@pytest.fixture
def jagged_config():
    return parse_config(JAGGED_CONFIG)


@pytest.fixture(scope="session")
def shared_samples() -> tuple[Path, Path]:
    a, b = SHARED_DATA / "ttbar_A.root", SHARED_DATA / "ttbar_B.root"
    if not (a.exists() and b.exists()):
        pytest.skip(f"reference samples not found in {SHARED_DATA} (set PAYLOAD_SHARED_DATA to their folder)")
    return a, b


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """``payload.cli.main`` called in this process, its exit code and captured output: the CLI's error
    handling without a process start (``run_payload`` keeps a few end-to-end checks of exit codes)."""
    from payload.cli import main

    def run(*args: str, cwd: Path | None = None) -> CliResult:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


def run_payload(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user or the grid would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "payload", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600
    )
