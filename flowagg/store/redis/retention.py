"""Retention across instances: the newest hour lives in Redis, and so does the list of hours.

Every commit step calls ``flowagg_v1_note`` (functions.lua) with the hours it is about to write:
they join the set of hours that hold data, and the reply is the newest hour any instance has
seen. The step then drops its flows of hours below the window (expired meanwhile, perhaps by
another instance), and the instance whose step moved the newest hour deletes the buckets of the
hours that fell out of the window. The 400 for an expired hour is decided against the newest hour
this instance has learnt, as the embedded store decides it against the newest it has seen; flows
of an hour that another instance expired in the meantime are discarded at the commit.
"""

from __future__ import annotations

import logging
import threading

from flowagg.schema import Flow
from flowagg.store import table
from flowagg.store.base import Expired
from flowagg.store.redis import layout
from flowagg.store.redis.client import Call, RedisClient

log = logging.getLogger("flowagg.redis")


class Window:
    """The retention window as this instance knows it: the newest hour is Redis's."""

    def __init__(self, client: RedisClient, buckets: int, retention_hours: int | None) -> None:
        self.client, self.buckets, self.retention_hours = client, buckets, retention_hours
        # Guards _newest, _noted and hours_dropped.
        self._lock = threading.Lock()
        self._newest = -1  # the newest hour learnt from Redis
        self._noted: set[int] = set()  # hours known to be in the hours set (no retention only)
        self.hours_dropped = 0

    def cutoff(self) -> int:
        """Hours below this are expired (0 without retention)."""
        with self._lock:
            if self.retention_hours is None or self._newest < 0:
                return 0
            return max(0, self._newest - self.retention_hours)

    def check(self, flows: list[Flow]) -> None:
        """Raise ``Expired`` for the first record older than the window this batch would leave."""
        if self.retention_hours is None:
            return
        bounds = table.hour_bounds(flows)
        if bounds is None:
            return
        with self._lock:
            newest = max(self._newest, bounds[1])
        oldest = newest - self.retention_hours
        if bounds[0] < oldest:
            index = table.first_outside(flows, oldest, newest)
            raise Expired(index, flows[index].hour, oldest, newest)

    def note(self, hours: set[int], deadline: float) -> str | None:
        """Add ``hours`` to Redis's set of hours and learn the newest hour; None if done, else
        why not. Deletes the hours that this step's newest hour expires."""
        if not hours:
            return None
        with self._lock:
            if self.retention_hours is None and hours <= self._noted:
                return None
        names = [str(h) for h in sorted(hours)]
        keys = (layout.HOURS_KEY, layout.NEWEST_KEY)
        call = Call(keys[0], ("FCALL", layout.NOTE_FUNCTION, 2, *keys, names[-1], *names))
        self.client.execute([call], deadline, resend_unknown=True)  # idempotent
        if call.state != "done":
            return f"Redis did not record the hours: {call.error}"
        before, after = (int(v) if v else -1 for v in call.reply)
        with self._lock:
            self._newest = max(self._newest, after)
            if self.retention_hours is None:
                self._noted |= hours
        if self.retention_hours is not None and after > before:
            self._expire(max(0, after - self.retention_hours), deadline)
        return None

    def _expire(self, cutoff: int, deadline: float) -> None:
        """Delete the buckets of every hour below ``cutoff``, then the hours themselves."""
        members = Call(layout.HOURS_KEY, ("SMEMBERS", layout.HOURS_KEY))
        self.client.execute([members], deadline, resend_unknown=True)
        if members.state != "done":
            log.warning("retention: cannot list the hours: %s", members.error)
            return
        old = sorted(h for h in map(int, members.reply) if h < cutoff)
        if not old:
            return
        keys = [layout.bucket_key(h, b, self.buckets) for h in old for b in range(self.buckets)]
        unlinks = [Call(k, ("UNLINK", k)) for k in keys]
        self.client.execute(unlinks, deadline, resend_unknown=True)
        if any(c.state != "done" for c in unlinks):
            log.warning("retention: could not delete every hour below %d; next time", cutoff)
            return
        forget = Call(layout.HOURS_KEY, ("SREM", layout.HOURS_KEY, *map(str, old)))
        self.client.execute([forget], deadline, resend_unknown=True)
        with self._lock:
            self.hours_dropped += len(old)
        log.info("retention: deleted %d hour(s) older than %d", len(old), cutoff)
