"""A bounded circular buffer: many producers put batches, one consumer takes everything pending.

Items live in a fixed list of slots that is allocated once; ``put_many`` and ``take_all`` move
whole batches with slice assignments, so the cost per item is a pointer copy done in C.

Every item gets a sequence number: the n-th item ever put has number n (from 1). ``put_many``
returns the number of its last item and ``take_all`` the number of the last item it took, which is
what lets a reader wait until everything enqueued before it has been applied (see partition.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Full(Exception):
    """``put_many`` timed out waiting for room."""


class Closed(Exception):
    """The buffer was closed: it accepts nothing more."""


def deadline_after(timeout: float | None) -> float | None:
    """Turn a relative timeout into a ``time.monotonic()`` deadline (None waits forever)."""
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError("timeout must be a non-negative number")
    return time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (never negative), or None for no deadline."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


class RingBuffer(Generic[T]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._slots: list[T | None] = [None] * capacity
        self._head = 0  # slot of the oldest pending item
        self._size = 0  # pending items
        self._put_seq = 0  # sequence number of the last item put
        self._closed = False
        # One mutex guards every field above.
        self._mutex = threading.Lock()
        # Notified by put_many when items arrive and by close(); the consumer waits on it.
        self.not_empty = threading.Condition(self._mutex)
        # Notified by take_all when slots are freed and by close(); producers wait on it.
        self.not_full = threading.Condition(self._mutex)

    def __len__(self) -> int:
        with self._mutex:
            return self._size

    @property
    def closed(self) -> bool:
        with self._mutex:
            return self._closed

    @property
    def put_seq(self) -> int:
        """Sequence number of the last item put (0 before the first)."""
        with self._mutex:
            return self._put_seq

    def put_many(self, items: Sequence[T], timeout: float | None = None) -> int:
        """Append all of ``items`` at once, blocking until there is room for all of them.

        Returns the sequence number of the last item. Raises ``Full`` if room did not appear
        within ``timeout`` seconds (nothing is put then), ``Closed`` once the buffer is closed,
        and ``ValueError`` for a batch larger than the whole buffer (it could never fit).
        """
        n = len(items)
        if n > self.capacity:
            raise ValueError(f"batch of {n} items exceeds buffer capacity {self.capacity}")
        deadline = deadline_after(timeout)
        with self.not_full:
            while not self._closed and self.capacity - self._size < n:
                left = remaining(deadline)
                if left == 0.0:
                    raise Full(f"no room for {n} items within {timeout} s")
                self.not_full.wait(left)
            if self._closed:
                raise Closed("buffer is closed")
            if n:
                self._write(items)
                self.not_empty.notify()
            return self._put_seq

    def take_all(self, timeout: float | None = None) -> tuple[list[T], int]:
        """Remove and return every pending item, waiting up to ``timeout`` for the first one.

        Returns ``(items, seq)`` where ``seq`` is the sequence number of the last item taken
        (or of the last item ever put, when nothing was pending). Returns at once, possibly
        with no items, once the buffer is closed.
        """
        deadline = deadline_after(timeout)
        with self.not_empty:
            while not self._closed and self._size == 0:
                left = remaining(deadline)
                if left == 0.0:
                    break
                self.not_empty.wait(left)
            items = self._read_all()
            if items:
                self.not_full.notify_all()
            return items, self._put_seq

    def close(self) -> None:
        """Refuse further puts and wake every waiter; pending items stay takeable."""
        with self._mutex:
            self._closed = True
            self.not_empty.notify_all()
            self.not_full.notify_all()

    def _write(self, items: Sequence[T]) -> None:
        # Caller holds the mutex and has checked that the items fit.
        n = len(items)
        tail = (self._head + self._size) % self.capacity
        first = min(n, self.capacity - tail)
        self._slots[tail : tail + first] = items[:first]
        if first < n:  # wrap around to the start of the slot list
            self._slots[: n - first] = items[first:]
        self._size += n
        self._put_seq += n

    def _read_all(self) -> list[T]:
        # Caller holds the mutex. Copies the pending items out and clears their slots so the
        # buffer holds no references to items already handed to the consumer.
        head, size = self._head, self._size
        end = head + size
        if end <= self.capacity:
            items = self._slots[head:end]
            self._slots[head:end] = [None] * size
        else:
            wrapped = end - self.capacity
            items = self._slots[head:] + self._slots[:wrapped]
            self._slots[head:] = [None] * (self.capacity - head)
            self._slots[:wrapped] = [None] * wrapped
        self._head = end % self.capacity
        self._size = 0
        return items  # type: ignore[return-value]
