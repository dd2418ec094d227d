"""The in-memory store: N partitions, routing by hour, backpressure, limits, retention, lifecycle.

``PartitionedStore`` implements ``FlowStore`` (base.py). Its partitions' ring buffers raise their
own ``Closed``; the store answers with the interface's ``Closed`` at its boundary, so callers
need to know nothing below ``base``.

An ingest runs ``check`` (the hours window and name lengths, limits.py), ``split`` (by
partition), ``admit`` (the key-hour and memory budgets), ``reserve`` (room in every buffer the
batch touches, or none), ``put_reserved`` and ``admitted``. They are public so that the durable
store can log a request between reserving and putting; ``cancel`` and ``cancel_admission`` give
back what a request held. Retention follows the clock: ``expire`` drops the hours that left the
window (and gives their memory back to the system), and runs at every ingest and read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from flowagg.schema import Flow, Slices
from flowagg.store import query, table
from flowagg.store.base import (
    Closed,
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
from flowagg.store.limits import KeyBudget, MemoryBudget, MemoryTicket, Window, check_names
from flowagg.store.partition import DrainObserver, Partition
from flowagg.store.ringbuffer import Closed as BufferClosed
from flowagg.store.ringbuffer import Full, deadline_after, put_all, remaining, reserve_all

log = logging.getLogger("flowagg.store")

# What a request was admitted with: key-hour estimates and a memory ticket (None: no limit).
Admission = tuple[dict[int, int] | None, MemoryTicket | None]

# glibc's malloc: arenas for all threads, and blocks from this size mapped on their own (so that
# a large body's slices and a merge's largest arrays go back to the system once freed). Smaller
# blocks are reused from the heap: the JSON of a 10,000-key hour is about 1 MB, and with a
# threshold of 256 KiB every such GET mapped and faulted in its answer afresh, serving 0.57x the
# requests (loadtest.bench, get10k) for 5 to 20 % less RSS per key-hour (loadtest.bench_memory).
MALLOC_ARENAS = 2
MALLOC_MMAP_THRESHOLD = 4 * 1024 * 1024


def tune_allocator() -> bool:
    """Keep the process's RSS close to what it holds (see table.tune_allocator); once, at
    start-up, before the server's threads allocate."""
    return table.tune_allocator(MALLOC_ARENAS, MALLOC_MMAP_THRESHOLD)


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
        max_future_hours: int | None = None,
        max_keys: int | None = None,
        max_name_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
        max_memory_bytes: int | None = None,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self.partitions = [Partition(i, buffer_capacity, on_drain) for i in range(partitions)]
        self.window = Window(retention_hours, max_future_hours, clock)
        self.max_query_rows = max_query_rows  # key-hours one query may scan; None: any
        self.max_name_bytes = max_name_bytes
        self.keys = (
            KeyBudget(
                max_keys,
                self.keys_held,
                [lambda p=p: p.applied_seq for p in self.partitions],
            )
            if max_keys is not None
            else None
        )
        self.memory = (
            MemoryBudget(
                max_memory_bytes,
                self.bytes_held,
                [lambda p=p: p.applied_seq for p in self.partitions],
            )
            if max_memory_bytes is not None
            else None
        )
        # Guards _cutoff and _hours_dropped (retention bookkeeping only).
        self._window_lock = threading.Lock()
        self._cutoff = 0  # hours below this were dropped
        self._hours_dropped = 0
        if start:
            self.start()

    def start(self) -> None:
        """Start every partition's drainer thread."""
        for partition in self.partitions:
            partition.start()

    def partition_for(self, hour: int) -> Partition:
        return self.partitions[hour % len(self.partitions)]

    def split(self, flows: Sequence[Flow]) -> dict[int, table.Pack]:
        """Group a batch by partition index into packs, each in request order (in C, one pass
        that copies the flows out of their records: see partition.py)."""
        return table.pack(flows if isinstance(flows, list) else list(flows), len(self.partitions))

    def ingest(
        self,
        flows: Sequence[Flow],
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Enqueue every part of the batch, or none; returns once all are enqueued.

        Keeps no idempotency keys: in memory, every request is applied (see durable/).
        """
        parts, count = self.check_and_split(flows)
        admission = self.admit(parts, timeout)
        try:
            if len(parts) == 1:  # the usual batch: one partition, one wait for room and put
                [(index, part)] = parts.items()
                seqs = {index: self._put_one(index, part, timeout)}
            else:
                seqs = self._put_all_now(parts)
                if seqs is None:  # some buffer is short of room: wait for it, holding none
                    self.reserve(parts, timeout)
                    seqs = self.put_reserved(parts)
        except BaseException:
            self.cancel_admission(admission)
            raise
        self.admitted(seqs, admission)
        self.expire()
        return count

    def check_and_split(self, flows: Sequence[Flow] | Slices) -> tuple[dict[int, table.Pack], int]:
        """``check`` then ``split``, for a list of records or the ``Slices`` of a large body
        (each slice checked and packed, and freed, before the next is decoded). Returns the
        packs and the number of flows."""
        if not isinstance(flows, Slices):
            flows = flows if isinstance(flows, list) else list(flows)
            self.check(flows)
            return self.split(flows), len(flows)
        parts: dict[int, table.Pack] = {}
        count = 0
        for start, chunk in flows.slices(table.array_slices):
            self.check(chunk, start)
            parts = table.pack(chunk, len(self.partitions), parts)
            count += len(chunk)
            del chunk
        return parts, count

    def check(self, flows: list[Flow], start: int = 0) -> None:
        """Raise ``InvalidRecord`` for the first record outside the hours window or with a name
        over the length limit (numbered from ``start``); nothing is held either way."""
        self.window.check(flows, start)
        check_names(flows, self.max_name_bytes, start)

    def keys_held(self) -> int:
        """Key-hours in the tables, summed over partitions."""
        return sum(p.keys_held for p in self.partitions)

    def bytes_held(self) -> int:
        """Bytes the tables allocate, summed over partitions."""
        return sum(p.bytes_held for p in self.partitions)

    def admit(self, parts: dict[int, table.Pack], timeout: float | None) -> Admission:
        """Admit a request's new key-hours under FLOWAGG_MAX_KEYS and what it adds to the
        tables under FLOWAGG_MAX_MEMORY_BYTES, or raise ``KeyLimit`` or ``MemoryLimit``.

        Returns what to hand to ``admitted`` once put (or to ``cancel_admission``).
        """
        deadline = deadline_after(timeout)
        keys = None
        if self.keys is not None:

            def count() -> dict[int, int]:
                # Near the limit: exact, against tables that hold everything ingested before.
                for index in parts:
                    self.partitions[index].flush(remaining(deadline))
                return {i: self.partitions[i].count_new(part) for i, part in parts.items()}

            keys = self.keys.admit(parts, count)
        if self.memory is None:
            return keys, None

        def cost(drain: Iterable[int]) -> dict[int, int]:
            for index in sorted(drain):
                self.partitions[index].flush(remaining(deadline))
            return {i: self.partitions[i].cost(part) for i, part in parts.items()}

        try:
            return keys, self.memory.admit(parts, cost)
        except BaseException:
            if keys is not None:
                self.keys.cancel(keys)
            raise

    def admitted(self, seqs: dict[int, int], admission: Admission) -> None:
        keys, memory = admission
        if keys is not None:
            self.keys.queued(seqs, keys)
        if memory is not None:
            self.memory.queued(seqs, memory)

    def cancel_admission(self, admission: Admission) -> None:
        keys, memory = admission
        if keys is not None:
            self.keys.cancel(keys)
        if memory is not None:
            self.memory.cancel(memory)

    def _put_one(self, index: int, part: table.Pack, timeout: float | None) -> int:
        """Put a batch of one partition: what reserve and put_reserved do, under one lock.
        Returns the sequence number of its last flow."""
        try:
            return self.partitions[index].buffer.put_many(part, timeout)
        except Full:
            raise Overloaded(
                f"partition {index} had no room for {len(part)} flows within {timeout} s"
            ) from None
        except BufferClosed as exc:
            raise Closed(str(exc)) from None

    def _put_all_now(self, parts: dict[int, table.Pack]) -> dict[int, int] | None:
        """Put every part now if every buffer has room (one step, no reservations), else None."""
        try:
            return put_all([p.buffer for p in self.partitions], parts)
        except BufferClosed as exc:
            raise Closed(str(exc)) from None

    def reserve(self, parts: dict[int, table.Pack], timeout: float | None) -> None:
        """Hold room for every part in its buffer, or hold nothing and raise ``Overloaded``.

        Raises ``Closed`` once the store is closed.
        """
        buffers = [p.buffer for p in self.partitions]
        try:
            reserve_all(buffers, {index: len(part) for index, part in parts.items()}, timeout)
        except Full as exc:
            raise Overloaded(
                f"partition {exc.index} had no room for {len(parts[exc.index])} flows"
                f" within {timeout} s"
            ) from None
        except BufferClosed as exc:
            raise Closed(str(exc)) from None

    def put_reserved(self, parts: dict[int, table.Pack]) -> dict[int, int]:
        """Put every part in the room ``reserve`` held for it; never blocks. Returns, per
        partition, the sequence number of the part's last flow."""
        return {
            index: self.partitions[index].buffer.put_reserved(part) for index, part in parts.items()
        }

    def cancel(self, parts: dict[int, table.Pack]) -> None:
        """Give back room reserved for ``parts`` that will not be put."""
        for index, part in parts.items():
            self.partitions[index].buffer.cancel(len(part))

    def expire(self) -> None:
        """Drop the hours that have left the window; flows still queued for them are discarded
        by the drainers, so an hour never comes back once expired."""
        if self.window.retention is None:
            return
        oldest, _ = self.window.bounds()
        with self._window_lock:
            if oldest <= self._cutoff:
                return
            self._cutoff = oldest
        dropped = sum(p.expire_before(oldest) for p in self.partitions)
        if dropped:
            table.trim()  # what the dropped hours held goes back to the system
            with self._window_lock:
                self._hours_dropped += dropped
            log.info("retention: dropped %d hour(s) older than %d", dropped, oldest)

    def read_hour(self, hour: int, timeout: float | None = None) -> list[Row]:
        self.expire()
        return self.partition_for(hour).read(hour, timeout)

    def read_hour_json(self, hour: int, timeout: float | None = None) -> bytes:
        self.expire()
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
        self.expire()
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
        self.expire()
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
        self.expire()
        with self._window_lock:
            dropped = self._hours_dropped
        return StoreStats(
            [p.stats() for p in self.partitions],
            dropped,
            keys_limit=self.keys.limit if self.keys is not None else None,
            memory_bytes=self.bytes_held(),
            memory_limit=self.memory.limit if self.memory is not None else None,
        )

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
