"""Run an iterator one stage ahead in a background thread.

The hot loops of this package spend their time in code that releases the GIL (zlib/LZ4
decompression in uproot, Blosc compression in HDF5, numpy copies and sorts), so a pipeline of
threads overlaps reading, building and writing even on two cores, with no pickling between them.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")
JOIN_TIMEOUT_S = 30.0


def prefetch(iterator: Iterator[T], depth: int = 4) -> Iterator[T]:
    """Yield the items of ``iterator``, produced in a thread up to ``depth`` items ahead.

    Memory is bounded by ``depth``.  An exception in the producer is raised in the consumer; when
    the consumer stops early the producer stops at its next item and closes ``iterator`` (so a
    process pool behind it shuts down) before this generator returns (waiting at most
    ``JOIN_TIMEOUT_S``).
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        items.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put((done, None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            items.put((done, err))
        finally:
            close: Any = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, daemon=True, name="payload-prefetch")
    thread.start()
    try:
        while True:
            item, err = items.get()
            if err is not None:
                raise err
            if item is done:
                return
            yield item
    finally:
        stop.set()
        # The producer stops after at most one more item.  At interpreter exit (an unfinished
        # generator collected then) daemon threads no longer run: waiting would hang the process.
        if not sys.is_finalizing():
            thread.join(timeout=JOIN_TIMEOUT_S)


@contextlib.contextmanager
def prefetched(iterator: Iterator[T], depth: int = 4) -> Iterator[Iterator[T]]:
    """``prefetch`` for a consumer that stops before the end (``fit`` with ``steps_per_epoch`` on an endless
    stream): the producer is stopped on leaving the block, not left reading files while the process exits."""
    stream = prefetch(iterator, depth)
    try:
        yield stream
    finally:
        with contextlib.suppress(ValueError):  # still running in the consumer's thread: it stops at exit
            stream.close()  # type: ignore[attr-defined]
