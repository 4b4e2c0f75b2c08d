"""Bad input through the real CLI: one readable line, a documented exit code, no traceback, no output.

Most cases call the CLI in this process (the ``cli`` fixture); ``test_missing_file`` and
``test_success_leaves_only_the_output`` run it as a subprocess, as a user or the grid would."""

from __future__ import annotations

import json
import os

import awkward as ak
import pytest
import uproot
import yaml
from conftest import JAGGED_CONFIG, run_payload


def _config_file(tmp_path, **changes):
    raw = json.loads(json.dumps(JAGGED_CONFIG))
    raw["data"].update(changes)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _check_failure(proc, code, *words, output=None):
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("payload: error:")]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    if output is not None:
        assert not output.exists()
        assert not list(output.parent.glob(f".tmp-*{output.name}")), "temporary output left behind"


def test_missing_file(tmp_path):
    out = tmp_path / "out.h5"
    proc = run_payload(
        "convert",
        "--config",
        str(_config_file(tmp_path)),
        "--inputs",
        str(tmp_path / "nope.root"),
        "--output",
        str(out),
    )
    _check_failure(proc, 3, "nope.root", "no such file", output=out)


def test_glob_matching_nothing(tmp_path, cli):
    out = tmp_path / "out.h5"
    proc = cli("convert", "--inputs", str(tmp_path / "*.root"), "--output", str(out))
    _check_failure(proc, 3, "no file matches", output=out)


def test_corrupt_file(tmp_path, cli):
    bad = tmp_path / "bad.root"
    bad.write_bytes(b"this is not a ROOT file at all" * 100)
    out = tmp_path / "out.h5"
    proc = cli("convert", "--config", str(_config_file(tmp_path)), "--inputs", str(bad), "--output", str(out))
    _check_failure(proc, 4, "bad.root", "re-fetch", output=out)


