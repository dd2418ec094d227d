"""The durable store: a PartitionedStore fed through a log, each request logged before its answer.

Ingest. A POST's validated flows become ONE log record (with its idempotency key), so a request is
whole or absent after a crash, whatever partitions it touches. Room in every partition it touches
is reserved first, outside the gate, so a request that gets no room never reaches the log. Under
the gate the record is appended to the log and then its parts are put in their reserved room; the
POST then waits outside the gate until the record is as durable as ``FLOWAGG_FSYNC`` promises
(group commit in wal.py). Because append and enqueue happen together under one lock, every
partition receives its flows in log order; the snapshot cut below rests on that.

Compaction. When the log outgrows ``FLOWAGG_SNAPSHOT_BYTES`` the ``flowagg-snapshot`` thread:
  1. fsyncs the log (ingestion continues), then under the gate fsyncs what arrived meanwhile,
     rotates to log G and notes each partition's buffer sequence number cut_i. The gate is held
     for one small fsync and a file creation.
  2. For each partition: waits until its drainer has applied cut_i, then copies its tables under
     the read lock together with the sequence number applied_i of the last flow they hold (the
     drainer writes that number under the write lock, with the merge). The drainer does not stop
     at cut_i, so the copy also holds the first applied_i - cut_i flows that partition received
     from log G -- by the ordering above, exactly its first flows in log G's record order. That
     count is the partition's ``skip``, stored in the snapshot.
  3. Adds the idempotency keys of the logs before G (set apart at the cut and written without
     the gate; the keys of log G are replayed from it), fsyncs the snapshot's temporary file,
     fsyncs the log once more (so every flow the snapshot holds is in a record on disk: no crash
     can then leave half a request), renames the snapshot into place, fsyncs the directory and
     deletes the logs and snapshots before G.
Replay loads the snapshot, then replays logs G, G+1, ...; in log G it drops each partition's
first skip_i flows (routing by the partition count the snapshot was taken with). So every flow
is counted exactly once, whatever the drainers did during the copy, and restart time and disk use
are bounded by the number of distinct rows plus FLOWAGG_SNAPSHOT_BYTES of log.

Start-up (``_recover``) takes the directory lock, loads the newest snapshot, replays the logs after
it (cutting a torn tail off the newest one, refusing any other damage), then opens a new log; the
app accepts traffic only after that. If anything was replayed, a snapshot follows in the
background, so repeated restarts do not pile up logs.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import operator
import os
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from flowagg.schema import Flow
from flowagg.store.base import Closed, KeyReused, Row, StoreStats, Unavailable
from flowagg.store.durable.idempotency import IdempotencyKeys, KeyEntry
from flowagg.store.durable.snapshot import SnapshotWriter, load_snapshot, snapshot_path
from flowagg.store.memory import PartitionedStore
from flowagg.store.partition import DrainObserver, Partition
from flowagg.store.ringbuffer import deadline_after, remaining
from flowagg.store.table import Sums

if TYPE_CHECKING:
    from flowagg.metrics import Metrics
from flowagg.store.durable.wal import (
    FILE_HEADER_SIZE,
    LOG_MAGIC,
    CorruptFile,
    LogFailed,
    TornTail,
    WriteAheadLog,
    check_file_header,
    file_header,
    log_path,
    read_records,
)

log = logging.getLogger("flowagg.durable")

LOCK_FILE = "LOCK"
# How long a snapshot waits for a drainer to apply the flows before the cut, before giving up
# (and retrying later with a new cut).
SNAPSHOT_DRAIN_TIMEOUT_S = 120.0
# Pause after a failed snapshot before the next attempt, so a persistent fault does not spin.
SNAPSHOT_RETRY_S = 5.0


# -- log records -----------------------------------------------------------------------------


class LoggedFlow(msgspec.Struct, array_like=True, gc=False):
    """A flow as stored in the log: ``schema.Flow``'s fields in order, as an array.

    Partitions read only these attributes, so replay hands them over as they are.
    """

    src_app: str
    dest_app: str
    vpc_id: str
    bytes_tx: int
    bytes_rx: int
    hour: int


class LogRecord(msgspec.Struct, array_like=True, gc=False):
    """One accepted request: ``[flows, key, accepted_at, fingerprint]`` in msgpack."""

    flows: list[LoggedFlow]
    key: str | None
    accepted_at: float  # unix time, for the idempotency window
    fingerprint: int  # crc32 of the encoded flows when keyed, else 0


_flow_fields = operator.attrgetter(*Flow.__struct_fields__)
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(LogRecord)


def encode_record(flows: Sequence[Flow], key: str | None, now: float) -> tuple[bytes, int]:
    """The log record of a request, and the fingerprint of its flows (0 without a key)."""
    encoded = _encoder.encode(list(map(_flow_fields, flows)))
    fingerprint = zlib.crc32(encoded) if key is not None else 0
    return _encoder.encode((msgspec.Raw(encoded), key, now, fingerprint)), fingerprint


def decode_record(payload: memoryview | bytes) -> LogRecord:
    return _decoder.decode(payload)


class Cut(NamedTuple):
    generation: int  # the first log the snapshot does not wholly contain
    seqs: list[int]  # per partition: buffer sequence number of its last flow before that log


# -- the store -------------------------------------------------------------------------------


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
    ) -> None:
        self.memory = PartitionedStore(
            partitions, buffer_capacity, retention_hours, on_drain, start=False
        )
        self.directory = Path(directory)
        self.snapshot_bytes = snapshot_bytes
        self._clock = clock
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock_directory(self.directory)
        try:
            self._keys = IdempotencyKeys(idempotency_ttl_s)
            recovered = self._recover()
            self.memory.restore_window()
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

    def window(self) -> tuple[int, int] | None:
        return self.memory.window()

    # -- reads: the memory store answers them ------------------------------------------------

    def read_hour(self, hour: int, timeout: float | None = None) -> list[Row]:
        return self.memory.read_hour(hour, timeout)

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
        newest = self.memory.check_hours(flows)
        parts = self.memory.split(flows)
        # Room first, outside the gate: waiting for a drainer must not hold up other requests,
        # and a request that gets no room must never reach the log.
        self.memory.reserve(parts, timeout)
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
                    self.memory.put_reserved(parts)
                    enqueued = True
                    if idempotency_key is not None:
                        self._keys.add(idempotency_key, KeyEntry(now, answer, fingerprint), now)
                    if not self._compaction_requested and self._wal.size >= self.snapshot_bytes:
                        self._compaction_requested = True
                        self.compaction_due.notify()
        finally:
            if not enqueued:
                self.memory.cancel(parts)
        if enqueued and newest is not None:
            self.memory.advance_window(newest)
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
        failure = self._wal.failure
        if failure is not None:
            problems.append(f"log: {failure}")
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
                    cut = self.begin_snapshot()
                self.write_snapshot(cut)
                cut = None
            except (Closed, LogFailed):
                return  # closing, or the log failed (logged where it failed; writes now fail)
            except Exception:
                log.exception("snapshot failed; retrying in %s s", SNAPSHOT_RETRY_S)
                deadline = time.monotonic() + SNAPSHOT_RETRY_S
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
        self.write_snapshot(self.begin_snapshot())

    def begin_snapshot(self) -> Cut:
        """Rotate the log and note where each partition's buffer stands (step 1 above)."""
        self._wal.sync()  # the bulk of the current file, while ingestion goes on
        with self._gate:
            if self._closed:
                raise Closed("store is closed")
            self._wal.sync()  # the rest: nothing can be appended while the gate is held
            generation = self._wal.rotate()
            seqs = [p.buffer.put_seq for p in self.partitions]
            self._keys.seal()
            self._compaction_requested = False
        return Cut(generation, seqs)

    def write_snapshot(self, cut: Cut, drain_timeout: float = SNAPSHOT_DRAIN_TIMEOUT_S) -> None:
        """Copy each partition at or after the cut and publish the snapshot (steps 2 and 3)."""
        started = time.monotonic()
        writer = SnapshotWriter(self.directory, cut.generation)
        try:
            skip = []
            for partition, seq in zip(self.partitions, cut.seqs, strict=True):
                with self._gate:
                    if self._closed:
                        raise Closed("store is closing")
                partition.wait_applied(seq, drain_timeout)
                tables, applied = partition.copy_tables()
                skip.append(applied - seq)
                for hour, rows in tables.items():
                    writer.add_rows(hour, rows)
                del tables
            self._keys.fold(self._clock())  # without the gate: see IdempotencyKeys
            writer.add_keys(self._keys.snapshot_items())
            writer.finish(cut.generation, len(self.partitions), skip)
            self._wal.sync()  # every flow the snapshot holds is now in a record on disk
            writer.publish()
        except BaseException:
            writer.abort()
            raise
        removed = _remove_before(self.directory, cut.generation)
        log.info(
            "snapshot %s: %d rows, %d keys in %.2f s; removed %d older files",
            writer.path.name,
            writer.rows,
            writer.keys,
            time.monotonic() - started,
            removed,
        )

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

    # -- start-up --------------------------------------------------------------------------

    def _recover(self) -> Recovered:
        """Load the newest snapshot, then replay the logs after it (see the module docstring)."""
        started = time.monotonic()
        directory, now = self.directory, self._clock()
        for leftover in directory.glob("*.tmp"):  # a snapshot that was never published
            leftover.unlink()
        snapshots = _generations(directory, "snapshot-", ".snap")
        base, skip, partitions, rows = 1, [0], 1, 0
        if snapshots:
            path = snapshot_path(directory, snapshots[-1])
            end = load_snapshot(path, self._load_rows, lambda k, e: self._keys.add(k, e, now))
            if end.generation != snapshots[-1] or len(end.skip) != end.partitions:
                raise CorruptFile(path, path.stat().st_size, "end record contradicts the file")
            base, skip, partitions, rows = end.generation, end.skip, end.partitions, end.rows
        replay = _logs_from(directory, base, needed=any(skip))
        records = 0
        for generation in replay:
            path = log_path(directory, generation)
            pending = skip if generation == base else [0]
            apply = functools.partial(self._replay, skip=pending, partitions=partitions, now=now)
            records += _replay_log(path, last=generation == replay[-1], apply=apply)
            if any(pending):
                raise CorruptFile(
                    path,
                    path.stat().st_size,
                    f"the snapshot holds {sum(pending)} more flows of this log than it has",
                )
        _remove_before(directory, base)
        log.info(
            "recovered %d rows from %s and %d records from %d log files in %.2f s",
            rows,
            f"snapshot {snapshots[-1]}" if snapshots else "no snapshot",
            records,
            len(replay),
            time.monotonic() - started,
        )
        return Recovered(replay[-1] + 1 if replay else base, records)

    def _load_rows(self, hour: int, sums: Sums) -> None:
        self.memory.partition_for(hour).load({hour: sums})

    def _replay(self, record: LogRecord, skip: list[int], partitions: int, now: float) -> None:
        """Apply one log record, less the flows the snapshot already holds (counted in skip)."""
        flows: Sequence[LoggedFlow] = record.flows
        if any(skip):
            flows = _drop_snapshotted(flows, skip, partitions)
        for index, part in self.memory.split(flows).items():  # type: ignore[arg-type]
            self.partitions[index].apply(part)
        if record.key is not None:
            entry = KeyEntry(record.accepted_at, len(record.flows), record.fingerprint)
            self._keys.add(record.key, entry, now)


