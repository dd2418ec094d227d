"""One group commit: a drain step's requests written to Redis as packed deltas, and what each
request's answer is.

The step's requests without a key are summed together per (hour, key) in the native
``HourTables``; each keyed request is summed on its own. ``HourTables.pack_buckets`` then cuts
every hour's sums into packed blobs, one per bucket (more for a bucket over ``CHUNK_ROWS`` rows or
``CHUNK_BYTES`` bytes). An hour is listed (retention.py) in a round of its own before its first
write, and again with every later one. The blobs are appended with ``flowagg_v2_commit``: one
call per slot, i.e. per bucket and day (layout.py), holding that bucket of every hour of the day
in the step (more calls if they pass ``CALL_ROWS`` rows or ``CALL_BYTES`` bytes), pipelined per
primary (client.py). So Redis does a handful of commands per bucket and step, whatever the
number of keys and hours, and no call keeps a primary busy for more than the time it takes to
copy a few hundred kilobytes.

A keyed request's blobs go with a marker each, ``flowagg:v2:idem:{T}:H:b:c:<key>``: the function
appends a blob only if its marker did not exist, and sets it in the same atomic call, so a retry
of the request, from any instance, appends exactly the chunks it misses. Its chunks are cut the
same way every time (its own sums, in the order of its flows), so a retry's markers are the
first attempt's.

Outcomes are per request: a request's answer depends only on the calls that carry its flows. If
every call of the step was committed, every request was (the common case costs nothing more).
Otherwise a keyed request looks at the calls carrying its own blobs, and a request without a key
at the calls carrying the step's sums for the buckets its own flows fall in: all committed is
APPLIED; none sent, or all refused, NOTHING; some committed and the rest refused, PARTLY; any call
whose fate is unknown, MAYBE.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flowagg.store.base import Unreachable
from flowagg.store.redis import layout
from flowagg.store.redis.client import Call, RedisClient
from flowagg.store.redis.commit import APPLIED, MAYBE, NOTHING, PARTLY, Outcomes, Ticket
from flowagg.store.redis.meta import LayoutMismatch
from flowagg.store.redis.retention import Retention
from flowagg.store.table import HourTables

CALL_ROWS = 2_000  # rows in one call's blobs (one blob may pass it only if it is alone)
CALL_BYTES = 512 * 1024  # bytes of one call's blobs, likewise

# A commit asks for a bucket's compaction each time the list's length passes a multiple of
# COMPACT_EVERY; the compactor then folds it if its deltas are worth it (compaction.py).
COMPACT_EVERY = 16
ALL_ROWS = 2**31 - 1  # the most rows pack_buckets puts in one chunk
# A step that wrote fewer rows than this per bucket on average was thin: Redis's cost of a call
# (about 2 us) is then a large share per flow, and the partition lingers before its next step.
THIN_ROWS = 16

Compact = Callable[[int, int], None]  # (hour, bucket): a bucket is due for compaction


def combine(states: list[str]) -> str:
    """The outcome of a group of calls from their states (done, refused, unknown)."""
    if all(s == "done" for s in states):
        return APPLIED
    if "unknown" in states:
        return MAYBE
    return PARTLY if "done" in states else NOTHING


# One blob of a step: (hour, bucket, keyed request or None, its marker or None, blob, rows).
Piece = tuple[int, int, Ticket | None, str | None, bytes, int]


class Sent:
    """What a step's calls carry, to answer each request from its own calls."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.rows = 0  # in every blob
        self.lists: list[list[tuple[int, int, int]]] = []  # per call: (hour, bucket, blobs)
        self.owners: dict[Call, set[Ticket]] = {}  # the keyed requests of a call
        self.shared: dict[tuple[int, int], list[int]] = {}  # calls of a bucket's unkeyed sums


class Committer:
    """Turns one drain step into function calls and runs them (shared by the partitions)."""

    def __init__(
        self,
        client: RedisClient,
        buckets: int,
        ttl_s: int,
        retention: Retention,
        timeout_s: float,
        compact: Compact | None = None,
        check: Callable[[float], None] | None = None,
    ) -> None:
        """``compact`` is told of buckets due for compaction; ``check(deadline)`` runs before
        anything is written and refuses the step by raising (meta.LayoutCheck.ensure)."""
        self.client, self.buckets, self.ttl = client, buckets, ttl_s
        self.retention, self.timeout_s = retention, timeout_s
        self.compact, self.check = compact, check

    def commit(self, tickets: list[Ticket]) -> tuple[Outcomes, bool]:
        """Commit the tickets' flows: every ticket's outcome and why, and whether the step was
        thin (few rows per bucket written: more requests together would cost Redis less)."""
        outcomes, sent = self._commit(tickets)
        thin = sent is not None and sent.rows < THIN_ROWS * max(1, len(sent.lists))
        return outcomes, thin

    def _commit(self, tickets: list[Ticket]) -> tuple[Outcomes, Sent | None]:
        deadline = time.monotonic() + self.timeout_s
        if self.check is not None:
            try:
                self.check(deadline)
            except (LayoutMismatch, Unreachable) as exc:  # nothing was written
                return {ticket: (NOTHING, str(exc)) for ticket in tickets}, None
        cutoff = self.retention.cutoff()
        shared = HourTables()
        shared.merge([t.pack for t in tickets if t.key is None], cutoff)
        own: dict[Ticket, HourTables] = {}
        for ticket in tickets:
            if ticket.key is not None:
                own[ticket] = HourTables()
                own[ticket].merge([ticket.pack], cutoff)
        hours = sorted(set(shared.hours()).union(*(t.hours() for t in own.values())))
        if not hours:  # every flow was of an hour that has expired since: nothing to keep
            return {ticket: (APPLIED, "") for ticket in tickets}, None
        new = self.retention.unlisted(hours)
        if new:  # listed before any of their buckets is written
            listing = self.retention.listing(new)
            self.client.execute([listing], deadline)
            self.retention.listed(listing, new)
            if listing.state != "done":  # nothing sent
                reason = f"Redis did not record the hours: {listing.error}"
                return {ticket: (NOTHING, reason) for ticket in tickets}, None
            deadline = time.monotonic() + self.timeout_s  # a round trip's time for the next
        sent = self._calls(self._pieces(hours, shared, own), layout.new_header())
        again = self.retention.listing(hours)  # heals a listing lost since, in the same round
        self.client.execute([again, *sent.calls], deadline)
        self.retention.listed(again, hours)
        self._note_sizes(sent)
        failed = next((c for c in sent.calls if c.state != "done"), None)
        if failed is None:
            return {ticket: (APPLIED, "") for ticket in tickets}, sent
        reason = f"Redis did not commit: {failed.error}"
        return self._outcomes(tickets, sent, reason, cutoff), sent

    def _pieces(
        self, hours: list[int], shared: HourTables, own: dict[Ticket, HourTables]
    ) -> dict[tuple[int, int], list[Piece]]:
        """Every blob of the step, by the slot it goes to (its day and bucket), in order of hour
        and bucket: (hour, bucket, keyed request or None, marker or None, blob, rows)."""
        by_slot: dict[tuple[int, int], list[Piece]] = {}
        n, rows_, bytes_ = self.buckets, layout.CHUNK_ROWS, layout.CHUNK_BYTES
        for hour in hours:
            day = hour // layout.HOURS_PER_SLOT
            for bucket, rows, blob in shared.pack_buckets(hour, n, rows_, bytes_):
                by_slot.setdefault((day, bucket), []).append((hour, bucket, None, None, blob, rows))
            for ticket, tables in own.items():
                chunk, last = 0, -1
                for bucket, rows, blob in tables.pack_buckets(hour, n, rows_, bytes_):
                    chunk = chunk + 1 if bucket == last else 0
                    last = bucket
                    marker = layout.marker_key(hour, bucket, n, chunk, ticket.key)  # type: ignore[arg-type]
                    piece = (hour, bucket, ticket, marker, blob, rows)
                    by_slot.setdefault((day, bucket), []).append(piece)
        return by_slot

    def _calls(self, by_slot: dict[tuple[int, int], list[Piece]], header: str) -> Sent:
        """One call per slot, cut where it would pass CALL_ROWS rows or CALL_BYTES bytes."""
        sent = Sent()
        for pieces in by_slot.values():
            start = 0
            while start < len(pieces):
                end, rows, size = start + 1, pieces[start][5], len(pieces[start][4])
                while end < len(pieces) and (
                    rows + pieces[end][5] <= CALL_ROWS and size + len(pieces[end][4]) <= CALL_BYTES
                ):
                    rows += pieces[end][5]
                    size += len(pieces[end][4])
                    end += 1
                self._call(sent, pieces[start:end], header)
                start = end
        return sent

    def _call(self, sent: Sent, pieces: list[Piece], header: str) -> None:
        """One call for pieces of one slot; those of one (hour, bucket) come together."""
        keys, markers, args, carried = [], [], [], []
        n, expire_at = self.buckets, self.retention.expire_at
        i, end = 0, len(pieces)
        while i < end:
            hour, bucket = pieces[i][0], pieces[i][1]
            j = i + 1
            while j < end and pieces[j][0] == hour and pieces[j][1] == bucket:
                j += 1
            keys.append(layout.bucket_key(hour, bucket, n))
            if j == i + 1 and pieces[i][2] is None:  # the common case: the step's sums alone
                args += (expire_at(hour), 1, 0, pieces[i][4])
                sent.shared.setdefault((hour, bucket), []).append(len(sent.calls))
            else:
                mine = pieces[i:j]
                unkeyed = [p[4] for p in mine if p[2] is None]
                keyed = [p for p in mine if p[2] is not None]
                markers += [p[3] for p in keyed]
                args += (expire_at(hour), len(unkeyed), len(keyed), *unkeyed)
                args += [p[4] for p in keyed]
                if unkeyed:
                    sent.shared.setdefault((hour, bucket), []).append(len(sent.calls))
            carried.append((hour, bucket, j - i))
            sent.rows += sum(p[5] for p in pieces[i:j])
            i = j
        call = Call(
            keys[0],
            ("FCALL", layout.COMMIT_FUNCTION, len(keys) + len(markers), *keys, *markers,
             len(keys), self.ttl, header, *args),
            write=True,
        )  # fmt: skip
        sent.calls.append(call)
        sent.lists.append(carried)
        if markers:
            sent.owners[call] = {p[2] for p in pieces if p[2] is not None}

    def _note_sizes(self, sent: Sent) -> None:
        """Ask for the compaction of every bucket whose list passed a multiple of
        COMPACT_EVERY elements with this step."""
        if self.compact is None:
            return
        for call, lists in zip(sent.calls, sent.lists, strict=True):
            if call.state != "done":
                continue
            for (hour, bucket, pushed), length in zip(lists, call.reply, strict=True):
                if length >= COMPACT_EVERY and length % COMPACT_EVERY < pushed:
                    self.compact(hour, bucket)

    def _outcomes(self, tickets: list[Ticket], sent: Sent, reason: str, cutoff: int) -> Outcomes:
        """Each ticket's outcome from the calls that carry its flows (some call failed)."""
        outcomes: Outcomes = {}
        n = self.buckets
        for ticket in tickets:
            if ticket.key is not None:
                mine = [c for c in sent.calls if ticket in sent.owners.get(c, ())]
            else:
                tables = HourTables()
                tables.merge([ticket.pack], cutoff)
                mine = [
                    c
                    for hour in tables.hours()
                    for bucket in {b for b, _, _ in tables.pack_buckets(hour, n, ALL_ROWS, 2**62)}
                    for c in sent.shared[(hour, bucket)]
                ]
                mine = [sent.calls[i] for i in mine]
            outcome = combine([c.state for c in mine])
            outcomes[ticket] = (outcome, "" if outcome == APPLIED else _reason(mine, reason))
        return outcomes


def _reason(calls: list[Call], default: str) -> str:
    failed = next((c for c in calls if c.state != "done"), None)
    return default if failed is None else f"Redis did not commit: {failed.error}"
