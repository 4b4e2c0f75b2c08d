"""User-facing errors and their exit codes.

Every error a user can fix (a bad path, a missing branch, a bad config value) is a ``PayloadError``:
the CLI prints its one-line message and exits with its code, without a traceback.  Codes stay below
255 because the PanDA pilot records the exit code modulo 255.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PayloadError(Exception):
    """Base class: a problem with the job's inputs, config or environment, not a bug."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(PayloadError):
    """The job config or a command-line value is invalid."""

    exit_code = 2


class InputMissingError(PayloadError):
    """An input file, glob or directory does not exist."""

    exit_code = 3


class InputCorruptError(PayloadError):
    """An input file exists but cannot be read as ROOT."""

    exit_code = 4


class MissingTreeError(PayloadError):
    """The configured tree (TTree or RNTuple) is not in an input file."""

    exit_code = 5


class MissingBranchError(PayloadError):
    """A configured branch is not in the tree."""

    exit_code = 6


class InconsistentDataError(PayloadError):
    """The data contradict the config, e.g. the branches of one collection have different counts."""

    exit_code = 7


class EmptyInputError(PayloadError):
    """No events to process: every tree is empty, or the selection rejected every event."""

    exit_code = 8


class OutputError(PayloadError):
    """The output location cannot be written."""

    exit_code = 9


class OutputBusyError(PayloadError):
    """Another job holds the output directory."""

    exit_code = 11


class TrainingError(PayloadError):
    """Training produced a non-finite loss: the weights are dead, nothing after it can be trusted."""

    exit_code = 12


class DeviceError(PayloadError):
    """The job asked for a GPU (``--require-gpu``) and the backend sees none: on the grid the site
    retries the job elsewhere instead of training on the CPU for hours."""

    exit_code = 13


class DatasetAccessError(PayloadError):
    """A Rucio DID cannot be resolved: no client, config or credentials, or the server refuses."""

    exit_code = 10


#: Exit code when the user interrupts (Ctrl-C / SIGINT), the shell convention 128 + 2.
EXIT_INTERRUPTED = 130
#: Exit code of an unexpected internal error (a bug: the traceback is printed).
EXIT_INTERNAL = 70


def one_line(err: BaseException, limit: int = 200) -> str:
    """An exception as one short line, for messages that name a file and say what to do."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}" if text else type(err).__name__


def closest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """Phrase the closest candidate names, for 'did you mean' hints."""
    matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    return f" (closest: {', '.join(matches)})" if matches else ""
