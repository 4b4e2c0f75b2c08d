"""``metrics.json`` as a typed model: what every reader (the CLI's summary, the job report, merge,
hpo, the submission helpers) takes from a job's metrics, validated in one place.

The fields readers rely on are typed; the rest of the file (closure tables, per-variable results,
timing, ...) is kept as it is (``extra="allow"``).  ``HEADLINES`` are the scalar figures jobs are
compared on, each with the direction that is better.  The JSON schema is in docs/schemas/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from payload.errors import InputCorruptError


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TestMetrics(_Open):
    """Binary classification metrics on the test events (weighted)."""

    auc: float | None = None
    loss: float | None = None
    accuracy: float | None = None
    events: int | None = None


class TrainingSummary(_Open):
    epochs_run: int | None = None
    best_epoch: int | None = None
    best_loss: float | None = None
    resumed_from_epoch: int | None = None
    steps_per_epoch: int | None = None
    replicas: int | None = None
    #: Base names of the files trained on, per sample (evaluate mode scores every event of others).
    files: dict[str, list[str]] | None = None


class ClosureVerdict(_Open):
    closed: bool
    #: The network's total chi2/ndf at or below the baseline's (None without a baseline).
    beats_baseline: bool | None = None
    #: The same beyond the statistics: ``better``, ``level`` (within them) or ``worse``.
    against_baseline: Literal["better", "level", "worse"] | None = None
    messages: list[str] = []


class Closure(_Open):
    verdict: ClosureVerdict | None = None


class Metrics(_Open):
    """A job's ``metrics.json``."""

    task: Literal["reweight", "classify", "autoencode"] | None = None
    mode: Literal["train", "evaluate"] | None = None
    warnings: list[str] = []
    test: TestMetrics | None = None
    training: TrainingSummary | None = None
    closure: Closure | None = None
    closure_classifier_auc: float | None = None

    def headline(self, name: str) -> float | None:
        """One of ``HEADLINES``; None where the job has no such figure."""
        if name not in HEADLINES:
            raise KeyError(name)
        if name == "best_loss":
            return self.training.best_loss if self.training else None
        if name == "closure":
            return None if self.closure_classifier_auc is None else abs(self.closure_classifier_auc - 0.5)
        return getattr(self.test, name.removeprefix("test_"), None) if self.test else None


#: Figures jobs are compared on, and which direction is better.  ``closure``: the closure
#: classifier's distance from 0.5 (0 when reweighted primary and secondary look alike).
HEADLINES: dict[str, Literal["min", "max"]] = {
    "best_loss": "min",
    "test_loss": "min",
    "test_auc": "max",
    "test_accuracy": "max",
    "closure": "min",
}


def parse_metrics(raw: Any, source: str = "metrics.json") -> Metrics:
    try:
        return Metrics.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputCorruptError(f"{source}: {where}: {first['msg']}") from None


def read_metrics(path: str | Path) -> Metrics:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputCorruptError(f"{path}: unreadable ({err})") from None
    return parse_metrics(raw, str(path))
