"""Conversion on real ROOT files, checked against computations independent of payload.ingest.convert."""

from __future__ import annotations

import json

import awkward as ak
import h5py
import numpy as np
import pytest
import uproot
from conftest import JAGGED_CONFIG, expected_objects, make_events, write_jagged_root

from payload.config import parse_config
from payload.ingest.convert import convert
from payload.ingest.h5layout import json_attr, names, open_event_file


def test_padded_objects_match_independent_loop(tmp_path, jagged_file, jagged_events, jagged_config):
    out = tmp_path / "out.h5"
    result = convert(jagged_config, str(jagged_file), out, progress=False)
    n = len(jagged_events["met"])
    assert result.events == n
    with open_event_file(out) as f:
        objects, n_obj = f["objects"][:], f["n_objects"][:]
        assert names(f["objects"]) == ["pt", "eta", "phi", "m", "type"]
        assert objects.shape == (n, 8, 5)
        for i in range(n):
            exp = np.array(expected_objects(jagged_events, 8, i), dtype=np.float32)
            assert n_obj[i] == len(exp)
            np.testing.assert_array_equal(objects[i, : len(exp)], exp)
            assert not objects[i, len(exp) :].any(), "padding must be zero"
        np.testing.assert_array_equal(f["weights"][:], np.float32(jagged_events["w"]))
        np.testing.assert_array_equal(f["spectators"][:, 0], np.float32(jagged_events["ht"]))
        assert names(f["spectators"]) == ["HT"]
        np.testing.assert_array_equal(f["events"][:, 0], [len(j) for j in jagged_events["jet"]])
        np.testing.assert_array_equal(f["entry"][:], np.arange(n))
        assert json_attr(f, "source_files") == [str(jagged_file)]
        stats = json_attr(f, "stats")
        total = sum(len(j) + len(l) + 1 for j, l in zip(jagged_events["jet"], jagged_events["lep"]))
        assert stats["clipped_objects"] == total - int(n_obj.sum())
        assert stats["clipped_objects"] > 0, "the sample is built to need clipping"


def test_statistics_cover_real_objects_only(tmp_path, jagged_file, jagged_events, jagged_config):
    out = tmp_path / "out.h5"
    convert(jagged_config, str(jagged_file), out, progress=False)
    kept_pt, kept_eta = [], []
    for i in range(len(jagged_events["met"])):
        objs = expected_objects(jagged_events, 8, i)
        kept_pt += [np.float32(o[0]) for o in objs]
        kept_eta += [np.float32(o[1]) for o in objs]
    with open_event_file(out) as f:
        stats = json_attr(f, "stats")["objects"]
    pt = np.array(kept_pt, dtype=np.float64)
    assert stats["pt"]["count"] == len(pt)
    assert stats["pt"]["min"] == pytest.approx(pt.min())
    assert stats["pt"]["max"] == pytest.approx(pt.max())
    assert stats["pt"]["mean"] == pytest.approx(pt.mean(), rel=1e-7)  # float32 inputs
    assert stats["pt"]["std"] == pytest.approx(pt.std(), rel=1e-6)
    assert stats["pt"]["quantiles"]["0.5"] == pytest.approx(np.quantile(pt, 0.5))
    assert stats["eta"]["mean"] == pytest.approx(np.mean(kept_eta), abs=1e-6)
    # Padding zeros would drag the minimum pT to 0.
    assert stats["pt"]["min"] > 0


def test_chunk_size_does_not_change_output(tmp_path, jagged_file):
    outs = []
    for chunk in (100, 337, 100_000):
        raw = json.loads(json.dumps(JAGGED_CONFIG))
        raw["data"]["chunk_size"] = chunk
        out = tmp_path / f"c{chunk}.h5"
        convert(parse_config(raw), str(jagged_file), out, progress=False)
        outs.append(out)
    with h5py.File(outs[0]) as a:
        for other in outs[1:]:
            with h5py.File(other) as b:
                for key in ("objects", "n_objects", "weights", "spectators", "entry"):
                    np.testing.assert_array_equal(a[key][:], b[key][:])


