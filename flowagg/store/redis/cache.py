"""Hours read recently, kept in the instance and checked against Redis on every read.

A read of hour H asks every bucket with ``flowagg_v2_read``, passing the header and the number
of elements this instance holds of it: Redis answers in one atomic call per bucket "unchanged",
"these elements were appended", or the whole list (a compaction gave it another header). So a read
always reflects every bucket as Redis holds it at that moment (read-your-writes across instances
is intact: nothing is ever answered from the cache without asking Redis first), and what crosses
the network is what changed. An hour none of whose buckets changed answers from what was derived
from it before: the JSON of GET /flows, the native ``HourTables`` that range queries scan. An hour
that changed is summed again from its elements, old and new (in C, ``Sums``).

Entries are immutable: a reader that saw changes makes a new one and puts it in place, so readers
never wait for each other. The cache holds at most ``budget`` bytes (blobs and what was derived
from them), least recently used first out; 0 keeps nothing (every read then fetches everything).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from flowagg.store import table
from flowagg.store.redis import layout
from flowagg.store.redis.client import Call

Bucket = tuple[bytes, list[bytes]]  # (header, elements after it), as Redis holds the list
EMPTY: Bucket = (b"", [])


class Entry:
    """One hour as read: its buckets, and what was derived from them (made once, on demand)."""

    def __init__(self, hour: int, buckets: list[Bucket]) -> None:
        self.hour, self.buckets = hour, buckets
        self.blob_bytes = sum(len(e) for _, elements in buckets for e in elements)
        self._lock = threading.Lock()  # guards the derived values, each made by one thread
        self._sums: table.Sums | None = None
        self._json: bytes | None = None
        self._tables: table.HourTables | None = None

    @property
    def nbytes(self) -> int:
        derived = len(self._json or b"") + (self._tables.nbytes if self._tables else 0)
        return self.blob_bytes + derived

    def sums(self) -> table.Sums:
        with self._lock:
            if self._sums is None:
                sums = table.Sums(self.hour)
                sums.add([e for _, elements in self.buckets for e in elements])
                self._sums = sums
            return self._sums

    def json(self) -> bytes:
        sums = self.sums()
        with self._lock:
            if self._json is None:
                self._json = sums.json()
            return self._json

    def rows(self) -> list:
        sums = self.sums()
        with self._lock:
            return sums.rows()

    def tables(self) -> table.HourTables:
        """A native table of this hour alone, for range queries to scan (never changed)."""
        sums = self.sums()
        with self._lock:
            if self._tables is None:
                tables = table.HourTables()
                tables.merge_rows(self.hour, sums.rows())
                self._tables = tables
            return self._tables

    def __len__(self) -> int:
        return len(self.sums())


class HourCache:
    def __init__(self, buckets: int, budget: int) -> None:
        self.buckets, self.budget = buckets, budget
        # Guards _entries and _bytes (an entry's size is counted when it is put in place).
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, tuple[Entry, int]] = OrderedDict()
        self._bytes = 0
        self.hits = 0  # reads answered without a change in Redis

    def calls(self, hour: int) -> tuple[Entry | None, list[Call]]:
        """What this instance holds of ``hour`` and the calls that check it against Redis."""
        with self._lock:
            held = self._entries.get(hour)
            if held is not None:
                self._entries.move_to_end(hour)
        entry = held[0] if held is not None else None
        calls = []
        for b in range(self.buckets):
            header, elements = entry.buckets[b] if entry is not None else EMPTY
            key = layout.bucket_key(hour, b, self.buckets)
            held = 1 + len(elements)
            calls.append(Call(key, ("FCALL", layout.READ_FUNCTION, 1, key, header, held)))
        return entry, calls

    def update(self, hour: int, entry: Entry | None, calls: list[Call]) -> Entry:
        """The hour as Redis holds it now, from the replies of ``calls``; kept if it fits."""
        if entry is not None and all(c.reply[0] == 0 for c in calls):
            with self._lock:
                self.hits += 1
            self._account(hour, entry)
            return entry
        buckets = []
        for b, call in enumerate(calls):
            kind, *more = call.reply
            if kind == 0:
                buckets.append(entry.buckets[b])  # type: ignore[union-attr]
            elif kind == 1:
                header, elements = entry.buckets[b]  # type: ignore[union-attr]
                buckets.append((header, elements + more))
            else:
                buckets.append((more[0], more[1:]) if more else EMPTY)
        fresh = Entry(hour, buckets)
        self._account(hour, fresh)
        return fresh

    def settle(self, hour: int, entry: Entry) -> None:
        """Count what was derived from ``entry`` since it was put in place."""
        with self._lock:
            current = self._entries.get(hour)
        if current is not None and current[0] is entry and current[1] != entry.nbytes:
            self._account(hour, entry)

    def _account(self, hour: int, entry: Entry) -> None:
        """Put ``entry`` in place for ``hour`` (if the budget allows), evicting the oldest."""
        if self.budget <= 0:
            return
        nbytes = entry.nbytes
        with self._lock:
            old = self._entries.pop(hour, None)
            if old is not None:
                self._bytes -= old[1]
            if nbytes > self.budget:
                return
            self._entries[hour] = (entry, nbytes)
            self._bytes += nbytes
            while self._bytes > self.budget:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted

    def forget_before(self, cutoff: int) -> None:
        """Drop the hours below the window."""
        with self._lock:
            for hour in [h for h in self._entries if h < cutoff]:
                self._bytes -= self._entries.pop(hour)[1]

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes
