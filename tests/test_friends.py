"""Friend trees: per input file, a ROOT tree whose entries line up one to one with the input tree's.

Checked the way an analysis uses them: the input tree and its friend read side by side with uproot
(what ROOT's AddFriend does: entry i of one with entry i of the other, which needs equal entry
counts), the selection and outlier flags recomputed from the input's own branches, and every scored
entry's weight and score equal to the row of ``predictions.h5`` with that (sample, file, entry).
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import uproot
import yaml

from payload.config import load_config
from payload.ingest.samples import write_sample
from payload.job import evaluate_job, train_job
from payload.results import friends
from payload.results.merge import merge
from tests.helpers import DATA, quick_job_config

SELECTION = "njets >= 4"
OUTLIER_PT = 400.0


def _config(tmp_path):
    path = quick_job_config(tmp_path / "job.yaml")
    raw = yaml.safe_load(path.read_text())
    raw["data"]["selection"] = SELECTION
    raw["scaling"]["outliers"] = {"pt": OUTLIER_PT}
    path.write_text(yaml.safe_dump(raw))
    return path


def _expected_flags(location: str) -> tuple[np.ndarray, np.ndarray]:
    """(selected, outlier) per entry, from the input's own branches."""
    b = uproot.open(location)["nominal"].arrays(["njets", "jet_pt", "lep_pt", "met"], library="np")
    selected = b["njets"] >= 4
    highest = np.array([max([*jets, *leps, met]) for jets, leps, met in zip(b["jet_pt"], b["lep_pt"], b["met"])])
    return selected, highest > OUTLIER_PT


def check_friends(output, inputs: dict[int, list[str]]) -> None:
    with h5py.File(output / "predictions.h5") as f:
        pred = {k: f[k][:] for k in ("sample", "file_index", "entry", "score", "nn_weight", "split", "outlier")}
        files = json.loads(f.attrs["source_files"])
    listed = {e["input"]: e for e in json.loads((output / "manifest.json").read_text())["friends"]}
    for sample, locations in inputs.items():
        assert files[str(sample)] == locations
        for index, location in enumerate(locations):
            entry = listed[location]
            path = output / "friends" / entry["file"]
            assert entry["file"] == location.rsplit("/", 1)[-1].replace(".root", ".friend.root")
            tree = uproot.open(location)["nominal"]
            friend = uproot.open(path)[friends.FRIEND_TREE]
            assert friend.num_entries == tree.num_entries == entry["entries"]
            f = friend.arrays(library="np")
            selected, outlier = _expected_flags(location)
            assert 0 < selected.sum() < len(selected), "the selection must reject some entries for this test"
            np.testing.assert_array_equal(f["selected"], selected)
            assert entry["scored"] == selected.sum()
            np.testing.assert_array_equal(f["outlier"][selected], outlier[selected])
            rows = (pred["sample"] == sample) & (pred["file_index"] == index)
            entries = pred["entry"][rows]
            np.testing.assert_array_equal(np.sort(entries), np.flatnonzero(selected))
            for key in ("score", "nn_weight", "split"):
                np.testing.assert_array_equal(f[key][entries], pred[key][rows])
            assert np.all(f["nn_weight"][~selected] == 1) and np.all(f["split"][~selected] == -1)
            assert np.all(f["nn_weight"][f["outlier"]] == 1)
            if sample == 0:
                assert f["nn_weight"][selected & ~f["outlier"]].std() > 0  # real weights, not the default


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("friends")
    inputs = {0: [str(DATA / "sample_A.root")], 1: [str(DATA / "sample_B.root")]}
    train_job(load_config(_config(tmp)), inputs[0][0], inputs[1][0], tmp / "train", progress=False)
    return tmp, inputs


@pytest.mark.slow
def test_friends_of_a_training_job_line_up_with_their_inputs(trained):
    tmp, inputs = trained
    check_friends(tmp / "train", inputs)
    # The job's metrics.json is what its published schema and typed model say.
    import jsonschema

    from payload.results.schema import read_metrics

    raw = json.loads((tmp / "train" / "metrics.json").read_text())
    jsonschema.validate(raw, json.loads((DATA.parents[1] / "docs" / "schemas" / "metrics.schema.json").read_text()))
    metrics = read_metrics(tmp / "train" / "metrics.json")
    assert metrics.mode == "train" and metrics.test.auc == raw["test"]["auc"] > 0.5
    assert metrics.headline("best_loss") == raw["training"]["best_loss"]