def test_selection_keeps_entry_numbers(tmp_path, jagged_file, jagged_events):
    raw = json.loads(json.dumps(JAGGED_CONFIG))
    raw["data"]["selection"] = "njet >= 4 and (met > 50 or any(jet_pt > 400))"
    out = tmp_path / "sel.h5"
    convert(parse_config(raw), str(jagged_file), out, progress=False)
    expected = [
        i
        for i in range(len(jagged_events["met"]))
        if len(jagged_events["jet"][i]) >= 4
        and (np.float32(jagged_events["met"][i]) > 50 or any(np.float32(j[0]) > 400 for j in jagged_events["jet"][i]))
    ]
    with open_event_file(out) as f:
        np.testing.assert_array_equal(f["entry"][:], expected)
        for row, i in enumerate(expected[:50]):
            exp = np.array(expected_objects(jagged_events, 8, i), dtype=np.float32)
            np.testing.assert_array_equal(f["objects"][row, : len(exp)], exp)
        prov = json_attr(f, "provenance")
        assert prov["sources"][0]["selected"] == len(expected)
        assert prov["sources"][0]["entries"] == len(jagged_events["met"])


def test_several_files_comma_list_and_mev(tmp_path):
    ev1, ev2 = make_events(50, seed=1), make_events(70, seed=2)
    f1 = write_jagged_root(tmp_path / "one.root", ev1)
    f2 = write_jagged_root(tmp_path / "two.root", ev2)
    raw = json.loads(json.dumps(JAGGED_CONFIG))
    raw["data"]["energy_unit"] = "MeV"
    raw["data"]["energy_features"] = ["pt", "m", "HT"]
    out = tmp_path / "both.h5"
    convert(parse_config(raw), f"{f1},{f2}", out, progress=False)
    with open_event_file(out) as f:
        assert json_attr(f, "source_files") == [str(f1), str(f2)]
        np.testing.assert_array_equal(f["file_index"][:], [0] * 50 + [1] * 70)
        np.testing.assert_array_equal(f["entry"][:], list(range(50)) + list(range(70)))
        # MeV -> GeV on energy features only; eta and type untouched.
        exp = np.array(expected_objects(ev2, 8, 3), dtype=np.float32)
        row = f["objects"][53, : len(exp)]
        np.testing.assert_allclose(row[:, 0], exp[:, 0] * 1e-3, rtol=1e-6)
        np.testing.assert_allclose(row[:, 3], exp[:, 3] * 1e-3, rtol=1e-6)
        np.testing.assert_array_equal(row[:, 1], exp[:, 1])
        np.testing.assert_array_equal(row[:, 4], exp[:, 4])
        np.testing.assert_allclose(f["spectators"][53, 0], np.float32(ev2["ht"][3]) * 1e-3, rtol=1e-6)


def test_nanoaod_counter_layout(tmp_path):
    """CMS NANOAOD style: nJet + Jet_pt[nJet] branches written by uproot with a counter."""
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 6, 300)
    pt = ak.unflatten(rng.uniform(15, 200, counts.sum()).astype(np.float32), counts)
    eta = ak.unflatten(rng.normal(size=counts.sum()).astype(np.float32), counts)
    path = tmp_path / "nano.root"
    with uproot.recreate(path) as f:
        f.mktree(
            "Events",
            {"Jet": ak.zip({"pt": pt, "eta": eta}).type.content, "MET_pt": np.float32},
            counter_name=lambda name: f"n{name}",
        )
        f["Events"].extend(
            {"Jet": ak.zip({"pt": pt, "eta": eta}), "MET_pt": rng.uniform(0, 100, 300).astype(np.float32)}
        )
    with uproot.open(path) as f:
        assert "nJet" in f["Events"].keys() and "Jet_pt" in f["Events"].keys()
    config = parse_config(
        {
            "data": {
                "tree": "Events",
                "collections": [{"name": "jets", "branches": {"pt": "Jet_pt", "eta": "Jet_eta"}}],
                "object_features": ["pt", "eta"],
                "max_objects": 4,
                "event_features": {"met": "MET_pt", "njet": "nJet"},
            }
        }
    )
    out = tmp_path / "nano.h5"
    convert(config, str(path), out, progress=False)
    with open_event_file(out) as f:
        objects, n_obj, events = f["objects"][:], f["n_objects"][:], f["events"][:]
    pts, etas = pt.to_list(), eta.to_list()
    for i in range(300):
        order = sorted(range(len(pts[i])), key=lambda k: -pts[i][k])[:4]
        assert n_obj[i] == len(order) == min(counts[i], 4)
        np.testing.assert_array_equal(objects[i, : len(order), 0], [pts[i][k] for k in order])
        np.testing.assert_array_equal(objects[i, : len(order), 1], [etas[i][k] for k in order])
    np.testing.assert_array_equal(events[:, 1], counts)


