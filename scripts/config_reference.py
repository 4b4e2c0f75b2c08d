"""Write docs/config.md, the configuration reference, and the JSON schemas of the on-disk contracts
(docs/schemas/config.schema.json, metrics.schema.json) from the models themselves.

Every field of ``payload.config.JobConfig`` and the sections under it: its dotted name, type, default
and description.  Descriptions are the ``#:`` comment lines above a field in payload/config.py (or
the comment at the end of its line); sections are described by their class docstrings.

    python scripts/config_reference.py            # rewrite them
    python scripts/config_reference.py --check    # exit 1 when one is out of date
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import sys
import tokenize
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "payload" / "config.py"
TARGET = REPO / "docs" / "config.md"


def field_comments(source: str) -> dict[tuple[str, str], str]:
    """(class, field) -> its comment text, from ``#:`` lines above the field or a comment after it."""
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string
    out = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            above, line = [], item.lineno - 1
            while comments.get(line, "").lstrip().startswith("#:") and line not in range(
                item.lineno, item.end_lineno + 1
            ):
                above.insert(0, comments[line].lstrip()[2:].strip())
                line -= 1
            trailing = comments.get(item.end_lineno, "")
            text = " ".join(above) or trailing.lstrip("# ").strip()
            out[(node.name, item.target.id)] = text.replace("``", "`")
    return out


def type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value, default=str)}`"


def nested_models(annotation) -> list[type[BaseModel]]:
    """The config sections a field holds (directly, in a list or dict, optional, or one of a union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [found for arg in typing.get_args(annotation) for found in nested_models(arg)]


def render() -> str:
    from payload.config import JobConfig

    comments = field_comments(SOURCE.read_text())
    lines = [
        "# Configuration reference",
        "",
        "Generated from `payload/config.py` by `python scripts/config_reference.py`; "
        "`tests/test_docs.py` fails when it is out of date. How to write a job config: "
        "[configuration.md](configuration.md).",
        "",
    ]
    queue: list[tuple[str, type[BaseModel]]] = [("", JobConfig)]
    seen = set()
    while queue:
        prefix, model = queue.pop(0)
        if (prefix, model) in seen:
            continue
        seen.add((prefix, model))
        kind = model.model_fields.get("type")
        tags = typing.get_args(kind.annotation) if kind is not None else ()
        tag = f", `{prefix}.type: {tags[0]}`" if len(tags) == 1 else ""
        lines += [f"## `{prefix or 'job'}` ({model.__name__}{tag})", ""]
        doc = " ".join((model.__doc__ or "").split())
        if doc and model.__doc__ != BaseModel.__doc__:
            lines += [doc, ""]
        lines += ["| field | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            dotted = f"{prefix}.{name}" if prefix else name
            text = comments.get((model.__name__, name)) or next(
                (comments[(base.__name__, name)] for base in model.__mro__ if comments.get((base.__name__, name))), ""
            )
            children = nested_models(field.annotation)
            if children and not text:
                text = f"a section: `{dotted}` below"
            lines.append(f"| `{dotted}` | {type_name(field.annotation)} | {default_text(field)} | {text} |")
            suffix = "[]" if typing.get_origin(field.annotation) in (list, dict) else ""
            queue += [(dotted + suffix, child) for child in children]
        lines.append("")
    return "\n".join(lines)


def _without_const_types(node):
    """The schema without the ``"type"`` newer pydantic releases add beside a ``"const"`` (a
    literal): redundant, and dropped so that every allowed pydantic writes the same file."""
    if isinstance(node, dict):
        return {k: _without_const_types(v) for k, v in node.items() if not (k == "type" and "const" in node)}
    if isinstance(node, list):
        return [_without_const_types(v) for v in node]
    return node


def schemas() -> dict[Path, str]:
    """docs/schemas/*.schema.json: the job config (``config.yaml`` in every output) and ``metrics.json``."""
    from payload.config import JobConfig
    from payload.results.schema import Metrics

    out = {}
    for name, model in (("config", JobConfig), ("metrics", Metrics)):
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **model.model_json_schema()}
        schema = _without_const_types(schema)
        out[REPO / "docs" / "schemas" / f"{name}.schema.json"] = json.dumps(schema, indent=1, sort_keys=True) + "\n"
    return out


def outputs() -> dict[Path, str]:
    return {TARGET: render(), **schemas()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/config.md is out of date")
    args = parser.parse_args()
    stale = [path for path, text in outputs().items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(REPO)} is out of date: run python scripts/config_reference.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
