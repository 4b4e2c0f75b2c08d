from __future__ import annotations

import pytest

from payload.errors import InputMissingError
from payload.inputs import expand_inputs


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


@pytest.mark.parametrize("spec, message", [("missing.root", "no such file"), ("*.nothing", "no file matches"),
                                           (",", "no input files")])
def test_missing_inputs(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputMissingError, match=message):
        expand_inputs(spec)


def test_directory_without_root_files(tmp_path):
    with pytest.raises(InputMissingError, match="holds no .root file"):
        expand_inputs(str(tmp_path))
