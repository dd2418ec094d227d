"""What a store refuses before it takes a request: hours outside the window its clock allows,
names longer than a limit, key-hours past a limit, and bytes of table memory past a limit.

Hours are hours since the Unix epoch (``floor(unix time / 3600)``) when a window is set. The
window is the server's, never a client's: ``[now - FLOWAGG_RETENTION_HOURS, now +
FLOWAGG_MAX_FUTURE_HOURS]`` from the clock, so no POST can move it (a record from far in the future
once moved a window that followed the newest hour posted, and erased every other client's data).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence, Sized

from flowagg.schema import Flow
from flowagg.store import table
from flowagg.store.base import Expired, KeyLimit, MemoryLimit, NameTooLong

SECONDS_PER_HOUR = 3600


def hour_of(unix_time: float) -> int:
    return int(unix_time // SECONDS_PER_HOUR)


class Window:
    """The hours a store accepts now: ``retention`` hours back and ``future`` hours ahead of the
    clock's hour, either unbounded when None. Without retention the future bound applies only
    when set; with retention it defaults to 1 hour (a clock running a little ahead)."""

    def __init__(
        self,
        retention: int | None = None,
        future: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.retention = retention
        self.future = 1 if future is None and retention is not None else future
        self.clock = clock

    @property
    def bounded(self) -> bool:
        return self.retention is not None or self.future is not None

    def bounds(self) -> tuple[int | None, int | None]:
        """(oldest, newest) hour accepted now; None for no bound."""
        now = hour_of(self.clock())
        oldest = now - self.retention if self.retention is not None else None
        newest = now + self.future if self.future is not None else None
        return oldest, newest

    def describe(self, oldest: int | None, newest: int | None) -> str:
        settings = []
        if self.retention is not None:
            settings.append(f"FLOWAGG_RETENTION_HOURS={self.retention}")
        if self.future is not None:
            settings.append(f"FLOWAGG_MAX_FUTURE_HOURS={self.future}")
        low = "-" if oldest is None else oldest
        high = "-" if newest is None else newest
        return (
            f"the window [{low}, {high}] of hours since the Unix epoch the server accepts now"
            f" ({', '.join(settings)})"
        )

    def check(self, flows: list[Flow], start: int = 0) -> None:
        """Raise ``Expired`` for the first record whose hour is outside the window (records
        numbered from ``start``: a slice of a large body)."""
        if not self.bounded:
            return
        found = table.hour_bounds(flows)
        if found is None:
            return
        oldest, newest = self.bounds()
        low, high = oldest if oldest is not None else 0, newest if newest is not None else -1
        if found[0] < low or (newest is not None and found[1] > high):
            index = table.first_outside(flows, low, high if newest is not None else 2**63 - 1)
            raise Expired(start + index, flows[index].hour, self.describe(oldest, newest))


def check_names(flows: list[Flow], max_bytes: int | None, start: int = 0) -> None:
    """Raise ``NameTooLong`` for the first name longer than ``max_bytes`` bytes of UTF-8."""
    if max_bytes is None:
        return
    found = table.first_long_name(flows, max_bytes)
    if found is not None:
        raise NameTooLong(start + found[0], found[1], max_bytes)


# Queued estimates kept per partition before they are released even far from the limit (the
# queue must not grow without bound while no request comes near it).
RELEASE_AT = 64


class Budget:
    """What the key-hour and memory budgets share: a limit, what the tables hold, and the
    estimates of requests admitted (``_admitted``, not yet put) and put but not yet applied
    (``_queued`` per partition, in order: the sequence number of the request's last flow there,
    then its estimate), released once the partition's drainer has applied them."""

    def __init__(
        self,
        limit: int,
        held: Callable[[], int],
        applied: Sequence[Callable[[], int]],
    ) -> None:
        self.limit = limit
        self._held = held  # what the tables hold now (key-hours, bytes)
        self._applied = applied  # per partition: sequence number of the last flow applied
        # One mutex guards every field below.
        self._mutex = threading.Lock()
        self._admitted = 0  # estimates of requests admitted and not yet put
        self._queued: list[deque[tuple]] = [deque() for _ in applied]
        self._queued_total = 0

    def _release_applied(self) -> None:
        # Caller holds the mutex. Estimates of requests the drainers have applied leave.
        for index, queue in enumerate(self._queued):
            if queue:
                applied = self._applied[index]()
                while queue and queue[0][0] <= applied:
                    self._queued_total -= queue.popleft()[1]