@pytest.mark.slow
def test_friends_of_an_evaluation_fan_out_merge(trained):
    tmp, _ = trained
    jobs = []
    for j in range(2):
        a = str(write_sample(tmp / f"new_A_{j}.root", 1500 + 500 * j, "A", batch=700))
        b = str(write_sample(tmp / f"new_B_{j}.root", 1200, "B", batch=700))
        out = tmp / f"eval_{j}"
        evaluate_job(tmp / "train", a, b, out, progress=False)
        check_friends(out, {0: [a], 1: [b]})
        with uproot.open(out / "friends" / f"new_A_{j}.friend.root") as f:
            split = f[friends.FRIEND_TREE]["split"].array(library="np")
        assert set(np.unique(split)) == {-1, 2}  # files the model never saw: every scored event is a test event
        jobs.append(out)
    summary = merge([str(j) for j in jobs], tmp / "merged")
    merged = sorted(p.name for p in (tmp / "merged" / "friends").iterdir())
    assert merged == sorted(f"new_{s}_{j}.friend.root" for s in "AB" for j in range(2))
    assert {e["file"] for e in summary["friends"]["files"]} == set(merged) and not summary["friends"]["in_several_jobs"]
    for name in merged:
        job = jobs[int(name.split("_")[2][0])]
        assert (tmp / "merged" / "friends" / name).read_bytes() == (job / "friends" / name).read_bytes()

    # A friend file that no longer matches its job's manifest is reported and not merged; the
    # job's other outputs still are.
    bad = tmp / "bad"
    shutil.copytree(jobs[1], bad)
    with open(bad / "friends" / "new_A_1.friend.root", "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\0" * 100)
    summary = merge([str(jobs[0]), str(bad)], tmp / "merged_bad")
    assert summary["merged"] == ["bad", "eval_0"] and not summary["skipped"]
    assert summary["friends"]["damaged"] == [{"file": "new_A_1.friend.root", "job": "bad"}]
    assert not (tmp / "merged_bad" / "friends" / "new_A_1.friend.root").exists()
    assert (tmp / "merged_bad" / "friends" / "new_B_1.friend.root").exists()


def test_friends_are_the_same_when_memory_allows_one_file_at_a_time(tmp_path, monkeypatch):
    """Files are filled in groups of at most ENTRY_BUDGET entries, one pass each: the result does not
    depend on the grouping.  Predictions are written out of file order, as parallel conversion may."""
    path = tmp_path / "predictions.h5"
    rng = np.random.default_rng(1)
    sizes = {"0": [500, 300], "1": [400]}
    rows = [(int(s), i, e) for s, ns in sizes.items() for i, n in enumerate(ns) for e in range(n) if e % 3]
    order = rng.permutation(len(rows))
    with h5py.File(path, "w") as f:
        for k, col in zip(("sample", "file_index", "entry"), np.array(rows)[order].T):
            f[k] = col
        n = len(rows)
        f["score"], f["nn_weight"] = rng.random(n).astype(np.float32), rng.random(n).astype(np.float32) + 0.5
        f["split"], f["outlier"] = rng.integers(0, 3, n).astype(np.int8), rng.random(n) < 0.1
        f.attrs["source_files"] = json.dumps({"0": ["/d/x.root", "/e/x.root"], "1": ["root://h//y.root"]})
        f.attrs["source_entries"] = json.dumps(sizes)
    whole = friends.write_friends(path, tmp_path / "whole")
    monkeypatch.setattr(friends, "ENTRY_BUDGET", 350)
    grouped = friends.write_friends(path, tmp_path / "grouped")
    assert [e["file"] for e in whole] == ["x.friend.root", "x.2.friend.root", "y.friend.root"]
    assert [{**e, "adler32": 0} for e in whole] == [{**e, "adler32": 0} for e in grouped]  # ROOT files hold a date
    for entry in whole:
        with (
            uproot.open(tmp_path / "whole" / entry["file"]) as a,
            uproot.open(tmp_path / "grouped" / entry["file"]) as b,
        ):
            x, y = (f[friends.FRIEND_TREE].arrays(library="np") for f in (a, b))
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    with uproot.open(tmp_path / "grouped" / "x.2.friend.root") as f:
        t = f[friends.FRIEND_TREE].arrays(library="np")
    assert len(t["score"]) == 300 and np.array_equal(t["selected"], np.arange(300) % 3 != 0)
    rows = (np.array(rows)[order][:, 0] == 0) & (np.array(rows)[order][:, 1] == 1)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(t["nn_weight"][f["entry"][:][rows]], f["nn_weight"][:][rows])
