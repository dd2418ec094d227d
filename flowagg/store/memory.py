"""The in-memory store: N partitions, routing by hour, backpressure, retention, lifecycle.

``PartitionedStore`` implements ``FlowStore`` (base.py). Its partitions' ring buffers raise their
own ``Closed``; the store answers with the interface's ``Closed`` at its boundary, so callers
need to know nothing below ``base``.

An ingest runs ``check_hours`` (retention), ``split`` (by partition), ``reserve`` (room in every
buffer the batch touches, or none), ``put_reserved`` and ``advance_window``. They are public so
that the durable store can log a request between reserving and putting; ``cancel`` gives reserved
room back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from flowagg.schema import Flow
from flowagg.store import query, table
from flowagg.store.base import (
    Closed,
    Expired,
    HoursHeld,
    Overloaded,
    PartitionStats,
    Query,
    QueryTooLarge,
    Row,
    Series,
    StoreStats,
    Top,
)
from flowagg.store.partition import DrainObserver, Partition
from flowagg.store.ringbuffer import Closed as BufferClosed
from flowagg.store.ringbuffer import Full, deadline_after, remaining

log = logging.getLogger("flowagg.store")


class PartitionedStore:
    """Flows of hour ``h`` live in partition ``h % N``; each partition drains independently."""

    def __init__(
        self,
        partitions: int = 8,
        buffer_capacity: int = 262_144,
        retention_hours: int | None = None,
        on_drain: DrainObserver | None = None,
        start: bool = True,
        max_query_rows: int | None = None,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self.partitions = [Partition(i, buffer_capacity, on_drain) for i in range(partitions)]
        self.retention_hours = retention_hours
        self.max_query_rows = max_query_rows  # key-hours one query may scan; None: any
        # Guards _newest_hour and _hours_dropped (retention bookkeeping only).
        self._window_lock = threading.Lock()
        self._newest_hour = -1
        self._hours_dropped = 0
        if start:
            self.start()

    def start(self) -> None:
        """Start every partition's drainer thread."""
        for partition in self.partitions:
            partition.start()

    def partition_for(self, hour: int) -> Partition:
        return self.partitions[hour % len(self.partitions)]

    def split(self, flows: Sequence[Flow]) -> dict[int, list[Flow]]:
        """Group a batch by partition index, keeping each group in request order (in C, one
        pass; a batch of one partition stays the list it came as)."""
        return table.split(flows if isinstance(flows, list) else list(flows), len(self.partitions))

    def ingest(
        self,
        flows: Sequence[Flow],
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Enqueue every part of the batch, or none; returns once all are enqueued.

        Keeps no idempotency keys: in memory, every request is applied (see durable/).
        """
        newest = self.check_hours(flows)
        parts = self.split(flows)
        self.reserve(parts, timeout)
        self.put_reserved(parts)
        if newest is not None:
            self.advance_window(newest)
        return len(flows)

    def reserve(self, parts: dict[int, list[Flow]], timeout: float | None) -> None:
        """Hold room for every part in its buffer, or hold nothing and raise ``Overloaded``.

        Raises ``Closed`` once the store is closed.
        """
        deadline = deadline_after(timeout)
        held: list[int] = []
        try:
            # In ascending partition order: two requests then never hold room the other is
            # waiting for (a circular wait that only the timeout would end).
            for index in sorted(parts):
                self.partitions[index].buffer.reserve(len(parts[index]), remaining(deadline))
                held.append(index)
        except BaseException as exc:
            self.cancel({i: parts[i] for i in held})
            if isinstance(exc, Full):
                raise Overloaded(
                    f"partition {index} had no room for {len(parts[index])} flows"
                    f" within {timeout} s"
                ) from None
            if isinstance(exc, BufferClosed):
                raise Closed(str(exc)) from None
            raise

    def put_reserved(self, parts: dict[int, list[Flow]]) -> None:
        """Put every part in the room ``reserve`` held for it; never blocks."""
        for index, part in parts.items():
            self.partitions[index].buffer.put_reserved(part)

    def cancel(self, parts: dict[int, list[Flow]]) -> None:
        """Give back room reserved for ``parts`` that will not be put."""
        for index, part in parts.items():
            self.partitions[index].buffer.cancel(len(part))

    def check_hours(self, flows: Sequence[Flow]) -> int | None:
        """Raise ``Expired`` for the first record older than the window this batch would leave.

        Returns the batch's newest hour, for ``advance_window``: None without retention or for an
        empty batch.
        """
        if self.retention_hours is None:
            return None
        flows = flows if isinstance(flows, list) else list(flows)
        bounds = table.hour_bounds(flows)
        if bounds is None:
            return None
        with self._window_lock:
            newest = max(self._newest_hour, bounds[1])
        oldest = newest - self.retention_hours
        if bounds[0] < oldest:
            index = table.first_outside(flows, oldest, newest)
            raise Expired(index, flows[index].hour, oldest, newest)
        return bounds[1]

    def advance_window(self, hour: int) -> None:
        """Record an accepted hour; if it is a new newest, drop hours that fell out of the window.

        Flows of a dropped hour that were still queued are discarded by the drainer, so an hour
        never comes back once expired.
        """
        with self._window_lock:
            if hour <= self._newest_hour:
                return
            self._newest_hour = hour
        cutoff = hour - self.retention_hours
        dropped = sum(p.expire_before(cutoff) for p in self.partitions)
        if dropped:
            with self._window_lock:
                self._hours_dropped += dropped
            log.info("retention: dropped %d hour(s) older than %d", dropped, cutoff)

    def restore_window(self) -> None:
        """After loading stored tables: take the newest hour held as the newest seen, and drop
        what lies outside the window (as it had been before a restart)."""
        if self.retention_hours is not None:
            self.advance_window(max(p.newest_hour() for p in self.partitions))

    def window(self) -> tuple[int, int] | None:
        """(oldest kept hour, newest hour seen), or None without retention or data."""
        with self._window_lock:
            if self.retention_hours is None or self._newest_hour < 0:
                return None
            return max(0, self._newest_hour - self.retention_hours), self._newest_hour

    def read_hour(self, hour: int, timeout: float | None = None) -> list[Row]:
        return self.partition_for(hour).read(hour, timeout)

    def read_hour_json(self, hour: int, timeout: float | None = None) -> bytes:
        return self.partition_for(hour).read_json(hour, timeout)

    def flush(self, timeout: float | None = None) -> None:
        deadline = deadline_after(timeout)
        for partition in self.partitions:
            partition.flush(remaining(deadline))

    # -- range queries (query.py) ----------------------------------------------------------

    def top(self, query_: Query, timeout: float | None = None) -> Top:
        self._prepare(query_, timeout)
        return query.top(query_, self._scanner(query_))

    def series(self, query_: Query, timeout: float | None = None) -> Series:
        self._prepare(query_, timeout)
        return query.series(query_, self._scanner(query_))

    def hours_held(self, timeout: float | None = None) -> HoursHeld:
        self.flush(timeout)
        hours = [hour for p in self.partitions for hour in p.hours()]
        return HoursHeld(len(hours), min(hours, default=None), max(hours, default=None))

    def _touched(self, hours: range) -> list[Partition]:
        """The partitions holding some hour of ``hours``."""
        n = len(self.partitions)
        if len(hours) >= n:
            return self.partitions
        return [self.partitions[i] for i in sorted({hour % n for hour in hours})]

    def _prepare(self, query_: Query, timeout: float | None) -> None:
        """Wait for every partition of the range to apply what was ingested before the call
        (strong consistency); refuse, before any scan, a query over too many key-hours."""
        deadline = deadline_after(timeout)
        touched = self._touched(query_.hours)
        for partition in touched:
            partition.flush(remaining(deadline))
        if self.max_query_rows is not None:
            rows = sum(p.key_count(self._hours_of(p, query_.hours)) for p in touched)
            if rows > self.max_query_rows:
                raise QueryTooLarge(rows, self.max_query_rows)

    def _hours_of(self, partition: Partition, hours: range) -> range:
        """The hours of ``hours`` that live in ``partition``."""
        n = len(self.partitions)
        return range(hours.start + (partition.index - hours.start) % n, hours.stop, n)

    def _scanner(self, query_: Query) -> query.Scan:
        def scan(hours: range, groups: table.Groups) -> None:
            for partition in self._touched(hours):
                partition.scan(self._hours_of(partition, hours), groups, query_.filters)

        return scan

    def stats(self) -> StoreStats:
        with self._window_lock:
            dropped = self._hours_dropped
        return StoreStats([p.stats() for p in self.partitions], dropped)

    def health(self, high_watermark: float) -> list[str]:
        return partition_problems(self.stats().partitions, high_watermark)

    def close(self, timeout: float | None = None) -> bool:
        deadline = deadline_after(timeout)
        for partition in self.partitions:
            partition.buffer.close()  # refuse new flows everywhere before waiting on any drainer
        return all([p.close(remaining(deadline)) for p in self.partitions])


def partition_problems(partitions: Sequence[PartitionStats], high_watermark: float) -> list[str]:
    """Failed readiness checks of partitions: a drainer not running, a buffer above the mark."""
    problems = []
    for p in partitions:
        if not p.drainer_alive:
            problems.append(f"drainer: partition {p.index} drainer is not running")
        if p.depth > high_watermark * p.capacity:
            problems.append(
                f"buffer: partition {p.index} holds {p.depth} of {p.capacity} flows"
                f" (above {high_watermark:.0%})"
            )
    return problems
