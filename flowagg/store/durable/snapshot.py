"""Snapshot files: every table and idempotency key as of one cut of the log.

    snapshot-<generation, 20 digits>.snap
    +------------------+---------------+----------------+
    | magic "FLOWAGGS" | version (u32) | reserved (u32) |   file header, 16 bytes
    +------------------+---------------+----------------+
    | record | record | ... | end record |                 records framed as in the log (framing.py)

    record payloads, msgpack arrays tagged by their first element:
      ["rows", hour, wide, [[src_app, dest_app, vpc_id, bytes_tx, bytes_rx], ...]]  <= 10,000 rows
      ["keys", [[key, [accepted_at, accepted, fingerprint]], ...]]                   <= 10,000 keys
      ["end", generation, partitions, [skip_0, ..., skip_P-1], rows, keys]           always last

The snapshot holds every flow of the logs before ``generation`` and, for each partition i of the
``partitions`` there were when it was taken, the first skip_i flows that partition received from
log ``generation``; replay skips exactly those (compaction.py explains why). Sums are exact at any
size: a chunk with a counter of 2**64 or more (``wide``) carries its counters as decimal strings.

A snapshot is written to a temporary file, fsynced, renamed into place and the directory fsynced,
so it is either whole or absent; any damage in one makes start-up refuse.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import msgspec

from flowagg.store.base import Row
from flowagg.store.durable.framing import (
    FILE_HEADER_SIZE,
    RECORD_HEADER_SIZE,
    CorruptFile,
    TornTail,
    check_file_header,
    file_header,
    frame,
    read_records,
)
from flowagg.store.durable.idempotency import KeyEntry
from flowagg.store.durable.wal import fsync_dir

SNAPSHOT_MAGIC = b"FLOWAGGS"
CHUNK = 10_000  # rows or keys per record
_U64_MAX = 2**64 - 1


class RowsChunk(msgspec.Struct, array_like=True, tag="rows"):
    hour: int
    wide: bool  # counters are decimal strings (some did not fit in 64 bits)
    rows: list[tuple[str, str, str, int | str, int | str]]


class KeysChunk(msgspec.Struct, array_like=True, tag="keys"):
    keys: list[tuple[str, KeyEntry]]


class End(msgspec.Struct, array_like=True, tag="end"):
    generation: int  # the first log not wholly in the snapshot
    partitions: int  # how many partitions ``skip`` counts for
    skip: list[int]  # per partition: its first flows of log ``generation`` already included
    rows: int
    keys: int


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RowsChunk | KeysChunk | End)


def snapshot_path(directory: Path, generation: int) -> Path:
    return directory / f"snapshot-{generation:020d}.snap"


class SnapshotWriter:
    """Writes ``snapshot-<generation>.snap.tmp``; ``publish`` renames it into place."""

    def __init__(self, directory: Path, generation: int) -> None:
        self.directory = directory
        self.path = snapshot_path(directory, generation)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.rows = 0
        self.keys = 0
        self._file = open(self.tmp_path, "wb", buffering=1 << 20)  # noqa: SIM115 (closed below)
        self._file.write(file_header(SNAPSHOT_MAGIC))

    def _write(self, record: msgspec.Struct) -> None:
        self._file.write(frame(_encoder.encode(record)))

    def add_rows(self, hour: int, rows: Sequence[Row]) -> None:
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            try:
                payload = _encoder.encode(RowsChunk(hour, False, chunk))
            except OverflowError:
                wide = [(s, d, v, str(tx), str(rx)) for s, d, v, tx, rx in chunk]
                payload = _encoder.encode(RowsChunk(hour, True, wide))
            self._file.write(frame(payload))
            self.rows += len(chunk)

    def add_keys(self, entries: Iterable[tuple[str, KeyEntry]]) -> None:
        entries = iter(entries)
        while chunk := list(itertools.islice(entries, CHUNK)):
            self._write(KeysChunk(chunk))
            self.keys += len(chunk)

    def finish(self, generation: int, partitions: int, skip: list[int]) -> None:
        """Write the end record and fsync the temporary file."""
        self._write(End(generation, partitions, skip, self.rows, self.keys))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def publish(self) -> None:
        """Rename into place and fsync the directory: from now on start-up uses this snapshot."""
        os.replace(self.tmp_path, self.path)
        fsync_dir(self.directory)

    def abort(self) -> None:
        """Remove the temporary file, whatever state the write left it in (a full disk makes
        close() fail while flushing: the file must go all the same, or it keeps the disk full)."""
        try:
            self._file.close()
        except OSError:
            pass  # the data is being thrown away; only the file's removal matters
        finally:
            self.tmp_path.unlink(missing_ok=True)


def load_snapshot(
    path: Path,
    on_rows: Callable[[int, list[Row]], None],
    on_key: Callable[[str, KeyEntry], None],
) -> End:
    """Read a snapshot, handing each hour's rows and each key to the callbacks.

    Raises ``CorruptFile`` naming the offset of any damage: unlike a log's tail, a snapshot is
    never torn by a crash, so nothing in it is cut off silently.
    """
    data = path.read_bytes()
    if len(data) < FILE_HEADER_SIZE:
        raise CorruptFile(path, 0, f"only {len(data)} bytes, shorter than the file header")
    check_file_header(data, SNAPSHOT_MAGIC, path)
    rows = keys = 0
    offset = FILE_HEADER_SIZE
    try:
        for offset, payload in read_records(data, FILE_HEADER_SIZE, path):
            try:
                record = _decoder.decode(payload)
            except msgspec.DecodeError as exc:
                raise CorruptFile(path, offset, f"undecodable record: {exc}") from None
            if isinstance(record, End):
                if offset + RECORD_HEADER_SIZE + len(payload) != len(data):
                    raise CorruptFile(path, offset, "data after the end record")
                if (record.rows, record.keys) != (rows, keys):
                    raise CorruptFile(
                        path,
                        offset,
                        f"end record counts {record.rows} rows and {record.keys} keys, "
                        f"the file holds {rows} and {keys}",
                    )
                return record
            if isinstance(record, RowsChunk):
                chunk = record.rows
                if record.wide:
                    chunk = [(s, d, v, int(tx), int(rx)) for s, d, v, tx, rx in chunk]
                on_rows(record.hour, chunk)
                rows += len(record.rows)
            else:
                for key, entry in record.keys:
                    on_key(key, entry)
                keys += len(record.keys)
    except TornTail as torn:
        raise CorruptFile(path, torn.offset, torn.reason) from None
    raise CorruptFile(path, len(data), "no end record: the snapshot is incomplete")
