"""A background writer for the tracking store: the driver hands it writes and goes on, and waits only where an
order must hold (e.g. a step stored before Tune may record the checkpoint after it).

One thread applies the submitted items in order. It takes everything queued at once, so when the store is
slower than the trials, writes that piled up go to the store together (fewer, larger requests) instead of one
request per result. A failed write is kept and raised in the driver at its next submit or wait: nothing fails
silently in the thread. Items submitted after a failure are not written (they may depend on the failed one).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

ALIVE_CHECK_S = 1.0  # how often a waiting driver checks that the writer thread still runs


class StoreWriteError(RuntimeError):
    """A write to the tracking store failed in the background writer."""


class BackgroundWriter:
    """Applies items with `apply(list_of_items)` in a thread of its own, in submission order.

    Only one thread (Tune's driver loop) may submit, wait and close.
    """

    _STOP = object()

    def __init__(self, apply: Callable[[list[Any]], None], name: str, max_queued: int, max_batch: int):
        self._apply = apply
        self._max_batch = max_batch
        # Bounded: a store slower than the trials for long makes the driver wait at submit, rather than the
        # driver holding an unbounded backlog of results in memory.
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self._submitted = 0  # sequence number of the last item submitted
        self._done = 0       # ... and of the last item applied (or dropped after a failure)
        self._changed = threading.Condition()
        self._error: BaseException | None = None
        # A daemon: a store that hangs must not keep the process alive after Ctrl+C; the driver drains before
        # anything that depends on the writes (checkpoints, trial ends, the experiment's end).
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> int:
        """Queues `item`; returns its sequence number (for `wait`). Raises an earlier write's failure."""
        self.raise_failure()
        self._submitted += 1
        self._queue.put((self._submitted, item))
        return self._submitted

    def wait(self, upto: int | None = None) -> None:
        """Returns once every item up to sequence number `upto` (default: all submitted) is in the store."""
        target = self._submitted if upto is None else upto
        with self._changed:
            while not self._changed.wait_for(lambda: self._done >= target, timeout=ALIVE_CHECK_S):
                if not self._thread.is_alive():
                    raise StoreWriteError("the tracking store's writer thread stopped with writes pending")
        self.raise_failure()

    def close(self) -> None:
        """Writes everything submitted, stops the thread, and raises a failed write's error."""
        if self._thread.is_alive():
            self._submitted += 1
            self._queue.put((self._submitted, self._STOP))
            self.wait()
            self._thread.join()
        self.raise_failure()

    def raise_failure(self) -> None:
        if self._error is not None:
            raise StoreWriteError(f"writing to the MLflow tracking store failed: {self._error!r}") from self._error

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            items = [item for _, item in batch if item is not self._STOP]
            if items and self._error is None:
                try:
                    self._apply(items)
                except BaseException as error:  # kept for the driver: raised at its next submit or wait
                    self._error = error
            with self._changed:
                self._done = batch[-1][0]
                self._changed.notify_all()
            if batch[-1][1] is self._STOP:
                return