class Recovered(NamedTuple):
    next_generation: int  # of the log to open
    records: int  # log records replayed


class DataDirInUse(RuntimeError):
    """Another process holds the data directory's lock."""


def _lock_directory(directory: Path) -> int:
    """Hold an exclusive lock on ``directory``/LOCK for the store's lifetime."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirInUse(
            f"FLOWAGG_DATA_DIR={str(directory)!r} is in use by another flowagg process"
        ) from None
    return fd


def _generations(directory: Path, prefix: str, suffix: str) -> list[int]:
    found = []
    for path in directory.glob(f"{prefix}*{suffix}"):
        number = path.name[len(prefix) : -len(suffix)]
        if number.isdigit():
            found.append(int(number))
    return sorted(found)


def _remove_before(directory: Path, generation: int) -> int:
    """Delete the logs and snapshots that a snapshot of ``generation`` made obsolete."""
    removed = 0
    kinds = (("wal-", ".log", log_path), ("snapshot-", ".snap", snapshot_path))
    for prefix, suffix, path_of in kinds:
        for older in _generations(directory, prefix, suffix):
            if older < generation:
                path_of(directory, older).unlink(missing_ok=True)
                removed += 1
    return removed


# -- recovery --------------------------------------------------------------------------------


def _logs_from(directory: Path, base: int, needed: bool) -> list[int]:
    """Generations of the logs to replay: ``base`` and every one after it, with no gap."""
    logs = [g for g in _generations(directory, "wal-", ".log") if g >= base]
    for expected, found in enumerate(logs, start=base):
        if found != expected:
            raise CorruptFile(log_path(directory, expected), None, "missing; later logs exist")
    if needed and not logs:
        raise CorruptFile(log_path(directory, base), None, "missing; the snapshot needs it")
    return logs


def _drop_snapshotted(
    flows: Sequence[LoggedFlow], skip: list[int], partitions: int
) -> list[LoggedFlow]:
    """Drop each partition's first ``skip[i]`` flows (the snapshot holds them); updates skip."""
    kept = []
    for flow in flows:
        index = flow.hour % partitions
        if skip[index]:
            skip[index] -= 1
        else:
            kept.append(flow)
    return kept


