"""Batches of one file's lines, pre-aggregated, POSTed exactly once per byte range.

A batch is a byte range [start, end) of one file's text, ending after a newline. Before it is
sent, the state file records it as in flight with its Idempotency-Key (fsynced); once the
server has answered 200, the file's offset moves to ``end`` (``sender.py`` does both, on its
own thread, while the next batch is read here). A crash at any point leaves either the batch
before in flight (sent again under the same key: applied once where keys are kept) or this
one (the same), never a range shipped under two keys or skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flowagg.client import Client
from flowagg.ship.networks import Networks
from flowagg.ship.records import Counts, Parser
from flowagg.ship.sender import Job, Sender, Stop
from flowagg.ship.source import Source
from flowagg.ship.state import State, batch_key

__all__ = ["Settings", "Shipper", "Stop", "Tail", "Totals"]


@dataclass
class Settings:
    networks: Networks
    default_fields: tuple[str, ...]
    vpc_id: str = "unknown"
    include_rejected: bool = False
    batch: int = 10_000


@dataclass
class Batch:
    start: int  # offset of its first line
    first_line: int
    end: int = 0  # offset after its last line so far
    next_line: int = 0  # number of the line after it
    flows_in: int = 0  # records in it
    born: float = 0.0  # monotonic time of its first line
    agg: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.end, self.next_line = self.start, self.first_line


@dataclass
class Totals:
    files: int = 0
    posts: int = 0
    flows: int = 0
    counts: Counts = field(default_factory=Counts)


class Tail:
    """A file being shipped: its source, state entry, parser, batch and unread lines."""

    def __init__(self, source: Source, entry: dict, parser: Parser) -> None:
        self.source = source
        self.entry = entry
        self.parser = parser
        self.lines: list[bytes] = []
        self.index = 0  # next line of ``lines`` to read
        self.offset = entry["offset"]  # offset of lines[index]
        self.batch = Batch(entry["offset"], entry["line"])

    @property
    def path(self) -> str:
        return self.source.path


class Shipper:
    def __init__(self, client: Client, state: State, settings: Settings, log) -> None:
        self.client = client
        self.state = state
        self.settings = settings
        self.log = log  # log(message): a line for the person running it
        self.totals = Totals()
        self.on_read = lambda tail: None  # called after each chunk read (progress)
        self.sender = Sender(client, state, self.totals)

    def open(self, path: str) -> Tail | None:
        """Start (or resume) shipping ``path``; None for an empty file or a finished one."""
        source = Source(path)
        try:
            return self._open(source)
        except BaseException:
            source.close()
            raise

    def _open(self, source: Source) -> Tail | None:
        if source.identity is None:
            source.close()
            return None
        with self.state.lock:  # the sender moves offsets meanwhile
            return self._start(source)

    def _start(self, source: Source) -> Tail | None:
        entry = self.state.matches(source.raw, source.stat)
        if entry is not None and not source.gz and entry["offset"] > source.stat.st_size:
            entry = None  # cut shorter than what was shipped (copytruncate): a new generation
        if entry is None:
            old = self.state.files.get(source.identity.name)
            generation = 0 if old is None else old["generation"] + 1
            if old is not None and old["in_flight"] is not None:
                self.log(
                    f"{old['path']}: lines {_lines(old['in_flight'])} were in flight when the"
                    f" file was replaced; they may not have been delivered"
                )
            entry = self.state.new_entry(source.identity, source.path, generation)
        entry["path"], entry["seen"] = source.path, time.time()
        if entry["complete"]:
            source.close()
            return None
        source.start(self.settings.default_fields, entry["offset"])
        if entry["offset"] < source.header_end:  # past the header: the first record
            entry["offset"], entry["line"] = source.header_end, 2
        s = self.settings
        parser = Parser(
            source.fmt, s.networks, self.totals.counts, source.path, s.vpc_id, s.include_rejected
        )
        tail = Tail(source, entry, parser)
        self.totals.files += 1
        if entry["in_flight"] is not None:
            self._resend(tail)
        return tail

    def _resend(self, tail: Tail) -> None:
        """Rebuild the batch in flight from its byte range and send it under its key."""
        flight = tail.entry["in_flight"]
        if flight["start"] != tail.entry["offset"]:
            raise Stop(f"{tail.path}: the state file is inconsistent (in flight {flight})")
        self.log(f"{tail.path}: sending lines {_lines(flight)} again, as they were in flight")
        self.pump(tail, until=flight["end"])
        if tail.batch.end != flight["end"]:
            raise Stop(
                f"{tail.path}: lines {_lines(flight)} were in flight, but the file now ends"
                f" before them; they may not have been delivered"
            )
        self.send(tail, key=flight["key"])

    def pump(self, tail: Tail, until: int | None = None) -> None:
        """Read what the file holds now into batches, sending each one that is full."""
        want_total = self.settings.batch
        while True:
            if tail.index >= len(tail.lines):
                tail.lines, tail.offset = tail.source.read()
                tail.index = 0
                self.on_read(tail)
                if not tail.lines:
                    return
            batch = tail.batch
            hi = len(tail.lines)
            want = want_total - batch.flows_in
            if until is not None:  # the lines of the range, however many records they hold
                hi, want = _cut(tail.lines, tail.index, tail.offset, until), len(tail.lines)
            if batch.flows_in == 0 and batch.end == batch.start:
                batch.born = time.monotonic()
            lo = tail.index
            sep = None if tail.source.crlf else b" "
            tail.index, taken = tail.parser.parse(
                tail.lines, lo, hi, want, batch.next_line, batch.agg, sep
            )
            used = sum(map(len, tail.lines[lo : tail.index])) + tail.index - lo
            tail.offset += used
            batch.end += used
            batch.next_line += tail.index - lo
            batch.flows_in += taken
            if until is not None:
                if batch.end >= until or tail.index < len(tail.lines):
                    return
            elif batch.flows_in >= want_total:
                self.send(tail)

    def send(self, tail: Tail, key: str | None = None) -> None:
        """Hand the file's batch to the sender (which moves the file's offset past it once
        delivered) and start the next."""
        batch, entry = tail.batch, tail.entry
        if batch.end == batch.start:
            return
        identity = tail.source.identity
        key = key or batch_key(identity, entry["generation"], batch.start, batch.end)
        job = Job(tail.path, entry, batch.start, batch.end, batch.first_line, batch.next_line,
                  batch.agg, key)  # fmt: skip
        tail.batch = Batch(batch.end, batch.next_line)
        self.sender.submit(job)

    def drain(self) -> None:
        """Wait until every batch handed over was delivered."""
        self.sender.drain()

    def complete(self, tail: Tail) -> None:
        """Mark a .gz file read to its end, once all of it was delivered: it is not read
        again."""
        self.drain()
        with self.state.lock:
            tail.entry["complete"] = True
            self.state.dirty = True

    def finish(self, tail: Tail) -> None:
        """The end of a run over ``tail``: send what its batch holds and wait for delivery."""
        self.send(tail)
        if tail.source.finished:
            self.complete(tail)
        self.drain()
        if tail.source.unterminated:
            self.log(
                f"{tail.path}: line {tail.batch.next_line} has no newline yet; it is shipped"
                " by a later run once it has one"
            )
        tail.source.close()


def _cut(lines: list[bytes], index: int, offset: int, until: int) -> int:
    """The index after the last line of ``lines[index:]`` that ends at or before ``until``."""
    while index < len(lines) and offset + len(lines[index]) + 1 <= until:
        offset += len(lines[index]) + 1
        index += 1
    return index


def _lines(flight: dict) -> str:  # of an in-flight record of the state file
    return f"{flight['first_line']}-{flight['last_line']}"
