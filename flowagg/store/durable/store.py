"""The durable store: a PartitionedStore fed through a log, each request logged before its answer.

Ingest. A POST's validated flows become ONE log record (with its idempotency key), so a request is
whole or absent after a crash, whatever partitions it touches. Room in every partition it touches
is reserved first, outside the gate, so a request that gets no room never reaches the log. Under
the gate the record is appended to the log and then its parts are put in their reserved room; the
POST then waits outside the gate until the record is as durable as ``FLOWAGG_FSYNC`` promises
(group commit in wal.py). Because append and enqueue happen together under one lock, every
partition receives its flows in log order; the snapshot cut (compaction.py) rests on that.

Start-up takes the directory lock, loads the newest snapshot and replays the logs after it
(recovery.py), then opens a new log; the app accepts traffic only after that. If anything was
replayed, a snapshot follows in the background, so repeated restarts do not pile up logs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowagg.schema import Flow, Slices
from flowagg.store.base import (
    Closed,
    HoursHeld,
    KeyReused,
    Query,
    Row,
    Series,
    StoreStats,
    Top,
    Unavailable,
)
from flowagg.store.durable.compaction import SNAPSHOT_DRAIN_TIMEOUT_S, Compactor, Cut, NoRoom
from flowagg.store.durable.directory import free_bytes, lock_directory
from flowagg.store.durable.idempotency import IdempotencyKeys, KeyEntry
from flowagg.store.durable.records import encode_record
from flowagg.store.durable.recovery import recover
from flowagg.store.durable.wal import LogFailed, WriteAheadLog
from flowagg.store.memory import PartitionedStore
from flowagg.store.partition import DrainObserver, Partition
from flowagg.store.ringbuffer import deadline_after, remaining

if TYPE_CHECKING:
    from flowagg.metrics import Metrics

log = logging.getLogger("flowagg.durable")

# Pause after a failed snapshot before the next attempt, so a persistent fault does not spin.
SNAPSHOT_RETRY_S = 5.0
# Free space under which a log that failed to append counts as unable to take requests.
LOG_ROOM_BYTES = 1024 * 1024
# Pause before trying again a snapshot put off for lack of disk space.
NO_ROOM_RETRY_S = 30.0


class DurableStore:
    """Owns a ``PartitionedStore`` (the tables and buffers), the log, the idempotency keys and the
    snapshot thread; a request reaches the memory store only once its record is in the log."""

    def __init__(
        self,
        directory: str | os.PathLike,
        partitions: int = 8,
        buffer_capacity: int = 262_144,
        fsync: str = "always",
        fsync_interval_s: float = 1.0,
        snapshot_bytes: int = 64 * 1024 * 1024,
        idempotency_ttl_s: float = 24 * 60 * 60,
        retention_hours: int | None = None,
        on_drain: DrainObserver | None = None,
        on_fsync: Callable[[float], None] | None = None,
        start: bool = True,
        clock: Callable[[], float] = time.time,
        max_query_rows: int | None = None,
        max_future_hours: int | None = None,
        max_keys: int | None = None,
        max_name_bytes: int | None = None,
        max_memory_bytes: int | None = None,
    ) -> None:
        self.memory = PartitionedStore(
            partitions,
            buffer_capacity,
            retention_hours,
            on_drain,
            start=False,
            max_query_rows=max_query_rows,
            max_future_hours=max_future_hours,
            max_keys=max_keys,
            max_name_bytes=max_name_bytes,
            clock=clock,
            max_memory_bytes=max_memory_bytes,
        )
        self.directory = Path(directory)
        self.snapshot_bytes = snapshot_bytes
        self._clock = clock
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_directory(self.directory)
        try:
            self._keys = IdempotencyKeys(idempotency_ttl_s)
            recovered = recover(self.directory, self.memory, self._keys, self._clock())
            self.memory.expire()  # what the log held of hours that left the window since
            self._wal = WriteAheadLog(
                self.directory, recovered.next_generation, fsync, fsync_interval_s, on_fsync
            )
        except BaseException:
            os.close(self._lock_fd)
            raise
        # The gate makes "append to the log, then enqueue" one step, so that partitions receive
        # flows in log order, and guards _keys, _closed and _compaction_requested.
        self._gate = threading.Lock()
        # Notified when the log outgrows snapshot_bytes and by close(); the snapshot thread
        # waits on it.
        self.compaction_due = threading.Condition(self._gate)
        self._compaction_requested = recovered.records > 0
        self._closed = False
        self._snapshot_thread: threading.Thread | None = None
        self._compactor = Compactor(self.directory, self.partitions, self._wal, self._keys, clock)
        if start:
            self.start()

    def start(self) -> None:
        """Start the drainers, the snapshot thread and (in interval mode) the fsync thread."""
        self.memory.start()
        self._wal.start()
        self._snapshot_thread = threading.Thread(
            target=self._run_snapshots, name="flowagg-snapshot", daemon=True
        )
        self._snapshot_thread.start()

    @property
    def closed(self) -> bool:
        with self._gate:
            return self._closed

    @property
    def partitions(self) -> list[Partition]:
        return self.memory.partitions

    def partition_for(self, hour: int) -> Partition:
        return self.memory.partition_for(hour)

    # -- reads: the memory store answers them ------------------------------------------------

    def read_hour(self, hour: int, timeout: float | None = None) -> list[Row]:
        return self.memory.read_hour(hour, timeout)

    def read_hour_json(self, hour: int, timeout: float | None = None) -> bytes:
        return self.memory.read_hour_json(hour, timeout)

    def top(self, query: Query, timeout: float | None = None) -> Top:
        return self.memory.top(query, timeout)

    def series(self, query: Query, timeout: float | None = None) -> Series:
        return self.memory.series(query, timeout)

    def hours_held(self, timeout: float | None = None) -> HoursHeld:
        return self.memory.hours_held(timeout)

    def flush(self, timeout: float | None = None) -> None:
        self.memory.flush(timeout)

    # -- ingest ----------------------------------------------------------------------------

    def ingest(
        self,
        flows: Sequence[Flow],
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Log the batch as one record, enqueue it, and return once it is durable.

        With a key already applied within the window, return the original count instead
        (after making sure that request is durable); raise ``KeyReused`` if that request had
        other flows.
        """
        if isinstance(flows, Slices):  # the log record needs every record: decoded at once
            flows = list(flows)
        now = self._clock()
        payload, fingerprint = encode_record(flows, idempotency_key, now)
        if idempotency_key is not None:
            # A retry of an applied request is answered before anything could refuse it (a full
            # buffer, an hour that has left the retention window since): it was applied.
            with self._gate:
                if self._closed:
                    raise Closed("store is closed")
                known = self._known(idempotency_key, fingerprint, now)
            if known is not None:
                self._commit(known[0])
                return known[1]
        flows = flows if isinstance(flows, list) else list(flows)
        self.memory.check(flows)
        parts = self.memory.split(flows)
        # Room first, outside the gate: waiting for a drainer must not hold up other requests,
        # and a request that gets no room (or would pass the key limit) never reaches the log.
        admission = self.memory.admit(parts, timeout)
        try:
            self.memory.reserve(parts, timeout)
        except BaseException:
            self.memory.cancel_admission(admission)
            raise
        enqueued = False
        try:
            with self._gate:
                if self._closed:
                    raise Closed("store is closed")
                known = None  # a duplicate that arrived while this request waited for room
                if idempotency_key is not None:
                    known = self._known(idempotency_key, fingerprint, now)
                if known is not None:
                    record, answer = known
                elif not flows and idempotency_key is None:
                    return 0
                else:
                    record, answer = self._append(payload), len(flows)
                    seqs = self.memory.put_reserved(parts)
                    enqueued = True
                    if idempotency_key is not None:
                        self._keys.add(idempotency_key, KeyEntry(now, answer, fingerprint), now)
                    if not self._compaction_requested and self._wal.size >= self.snapshot_bytes:
                        self._compaction_requested = True
                        self.compaction_due.notify()
        finally:
            if not enqueued:
                self.memory.cancel(parts)
                self.memory.cancel_admission(admission)
        if enqueued:
            self.memory.admitted(seqs, admission)
            self.memory.expire()
        self._commit(record)
        return answer

    def _known(self, key: str, fingerprint: int, now: float) -> tuple[int, int] | None:
        """For a key applied within the window: (record to wait for, the original answer).

        Caller holds the gate. Raises ``KeyReused`` if that request had other flows.
        """
        original = self._keys.get(key, now)
        if original is None:
            return None
        if original.fingerprint != fingerprint:
            raise KeyReused(
                f"Idempotency-Key {key!r} was already used for a request with other flows"
            )
        return self._wal.appended, original.accepted  # a record at or after the original

    def stats(self) -> StoreStats:
        return replace(self.memory.stats(), log_bytes=self._wal.size)

    def health(self, high_watermark: float) -> list[str]:
        problems = self.memory.health(high_watermark)
        failure, write_error = self._wal.failure, self._wal.write_error
        if failure is not None:
            problems.append(f"log: {failure}")
        elif write_error is not None and (free := free_bytes(self.directory)) < LOG_ROOM_BYTES:
            # Unready while the disk stays full; ready again once there is room, so that traffic
            # comes back (the next append then clears the error).
            problems.append(f"log: {write_error} ({free} bytes free in {self.directory})")
        elif not os.access(self.directory, os.W_OK):
            problems.append(f"log: directory {self.directory} is not writable")
        return problems

    def _append(self, payload: bytes) -> int:
        try:
            return self._wal.append(payload)
        except LogFailed as exc:
            raise Unavailable(str(exc)) from exc

    def _commit(self, record: int) -> None:
        try:
            self._wal.commit(record)
        except LogFailed as exc:
            raise Unavailable(str(exc)) from exc

    # -- compaction ------------------------------------------------------------------------

    def _run_snapshots(self) -> None:
        """The ``flowagg-snapshot`` thread: wait for a snapshot to be due, take it, repeat.

        A failed snapshot is retried with the same cut (still valid: skips only grow), so a
        persistent fault does not create a new log file per attempt.
        """
        cut: Cut | None = None
        while True:
            try:
                if cut is None:
                    if not self._wait_for_compaction():
                        return
                    self._compactor.check_room()  # before the log rotates: nothing is done
                    cut = self.begin_snapshot()
                self.write_snapshot(cut)
                cut = None
            except (Closed, LogFailed):
                return  # closing, or the log failed (logged where it failed; writes now fail)
            except NoRoom as exc:
                log.warning("snapshot put off: %s; trying again in %s s", exc, NO_ROOM_RETRY_S)
                retry = NO_ROOM_RETRY_S
            except Exception:
                log.exception("snapshot failed; retrying in %s s", SNAPSHOT_RETRY_S)
                retry = SNAPSHOT_RETRY_S
            else:
                continue
            deadline = time.monotonic() + retry
            with self.compaction_due:
                while not self._closed and (left := deadline - time.monotonic()) > 0:
                    self.compaction_due.wait(left)

    def _wait_for_compaction(self, timeout: float | None = None) -> bool:
        """Wait until a snapshot is due (True) or the store closes (False)."""
        deadline = deadline_after(timeout)
        with self.compaction_due:
            while not self._closed and not self._compaction_requested:
                left = remaining(deadline)
                if left == 0.0:
                    raise TimeoutError(f"no snapshot due within {timeout} s")
                self.compaction_due.wait(left)
            return not self._closed

    def compact_once(self, timeout: float | None = None) -> None:
        """Wait until a snapshot is due, then take it, in the calling thread."""
        if not self._wait_for_compaction(timeout):
            raise Closed("store is closed")
        self._compactor.check_room()
        self.write_snapshot(self.begin_snapshot())

    def begin_snapshot(self) -> Cut:
        """Rotate the log and note where each partition's buffer stands (step 1, compaction.py)."""
        self._wal.sync()  # the bulk of the current file, while ingestion goes on
        with self._gate:
            if self._closed:
                raise Closed("store is closed")
            cut = self._compactor.cut()  # nothing can be appended while the gate is held
            self._compaction_requested = False
        return cut

    def write_snapshot(self, cut: Cut, drain_timeout: float = SNAPSHOT_DRAIN_TIMEOUT_S) -> None:
        """Copy each partition at or after the cut and publish the snapshot (steps 2 and 3)."""
        self._compactor.write(cut, lambda: self.closed, drain_timeout)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new requests, drain every partition, stop the snapshot thread, fsync the log.

        Returns False if something did not finish within ``timeout`` seconds.
        """
        deadline = deadline_after(timeout)
        with self._gate:
            if self._closed:
                return True
            self._closed = True
            self.compaction_due.notify_all()
        ok = self.memory.close(remaining(deadline))
        thread = self._snapshot_thread
        if thread is not None:
            thread.join(remaining(deadline))
            if thread.is_alive():
                log.warning("flowagg-snapshot still running at close")
                ok = False
        try:
            ok = self._wal.close(remaining(deadline)) and ok
        finally:
            os.close(self._lock_fd)  # releases the directory lock
        log.info("store closed%s", "" if ok else " with errors (see above)")
        return ok


def open_durable_store(
    config: Mapping[str, Any],
    metrics: Metrics | None = None,
    clock: Callable[[], float] = time.time,
) -> DurableStore:
    """A durable store configured by the ``FLOWAGG_*`` settings (see config.py)."""
    return DurableStore(
        config["FLOWAGG_DATA_DIR"],
        partitions=config["FLOWAGG_PARTITIONS"],
        buffer_capacity=config["FLOWAGG_BUFFER_CAPACITY"],
        fsync=config["FLOWAGG_FSYNC"],
        fsync_interval_s=config["FLOWAGG_FSYNC_INTERVAL_MS"] / 1000,
        snapshot_bytes=config["FLOWAGG_SNAPSHOT_BYTES"],
        idempotency_ttl_s=config["FLOWAGG_IDEMPOTENCY_TTL_S"],
        retention_hours=config["FLOWAGG_RETENTION_HOURS"],
        on_drain=metrics.observe_drain if metrics else None,
        on_fsync=metrics.fsync_seconds.observe if metrics else None,
        max_query_rows=config["FLOWAGG_MAX_QUERY_ROWS"],
        max_future_hours=config["FLOWAGG_MAX_FUTURE_HOURS"],
        max_keys=config["FLOWAGG_MAX_KEYS"],
        max_name_bytes=config["FLOWAGG_MAX_NAME_BYTES"],
        max_memory_bytes=config["FLOWAGG_MAX_MEMORY_BYTES"],
        clock=clock,
    )
