from __future__ import annotations

import pytest
from conftest import JAGGED_CONFIG

from payload.config import config_to_dict, default_config_path, dump_config, load_config, parse_config
from payload.errors import ConfigError


def test_defaults_are_filled_and_round_trip(tmp_path):
    config = parse_config(JAGGED_CONFIG)
    assert config.data.compression == "blosc-lz4"
    assert config.data.object_features == ["pt", "eta", "phi", "m", "type"]
    assert config.data.event_features == {"njet": "njet"}  # list shorthand
    path = tmp_path / "resolved.yaml"
    dump_config(config, path)
    again = load_config(path)
    assert again == config
    assert config_to_dict(again)["data"]["max_objects"] == 8


def test_bundled_default_config_is_valid():
    config = load_config(default_config_path())
    assert [c.name for c in config.data.collections] == ["jets", "leptons", "met"]
    assert config.data.max_objects == 45
    assert config.data.collections[2].branches["eta"] == 0.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"collections": []}, "collections"),
        ({"collections": [{"name": "j", "branches": {"pt": "a"}}]}, "no branch for feature(s) ['eta', 'phi', 'm']"),
        (
            {"collections": [{"name": "j", "branches": {"pt": "a", "eta": "b", "phi": "c", "m": "d", "q": "e"}}]},
            "not in object_features",
        ),
        (
            {
                "collections": [{"name": "j", "branches": {"pt": "a"}}, {"name": "j", "branches": {"pt": "b"}}],
                "object_features": ["pt"],
            },
            "unique",
        ),
        (
            {
                "collections": [{"name": "j", "branches": {"pt": "a"}}],
                "object_features": ["pt"],
                "event_features": ["x"],
                "spectators": ["x"],
            },
            "both as event feature and spectator",
        ),
        (
            {"collections": [{"name": "j", "branches": {"pt": "a"}}], "object_features": ["pt"], "selection": "a >"},
            "data.selection",
        ),
        (
            {"collections": [{"name": "j", "branches": {"pt": "a"}}], "object_features": ["pt"], "energy_unit": "TeV"},
            "data.energy_unit",
        ),
    ],
)
def test_invalid_configs_name_the_field(data, message):
    with pytest.raises(ConfigError) as err:
        parse_config({"data": data}, "job.yaml")
    assert message in err.value.message
    assert err.value.message.startswith("config job.yaml:")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_mev_scale_only_on_energy_features():
    raw = {"data": {**JAGGED_CONFIG["data"], "energy_unit": "MeV"}}
    data = parse_config(raw).data
    assert data.energy_scale("pt") == 1e-3
    assert data.energy_scale("eta") == 1.0


def test_kfold_test_splits_are_disjoint_and_cover_every_event():
    import numpy as np

    from payload.splits import TEST, TRAIN, VALIDATION, assign

    entry = np.arange(200_000)
    keys = np.full(len(entry), 12345)
    tests = []
    for fold in range(5):
        config = parse_config({**JAGGED_CONFIG, "split": {"folds": 5, "fold": fold, "validation": 0.2}})
        code = assign(
            entry,
            keys,
            config.split.seed,
            config.split.train,
            config.split.validation,
            config.split.folds,
            config.split.fold,
        )
        tests.append(code == TEST)
        assert abs((code == TEST).mean() - 0.2) < 0.005
        # validation is 20 % of the other four folds
        assert abs((code == VALIDATION).sum() / (code != TEST).sum() - 0.2) < 0.005
        assert (code == TRAIN).sum() > 0.6 * len(entry)
    assert (np.sum(tests, axis=0) == 1).all()  # every event is test in exactly one fold


