"""One group commit: a drain step's requests written to Redis as packed deltas, and what each
request's answer is.

The step's requests without a key are summed together per (hour, key) in the native
``HourTables``; each keyed request is summed on its own. ``HourTables.pack_buckets`` then cuts
every hour's sums into packed blobs, one per bucket (more for a bucket over ``CHUNK_ROWS`` rows or
``CHUNK_BYTES`` bytes). The hours are listed first (retention.py), in a round of their own; only
once that is done are the blobs appended, one ``flowagg_v2_commit`` call per bucket (more if a
bucket's blobs pass ``CALL_ROWS`` rows or ``CALL_BYTES`` bytes), pipelined per primary (client.py).
So Redis does a handful of commands per bucket and step, whatever the number of keys, and no call
keeps a primary busy for more than the time it takes to copy a few hundred kilobytes.

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

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flowagg.store.base import Unreachable
from flowagg.store.redis import layout
from flowagg.store.redis.client import Call, RedisClient
from flowagg.store.redis.commit import APPLIED, MAYBE, NOTHING, PARTLY, Outcomes, Ticket
from flowagg.store.redis.meta import LayoutMismatch
from flowagg.store.redis.retention import Retention
from flowagg.store.table import HourTables

CALL_ROWS = 2_000  # rows in one call's blobs (one blob may pass it only if it is alone)
CALL_BYTES = 512 * 1024  # bytes of one call's blobs, likewise

# A bucket is compacted once the bytes of its deltas pass both COMPACT_BYTES and half its base,
# or it holds COMPACT_ELEMENTS elements: each byte is then folded a bounded number of times, and a
# read sums a base and at most as much again.
COMPACT_BYTES = 32 * 1024
COMPACT_ELEMENTS = 64

ALL_ROWS = 2**31 - 1  # the most rows pack_buckets puts in one chunk

Compact = Callable[[int, int], None]  # (hour, bucket): a bucket is due for compaction


def combine(states: list[str]) -> str:
    """The outcome of a group of calls from their states (done, refused, unknown)."""
    if all(s == "done" for s in states):
        return APPLIED
    if "unknown" in states:
        return MAYBE
    return PARTLY if "done" in states else NOTHING


@dataclass
class Bucket:
    """The blobs of one (hour, bucket) of a step, and the calls that carry them."""

    hour: int
    bucket: int
    shared: list[tuple[bytes, int]] = field(default_factory=list)  # (blob, rows)
    keyed: list[tuple[Ticket, str, bytes, int]] = field(default_factory=list)  # + marker
    calls: list[Call] = field(default_factory=list)
    shared_calls: list[Call] = field(default_factory=list)  # those that carry unkeyed blobs
    owners: dict[Call, set[Ticket]] = field(default_factory=dict)  # keyed requests of a call


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
        self._token = os.urandom(8).hex()  # header token of the lists a step creates

    def commit(self, tickets: list[Ticket]) -> Outcomes:
        """Commit the tickets' flows: every ticket's outcome and why."""
        deadline = time.monotonic() + self.timeout_s
        if self.check is not None:
            try:
                self.check(deadline)
            except (LayoutMismatch, Unreachable) as exc:  # nothing was written
                return {ticket: (NOTHING, str(exc)) for ticket in tickets}
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
            return {ticket: (APPLIED, "") for ticket in tickets}
        listing = self.retention.listing(hours)
        self.client.execute([listing], deadline)
        if listing.state != "done":  # no bucket of a hour that is not listed: nothing sent
            reason = f"Redis did not record the hours: {listing.error}"
            return {ticket: (NOTHING, reason) for ticket in tickets}
        self.retention.listed(listing)
        buckets = self._buckets(hours, shared, own)
        calls = [call for b in buckets.values() for call in b.calls]
        self.client.execute(calls, deadline)
        self._note_sizes(buckets)
        failed = next((c for c in calls if c.state != "done"), None)
        if failed is None:
            return {ticket: (APPLIED, "") for ticket in tickets}
        return self._outcomes(tickets, buckets, f"Redis did not commit: {failed.error}", cutoff)

    def _buckets(self, hours: list[int], shared: HourTables, own: dict[Ticket, HourTables]):
        """Every (hour, bucket) of the step with its blobs, cut into calls."""
        found: dict[tuple[int, int], Bucket] = {}
        n = self.buckets
        for hour in hours:
            for bucket, rows, blob in shared.pack_buckets(
                hour, n, layout.CHUNK_ROWS, layout.CHUNK_BYTES
            ):
                found.setdefault((hour, bucket), Bucket(hour, bucket)).shared.append((blob, rows))
            for ticket, tables in own.items():
                chunk, last = 0, -1
                for bucket, rows, blob in tables.pack_buckets(
                    hour, n, layout.CHUNK_ROWS, layout.CHUNK_BYTES
                ):
                    chunk = chunk + 1 if bucket == last else 0
                    last = bucket
                    marker = layout.marker_key(hour, bucket, n, chunk, ticket.key)  # type: ignore[arg-type]
                    entry = found.setdefault((hour, bucket), Bucket(hour, bucket))
                    entry.keyed.append((ticket, marker, blob, rows))
        for entry in found.values():
            self._calls(entry)
        return found

    def _calls(self, b: Bucket) -> None:
        """Cut the bucket's blobs into calls of at most CALL_ROWS rows and CALL_BYTES bytes."""
        key = layout.bucket_key(b.hour, b.bucket, self.buckets)
        head = (self.retention.expire_at(b.hour), self.ttl, self._token)
        items = [(None, None, blob, rows) for blob, rows in b.shared] + b.keyed
        start = 0
        while start < len(items):
            end, rows, size = start, 0, 0
            while end < len(items) and (
                end == start
                or (rows + items[end][3] <= CALL_ROWS and size + len(items[end][2]) <= CALL_BYTES)
            ):
                rows += items[end][3]
                size += len(items[end][2])
                end += 1
            part = items[start:end]
            unkeyed = [(blob, rows) for ticket, _, blob, rows in part if ticket is None]
            keyed = [(m, blob, rows) for ticket, m, blob, rows in part if ticket is not None]
            call = Call(
                key,
                ("FCALL", layout.COMMIT_FUNCTION, 1 + len(keyed), key, *(m for m, _, _ in keyed),
                 *head, len(unkeyed), sum(r for _, r in unkeyed), *(blob for blob, _ in unkeyed),
                 *(x for _, blob, rows in keyed for x in (rows, blob))),
                write=True,
            )  # fmt: skip
            b.owners[call] = {ticket for ticket, _, _, _ in part if ticket is not None}
            b.calls.append(call)
            if unkeyed:
                b.shared_calls.append(call)
            start = end

    def _note_sizes(self, buckets: dict[tuple[int, int], Bucket]) -> None:
        """Ask for the compaction of every bucket whose deltas grew past the thresholds."""
        if self.compact is None:
            return
        for b in buckets.values():
            call = b.calls[-1]
            if call.state != "done":
                continue
            length, base_bytes, pending = call.reply[0], call.reply[1], call.reply[2]
            if length >= COMPACT_ELEMENTS or pending >= max(COMPACT_BYTES, base_bytes // 2):
                self.compact(b.hour, b.bucket)

    def _outcomes(
        self, tickets: list[Ticket], buckets: dict[tuple[int, int], Bucket], reason: str, cutoff
    ) -> Outcomes:
        """Each ticket's outcome from the calls that carry its flows (some call failed)."""
        outcomes: Outcomes = {}
        n = self.buckets
        for ticket in tickets:
            if ticket.key is not None:
                mine = [c for b in buckets.values() for c in b.calls if ticket in b.owners[c]]
            else:
                tables = HourTables()
                tables.merge([ticket.pack], cutoff)
                mine = [
                    c
                    for hour in tables.hours()
                    for bucket in {b for b, _, _ in tables.pack_buckets(hour, n, ALL_ROWS, 2**62)}
                    for c in buckets[(hour, bucket)].shared_calls
                ]
            outcome = combine([c.state for c in mine])
            outcomes[ticket] = (outcome, "" if outcome == APPLIED else _reason(mine, reason))
        return outcomes


def _reason(calls: list[Call], default: str) -> str:
    failed = next((c for c in calls if c.state != "done"), None)
    return default if failed is None else f"Redis did not commit: {failed.error}"
