"""Retention across instances: every instance takes the window from its clock, Redis lists hours.

The window is the one the embedded store uses (limits.py): ``[now - FLOWAGG_RETENTION_HOURS,
now + FLOWAGG_MAX_FUTURE_HOURS]`` from the server's clock, never from the hours posted, so no
POST can move it for the other instances. A POST with a record outside it is ``400``.

Redis keeps the set of hours that hold data (``flowagg:v1:{meta}:hours``): a commit step adds
its hours before it writes their buckets, so no bucket exists for an hour that is not listed. When
an instance's clock moves the window, its next commit step deletes the buckets of every listed
hour below it, then the hours themselves; instances do it each once, and deleting twice is
harmless. A step drops its own flows of hours below the window (they expired while queued), and
reads of such an hour answer ``[]``, so an hour never comes back once out of the window, even
before its buckets are deleted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from flowagg.schema import Flow
from flowagg.store.limits import Window, check_names
from flowagg.store.redis import layout
from flowagg.store.redis.client import Call, RedisClient

log = logging.getLogger("flowagg.redis")


class Retention:
    """The window this instance's clock gives, and the hours Redis lists."""

    def __init__(
        self,
        client: RedisClient,
        buckets: int,
        retention_hours: int | None,
        max_future_hours: int | None = None,
        max_name_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client, self.buckets = client, buckets
        self.window = Window(retention_hours, max_future_hours, clock)
        self.max_name_bytes = max_name_bytes
        # Guards _noted, _expired_below and hours_dropped.
        self._lock = threading.Lock()
        self._noted: set[int] = set()  # hours this instance listed in Redis, not yet expired
        self._expired_below = 0  # this instance deleted the listed hours below this
        self.hours_dropped = 0

    def check(self, flows: list[Flow]) -> None:
        """Raise ``InvalidRecord`` for the first record outside the window or with a name over
        the length limit (as the embedded store does)."""
        self.window.check(flows)
        check_names(flows, self.max_name_bytes)

    def cutoff(self) -> int:
        """Hours below this are out of the window (0 without retention)."""
        oldest = self.window.bounds()[0]
        return max(0, oldest) if oldest is not None else 0

    def note(self, hours: set[int], deadline: float) -> str | None:
        """List ``hours`` in Redis (those not listed by this instance yet), and delete the hours
        that left the window since the last step; None if done, else why not."""
        cutoff = self.cutoff()
        with self._lock:
            self._noted = {h for h in self._noted if h >= cutoff}
            new = sorted(hours - self._noted)
            expire = cutoff > self._expired_below
        if new:
            call = Call(layout.HOURS_KEY, ("SADD", layout.HOURS_KEY, *map(str, new)))
            self.client.execute([call], deadline, resend_unknown=True)  # idempotent
            if call.state != "done":
                return f"Redis did not record the hours: {call.error}"
            with self._lock:
                self._noted.update(new)
        if expire and self._expire(cutoff, deadline):
            with self._lock:
                self._expired_below = max(self._expired_below, cutoff)
        return None

    def _expire(self, cutoff: int, deadline: float) -> bool:
        """Delete the buckets of every listed hour below ``cutoff``, then unlist the hours;
        False if Redis did not let it finish (the next step tries again)."""
        members = Call(layout.HOURS_KEY, ("SMEMBERS", layout.HOURS_KEY))
        self.client.execute([members], deadline, resend_unknown=True)
        if members.state != "done":
            log.warning("retention: cannot list the hours: %s", members.error)
            return False
        old = sorted(h for h in map(int, members.reply) if h < cutoff)
        if not old:
            return True
        keys = [layout.bucket_key(h, b, self.buckets) for h in old for b in range(self.buckets)]
        unlinks = [Call(k, ("UNLINK", k)) for k in keys]
        self.client.execute(unlinks, deadline, resend_unknown=True)
        if any(c.state != "done" for c in unlinks):
            log.warning("retention: could not delete every hour below %d yet", cutoff)
            return False
        forget = Call(layout.HOURS_KEY, ("SREM", layout.HOURS_KEY, *map(str, old)))
        self.client.execute([forget], deadline, resend_unknown=True)
        with self._lock:
            self.hours_dropped += len(old)
        log.info("retention: deleted %d hour(s) older than %d", len(old), cutoff)
        return forget.state == "done"
