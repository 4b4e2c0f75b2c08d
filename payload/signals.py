"""Termination by signal as an exception, so a job that is told to stop leaves a clean state.

The PanDA pilot sends SIGTERM (then SIGKILL after a grace period), HTCondor SIGTERM on eviction,
some batch systems SIGUSR1 before the wall-time limit, a user Ctrl-C (SIGINT).  Inside
``terminate_on_signals`` each raises ``Terminated`` in the main thread: the stack unwinds through
every ``atomic_path`` (temporary files removed, nothing half-written renamed into place), the last
complete checkpoint stays (checkpoints are committed atomically), the job writes ``error.json``
naming the stage, the CLI writes the job report and exits with 128 + the signal number (SIGTERM 143,
SIGINT 130, SIGUSR1 138).  A rerun in the same directory resumes from the checkpoint.
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Terminated(BaseException):
    """The process was told to stop (a BaseException: no ``except Exception`` may swallow it)."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        self.message = f"terminated by signal {signum} ({signal.Signals(signum).name})"
        super().__init__(self.message)


def _raise(signum, frame):
    raise Terminated(signum)


def _redeliver(previous: Callable[[Any], object]) -> Callable[[Any], object]:
    """An unraisable hook that sends a lost ``Terminated`` again.  A handler that runs while the main
    thread is in a finalizer (``__del__``, a weakref callback: Keras and TensorFlow objects have them)
    raises where Python cannot propagate: it prints "Exception ignored" and the job went on to its end.
    So the signal is sent again, a moment later and from another thread: sent from here, the handler
    would run at the hook's own next bytecode, where its exception is lost the same way."""

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, Terminated):
            again = threading.Timer(0.05, _thread.interrupt_main, (unraisable.exc_value.signum,))
            again.daemon = True
            again.start()
        else:
            previous(unraisable)

    return hook


@contextlib.contextmanager
def terminate_on_signals(signals: tuple[int, ...] = HANDLED) -> Iterator[None]:
    """Turn ``signals`` into ``Terminated`` for the duration of the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in signals}
    hook, sys.unraisablehook = sys.unraisablehook, _redeliver(sys.unraisablehook)
    try:
        yield
    finally:
        sys.unraisablehook = hook
        for s, handler in previous.items():
            signal.signal(s, handler)