class KeyBudget(Budget):
    """Admits requests while the key-hours held plus those they may add stay within a limit.

    A request is admitted with an estimate of the key-hours it adds: its number of flows while
    that is far from the limit (no work), else the exact number of new (hour, key) pairs,
    counted in C against the tables once everything pending is applied. Estimates count as
    "pending" from admission until the drainer has applied the request's flows (the partition's
    applied sequence number passes them), when they leave the budget and the tables count them.
    So concurrent requests can never together pass the limit.
    """

    def admit(self, parts: dict[int, Sized], count: Callable[[], dict[int, int]]) -> dict[int, int]:
        """Estimates per partition for a request split as ``parts``, or raise ``KeyLimit``.

        ``count()`` gives the exact new key-hours per partition (called only near the limit, by
        a caller that has first let everything pending be applied). The caller must then call
        ``queued`` once the parts are put, or ``cancel`` if it puts nothing.
        """
        estimate = {index: len(part) for index, part in parts.items()}
        with self._mutex:
            if self._fits(sum(estimate.values())):
                self._admitted += sum(estimate.values())
                return estimate
        exact = count()
        with self._mutex:
            self._release_applied()
            new = sum(exact.values())
            if not self._fits(new):
                raise KeyLimit(self.limit, self._held(), new)
            self._admitted += new
            return exact

    def queued(self, seqs: dict[int, int], estimates: dict[int, int]) -> None:
        """The parts of a request admitted with ``estimates`` were put; the last flow of the
        part in partition i has number ``seqs[i]``."""
        with self._mutex:
            for index, seq in seqs.items():
                estimate = estimates[index]
                self._admitted -= estimate
                self._queued[index].append((seq, estimate))
                self._queued_total += estimate
                if len(self._queued[index]) >= RELEASE_AT:  # far from the limit, _fits
                    self._release_applied()  # releases nothing

    def cancel(self, estimates: dict[int, int]) -> None:
        with self._mutex:
            self._admitted -= sum(estimates.values())

    def _fits(self, new: int) -> bool:
        # Caller holds the mutex. Before the estimates of applied parts are released, they are
        # counted twice (queued, and held by the tables): an upper bound, so a request that
        # fits it fits, and only one that does not pays for the release and the exact sum.
        if self._held() + self._admitted + self._queued_total + new <= self.limit:
            return True
        self._release_applied()
        return self._held() + self._admitted + self._queued_total + new <= self.limit


# What one new flow can make the tables allocate at most, whatever it holds, once their arrays
# have grown for it (by half, or doubled while small; slots at most 3/4 and at least 3/8 full):
# an entry, its slot, its carry words, three names and their slots, a new hour and its slot in
# the hours' index. Its names' bytes count twice (the arena grows by half, or doubles).
BYTES_PER_FLOW = 2 * (32 + 16) + 22 + 3 * (2 * 16 + 22) + (2 * 128 + 8 + 22)
BYTES_PER_NAME_BYTE = 2


def flow_bound(part: table.Pack) -> int:
    """An upper bound of what merging ``part`` can add to the tables: no lookup, no lock."""
    return len(part) * BYTES_PER_FLOW + part.name_bytes * BYTES_PER_NAME_BYTE


class MemoryTicket:
    """What a request was admitted with: bytes per partition, and whether it holds the exact
    path (released by ``MemoryBudget.queued`` or ``cancel``)."""

    __slots__ = ("estimates", "exact")

    def __init__(self, estimates: dict[int, int], exact: bool) -> None:
        self.estimates, self.exact = estimates, exact


