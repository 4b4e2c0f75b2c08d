from __future__ import annotations

from pathlib import Path

import pytest
from conftest import JAGGED_CONFIG

from payload.config import CONFIG_VERSION, config_to_dict, default_config_path, dump_config, load_config, parse_config
from payload.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


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

    from payload.learn.splits import TEST, TRAIN, VALIDATION, assign

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
        (
            {"task": "autoencode", "model": {"type": "autoencoder", "dense_connections": True}},
            "model.dense_connections: not a setting of model.type autoencoder",
        ),
        ({"model": {"flatten_objects": True}}, "model.flatten_objects: not a setting of model.type deepsets"),
        ({"model": {"type": "deepset"}}, "does not match any of the expected tags: 'deepsets'"),
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
    assert raw["version"] == CONFIG_VERSION
    del raw["version"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(tmp_path / "old.yaml")
    assert config.version == CONFIG_VERSION and config_to_dict(config) == {**raw, "version": CONFIG_VERSION}


@pytest.mark.parametrize("name", sorted(p.name for p in (DATA / "config_v2").glob("*.yaml")))
def test_version_two_bundles_load_with_the_same_settings(name):
    """config.yaml as every version-2 output wrote it (all four model types' settings in one section,
    from the examples): it loads as today's version, its model the example's, nothing else changed."""
    import yaml

    old = yaml.safe_load((DATA / "config_v2" / name).read_text())
    config, today = load_config(DATA / "config_v2" / name), load_config(REPO / "examples" / name)
    assert old["version"] == 2 and config.version == CONFIG_VERSION
    # Settings added since keep their defaults, which are the old jobs' behaviour; the seed-000
    # example has since opted into one of them.
    since = {"bucket_by_multiplicity": False}
    assert not config.training.bucket_by_multiplicity
    assert config == today.model_copy(update={"training": today.training.model_copy(update=since)})
    assert set(config_to_dict(config)["model"]) < set(old["model"])  # the other types' settings dropped


def test_version_two_settings_of_another_model_type_are_named_not_dropped():
    """A hand-written version-2 (or unversioned) config that set another type's option to something
    other than its default: it had no effect then, and loading says so instead of dropping it."""
    raw = {**JAGGED_CONFIG, "version": 2, "model": {"type": "dense", "flatten_objects": True, "pooling": "mean"}}
    with pytest.raises(ConfigError, match=r"model\.pooling: not a setting of model\.type dense"):
        parse_config(raw)
    raw["model"]["pooling"] = "sum"  # the default, which every output dumped
    assert parse_config(raw).model.type == "dense"


@pytest.mark.parametrize(
    ("version", "words"),
    [(CONFIG_VERSION + 1, "newer grid-payload"), (0, "not a config version"), ("2", "not a config version")],
)
def test_config_versions_that_cannot_be_read(version, words):
    raw = config_to_dict(load_config(default_config_path()))
    with pytest.raises(ConfigError, match=words):
        parse_config({**raw, "version": version})


def test_a_migration_step_brings_an_old_config_to_today(monkeypatch):
    """The mechanism a format change uses: say the next version renames the learning rate `lr`; a
    migration from today's version renames it and the config loads as the next version."""
    from payload import config as module

    def rename(raw):
        training = dict(raw.get("training", {}))
        if "lr" in training:
            training["learning_rate"] = training.pop("lr")
        return {**raw, "training": training}

    raw = config_to_dict(load_config(default_config_path()))
    raw["training"]["lr"] = raw["training"].pop("learning_rate") * 3
    monkeypatch.setattr(module, "CONFIG_VERSION", CONFIG_VERSION + 1)
    monkeypatch.setitem(module.MIGRATIONS, CONFIG_VERSION, rename)
    migrated = module.migrate(raw)
    assert migrated["version"] == CONFIG_VERSION + 1 and "lr" not in migrated["training"]
    assert migrated["training"]["learning_rate"] == raw["training"]["lr"]
