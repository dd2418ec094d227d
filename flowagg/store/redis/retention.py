"""Retention across instances: Redis's clock sets the window, Redis expires the data, Redis lists
the hours.

The window is the one the embedded store uses (limits.py): ``[now - FLOWAGG_RETENTION_HOURS, now +
FLOWAGG_MAX_FUTURE_HOURS]``, but ``now`` is Redis's (clock.py), so every instance accepts and
serves the same hours whatever its own clock says. A POST with a record outside it is ``400``
(before anything is written), a GET of an hour below it ``[]``.

No instance deletes anything. Every write to a bucket sets its ``EXPIREAT`` from its hour alone
(layout.expire_at), in the same function call, and Redis deletes it then; a write that comes after
that moment (a step that waited) deletes what it wrote at once.

The hours that may hold data are a sorted set in Redis, each hour scored with its expiry. The
first commit step of an instance that writes an hour lists it there (``flowagg_v2_hours``) in a
round of its own, and only once that is done sends its buckets, so no bucket exists for an hour
that is not listed. Every later step lists its hours again in the same round as its buckets, so an
hour whose listing was lost (a failover) is listed again by its next write; a listing that fails
makes the next step list strictly again. The same call removes every hour whose expiry has passed
on the clock of the set's primary, so the set never keeps an expired hour; an hour written again
after it expired leaves nothing to list (its buckets delete themselves). A listed hour is reported
as held only if one of its buckets exists (a step listed it and then could not write it) and it is
not below the window.
"""

from __future__ import annotations

import threading

from flowagg.schema import Flow
from flowagg.store.limits import Window, check_names
from flowagg.store.redis import layout
from flowagg.store.redis.client import Call
from flowagg.store.redis.clock import RedisClock


class Retention:
    """The window Redis's clock gives, the expiry of buckets, and the hours Redis lists."""

    def __init__(
        self,
        clock: RedisClock,
        buckets: int,
        retention_hours: int | None,
        max_future_hours: int | None = None,
        max_name_bytes: int | None = None,
    ) -> None:
        self.clock, self.buckets = clock, buckets
        self.retention_hours = retention_hours
        self.window = Window(retention_hours, max_future_hours, clock.now)
        self.max_name_bytes = max_name_bytes
        # Guards hours_dropped and _listed.
        self._lock = threading.Lock()
        self.hours_dropped = 0  # listed hours this instance's steps found expired and removed
        self._listed: set[int] = set()  # hours a listing call of this instance has listed

    def check(self, flows: list[Flow]) -> None:
        """Raise ``InvalidRecord`` for the first record outside the window or with a name over
        the length limit (as the embedded store does)."""
        self.window.check(flows)
        check_names(flows, self.max_name_bytes)

    def cutoff(self) -> int:
        """Hours below this are out of the window (0 without retention)."""
        oldest = self.window.bounds()[0]
        return max(0, oldest) if oldest is not None else 0

    def expire_at(self, hour: int) -> int:
        return layout.expire_at(hour, self.retention_hours)

    def listing(self, hours: list[int]) -> Call:
        """The call that lists ``hours`` (and forgets the expired ones)."""
        pairs = [x for hour in hours for x in (self.expire_at(hour), hour)]
        key = layout.HOURS_KEY
        return Call(key, ("FCALL", layout.HOURS_FUNCTION, 1, key, *pairs), write=True)

    def unlisted(self, hours: list[int]) -> list[int]:
        """Those of ``hours`` that this instance has not listed yet (or not since a listing
        failed): they must be listed before their buckets are written."""
        cutoff = self.cutoff()
        with self._lock:
            self._listed = {h for h in self._listed if h >= cutoff}
            return [h for h in hours if h not in self._listed]

    def listed(self, call: Call, hours: list[int]) -> None:
        """Note the outcome of a listing call of ``hours``, and what it removed."""
        with self._lock:
            if call.state != "done":
                self._listed.difference_update(hours)  # listed strictly again next time
                return
            self._listed.update(hours)
            if isinstance(call.reply, list):
                self.hours_dropped += call.reply[1]

    def members(self) -> Call:
        key = layout.HOURS_KEY
        return Call(key, ("ZRANGE", key, 0, -1))

    def held(self, members: Call, within: range | None) -> list[int]:
        """The listed hours in the window (and in ``within``) that may hold data, ascending."""
        cutoff = self.cutoff()
        hours = sorted(h for h in map(int, members.reply) if h >= cutoff)
        return [h for h in hours if h in within] if within is not None else hours

    def existence(self, hours: list[int]) -> list[Call]:
        b = self.buckets
        return [Call(k, ("EXISTS", k)) for h in hours for k in bucket_keys(h, b)]

    def with_data(self, hours: list[int], checks: list[Call]) -> list[int]:
        b = self.buckets
        return [h for i, h in enumerate(hours) if any(c.reply for c in checks[i * b : i * b + b])]


def bucket_keys(hour: int, buckets: int) -> list[str]:
    return [layout.bucket_key(hour, b, buckets) for b in range(buckets)]
