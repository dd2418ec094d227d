"""A writer-preferring reader/writer lock.

Readers share the lock; a writer holds it alone. As soon as a writer is waiting, new readers
queue behind it, so a steady stream of GETs cannot starve a partition's drainer. A thread that
holds the read lock may take it again (the nested acquisition does not queue behind a waiting
writer, which would deadlock), but may not upgrade to the write lock: two upgraders would wait
for each other forever, so that is refused with ``RuntimeError``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RWLock:
    def __init__(self) -> None:
        # Guards every field below.
        self._mutex = threading.Lock()
        # Notified when the writer releases: waiting readers may proceed.
        self._readers_ok = threading.Condition(self._mutex)
        # Notified when the last reader or the writer releases: a waiting writer may proceed.
        self._writer_ok = threading.Condition(self._mutex)
        self._readers: dict[int, int] = {}  # thread ident -> read depth
        self._writer: int | None = None  # ident of the thread holding the write lock
        self._writers_waiting = 0

    def acquire_read(self, timeout: float | None = None) -> bool:
        me = threading.get_ident()
        _check_timeout(timeout)
        with self._mutex:
            if self._writer == me:
                raise RuntimeError("thread holding the write lock asked for the read lock")
            if me in self._readers:  # re-entry: this thread already excludes writers
                self._readers[me] += 1
                return True
            if not self._readers_ok.wait_for(self._readers_may_enter, timeout):
                return False
            self._readers[me] = 1
            return True

    def release_read(self) -> None:
        me = threading.get_ident()
        with self._mutex:
            depth = self._readers.get(me)
            if depth is None:
                raise RuntimeError("release_read by a thread that does not hold the read lock")
            if depth > 1:
                self._readers[me] = depth - 1
                return
            del self._readers[me]
            if not self._readers:
                self._writer_ok.notify()

    def acquire_write(self, timeout: float | None = None) -> bool:
        me = threading.get_ident()
        _check_timeout(timeout)
        with self._mutex:
            if me in self._readers:
                raise RuntimeError("cannot upgrade a read lock to a write lock")
            if self._writer == me:
                raise RuntimeError("write lock is not reentrant")
            self._writers_waiting += 1
            if not self._writer_ok.wait_for(self._writer_may_enter, timeout):
                self._writers_waiting -= 1
                # This writer may have been all that held the waiting readers back.
                self._readers_ok.notify_all()
                return False
            self._writers_waiting -= 1
            self._writer = me
            return True

    def release_write(self) -> None:
        with self._mutex:
            if self._writer != threading.get_ident():
                raise RuntimeError("release_write by a thread that does not hold the write lock")
            self._writer = None
            # Wake one writer first (preference); readers re-check and queue behind it.
            self._writer_ok.notify()
            self._readers_ok.notify_all()

    def _readers_may_enter(self) -> bool:
        # Caller holds the mutex. A waiting writer holds new readers back (writer preference).
        return self._writer is None and not self._writers_waiting

    def _writer_may_enter(self) -> bool:
        # Caller holds the mutex.
        return self._writer is None and not self._readers

    @contextmanager
    def read_lock(self) -> Iterator[None]:
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        self.acquire_write()
        try:
            yield
        finally:
            self.release_write()


def _check_timeout(timeout: float | None) -> None:
    # None waits forever; Condition.wait_for counts its own deadline from the timeout.
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be a non-negative number")