@pytest.mark.parametrize("split", [{"folds": 1}, {"folds": 3, "fold": 3}])
def test_kfold_bad_values(split):
    with pytest.raises(ConfigError, match="split"):
        parse_config({**JAGGED_CONFIG, "split": split})


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"task": "autoencode"}, "task autoencode and model.type autoencoder go together"),
        ({"model": {"type": "autoencoder"}}, "task autoencode and model.type autoencoder go together"),
        ({"task": "autoencode", "model": {"type": "autoencoder", "dense_connections": True}}, "bypass the bottleneck"),
        (
            {"model": {"embeddings": {"njets": {"values": [1, 2]}}}},
            "model.embeddings names unknown feature(s) ['njets']",
        ),
        ({"model": {"type": "gcn"}}, "model.graph.mother 'mother' is not one of object_features"),
        (
            {
                "model": {"type": "dense", "flatten_objects": True},
                "training": {"augment": ["phi_rotation"]},
                "scaling": {"transforms": {"phi": "log"}},
            },
            "augmentation needs object feature(s) ['phi'] without a transform",
        ),
        ({"model": {"type": "dense"}, "training": {"augment": ["phi_rotation"]}}, "needs model.flatten_objects"),
        (
            {"task": "classify", "training": {"decorrelation": {"features": ["mbc"]}}},
            "training.decorrelation.features ['mbc'] are not spectators or event features",
        ),
        ({"training": {"decorrelation": {"features": ["HT"]}}}, "training.decorrelation is for task classify"),
        ({"scaling": {"method": "fixed", "fixed": {"pt": [0, 0]}}}, "scaling.fixed.pt.1"),
        ({"training": {"data_parallel": "sometimes"}}, "training.data_parallel"),
    ],
)
def test_invalid_zoo_settings_name_the_field(sections, message):
    with pytest.raises(ConfigError) as err:
        parse_config({**JAGGED_CONFIG, **sections}, "job.yaml")
    assert message in err.value.message


def test_categorical_inputs_are_never_scaled():
    raw = {**JAGGED_CONFIG, "model": {"embeddings": {"njet": {"values": [0, 1, 2]}}}}
    assert "njet" in parse_config(raw).scaling.passthrough
    graph = {
        **JAGGED_CONFIG,
        "data": {**JAGGED_CONFIG["data"], "sort_by": None},
        "model": {"type": "gcn", "graph": {"mother": "m"}},
    }
    assert "m" in parse_config(graph).scaling.passthrough


def test_configs_without_a_version_load_as_version_one(tmp_path):
    """Every bundle written before the format had a version (their config.yaml has none) still loads."""
    import yaml

    raw = config_to_dict(load_config(default_config_path()))
    assert raw["version"] == 2
    del raw["version"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(tmp_path / "old.yaml")
    assert config.version == 2 and config_to_dict(config) == {**raw, "version": 2}


@pytest.mark.parametrize(
    ("version", "words"), [(3, "newer grid-payload"), (0, "not a config version"), ("2", "not a config version")]
)
def test_config_versions_that_cannot_be_read(version, words):
    raw = config_to_dict(load_config(default_config_path()))
    with pytest.raises(ConfigError, match=words):
        parse_config({**raw, "version": version})


def test_a_migration_step_brings_an_old_config_to_today(monkeypatch):
    """The mechanism a format change uses: version 2 configs named the learning rate `lr`; a
    migration renames it and the config loads as the current version."""
    from payload import config as module

    def from_v2(raw):
        training = dict(raw.get("training", {}))
        if "lr" in training:
            training["learning_rate"] = training.pop("lr")
        return {**raw, "training": training}

    raw = config_to_dict(load_config(default_config_path()))
    raw["training"]["lr"] = raw["training"].pop("learning_rate") * 3
    monkeypatch.setattr(module, "CONFIG_VERSION", 3)
    monkeypatch.setitem(module.MIGRATIONS, 2, from_v2)
    migrated = module.migrate(raw)
    assert migrated["version"] == 3 and "lr" not in migrated["training"]
    assert migrated["training"]["learning_rate"] == raw["training"]["lr"]
