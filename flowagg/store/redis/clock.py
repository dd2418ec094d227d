"""One clock for every instance: Redis's ``TIME``, read now and then and carried on locally.

The window of hours an instance accepts (``400`` outside it) and serves (``[]`` below it) comes
from this clock, never from the instance's own: an instance whose clock runs 100 hours ahead
accepts and serves exactly what the others do. ``TIME`` is asked of the primary that holds the
layout and hours keys (one node for every instance), every ``REFRESH_S`` by the thread
``flowagg-redis-clock``, and carried on between two readings with the monotonic clock, which no
wall-clock step moves. Each reading also compares the instance's own clock with Redis's: off by
more than ``SKEW_LIMIT_S`` and the instance says so in the log and in ``/readyz``, whose check
fails (its window is still right; its clock is not, and whatever else on the host reads it is
wrong too).

Until Redis first answers, the instance's own clock stands in (and the instance is unready,
since Redis does not answer).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from flowagg.store.redis import layout
from flowagg.store.redis.client import Call, RedisClient

log = logging.getLogger("flowagg.redis")

REFRESH_S = 5.0
SKEW_LIMIT_S = 60.0


class RedisClock:
    def __init__(
        self,
        client: RedisClient,
        local: Callable[[], float] = time.time,
        source: Callable[[], float] | None = None,
    ) -> None:
        """``local`` is this instance's wall clock; ``source``, if given, stands in for
        Redis's TIME (tests move it)."""
        self.client, self.local, self.source = client, local, source
        # Guards _base, skew and _closed; notified by close().
        self._lock = threading.Lock()
        self._stop = threading.Condition(self._lock)
        self._base: tuple[float, float] | None = None  # (Redis's unix time, monotonic then)
        self.skew: float | None = None  # local clock minus Redis's, at the last reading
        self._closed = False
        self._thread: threading.Thread | None = None

    def now(self) -> float:
        """Redis's unix time now, as far as this instance knows it."""
        if self.source is not None:
            return self.source()
        with self._lock:
            base = self._base
        if base is None:
            return self.local()
        return base[0] + (time.monotonic() - base[1])

    def sync(self, deadline: float) -> bool:
        """Read Redis's TIME; False if Redis did not answer."""
        if self.source is not None:
            reading, mid = self.source(), time.monotonic()
        else:
            call = Call(layout.HOURS_KEY, ("TIME",))
            sent = time.monotonic()
            self.client.execute([call], deadline, resend_unknown=True)
            if call.state != "done":
                return False
            mid = (sent + time.monotonic()) / 2  # the reply was made about half-way
            reading = int(call.reply[0]) + int(call.reply[1]) / 1e6
        skew = self.local() - (reading + time.monotonic() - mid)
        with self._lock:
            was = self.skew
            self._base, self.skew = (reading, mid), skew
        if abs(skew) > SKEW_LIMIT_S and (was is None or abs(was) <= SKEW_LIMIT_S):
            log.warning("clock: %s; the hours window follows Redis's", describe(skew))
        elif abs(skew) <= SKEW_LIMIT_S and was is not None and abs(was) > SKEW_LIMIT_S:
            log.info("clock: back within %.0f s of Redis's", SKEW_LIMIT_S)
        return True

    def problems(self) -> list[str]:
        with self._lock:
            skew = self.skew
        if skew is None or abs(skew) <= SKEW_LIMIT_S:
            return []
        return [f"clock: {describe(skew)} (more than {SKEW_LIMIT_S:.0f} s); fix its time sync"]

    # -- the refreshing thread ---------------------------------------------------------------

    def start(self, timeout_s: float) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(timeout_s,), name="flowagg-redis-clock", daemon=True
        )
        self._thread.start()

    def _run(self, timeout_s: float) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
            try:
                synced = self.sync(time.monotonic() + timeout_s)
            except Exception:  # a bug must not stop the clock
                log.exception("clock: cannot read Redis's time")
                synced = False
            with self._lock:
                # Soon again while Redis has not answered, else every REFRESH_S.
                deadline = time.monotonic() + (REFRESH_S if synced else min(REFRESH_S, 0.5))
                while not self._closed and (left := deadline - time.monotonic()) > 0:
                    self._stop.wait(left)

    def close(self, timeout: float | None = None) -> None:
        with self._lock:
            self._closed = True
            self._stop.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)


def describe(skew: float) -> str:
    way = "ahead of" if skew > 0 else "behind"
    amount = abs(skew)
    shown = f"{amount / 3600:.1f} h" if amount >= 3600 else f"{amount:.0f} s"
    return f"this instance's clock is {shown} {way} Redis's"
