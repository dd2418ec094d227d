"""What the rest of flowagg knows of a store: the ``FlowStore`` interface, its errors, its stats.

The web layer and the metrics import this module and nothing else of ``flowagg.store``, so a
store backend is whatever implements ``FlowStore`` and raises these exceptions; ``create_app``
picks one. Everything here is plain data and exceptions: no store code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from flowagg.schema import Flow

Row = tuple[str, str, str, int, int]  # (src_app, dest_app, vpc_id, bytes_tx, bytes_rx)

# An Idempotency-Key is 1 to 255 visible ASCII characters (no spaces, no control characters).
MAX_KEY_LENGTH = 255


class Closed(Exception):
    """The store is closed (shutting down): it accepts nothing more."""


class Overloaded(Exception):
    """A partition's buffer stayed full past the enqueue timeout; nothing was enqueued."""


class Unavailable(Exception):
    """The store cannot take writes (its log failed); answered 503 with the reason."""


class Unreachable(Exception):
    """The store's backend did not answer (an outage, a timeout, a failover); answered 503 with
    Retry-After. ``applied`` says what a write may have left behind: ``"nothing"``, ``"partly"``
    (some of its flows are stored, the rest certainly not), ``"maybe"`` (some or all may be
    stored); None for a read."""

    def __init__(self, message: str, applied: str | None = None) -> None:
        super().__init__(message)
        self.applied = applied


class ReadTimeout(Exception):
    """The partition did not apply earlier writes in time; the read was not answered."""


class KeyReused(Exception):
    """An Idempotency-Key already applied to a different request; answered 422."""


class InvalidRecord(ValueError):
    """A record breaks a rule of the store; nothing of its request was applied (400)."""


class Expired(InvalidRecord):
    """A record's hour is outside the window of hours the store accepts now (its clock's hour
    less the retention, to the clock's hour plus the future allowance)."""

    def __init__(self, index: int, hour: int, window: str) -> None:
        super().__init__(f"$[{index}].hour: hour {hour} is outside {window}")
        self.index, self.hour = index, hour


class NameTooLong(InvalidRecord):
    def __init__(self, index: int, field: str, limit: int) -> None:
        super().__init__(
            f"$[{index}].{field}: longer than FLOWAGG_MAX_NAME_BYTES={limit} bytes of UTF-8"
        )


class KeyLimit(Exception):
    """A request would add key-hours past the store's limit; nothing was applied (429).

    Retrying does not help until hours expire; requests that only add to key-hours already
    held are still accepted.
    """

    def __init__(self, limit: int, held: int, new: int) -> None:
        super().__init__(
            f"the store holds {held} key-hours and this request would add {new}, past"
            f" FLOWAGG_MAX_KEYS={limit}; flows for key-hours already held are still accepted"
        )
        self.limit, self.held, self.new = limit, held, new


class MemoryLimit(Exception):
    """A request would take the tables past the store's memory limit; nothing was applied (429).

    As for ``KeyLimit``: retrying does not help until hours expire; requests that only add to
    key-hours already held are still accepted.
    """

    def __init__(self, limit: int, held: int, pending: int, new: int) -> None:
        super().__init__(
            f"the tables hold {held} bytes, requests accepted and not yet applied may add"
            f" {pending}, and this request would add {new}, past"
            f" FLOWAGG_MAX_MEMORY_BYTES={limit}; flows for key-hours already held are still"
            " accepted"
        )
        self.limit, self.held, self.pending, self.new = limit, held, pending, new


class QueryTooLarge(Exception):
    """A query would scan more key-hours than the store's limit; nothing was scanned (422)."""

    def __init__(self, rows: int, limit: int) -> None:
        super().__init__(
            f"the query would scan {rows} key-hours, more than FLOWAGG_MAX_QUERY_ROWS={limit};"
            " narrow the range"
        )
        self.rows, self.limit = rows, limit


# -- queries over a range of hours -------------------------------------------------------------

NAME_FIELDS = ("src_app", "dest_app", "vpc_id")
ORDERS = ("bytes", "bytes_tx", "bytes_rx")  # bytes: bytes_tx + bytes_rx

Names = tuple[str, ...]  # a group's names, in the order of Query.by
Sums = tuple[int, int]  # (bytes_tx, bytes_rx)


@dataclass(frozen=True)
class Summary:
    groups: int
    bytes_tx: int
    bytes_rx: int


