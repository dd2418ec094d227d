"""One log file being read: plain or gzip, in chunks of whole lines, from a byte offset of its
(decompressed) text.

A line is handed out only with its newline: the end of a plain file that has none yet waits
for it (the writer may be in the middle of the line), and is reported, never shipped cut. A
``.gz`` file is complete by nature: its last line is handed out at the end of the stream,
newline or not, and the file is not read again once finished.
"""

from __future__ import annotations

import os
import zlib

from flowagg.ship.records import Format, detect
from flowagg.ship.state import Identity, identify

CHUNK = 1 << 20  # bytes read at a time
FIRST_LINE_MAX = 64 * 1024  # a header longer than this is not one
LINE_MAX = 1 << 20  # a flow log line is a few hundred bytes at most


class SourceError(Exception):
    """A file cannot be read on (a damaged gzip stream, an I/O error)."""


class _Gunzip:
    """``read(n)``: the next decompressed bytes of a gzip file (its members in turn); b"" at
    the end of the last one."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self.inflater = zlib.decompressobj(31)
        self.finished = False

    def read(self, n: int) -> bytes:
        while not self.finished:
            if self.inflater.eof:
                data = self.inflater.unused_data or self.raw.read(CHUNK)
                if not data:
                    self.finished = True
                    return b""
                self.inflater = zlib.decompressobj(31)
            else:
                data = self.inflater.unconsumed_tail or self.raw.read(CHUNK)
                if not data:
                    raise SourceError("the file ends before its gzip stream does")
            try:
                out = self.inflater.decompress(data, n)
            except zlib.error as exc:
                raise SourceError(f"not a valid gzip stream: {exc}") from None
            if out:
                return out
        return b""


class Source:
    """``path`` opened for reading; ``identity`` is None for an empty file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.gz = path.endswith(".gz")
        self.raw = open(path, "rb")  # noqa: SIM115 (closed by close())
        try:
            self.stat = os.fstat(self.raw.fileno())
            self.identity: Identity | None = identify(self.raw, self.stat)
        except BaseException:
            self.raw.close()
            raise
        self.stream = _Gunzip(self.raw) if self.gz else self.raw
        self.offset = 0  # offset of the first byte not yet handed out in a line
        self._tail = b""  # bytes after the last newline read (offset .. offset + len)
        self.fmt: Format | None = None
        self.crlf = False  # the lines read last hold a carriage return
        self.header_end = 0  # offset of the first record

    def close(self) -> None:
        self.raw.close()

    @property
    def finished(self) -> bool:
        """A .gz file read to its end (a plain file is never finished: it may grow)."""
        return self.gz and self.stream.finished and not self._tail

    @property
    def unterminated(self) -> int:
        """Bytes read after the last newline, waiting for it."""
        return len(self._tail)

    def disk_position(self) -> int:
        return self.raw.tell()

    def start(self, default: tuple[str, ...], offset: int) -> None:
        """Read the format from the first line, then go to ``offset`` (at least past the
        header). Raises FormatError for a header without a needed field."""
        first = self._read_raw(FIRST_LINE_MAX)
        newline = first.find(b"\n")
        line = first if newline < 0 else first[:newline]
        self.fmt = detect(line, default)
        self.header_end = newline + 1 if self.fmt.header and newline >= 0 else 0
        if self.fmt.header and newline < 0:
            self.header_end = len(first) + 1  # a header without a newline: nothing follows yet
        offset = max(offset, self.header_end)
        if self.gz:
            self._tail = first
            self._skip(offset)
        else:
            self.raw.seek(offset)
            self.offset = offset
            self._tail = b""

    def _read_raw(self, n: int) -> bytes:
        self.raw.seek(0)
        if self.gz:
            self.stream = _Gunzip(self.raw)
            return self.stream.read(n)
        return self.raw.read(n)

    def _skip(self, offset: int) -> None:
        """Decompress and drop the text before ``offset`` (``_tail`` holds text from 0)."""
        self.offset = 0
        while self.offset + len(self._tail) < offset:
            self.offset += len(self._tail)
            self._tail = self.stream.read(CHUNK)
            if not self._tail:
                raise SourceError(f"the file holds less than the {offset} bytes already shipped")
        self._tail = self._tail[offset - self.offset :]
        self.offset = offset

    def read(self) -> tuple[list[bytes], int]:
        """The next whole lines (without their newlines) and the offset of the first; no lines
        at the end of what the file holds now."""
        while True:
            last = self._tail.rfind(b"\n")
            if last >= 0:
                text, self._tail = self._tail[:last], self._tail[last + 1 :]
                start = self.offset
                self.offset += last + 1
                self.crlf = b"\r" in text  # CRLF line ends: fields are split at any space
                return text.split(b"\n"), start
            if len(self._tail) > LINE_MAX:
                raise SourceError(f"a line longer than {LINE_MAX} bytes: not a flow log")
            data = self.stream.read(CHUNK)
            if not data:
                if self.gz and self.stream.finished and self._tail:  # a last line without \n
                    lines, start = [self._tail], self.offset
                    self.offset += len(self._tail) + 1
                    self._tail = b""
                    return lines, start
                return [], self.offset
            self._tail += data

    def truncated(self) -> bool:
        """A plain file now shorter than what was read of it (copytruncate rotation)."""
        return not self.gz and os.fstat(self.raw.fileno()).st_size < self.raw.tell()
