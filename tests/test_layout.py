"""The package layout follows the data flow: ``payload.ingest`` (inputs to event files) -> ``payload.learn``
(event files to a model) -> ``payload.results`` (a model judged and packaged), with the job, the CLI and
the shared pieces (config, errors, atomic writes, progress) at the top.  No import runs upward, and every
``payload`` import in the repository names a module that exists (lazy ones inside functions included,
which importing the package would not reach)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from conftest import REPO

#: Position of each stage in the data flow; a module may import its own stage and earlier ones.
STAGES = {"ingest": 0, "learn": 1, "results": 2}


def _imports(path: Path) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, module, names) of every absolute import of ``path``, wherever it sits."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, ()) for a in node.names]
    return out


def test_no_import_runs_against_the_data_flow():
    upward = []
    for path in sorted((REPO / "payload").rglob("*.py")):
        stage = path.relative_to(REPO / "payload").parts[0]
        if stage not in STAGES:
            continue
        for line, module, names in _imports(path):
            parts = module.split(".")
            targets = [parts[1]] if parts[0] == "payload" and len(parts) > 1 else []
            if module == "payload":
                targets = list(names)
            upward += [
                f"{path.relative_to(REPO)}:{line} imports {module}"
                for t in targets
                if t in STAGES and STAGES[t] > STAGES[stage]
            ]
    assert not upward, "imports against the data flow:\n" + "\n".join(upward)


def test_every_payload_import_in_the_repository_resolves():
    missing = []
    for folder in ("payload", "submit", "tests", "benchmarks", "scripts"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for line, module, names in _imports(path):
                if module.split(".")[0] not in ("payload", "submit"):
                    continue
                if importlib.util.find_spec(module) is None:
                    missing.append(f"{path.relative_to(REPO)}:{line}: no module {module}")
                    continue
                imported = vars(importlib.import_module(module))
                is_package = hasattr(importlib.import_module(module), "__path__")
                for name in names:  # an attribute of the module, or a submodule imported by name
                    if name in imported or (is_package and importlib.util.find_spec(f"{module}.{name}")):
                        continue
                    missing.append(f"{path.relative_to(REPO)}:{line}: {module} has no {name}")
    assert not missing, "\n".join(missing)
