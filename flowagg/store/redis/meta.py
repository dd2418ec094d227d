"""The layout every instance must agree on, recorded in Redis.

The first instance to reach Redis records the layout of its data (``flowagg:v2:{meta}:layout``:
version, bucket count, retention; ``SET NX GET``); every instance compares its own with it before
its first write or read. An instance whose settings differ would read other rows for the same hour
(other buckets) or give data other expiries, so it refuses to start (``LayoutMismatch``, one line
naming both); one that could not reach Redis at start-up checks on first use instead, and then
answers ``503`` naming both and is unready. To change the layout, stop every instance, delete the
key (and the data, whose keys follow the old layout), and start them with the new settings.
"""

from __future__ import annotations

import logging

from flowagg.store.base import Unreachable
from flowagg.store.redis import layout
from flowagg.store.redis.client import Call, RedisClient

log = logging.getLogger("flowagg.redis")


class LayoutMismatch(Unreachable):
    """The data in Redis has another layout than this instance's settings give: at start-up a
    refused start, afterwards a 503 for every request (the instance cannot use the data)."""


class LayoutCheck:
    def __init__(self, client: RedisClient, buckets: int, retention_hours: int | None) -> None:
        self.client = client
        self.record = layout.layout_record(buckets, retention_hours)
        self.verified = False  # set once, never cleared: a plain flag read without a lock
        self.mismatch: str | None = None

    def ensure(self, deadline: float, quiet: bool = False) -> None:
        """Return once this instance's layout is the recorded one; ``LayoutMismatch`` if it is
        not (logged unless ``quiet``: at start-up the refusal says it), ``Unreachable``
        (nothing applied) if Redis could not be asked."""
        if self.verified:
            return
        if self.mismatch is not None:
            raise LayoutMismatch(self.mismatch)
        key = layout.LAYOUT_KEY
        call = Call(key, ("SET", key, self.record, "NX", "GET"), write=True)
        self.client.execute([call], deadline, resend_unknown=True)  # idempotent
        if call.state != "done":
            raise Unreachable(f"cannot check the data layout in Redis: {call.error}", "nothing")
        found = call.reply.decode() if call.reply is not None else self.record
        if found == self.record:
            self.verified = True
            return
        self.mismatch = (
            f"the data in Redis has layout {found!r} ({key}), this instance's settings give"
            f" {self.record!r}: FLOWAGG_REDIS_BUCKETS and FLOWAGG_RETENTION_HOURS must be the"
            " same on every instance"
        )
        if not quiet:
            log.error("redis: %s", self.mismatch)
        raise LayoutMismatch(self.mismatch)

    def problems(self) -> list[str]:
        return [f"redis: {self.mismatch}"] if self.mismatch is not None else []