def test_scikit_hep_testdata_hzz(tmp_path):
    """A real public file (CMS open-data H->ZZ), NANOAOD-like NJet + Jet_Px[NJet] branches."""
    skhep_testdata = pytest.importorskip("skhep_testdata")
    path = skhep_testdata.data_path("uproot-HZZ.root")
    config = parse_config(
        {
            "data": {
                "tree": "events",
                "collections": [
                    {
                        "name": "jets",
                        "type_code": 1,
                        "branches": {"px": "Jet_Px", "py": "Jet_Py", "pz": "Jet_Pz", "e": "Jet_E"},
                    },
                    {
                        "name": "muons",
                        "type_code": 2,
                        "branches": {"px": "Muon_Px", "py": "Muon_Py", "pz": "Muon_Pz", "e": "Muon_E"},
                    },
                ],
                "object_features": ["px", "py", "pz", "e", "type"],
                "max_objects": 6,
                "sort_by": "e",
                "event_features": {"met_px": "MET_px", "met_py": "MET_py"},
                "weight": "EventWeight",
                "selection": "NMuon >= 2",
            }
        }
    )
    out = tmp_path / "hzz.h5"
    convert(config, path, out, progress=False)
    # Independent: numpy object arrays per event from uproot's numpy library, python-sorted.
    with uproot.open(path) as f:
        raw = f["events"].arrays(
            [
                "Jet_Px",
                "Jet_Py",
                "Jet_Pz",
                "Jet_E",
                "Muon_Px",
                "Muon_Py",
                "Muon_Pz",
                "Muon_E",
                "NMuon",
                "EventWeight",
                "MET_px",
            ],
            library="np",
        )
    selected = np.flatnonzero(raw["NMuon"] >= 2)
    with open_event_file(out) as f:
        objects, n_obj = f["objects"][:], f["n_objects"][:]
        assert len(objects) == len(selected) > 0
        np.testing.assert_array_equal(f["entry"][:], selected)
        np.testing.assert_array_equal(f["weights"][:], raw["EventWeight"][selected])
        np.testing.assert_array_equal(f["events"][:, 0], raw["MET_px"][selected])
    for row, i in enumerate(selected):
        objs = [
            (raw["Jet_Px"][i][k], raw["Jet_Py"][i][k], raw["Jet_Pz"][i][k], raw["Jet_E"][i][k], 1.0)
            for k in range(len(raw["Jet_E"][i]))
        ]
        objs += [
            (raw["Muon_Px"][i][k], raw["Muon_Py"][i][k], raw["Muon_Pz"][i][k], raw["Muon_E"][i][k], 2.0)
            for k in range(len(raw["Muon_E"][i]))
        ]
        objs = sorted(objs, key=lambda o: -o[3])[:6]
        assert n_obj[row] == len(objs)
        np.testing.assert_array_equal(objects[row, : len(objs)], np.array(objs, dtype=np.float32))


