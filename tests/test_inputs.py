from __future__ import annotations

from pathlib import Path

import pytest

from payload.errors import InputMissingError
from payload.ingest.download import is_did
from payload.ingest.inputs import expand_inputs


def test_panda_comma_list_keeps_order_and_drops_duplicates(tmp_path):
    for name in ("b.root", "a.root"):
        (tmp_path / name).write_bytes(b"")
    b, a = str(tmp_path / "b.root"), str(tmp_path / "a.root")
    assert expand_inputs(f"{b},{a},{b}") == [b, a]
    assert expand_inputs([f"{b}, {a}"]) == [b, a]


def test_globs_directories_and_urls(tmp_path):
    for name in ("x1.root", "x2.root", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    url = "root://eosatlas.cern.ch//eos/atlas/file.root"
    files = expand_inputs([str(tmp_path / "x*.root"), url, str(tmp_path)])
    assert files == [str(tmp_path / "x1.root"), str(tmp_path / "x2.root"), url]
    assert expand_inputs(f"file://{tmp_path / 'x1.root'}") == [str(tmp_path / "x1.root")]


@pytest.mark.parametrize(
    ("spec", "message"), [("missing.root", "no such file"), ("*.nothing", "no file matches"), (",", "no input files")]
)
def test_missing_inputs(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputMissingError, match=message):
        expand_inputs(spec)


def test_directory_without_root_files(tmp_path):
    with pytest.raises(InputMissingError, match=r"holds no \.root file"):
        expand_inputs(str(tmp_path))


def test_rucio_dids_are_told_from_paths_and_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "odd:name.root").write_bytes(b"")
    assert is_did("user.jdoe:user.jdoe.ttbar_A.v1") and is_did("mc23_13p6TeV:mc23_13p6TeV.601229.DAOD_PHYS.e8514")
    assert not is_did("odd:name.root")  # an existing file wins
    assert not is_did("root://host//a.root") and not is_did("a.root") and not is_did("/abs/path:x")


@pytest.mark.slow
def test_odd_file_names_are_files_not_patterns_or_lists(tmp_path):
    """Inputs are resolved once: a directory holding run[1].root, x,y.root and a*b.root gives those
    three files to the whole job (they used to be expanded again, as a pattern and a list)."""
    import json
    import shutil

    from conftest import REPO, run_payload
    from helpers import quick_job_config

    data = REPO / "payload" / "resources"
    names = ["a*b.root", "run[1].root", "x,y.root"]
    directory = tmp_path / "in"
    directory.mkdir()
    for name in names:
        shutil.copyfile(data / "sample_A.root", directory / name)
    assert expand_inputs(str(directory)) == [str(directory / n) for n in names]
    assert expand_inputs(str(directory / "run[1].root")) == [str(directory / "run[1].root")]
    out = tmp_path / "out"
    proc = run_payload(
        "run",
        "-q",
        "--primary",
        str(directory),
        "--secondary",
        str(data / "sample_B.root"),
        "--config",
        str(quick_job_config(tmp_path / "job.yaml")),
        "--output",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [Path(i["location"]).name for i in manifest["inputs"]["primary"]] == names
