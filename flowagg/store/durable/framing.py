"""Record framing, shared by logs and snapshots: file header, checksummed records, damage.

On-disk format, version 1 (integers little-endian). Logs (wal.py) and snapshots (snapshot.py)
frame records the same way, each kind of file with its own magic.

    +------------------+---------------+----------------+
    | magic (8 bytes)  | version (u32) | reserved (u32) |   file header, 16 bytes
    +------------------+---------------+----------------+
    | record | record | record | ...                        back to back up to the end of the file

    record
    +--------------------+--------------+-------------+--------------------------+
    | sync F1 0A 7E 5A   | length (u32) | crc32 (u32) | payload (length bytes)   |
    +--------------------+--------------+-------------+--------------------------+
    crc32 covers the length field and the payload; a payload is never empty.

A crash can only tear the end of the newest file: a record is written with one positioned write,
and a file is fsynced completely before the next one is created (``WriteAheadLog.rotate``). So
when a reader meets a damaged record it looks for the sync bytes of a valid record further on: if
there is none, the damage is a torn tail (``TornTail``) and is cut off; if there is one, something
in the middle is broken (``CorruptFile``) and start-up refuses rather than lose the records after
it. (0xF1 0x0A is never valid UTF-8, so the marker does not occur inside the text of a record.
Integers can still hold those bytes, so a client could in principle craft flows whose encoding
embeds a valid-looking record; were a crash to tear the record holding them, start-up would refuse
instead of cutting the tail, and an operator would truncate the file at the offset named.)
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

FORMAT_VERSION = 1
SYNC = b"\xf1\x0a\x7e\x5a"
_FILE_HEADER = struct.Struct("<8sII")  # magic, version, reserved
_RECORD_HEADER = struct.Struct("<4sII")  # sync, length, crc32
_LENGTH = struct.Struct("<I")
FILE_HEADER_SIZE = _FILE_HEADER.size
RECORD_HEADER_SIZE = _RECORD_HEADER.size
MAX_PAYLOAD = 2**31  # far above any accepted body; a larger length is damage


class CorruptFile(Exception):
    """A log or snapshot is damaged where no crash could have torn it: start-up refuses."""

    def __init__(self, path: Path, offset: int | None, reason: str) -> None:
        where = f"{path} is corrupt at byte offset {offset}" if offset is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.offset = offset


class TornTail(Exception):
    """A damaged record with no valid record after it in the same file."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"torn record at byte offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


# -- encoding and reading ------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    """One record: sync, length, crc32, payload."""
    length = _LENGTH.pack(len(payload))
    crc = zlib.crc32(payload, zlib.crc32(length))
    return _RECORD_HEADER.pack(SYNC, len(payload), crc) + payload


def file_header(magic: bytes) -> bytes:
    return _FILE_HEADER.pack(magic, FORMAT_VERSION, 0)


def check_file_header(data: bytes, magic: bytes, path: Path) -> None:
    """Refuse a file that is not ours or was written by another format version."""
    found, version, _ = _FILE_HEADER.unpack_from(data, 0)
    if found != magic:
        raise CorruptFile(path, 0, f"not a flowagg file (magic {found!r}, expected {magic!r})")
    if version != FORMAT_VERSION:
        raise CorruptFile(
            path, 0, f"format version {version}; this build reads version {FORMAT_VERSION}"
        )


def _damage_at(data: bytes, offset: int, end: int) -> str | None:
    """Why the record at ``offset`` is not valid, or None if it is."""
    if end - offset < RECORD_HEADER_SIZE:
        return f"incomplete record header ({end - offset} bytes)"
    sync, length, crc = _RECORD_HEADER.unpack_from(data, offset)
    if sync != SYNC:
        return "no record starts here (sync bytes missing)"
    if not 0 < length <= MAX_PAYLOAD:
        return f"implausible record length {length}"
    start = offset + RECORD_HEADER_SIZE
    if start + length > end:
        return f"record of {length} bytes runs past the end of the file"
    view = memoryview(data)[start : start + length]
    if zlib.crc32(view, zlib.crc32(_LENGTH.pack(length))) != crc:
        return "checksum mismatch"
    return None


def read_records(data: bytes, start: int, path: Path) -> Iterator[tuple[int, memoryview]]:
    """Yield ``(offset, payload)`` for each record from ``start`` to the end of ``data``.

    At a damaged record, raise ``TornTail`` if no valid record follows it, else ``CorruptFile``.
    """
    view = memoryview(data)
    end = len(view)
    offset = start
    while offset < end:
        reason = _damage_at(data, offset, end)
        if reason is not None:
            resumes = _next_valid_record(data, offset + 1, end)
            if resumes is None:
                raise TornTail(offset, reason)
            raise CorruptFile(path, offset, f"{reason}; a valid record follows at offset {resumes}")
        length = _LENGTH.unpack_from(data, offset + 4)[0]
        payload_start = offset + RECORD_HEADER_SIZE
        yield offset, view[payload_start : payload_start + length]
        offset = payload_start + length


def _next_valid_record(data: bytes, offset: int, end: int) -> int | None:
    while True:
        offset = data.find(SYNC, offset, end)
        if offset < 0:
            return None
        if _damage_at(data, offset, end) is None:
            return offset
        offset += 1