def test_reference_rntuple_samples(tmp_path, shared_samples):
    """The reference ttbar samples are RNTuples: leading jet pT and multiplicity as the README measures."""
    a, _ = shared_samples
    from payload.config import default_config_path, load_config

    out = tmp_path / "a.h5"
    result = convert(load_config(default_config_path()), str(a), out, progress=False)
    assert result.events == 40_000
    with uproot.open(a) as f:
        raw = f["nominal"].arrays(["jet_pt", "njets", "mjj"], library="np")
    with open_event_file(out) as f:
        objects = f["objects"][:]
        jets = objects[:, :, 4] == 1
        np.testing.assert_array_equal(jets.sum(axis=1), np.minimum(raw["njets"], 45))
        lead_jet = np.where(jets, objects[:, :, 0], -1).max(axis=1)
        np.testing.assert_array_equal(lead_jet, [max(p) for p in raw["jet_pt"]])
        np.testing.assert_array_equal(f["spectators"][:, 0], raw["mjj"])
        assert names(f["spectators"]) == ["mjj", "ptV", "dRjj"]
    # The sample README's measured mean jet multiplicity for A.
    assert raw["njets"].mean() == pytest.approx(4.66, abs=0.01)


def test_worker_processes_give_the_same_file(tmp_path):
    """Several tasks (files and basket ranges) through the process pool == in-process, byte for byte."""
    from payload.ingest.samples import write_sample

    a = write_sample(tmp_path / "a.root", 3000, "A", batch=700)
    b = write_sample(tmp_path / "b.root", 2000, "B", batch=900)
    from payload.config import default_config_path, load_config

    config = load_config(default_config_path())
    config.data.chunk_size = 1000
    one = convert(config, f"{a},{b}", tmp_path / "one.h5", progress=False, workers=1)
    two = convert(config, f"{a},{b}", tmp_path / "two.h5", progress=False, workers=2)
    assert one.provenance["workers"] == 1 and two.provenance["workers"] == 2
    with h5py.File(tmp_path / "one.h5") as x, h5py.File(tmp_path / "two.h5") as y:
        for key in ("objects", "n_objects", "events", "spectators", "weights", "file_index", "entry"):
            np.testing.assert_array_equal(x[key][:], y[key][:])
        np.testing.assert_array_equal(x["entry"][:], list(range(3000)) + list(range(2000)))
    for group in ("objects", "spectators"):
        for name, s in one.stats[group].items():
            for key in ("count", "min", "max"):
                assert s[key] == two.stats[group][name][key]
            assert s["mean"] == pytest.approx(two.stats[group][name]["mean"], rel=1e-9)


def test_each_input_is_opened_once_and_closed_when_the_next_begins(tmp_path, monkeypatch):
    """In-process conversion reads the files its check pass opened (a second open is a round trip
    for root://) and holds one file open at a time while reading."""
    import payload.ingest.convert as conv

    files = [write_jagged_root(tmp_path / f"f{i}.root", make_events(40 + i, seed=i)) for i in range(3)]
    opened = []

    def counting_open(location, tree):
        opened.append(conv_open(location, tree))
        return opened[-1]

    conv_open = conv.open_tree
    monkeypatch.setattr(conv, "open_tree", counting_open)
    first_block_of = {}
    real_build = conv._Worker.build

    def build(self, task, start, stop, arrays):
        # When a file's first chunk is built, every earlier file is closed already.
        first_block_of.setdefault(task.file_index, [t.file.closed for t in opened[: task.file_index]])
        return real_build(self, task, start, stop, arrays)

    monkeypatch.setattr(conv._Worker, "build", build)
    result = convert(
        parse_config(JAGGED_CONFIG), ",".join(map(str, files)), tmp_path / "out.h5", progress=False, workers=1
    )
    assert result.events == 40 + 41 + 42
    assert [t.location for t in opened] == [str(f) for f in files]
    assert first_block_of == {0: [], 1: [True], 2: [True, True]}
    assert all(t.file.closed for t in opened)


def test_progress_on_a_terminal(tmp_path, jagged_file):
    """On a TTY the progress line is redrawn in place and shows the rate."""
    import sys

    from tests.helpers import run_in_pty

    code, text = run_in_pty(
        [
            sys.executable,
            "-m",
            "payload",
            "convert",
            "--inputs",
            str(jagged_file),
            "--output",
            str(tmp_path / "o.h5"),
            "--config",
            str(_write_config(tmp_path)),
        ],
        timeout=120,
    )
    assert code == 0
    assert "events/s" in text and "1,000/1,000 events" in text


def _write_config(tmp_path):
    import yaml

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(JAGGED_CONFIG))
    return path