class MemoryBudget(Budget):
    """Admits requests while the bytes the native tables allocate, plus what admitted requests
    may still add, stay within a limit (FLOWAGG_MAX_MEMORY_BYTES).

    Far from the limit a request is admitted with an upper bound of what it may add
    (``flow_bound``) and no work, while ``2 * (held + pending) + bound`` fits: from any state,
    merging what is pending can at most double what the tables hold, and add each flow's bound
    on top (their arrays grow by half or double, and never past twice what they hold).

    Near the limit requests take the exact path, one at a time: new fast admissions stop, the
    partitions that hold requests admitted the fast way are drained, and the request's cost is
    counted in C against the tables (``HourTables.cost``: exactly the bytes its merge will
    allocate). It is refused with ``MemoryLimit`` if that does not fit; a request that adds
    nothing (increments of key-hours held) always fits. Each exact admission keeps the path
    until its parts are put, so that it merges alone in its partitions.
    """

    def __init__(
        self,
        limit: int,
        held: Callable[[], int],
        applied: Sequence[Callable[[], int]],
    ) -> None:
        super().__init__(limit, held, applied)  # held: bytes; _queued: (seq, bytes, fast)
        # Guarded by the mutex too; `changed` is notified whenever a request admitted the fast
        # way is put or cancelled (the exact path waits for none in flight).
        self._changed = threading.Condition(self._mutex)
        self._admitted_fast = 0  # how many admitted requests were admitted the fast way
        self._exact_waiting = 0  # requests on or waiting for the exact path: no fast admission
        self._exact = threading.Lock()  # the exact path: held from admission to put or cancel

    def admit(
        self,
        parts: dict[int, table.Pack],
        cost: Callable[[Iterable[int]], dict[int, int]],
    ) -> MemoryTicket:
        """A ticket for a request split as ``parts``, or raise ``MemoryLimit``.

        ``cost(partitions)`` drains those partitions and gives the exact bytes per partition
        that merging each part would add (called on the exact path only). The caller must then
        call ``queued`` once the parts are put, or ``cancel`` if it puts nothing.
        """
        bounds = {index: flow_bound(part) for index, part in parts.items()}
        bound = sum(bounds.values())
        with self._mutex:
            if not self._exact_waiting and self._fits_fast(bound):
                self._admitted += bound
                self._admitted_fast += 1
                return MemoryTicket(bounds, exact=False)
            self._exact_waiting += 1  # from here, every request takes the exact path
        self._exact.acquire()
        try:
            with self._changed:
                while self._admitted_fast:  # fast admissions in flight: let them be put
                    self._changed.wait()
                self._release_applied()
                drain = {i for i, queue in enumerate(self._queued) if any(q[2] for q in queue)}
            exact = cost(drain | set(parts))
            with self._mutex:
                self._release_applied()
                new, held, pending = sum(exact.values()), self._held(), self._admitted
                pending += self._queued_total
                if new and held + pending + new > self.limit:
                    raise MemoryLimit(self.limit, held, pending, new)
                self._admitted += new
                return MemoryTicket(exact, exact=True)
        except BaseException:
            self._leave_exact()
            raise

    def queued(self, seqs: dict[int, int], ticket: MemoryTicket) -> None:
        """The parts admitted with ``ticket`` were put; the last flow of the part in partition
        i has number ``seqs[i]``."""
        with self._changed:
            for index, seq in seqs.items():
                estimate = ticket.estimates[index]
                self._admitted -= estimate
                self._queued[index].append((seq, estimate, not ticket.exact))
                self._queued_total += estimate
                if len(self._queued[index]) >= RELEASE_AT:  # far from the limit, _fits_fast
                    self._release_applied()  # releases nothing
            self._done(ticket)

    def cancel(self, ticket: MemoryTicket) -> None:
        with self._changed:
            self._admitted -= sum(ticket.estimates.values())
            self._done(ticket)

    @property
    def pending(self) -> int:
        """Bytes admitted requests may still add (an upper bound far from the limit)."""
        with self._mutex:
            self._release_applied()
            return self._admitted + self._queued_total

    def _done(self, ticket: MemoryTicket) -> None:
        # Caller holds the mutex.
        if ticket.exact:
            self._exact_waiting -= 1
            self._exact.release()
        else:
            self._admitted_fast -= 1
            self._changed.notify_all()

    def _leave_exact(self) -> None:
        with self._mutex:
            self._exact_waiting -= 1
        self._exact.release()

    def _fits_fast(self, bound: int) -> bool:
        # Caller holds the mutex. Applied parts' bounds count twice until released: an upper
        # bound, so only a request that does not fit it pays for the release.
        if 2 * (self._held() + self._admitted + self._queued_total) + bound <= self.limit:
            return True
        self._release_applied()
        return 2 * (self._held() + self._admitted + self._queued_total) + bound <= self.limit