def test_truncated_file(tmp_path, jagged_file, cli):
    cut = tmp_path / "cut.root"
    cut.write_bytes(jagged_file.read_bytes()[: jagged_file.stat().st_size // 2])
    out = tmp_path / "out.h5"
    proc = cli("convert", "--config", str(_config_file(tmp_path)), "--inputs", str(cut), "--output", str(out))
    _check_failure(proc, 4, "cut.root", output=out)


def test_second_file_corrupt_leaves_no_output(tmp_path, jagged_file, cli):
    bad = tmp_path / "bad.root"
    bad.write_bytes(b"\0" * 4096)
    out = tmp_path / "out.h5"
    proc = cli(
        "convert", "--config", str(_config_file(tmp_path)), "--inputs", f"{jagged_file},{bad}", "--output", str(out)
    )
    _check_failure(proc, 4, "bad.root", output=out)


def test_missing_tree(tmp_path, jagged_file, cli):
    out = tmp_path / "out.h5"
    proc = cli(
        "convert",
        "--config",
        str(_config_file(tmp_path, tree="nomnal")),
        "--inputs",
        str(jagged_file),
        "--output",
        str(out),
    )
    _check_failure(proc, 5, "'nomnal'", "closest: nominal", output=out)


def test_missing_branch_names_closest(tmp_path, jagged_file, cli):
    raw = json.loads(json.dumps(JAGGED_CONFIG))
    raw["data"]["collections"][0]["branches"]["pt"] = "jet_ptt"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out.h5"
    proc = cli("convert", "--config", str(path), "--inputs", str(jagged_file), "--output", str(out))
    _check_failure(proc, 6, "'jet_ptt'", "closest: jet_pt", output=out)


def test_selection_on_missing_branch(tmp_path, jagged_file, cli):
    out = tmp_path / "out.h5"
    proc = cli(
        "convert",
        "--config",
        str(_config_file(tmp_path, selection="nbjets > 1")),
        "--inputs",
        str(jagged_file),
        "--output",
        str(out),
    )
    _check_failure(proc, 6, "'nbjets'", output=out)


def _convert_jets(cli, tmp_path, path, out):
    """Convert ``path`` with a jets-only config."""
    raw = {
        "data": {
            "collections": [
                {"name": "jets", "branches": {"pt": "jet_pt", "eta": "jet_eta", "phi": "jet_phi", "m": "jet_m"}}
            ]
        }
    }
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return cli("convert", "--config", str(cfg), "--inputs", str(path), "--output", str(out))


def test_collection_with_different_counts(tmp_path, cli):
    path = tmp_path / "mismatch.root"
    with uproot.recreate(path) as f:
        f["nominal"] = {
            "jet_pt": ak.Array([[1.0, 2.0], [3.0]]),
            "jet_eta": ak.Array([[1.0], [3.0]]),
            "jet_phi": ak.Array([[1.0, 2.0], [3.0]]),
            "jet_m": ak.Array([[1.0, 2.0], [3.0]]),
        }
    out = tmp_path / "out.h5"
    proc = _convert_jets(cli, tmp_path, path, out)
    _check_failure(proc, 7, "'jet_eta'", "different object counts", output=out)


def test_empty_tree(tmp_path, cli):
    path = tmp_path / "empty.root"
    with uproot.recreate(path) as f:
        f.mktree(
            "nominal",
            {
                "jet_pt": "var * float32",
                "jet_eta": "var * float32",
                "jet_phi": "var * float32",
                "jet_m": "var * float32",
            },
        )
    out = tmp_path / "out.h5"
    proc = _convert_jets(cli, tmp_path, path, out)
    _check_failure(proc, 8, "no entries", output=out)


def test_selection_rejects_everything(tmp_path, jagged_file, cli):
    out = tmp_path / "out.h5"
    proc = cli(
        "convert",
        "--config",
        str(_config_file(tmp_path, selection="met < 0")),
        "--inputs",
        str(jagged_file),
        "--output",
        str(out),
    )
    _check_failure(proc, 8, "rejected all 1000 events", output=out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_unwritable_output_non_root(tmp_path, jagged_file, cli):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    proc = cli(
        "convert",
        "--config",
        str(_config_file(tmp_path)),
        "--inputs",
        str(jagged_file),
        "--output",
        str(locked / "out.h5"),
    )
    _check_failure(proc, 9, "not writable")


def test_unwritable_output(tmp_path, jagged_file, cli):
    # A regular file where the output's directory should be: unwritable even for root.
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    proc = cli(
        "convert",
        "--config",
        str(_config_file(tmp_path)),
        "--inputs",
        str(jagged_file),
        "--output",
        str(blocker / "out.h5"),
    )
    _check_failure(proc, 9, "blocker")


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"max_objects": 0}, ["data.max_objects", "greater than or equal to 1"]),
        ({"compression": "zip"}, ["data.compression"]),
        ({"sort_by": "energy"}, ["sort_by 'energy'"]),
        ({"colections": []}, ["data.colections", "Extra inputs"]),
        ({"selection": "__import__('os').system('true')"}, ["only these functions"]),
    ],
)
def test_bad_config_values(tmp_path, jagged_file, changes, words, cli):
    out = tmp_path / "out.h5"
    proc = cli(
        "convert",
        "--config",
        str(_config_file(tmp_path, **changes)),
        "--inputs",
        str(jagged_file),
        "--output",
        str(out),
    )
    _check_failure(proc, 2, "job.yaml", *words, output=out)


def test_invalid_yaml(tmp_path, jagged_file, cli):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("data: [unclosed\n")
    proc = cli("convert", "--config", str(cfg), "--inputs", str(jagged_file), "--output", str(tmp_path / "o.h5"))
    _check_failure(proc, 2, "not valid YAML")


def test_success_leaves_only_the_output(tmp_path, jagged_file):
    out = tmp_path / "out.h5"
    proc = run_payload(
        "convert", "--config", str(_config_file(tmp_path)), "--inputs", str(jagged_file), "--output", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml", "out.h5"]
    # Not a TTY: progress is plain log lines, no carriage returns.
    assert "\r" not in proc.stderr
    assert "1000 events" in proc.stderr
