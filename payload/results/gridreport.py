"""The job's summary for the grid: ``userJobMetadata.json`` in the working directory.

The PanDA pilot merges this file (it must stay under 1 MB) from the job's working directory into
its job report, so a task's jobs can be compared without downloading their outputs.  It carries
only scalars: status, exit code, the headline metrics, the output location.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from payload.atomic import write_json
from payload.results.schema import parse_metrics

FILENAME = "userJobMetadata.json"


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar headline metrics of a finished job."""
    m = parse_metrics(metrics)
    out: dict[str, Any] = {"task": m.task, "mode": m.mode}
    for key, value in (m.test.model_dump() if m.test else {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"test_{key}"] = value
    if m.training:
        out.update(
            {k: v for k in ("epochs_run", "best_epoch", "best_loss") if (v := getattr(m.training, k)) is not None}
        )
    if m.closure_classifier_auc is not None:
        out["closure_classifier_auc"] = m.closure_classifier_auc
    closure = (m.closure.model_extra or {}) if m.closure else {}
    for key, value in closure.get("event_level_total", {}).items():
        out[f"closure_chi2_ndf_{key}"] = value["chi2_ndf"]
    for key, value in closure.get("independent_test", {}).get("results", {}).items():
        out[f"independent_auc_{key}"] = value["auc"]
    if m.closure and m.closure.verdict:
        out["closure_closed"] = m.closure.verdict.closed
    out["warnings"] = len(m.warnings)
    return out


def device() -> dict[str, Any] | None:
    """The device the job ran on (backend, GPU count and names), once a backend is loaded; a job that
    failed before loading one (a config error) reports none rather than wait seconds to import it."""
    import sys

    if "keras" not in sys.modules:
        return None
    from payload.device import summary as device_summary

    return device_summary()


def write_report(
    directory: str | Path,
    exit_code: int,
    output: str | Path,
    metrics: dict[str, Any] | None = None,
    error: str | None = None,
) -> Path:
    report: dict[str, Any] = {
        "status": "success" if exit_code == 0 else "failed",
        "exit_code": exit_code,
        "output": str(output),
    }
    ran_on = device()
    if ran_on is not None:  # a GPU job that ran on the CPU shows here, in the pilot's job report
        report["device"] = ran_on
    if metrics is not None:
        report["metrics"] = summary(metrics)
    if error is not None:
        report["error"] = error[:2000]
    path = Path(directory) / FILENAME
    write_json(path, report)  # scalars and a clipped message: a few kB, far below the pilot's 1 MB limit
    return path
