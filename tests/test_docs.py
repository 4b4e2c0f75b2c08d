"""The documentation stays true: the generated configuration reference, the README's size and links."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _reference():
    spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_is_up_to_date_and_complete():
    from payload.config import JobConfig

    text = _reference().render()
    assert (REPO / "docs" / "config.md").read_text() == text, (
        "docs/config.md is out of date: run python scripts/config_reference.py"
    )
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert {row.split("`")[1] for row in rows} >= {name for name in JobConfig.model_fields}
    assert "| `training.keep` |" in text and "| `data.collections[].type_code` |" in text
    undocumented = [row.split("`")[1] for row in rows if row.rstrip().endswith("|  |")]
    assert not undocumented, f"fields without a #: comment in payload/config.py: {undocumented}"


def test_json_schemas_are_up_to_date_and_validate_real_files(tmp_path):
    """docs/schemas/ matches the models, and a real job's config.yaml and metrics.json validate."""
    import json

    import jsonschema
    import yaml

    from payload.config import config_to_dict, default_config_path, load_config

    reference = _reference()
    for path, text in reference.schemas().items():  # as JSON values: pydantic releases write 0 or 0.0
        assert json.loads(path.read_text()) == json.loads(text), (
            f"{path.name} is out of date: run python scripts/config_reference.py"
        )
    schema = json.loads((REPO / "docs" / "schemas" / "config.schema.json").read_text())
    config = config_to_dict(load_config(default_config_path()))
    jsonschema.validate(config, schema)
    bad = yaml.safe_load(yaml.safe_dump(config))
    bad["training"]["epochs"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    metrics = {
        "task": "reweight",
        "mode": "train",
        "warnings": [],
        "test": {"auc": 0.6, "loss": 0.68, "events": 10},
        "training": {"epochs_run": 3, "best_loss": 0.67, "files": {"primary": ["a.root"]}},
        "closure": {"verdict": {"closed": True, "beats_baseline": None, "messages": []}, "other": 1},
    }
    jsonschema.validate(metrics, json.loads((REPO / "docs" / "schemas" / "metrics.schema.json").read_text()))


def test_config_reference_sees_a_field_comment():
    comments = _reference().field_comments(
        "class A:\n    #: first line\n    #: second line\n    x: int = 1\n    y: int = 2  # trailing\n    z: int = 3\n"
    )
    assert comments == {("A", "x"): "first line second line", ("A", "y"): "trailing", ("A", "z"): ""}


def test_readme_is_short_and_its_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, broken
    # The README's test command is the one CI runs.
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in readme.splitlines()[4]