def _replay_log(path: Path, last: bool, apply: Callable[[LogRecord], None]) -> int:
    """Apply every record of one log file; returns how many. Cuts a torn tail off the newest."""
    data = path.read_bytes()
    if len(data) < FILE_HEADER_SIZE:
        if not last:
            raise CorruptFile(path, 0, f"only {len(data)} bytes, shorter than the file header")
        log.warning("%s: torn file header: rewriting its %d bytes", path, len(data))
        _truncate(path, 0, header=file_header(LOG_MAGIC))
        return 0
    check_file_header(data, LOG_MAGIC, path)
    count = 0
    try:
        for offset, payload in read_records(data, FILE_HEADER_SIZE, path):
            try:
                record = decode_record(payload)
            except msgspec.DecodeError as exc:
                raise CorruptFile(path, offset, f"undecodable record: {exc}") from None
            apply(record)
            count += 1
    except TornTail as torn:
        if not last:
            raise CorruptFile(
                path, torn.offset, f"{torn.reason} (in a log that a newer one follows)"
            ) from None
        log.warning(
            "%s: torn tail at byte offset %d (%s): cutting off %d bytes",
            path,
            torn.offset,
            torn.reason,
            len(data) - torn.offset,
        )
        _truncate(path, torn.offset)
    return count


def _truncate(path: Path, size: int, header: bytes = b"") -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        if header:
            os.pwrite(fd, header, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def open_durable_store(config: Mapping[str, Any], metrics: Metrics | None = None) -> DurableStore:
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
    )