@dataclass(frozen=True)
class Query:
    """The top groups of the hours ``start`` to ``end`` (inclusive), summed across them.

    A group is the names of the fields in ``by``; ``filters`` holds, per name field (in
    NAME_FIELDS order), None for any name or the names kept (values of one field are ORed,
    fields are ANDed). Groups rank by ``order``, largest first, ties by their names ascending.
    """

    start: int
    end: int
    by: Names = NAME_FIELDS
    filters: tuple[Names | None, Names | None, Names | None] = (None, None, None)
    order: str = "bytes"
    limit: int = 10

    @property
    def hours(self) -> range:
        return range(self.start, self.end + 1)


@dataclass(frozen=True)
class Top:
    rows: list[tuple]  # (names in `by` order..., bytes_tx, bytes_rx), largest first
    other: Summary  # every matching group not in rows, together
    total: Summary  # every matching group


@dataclass(frozen=True)
class HourSeries:
    hour: int
    values: list[Sums]  # per group of Series.groups, in that order
    other: Sums  # every other matching group of the hour


@dataclass(frozen=True)
class Series:
    groups: list[Names]  # the top groups over the whole range, in rank order
    hours: list[HourSeries] = field(default_factory=list)  # every hour of the range, ascending


@dataclass(frozen=True)
class HoursHeld:
    count: int
    oldest: int | None
    newest: int | None


@dataclass(frozen=True)
class PartitionStats:
    index: int
    depth: int  # flows in the buffer, not yet taken by the drainer
    capacity: int
    lag: int  # flows enqueued but not yet applied (in the buffer or being merged)
    keys: int  # rows held, summed over hours
    hours: int
    drainer_alive: bool


@dataclass(frozen=True)
class StoreStats:
    partitions: list[PartitionStats]
    hours_dropped: int  # hours removed by retention since start
    log_bytes: int | None = None  # size of the current write-ahead log, if there is one
    keys_limit: int | None = None  # FLOWAGG_MAX_KEYS, if the store enforces it
    memory_bytes: int | None = None  # bytes the tables allocate, if the store holds tables
    memory_limit: int | None = None  # FLOWAGG_MAX_MEMORY_BYTES, if the store enforces it

    @property
    def keys(self) -> int:
        return sum(p.keys for p in self.partitions)

    @property
    def hours(self) -> int:
        return sum(p.hours for p in self.partitions)


class FlowStore(Protocol):
    def ingest(
        self,
        flows: Sequence[Flow],
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Accept a validated batch whole or not at all; visible to any later read.

        Raises ``Overloaded`` if there was no room within ``timeout``, ``Expired`` for an hour
        outside the retention window, ``Closed`` after close, ``Unavailable`` if it cannot be
        stored, ``Unreachable`` if a remote backend did not commit it. Returns the number
        accepted. A store that keeps idempotency keys applies a batch whose key it has seen at
        most once and returns the original size again (and raises ``KeyReused`` for a key seen
        with other flows).
        """

    def read_hour(self, hour: int, timeout: float | None = None) -> list[Row]:
        """Summed rows of ``hour`` including every batch ingested before the call.

        Raises ``ReadTimeout`` if earlier batches were not applied within ``timeout``.
        """

    def read_hour_json(self, hour: int, timeout: float | None = None) -> bytes:
        """``read_hour`` as the JSON answer of GET /flows: an array of objects with src_app,
        dest_app, vpc_id, bytes_tx, bytes_rx and hour, as ``schema.encode`` writes Flows."""

    def top(self, query: Query, timeout: float | None = None) -> Top:
        """The top groups of ``query``, counting every batch ingested before the call.

        Raises ``QueryTooLarge`` before any work if the range holds too many key-hours, and
        ``ReadTimeout`` as ``read_hour``.
        """

    def series(self, query: Query, timeout: float | None = None) -> Series:
        """``top``'s groups, and their sums in each hour of the range."""

    def hours_held(self, timeout: float | None = None) -> HoursHeld:
        """How many hours hold data, and the oldest and newest of them."""

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything ingested so far is applied."""

    def close(self, timeout: float | None = None) -> bool:
        """Apply everything pending, stop background work; False if it did not finish in time."""

    def stats(self) -> StoreStats: ...

    def health(self, high_watermark: float) -> list[str]:
        """Failed readiness checks, each a sentence; empty when ready."""
