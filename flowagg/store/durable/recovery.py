"""Start-up: load the newest snapshot, then replay the logs after it.

Replay loads the snapshot of generation G, then replays logs G, G+1, ...; in log G it drops each
partition's first skip_i flows, which the snapshot already holds (routing by the partition count
the snapshot was taken with; compaction.py explains why that count is exact). So every flow is
counted exactly once, and restart time is bounded by the number of distinct rows plus
``FLOWAGG_SNAPSHOT_BYTES`` of log.

A damaged record at the end of the newest log with no valid record after it is what a crash
mid-write leaves: it is cut off, with a warning. Any other damage (in an older log, in the middle
of the newest, in a snapshot; a missing log; another format version) raises ``CorruptFile`` naming
the file and offset, and nothing is changed.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import msgspec

from flowagg.store.base import Row
from flowagg.store.durable.directory import generations, remove_before
from flowagg.store.durable.framing import (
    FILE_HEADER_SIZE,
    CorruptFile,
    TornTail,
    check_file_header,
    file_header,
    read_records,
)
from flowagg.store.durable.idempotency import IdempotencyKeys, KeyEntry
from flowagg.store.durable.records import LoggedFlow, LogRecord, decode_record
from flowagg.store.durable.snapshot import load_snapshot, snapshot_path
from flowagg.store.durable.wal import LOG_MAGIC, log_path
from flowagg.store.memory import PartitionedStore

log = logging.getLogger("flowagg.durable")


class Recovered(NamedTuple):
    next_generation: int  # of the log to open
    records: int  # log records replayed


def recover(
    directory: Path, memory: PartitionedStore, keys: IdempotencyKeys, now: float
) -> Recovered:
    """Fill ``memory`` and ``keys`` from the newest snapshot and the logs after it."""

    def load_rows(hour: int, rows: list[Row]) -> None:
        memory.partition_for(hour).load(hour, rows)

    started = time.monotonic()
    for leftover in directory.glob("*.tmp"):  # a snapshot that was never published
        leftover.unlink()
    snapshots = generations(directory, "snapshot-", ".snap")
    base, skip, partitions, rows = 1, [0], 1, 0
    if snapshots:
        path = snapshot_path(directory, snapshots[-1])
        end = load_snapshot(path, load_rows, lambda k, e: keys.add(k, e, now))
        if end.generation != snapshots[-1] or len(end.skip) != end.partitions:
            raise CorruptFile(path, path.stat().st_size, "end record contradicts the file")
        base, skip, partitions, rows = end.generation, end.skip, end.partitions, end.rows
    replay = _logs_from(directory, base, needed=any(skip))
    records = 0
    for generation in replay:
        path = log_path(directory, generation)
        pending = skip if generation == base else [0]
        apply = functools.partial(
            _replay, memory=memory, keys=keys, skip=pending, partitions=partitions, now=now
        )
        records += _replay_log(path, last=generation == replay[-1], apply=apply)
        if any(pending):
            raise CorruptFile(
                path,
                path.stat().st_size,
                f"the snapshot holds {sum(pending)} more flows of this log than it has",
            )
    remove_before(directory, base)
    log.info(
        "recovered %d rows from %s and %d records from %d log files in %.2f s",
        rows,
        f"snapshot {snapshots[-1]}" if snapshots else "no snapshot",
        records,
        len(replay),
        time.monotonic() - started,
    )
    return Recovered(replay[-1] + 1 if replay else base, records)


def _replay(
    record: LogRecord,
    memory: PartitionedStore,
    keys: IdempotencyKeys,
    skip: list[int],
    partitions: int,
    now: float,
) -> None:
    """Apply one log record, less the flows the snapshot already holds (counted in skip)."""
    flows: Sequence[LoggedFlow] = record.flows
    if any(skip):
        flows = _drop_snapshotted(flows, skip, partitions)
    for index, part in memory.split(flows).items():  # type: ignore[arg-type]
        memory.partitions[index].apply(part)
    if record.key is not None:
        entry = KeyEntry(record.accepted_at, len(record.flows), record.fingerprint)
        keys.add(record.key, entry, now)


def _logs_from(directory: Path, base: int, needed: bool) -> list[int]:
    """Generations of the logs to replay: ``base`` and every one after it, with no gap."""
    logs = [g for g in generations(directory, "wal-", ".log") if g >= base]
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
