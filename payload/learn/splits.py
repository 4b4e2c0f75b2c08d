"""Deterministic event splits: a hash of (source file name, entry, seed) decides train/val/test.

No index arrays are kept (memory does not grow with the dataset), the split does not depend on
chunking, file order or the number of jobs, and evaluation finds the same test events again.
"""

from __future__ import annotations

import zlib

import numpy as np

TRAIN, VALIDATION, TEST = 0, 1, 2
NAMES = {TRAIN: "train", VALIDATION: "validation", TEST: "test"}


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: uniform 64-bit output from sequential input."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def base_name(location: str) -> str:
    """A file's name without its directory or URL: what identifies it across staging areas."""
    return location.rstrip("/").rsplit("/", 1)[-1]


def file_key(location: str) -> int:
    """A per-file hash key from the file's base name, so staging paths and URLs do not matter."""
    return zlib.crc32(base_name(location).encode())


def uniform(entry: np.ndarray, file_keys: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per event, fixed by (file, entry, seed)."""
    h = _mix(entry.astype(np.uint64) ^ (file_keys.astype(np.uint64) << np.uint64(32)) ^ _mix(np.uint64(seed)))  # type: ignore[arg-type]
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def assign(
    entry: np.ndarray, file_keys: np.ndarray, seed: int, train: float, validation: float, folds: int = 0, fold: int = 0
) -> np.ndarray:
    """Split code (TRAIN, VALIDATION, TEST) per event.

    With ``folds`` >= 2 (k-fold), the test split is fold ``fold`` of ``folds`` equal hash ranges, so
    the k jobs' test splits are disjoint and cover every event once; ``validation`` is then the
    fraction of the remaining events kept for validation, and ``train`` is not used.
    """
    u = uniform(entry, file_keys, seed)
    if folds >= 2:
        lo, hi = fold / folds, (fold + 1) / folds
        rest = np.where(u >= hi, u - (hi - lo), u) / (1.0 - (hi - lo))  # the other folds, onto [0, 1)
        return np.where((u >= lo) & (u < hi), TEST, np.where(rest < validation, VALIDATION, TRAIN)).astype(np.int8)
    return np.where(u < train, TRAIN, np.where(u < train + validation, VALIDATION, TEST)).astype(np.int8)


#: Hash seed offset of the cross-fit parts (apart from the split's own hash).
_PARTS = 3


def part(entry: np.ndarray, file_keys: np.ndarray, seed: int, parts: int) -> np.ndarray:
    """Which of ``parts`` equal parts each event belongs to (cross-fitted ensemble members each
    leave one part of the training split out)."""
    return np.minimum((uniform(entry, file_keys, seed + _PARTS) * parts).astype(np.int64), parts - 1)
