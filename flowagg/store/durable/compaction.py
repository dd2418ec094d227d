"""Compaction: a snapshot of every table and key replaces the logs before it.

When the log outgrows ``FLOWAGG_SNAPSHOT_BYTES`` the store's ``flowagg-snapshot`` thread:
  1. fsyncs the log (ingestion continues), then under the gate fsyncs what arrived meanwhile,
     rotates to log G and notes each partition's buffer sequence number cut_i. The gate is held
     for one small fsync and a file creation.
  2. For each partition: waits until its drainer has applied cut_i, then copies its tables under
     the read lock together with the sequence number applied_i of the last flow they hold (the
     drainer writes that number under the write lock, with the merge). The drainer does not stop
     at cut_i, so the copy also holds the first applied_i - cut_i flows that partition received
     from log G -- by the ordering the gate gives (store.py), exactly its first flows in log G's
     record order. That count is the partition's ``skip``, stored in the snapshot.
  3. Adds the idempotency keys of the logs before G (set apart at the cut and written without
     the gate; the keys of log G are replayed from it), fsyncs the snapshot's temporary file,
     fsyncs the log once more (so every flow the snapshot holds is in a record on disk: no crash
     can then leave half a request), renames the snapshot into place, fsyncs the directory and
     deletes the logs and snapshots before G.
Replay (recovery.py) drops those skip_i flows from log G, so every flow is counted exactly once
whatever the drainers did during the copy, and disk use is bounded by the number of distinct rows
plus FLOWAGG_SNAPSHOT_BYTES of log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from flowagg.store.base import Closed
from flowagg.store.durable.directory import free_bytes, remove_before
from flowagg.store.durable.idempotency import IdempotencyKeys
from flowagg.store.durable.snapshot import SnapshotWriter
from flowagg.store.durable.wal import WriteAheadLog
from flowagg.store.partition import Partition

log = logging.getLogger("flowagg.durable")

# How long a snapshot waits for a drainer to apply the flows before the cut, before giving up
# (and retrying later with a new cut).
SNAPSHOT_DRAIN_TIMEOUT_S = 120.0
# What a snapshot is taken to need on disk, per row and per key (about twice what they take,
# names included): it is not begun without that room and as much again for the log.
SNAPSHOT_BYTES_PER_ROW = 96
SNAPSHOT_BYTES_PER_KEY = 128


class NoRoom(OSError):
    """Too little free space to write a snapshot without filling the disk; nothing written."""


class Cut(NamedTuple):
    generation: int  # the first log the snapshot does not wholly contain
    seqs: list[int]  # per partition: buffer sequence number of its last flow before that log


class Compactor:
    """Takes the snapshots of one durable store's partitions, log and keys."""

    def __init__(
        self,
        directory: Path,
        partitions: Sequence[Partition],
        wal: WriteAheadLog,
        keys: IdempotencyKeys,
        clock: Callable[[], float],
    ) -> None:
        self.directory = directory
        self.partitions = partitions
        self.wal = wal
        self.keys = keys
        self._clock = clock

    def check_room(self) -> None:
        """Raise ``NoRoom`` unless the disk has room for a snapshot of what is held now."""
        rows = sum(p.keys_held for p in self.partitions)
        need = 2 * (rows * SNAPSHOT_BYTES_PER_ROW + len(self.keys) * SNAPSHOT_BYTES_PER_KEY)
        free = free_bytes(self.directory)
        if free < need:
            raise NoRoom(
                f"a snapshot of {rows} rows needs about {need} bytes free, {free} are"
                f" in {self.directory}"
            )

    def cut(self) -> Cut:
        """Rotate the log and note where each partition's buffer stands (step 1).

        The caller holds the store's gate, so nothing is appended meanwhile.
        """
        self.wal.sync()  # the rest of the current file
        generation = self.wal.rotate()
        seqs = [p.buffer.put_seq for p in self.partitions]
        self.keys.seal()
        return Cut(generation, seqs)

    def write(
        self, cut: Cut, closed: Callable[[], bool], drain_timeout: float = SNAPSHOT_DRAIN_TIMEOUT_S
    ) -> None:
        """Copy each partition at or after the cut and publish the snapshot (steps 2 and 3).

        Stops with ``Closed`` before the next partition once ``closed()`` is true. Raises
        ``NoRoom`` before writing anything if the disk lacks room for it: a snapshot that filled
        the disk would make the log's appends fail until it was removed.
        """
        started = time.monotonic()
        self.check_room()
        writer = SnapshotWriter(self.directory, cut.generation)
        try:
            skip = []
            for partition, seq in zip(self.partitions, cut.seqs, strict=True):
                if closed():
                    raise Closed("store is closing")
                partition.wait_applied(seq, drain_timeout)
                tables, applied = partition.copy_tables()
                skip.append(applied - seq)
                for hour, rows in tables.items():
                    writer.add_rows(hour, rows)
                del tables
            self.keys.fold(self._clock())  # without the gate: see IdempotencyKeys
            writer.add_keys(self.keys.snapshot_items())
            writer.finish(cut.generation, len(self.partitions), skip)
            self.wal.sync()  # every flow the snapshot holds is now in a record on disk
            writer.publish()
        except BaseException:
            writer.abort()
            raise
        removed = remove_before(self.directory, cut.generation)
        log.info(
            "snapshot %s: %d rows, %d keys in %.2f s; removed %d older files",
            writer.path.name,
            writer.rows,
            writer.keys,
            time.monotonic() - started,
            removed,
        )
