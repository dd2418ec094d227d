"""A bounded circular buffer: many producers put batches, one consumer takes everything pending.

Each slot of a fixed list (allocated once) holds one batch; capacity and sequence numbers count
the items inside the batches, so a put costs one slot write whatever the batch size; ``take_all``
costs one list extend per batch, and ``take_batches`` hands the batches over as they were put.

Every item gets a sequence number: the n-th item ever put has number n (from 1). ``put_many``
returns the number of its last item and ``take_all`` the number of the last item it took, which is
what lets a reader wait until everything enqueued before it has been applied (see partition.py).

The consumer may linger (``take_all(linger=...)``): after the first item arrives it waits a little
longer so that one take gathers a burst of puts, unless someone wants the items now (``kick``: a
reader waiting for them), a producer waits for room, or the buffer is half full. Puts do not wake
a lingering consumer, so a burst of N puts costs one wake-up, not N.

Room can be reserved ahead of the put (``reserve`` / ``put_reserved`` / ``cancel``), so a producer
writing to several buffers can first make sure all of them have room and put nothing otherwise.
A batch larger than the whole capacity is admitted when the buffer is empty, so no valid batch is
ever refused; memory stays bounded by the capacity or one batch, whichever is larger.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Full(Exception):
    """No room appeared within the timeout."""

    index: int | None = None  # which buffer, when reserve_all raised it


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


def reserve_all(
    buffers: Sequence[RingBuffer], sizes: dict[int, int], timeout: float | None
) -> None:
    """Reserve ``sizes[i]`` items of room in ``buffers[i]`` for every i, or none at all.

    In ascending index order, so that two callers never hold room the other waits for (a
    circular wait only the timeout would end). On ``Full`` (no room within ``timeout``, the
    exception naming the buffer's index in ``index``) or ``Closed``, what was held is given back.
    """
    deadline = deadline_after(timeout)
    held: list[int] = []
    try:
        for index in sorted(sizes):
            try:
                buffers[index].reserve(sizes[index], remaining(deadline))
            except Full as exc:
                exc.index = index
                raise
            held.append(index)
    except BaseException:
        for index in held:
            buffers[index].cancel(sizes[index])
        raise


def put_all(buffers: Sequence[RingBuffer], parts: dict[int, Sequence]) -> dict[int, int] | None:
    """Put ``parts[i]`` into ``buffers[i]`` for every i at once if every one of them has room
    now and no producer waits for room there; else put nothing and return None (the caller
    then waits through ``reserve_all``). Returns each buffer's sequence number of its part's
    last item. Raises ``Closed`` if one is closed.

    Holds the buffers' mutexes together, taken in ascending index order (no other code holds
    two), so the request's parts are put in one step, without reservations.
    """
    order = sorted(parts)
    held: list[RingBuffer] = []
    try:
        for index in order:
            buffer = buffers[index]
            buffer._mutex.acquire()
            held.append(buffer)
            if buffer._closed:
                raise Closed("buffer is closed")
            if buffer._room_waiters or not buffer._fits(len(parts[index])):
                return None
        seqs = {}
        for index in order:
            buffers[index]._append(parts[index])
            seqs[index] = buffers[index]._put_seq
        return seqs
    finally:
        for buffer in held:
            buffer._mutex.release()


class RingBuffer(Generic[T]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        # A batch holds at least one item and items never exceed the capacity (or one oversized
        # batch alone), so `capacity` slots always suffice.
        self._slots: list[Sequence[T] | None] = [None] * capacity
        self._head = 0  # slot of the oldest pending batch
        self._batches = 0  # pending batches
        self._size = 0  # pending items
        self._reserved = 0  # items reserved by producers but not yet put
        self._put_seq = 0  # sequence number of the last item put
        self._closed = False
        self._kicked = False  # someone wants the pending items now (kick); reset by take_all
        self._room_waiters = 0  # producers waiting for room
        self._lingering = False  # the consumer waits on `wanted` with items pending
        # One mutex guards every field above.
        self._mutex = threading.Lock()
        # Notified by puts when items arrive and by close(); the consumer waits on it.
        self.not_empty = threading.Condition(self._mutex)
        # Notified when room is freed (take_all, cancel) and by close(); producers wait on it.
        self.not_full = threading.Condition(self._mutex)
        # Notified by kick(), by a producer that starts waiting for room, by a put that leaves
        # the buffer half full while the consumer lingers, and by close(): the lingering
        # consumer waits on it.
        self.wanted = threading.Condition(self._mutex)

    def __len__(self) -> int:
        """Items pending (put and not yet taken)."""
        with self._mutex:
            return self._size

    @property
    def closed(self) -> bool:
        with self._mutex:
            return self._closed

    @property
    def finished(self) -> bool:
        """Closed, and nothing pending or reserved: nothing more will ever arrive."""
        with self._mutex:
            return self._closed and not self._batches and not self._reserved

    @property
    def put_seq(self) -> int:
        """Sequence number of the last item put (0 before the first)."""
        with self._mutex:
            return self._put_seq

    def reserve(self, n: int, timeout: float | None = None) -> None:
        """Wait until ``n`` items fit, then hold room for them until ``put_reserved`` or ``cancel``.

        Raises ``Full`` if the room did not appear within ``timeout`` seconds (nothing is held
        then) and ``Closed`` once the buffer is closed.
        """
        deadline = deadline_after(timeout)
        with self.not_full:
            self._wait_for_room(n, deadline, timeout)
            self._reserved += n

    def put_reserved(self, items: Sequence[T]) -> int:
        """Put a batch whose room was reserved; never blocks. Returns its last sequence number.

        Puts even after close(): the room was promised before the buffer closed.
        """
        with self._mutex:
            if len(items) > self._reserved:
                raise RuntimeError("put_reserved without a matching reserve")
            self._reserved -= len(items)
            self._append(items)
            return self._put_seq

    def cancel(self, n: int) -> None:
        """Give back room reserved for ``n`` items."""
        with self._mutex:
            if n > self._reserved:
                raise RuntimeError("cancel of more than was reserved")
            self._reserved -= n
            self.not_full.notify_all()
            self.not_empty.notify()  # a closed buffer's consumer may be waiting for this

    def put_many(self, items: Sequence[T], timeout: float | None = None) -> int:
        """Wait for room, then put ``items`` as one batch. Returns the last sequence number.

        Raises ``Full`` if room did not appear within ``timeout`` seconds (nothing is put then)
        and ``Closed`` once the buffer is closed.
        """
        deadline = deadline_after(timeout)
        with self.not_full:
            self._wait_for_room(len(items), deadline, timeout)
            self._append(items)
            return self._put_seq

    def take_all(self, timeout: float | None = None, linger: float = 0.0) -> tuple[list[T], int]:
        """Remove and return every pending item, waiting up to ``timeout`` for the first one,
        then up to ``linger`` seconds more for others, unless the items are wanted now.

        Returns ``(items, seq)`` where ``seq`` is the sequence number of the last item taken
        (or of the last item ever put, when nothing was pending). Once the buffer is closed it
        waits only for reserved room to be put or cancelled; see ``finished``.
        """
        batches, seq = self.take_batches(timeout, linger)
        items: list[T] = []
        for batch in batches:
            items.extend(batch)
        return items, seq

    def take_batches(
        self, timeout: float | None = None, linger: float = 0.0
    ) -> tuple[list[Sequence[T]], int]:
        """``take_all``, but the pending batches as they were put, not their items: for a
        consumer that handles whole batches (partition.py's packs)."""
        deadline = deadline_after(timeout)
        with self.not_empty:
            self._wait_pending(deadline)
            if linger > 0 and self._batches:
                self._linger(deadline_after(linger))
            self._kicked = False
            batches = self._take_batches()
            if batches:
                self.not_full.notify_all()
            return batches, self._put_seq

    def kick(self) -> None:
        """Someone waits for the pending items: a lingering consumer takes them now."""
        with self._mutex:
            self._kicked = True
            self.wanted.notify()

    def _linger(self, deadline: float | None) -> None:
        # Caller holds the mutex and has found items pending.
        self._lingering = True
        try:
            while not (self._kicked or self._closed or self._room_waiters or self._half_full()):
                left = remaining(deadline)
                if left == 0.0:
                    return
                self.wanted.wait(left)
        finally:
            self._lingering = False

    def _half_full(self) -> bool:
        # Caller holds the mutex.
        return 2 * (self._size + self._reserved) >= self.capacity

    def wait_pending(self, timeout: float | None = None) -> bool:
        """Wait until something is pending (True), or the buffer is finished or ``timeout``
        passed (False); takes nothing."""
        deadline = deadline_after(timeout)
        with self.not_empty:
            self._wait_pending(deadline)
            return self._batches > 0

    def _wait_pending(self, deadline: float | None) -> None:
        # Caller holds the mutex. Once closed, waits only for reserved room to be put or
        # cancelled (see ``finished``).
        while self._batches == 0 and (not self._closed or self._reserved):
            left = remaining(deadline)
            if left == 0.0:
                return
            self.not_empty.wait(left)

    def close(self) -> None:
        """Refuse further puts and reservations and wake every waiter; pending items stay."""
        with self._mutex:
            self._closed = True
            self.not_empty.notify_all()
            self.not_full.notify_all()
            self.wanted.notify_all()

    def _fits(self, n: int) -> bool:
        # Caller holds the mutex. An empty buffer admits any batch, however large.
        used = self._size + self._reserved
        return used + n <= self.capacity or used == 0

    def _wait_for_room(self, n: int, deadline: float | None, timeout: float | None) -> None:
        # Caller holds the mutex.
        if not self._closed and not self._fits(n):
            self._room_waiters += 1
            self.wanted.notify()  # a lingering consumer makes room now
            try:
                while not self._closed and not self._fits(n):
                    left = remaining(deadline)
                    if left == 0.0:
                        raise Full(f"no room for {n} items within {timeout} s")
                    self.not_full.wait(left)
            finally:
                self._room_waiters -= 1
        if self._closed:
            raise Closed("buffer is closed")

    def _append(self, items: Sequence[T]) -> None:
        # Caller holds the mutex and has made sure the batch fits.
        if not items:
            return
        self._slots[(self._head + self._batches) % self.capacity] = items
        self._batches += 1
        self._size += len(items)
        self._put_seq += len(items)
        if self._lingering:
            if self._half_full():
                self.wanted.notify()
        else:
            self.not_empty.notify()

    def _take_batches(self) -> list[Sequence[T]]:
        # Caller holds the mutex. Empties every pending slot, so the buffer keeps no references
        # to batches already handed to the consumer.
        slots, head, n = self._slots, self._head, self._batches
        if head + n <= self.capacity:
            batches = slots[head : head + n]
            slots[head : head + n] = [None] * n
        else:  # the pending slots wrap around the end
            batches = slots[head:] + slots[: head + n - self.capacity]
            slots[head:] = [None] * (self.capacity - head)
            slots[: head + n - self.capacity] = [None] * (head + n - self.capacity)
        self._head = (head + n) % self.capacity
        self._batches = 0
        self._size = 0
        return batches  # type: ignore[return-value]
