"""An evaluation fan-out's jobs: the input files split into groups of a few files, one job each."""

from __future__ import annotations

from payload.errors import ConfigError


def file_groups(
    primary: list[str], secondary: list[str], per_job: int, secondary_per_job: int | None = None
) -> list[tuple[str, list[str], list[str]]]:
    """(name, primary files, secondary files) per job: ``per_job`` primary files each and, with a
    secondary sample, ``secondary_per_job`` of its files, so that both split into the same number of jobs."""
    if per_job < 1:
        raise ConfigError(f"--files-per-job {per_job}: must be at least 1")
    chunks = [primary[i : i + per_job] for i in range(0, len(primary), per_job)]
    if not secondary:
        return [(f"e{k:03d}", chunk, []) for k, chunk in enumerate(chunks)]
    if not secondary_per_job:
        raise ConfigError(
            "an evaluation with --secondary needs --secondary-files-per-job: how many secondary "
            "files each job gets beside its primary files"
        )
    others = [secondary[i : i + secondary_per_job] for i in range(0, len(secondary), secondary_per_job)]
    if len(others) != len(chunks):
        raise ConfigError(
            f"{len(primary)} primary files at {per_job} per job make {len(chunks)} jobs, "
            f"{len(secondary)} secondary files at {secondary_per_job} per job make {len(others)}: "
            "choose counts that split both samples into the same number of jobs"
        )
    return [(f"e{k:03d}", p, s) for k, (p, s) in enumerate(zip(chunks, others))]
