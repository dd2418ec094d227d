"""The counters of one hour: ``(src_app, dest_app, vpc_id) -> (bytes_tx, bytes_rx)``.

Kept behind this small class so that its memory layout can change without touching the
partition's locking or the readers.

Layout, chosen for memory (a million keys per hour is an ordinary day) and for the collector::

    _index  {key: row}         dict, insertion order = first appearance = row order
    _tx     array('q') [row]   bytes_tx of each row, 8 bytes
    _rx     array('q') [row]   bytes_rx of each row, 8 bytes
    _wide   {(column, row): n} the part of a sum beyond 2**63 - 1, for the rare row that has one
    _names  {name: name}       one copy of each name the table's keys use

A key costs its tuple (64 bytes), its row number (32), its share of the dict (about 40 to 80)
and 16 bytes of counters: about 155 to 190 bytes. A key's names are deduplicated through the
table's own ``_names`` when the key is first stored, so the thousands of keys that share an app
name or a VPC store it once. (Not ``sys.intern``: its table is interpreter-wide, and churning
hours through it, as retention does, made it grow without bound.) No list or int
per counter is kept, so the cyclic garbage collector has nothing in a table to traverse, and
adding to a row allocates nothing: memory stays flat however many flows arrive.

Sums stay exact at any size: a counter that would overflow int64 keeps its array value and puts
the excess in ``_wide``; a row's value is always ``_tx[row] + _wide.get((TX, row), 0)``.
"""

from __future__ import annotations

from array import array
from typing import Protocol

Key = tuple[str, str, str]  # (src_app, dest_app, vpc_id): a tuple, never a joined string
# key + (bytes_tx, bytes_rx): store.base.Row, spelled out here because this module imports nothing
# of the project (tests/test_layout.py checks that the two agree).
Row = tuple[str, str, str, int, int]


class Counters(Protocol):
    """What a batch's sum for one key offers; a Flow record is one."""

    bytes_tx: int
    bytes_rx: int


class Total:
    """Counters summed outside a table: a batch's repeated key, or a snapshot's row."""

    __slots__ = ("bytes_tx", "bytes_rx")

    def __init__(self, bytes_tx: int, bytes_rx: int) -> None:
        self.bytes_tx = bytes_tx
        self.bytes_rx = bytes_rx


Sums = dict[Key, Counters]  # a batch summed per key

TX, RX = 0, 1  # the column of a _wide entry


class HourTable:
    """Not thread-safe: the owning partition's lock guards it."""

    __slots__ = ("_index", "_tx", "_rx", "_wide", "_names")

    def __init__(self) -> None:
        self._index: dict[Key, int] = {}
        self._tx = array("q")
        self._rx = array("q")
        self._wide: dict[tuple[int, int], int] = {}
        self._names: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._index)

    def merge(self, sums: Sums) -> None:
        """Add a batch's sums (counters are non-negative, as validated). Never fails midway.

        Reads ``sums`` only: a value may be a record of the request itself.
        """
        index, tx_col, rx_col = self._index, self._tx, self._rx
        row_of, name = index.get, self._names.setdefault
        for key, counters in sums.items():
            tx, rx = counters.bytes_tx, counters.bytes_rx
            row = row_of(key)
            if row is None:
                src, dest, vpc = key
                row = index[(name(src, src), name(dest, dest), name(vpc, vpc))] = len(tx_col)
                tx_col.append(0)
                rx_col.append(0)
            try:
                tx_col[row] += tx
            except OverflowError:  # the array keeps its value; the excess goes to _wide
                self._add_wide(TX, row, tx)
            try:
                rx_col[row] += rx
            except OverflowError:
                self._add_wide(RX, row, rx)

    def _add_wide(self, column: int, row: int, amount: int) -> None:
        wide = self._wide
        wide[column, row] = wide.get((column, row), 0) + amount

    def rows(self) -> list[Row]:
        """A copy of every row, in order of first appearance."""
        rows = list(map(tuple.__add__, self._index, zip(self._tx, self._rx, strict=True)))
        for (column, row), extra in self._wide.items():
            src, dest, vpc, tx, rx = rows[row]
            if column == TX:
                rows[row] = (src, dest, vpc, tx + extra, rx)
            else:
                rows[row] = (src, dest, vpc, tx, rx + extra)
        return rows
