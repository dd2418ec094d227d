"""Compaction: a bucket's deltas folded into its base, atomically and at most once.

Commits append deltas to a bucket (writer.py) and report its size; one past the thresholds is put
on this instance's queue, and the thread ``flowagg-redis-compact`` compacts it: it reads the whole
list (one ``LRANGE``, so one consistent state), sums every element but the header in the native
``Sums``, packs the sums as new base chunks, and calls ``flowagg_v2_compact`` with the header's
token as read. The function swaps the chunks in for the elements read only if the token is still
the same, i.e. no compaction came in between; elements appended since stay after the new base. So
a compaction applies at most once whoever runs it and however often it is sent (a lost reply is
simply sent again), two instances compacting one bucket at once cost work but never a count, and a
reader, which reads a bucket in one command, sees it before or after, both of the same sums.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from flowagg.store.redis import layout
from flowagg.store.redis.client import Call, RedisClient
from flowagg.store.redis.retention import Retention
from flowagg.store.table import Sums

log = logging.getLogger("flowagg.redis")

MAX_QUEUED = 10_000  # buckets waiting; beyond, requests are dropped (the next commit asks again)
# A bucket is folded once its deltas pass both FOLD_BYTES and half its base, or number
# FOLD_DELTAS: each byte is then rewritten a bounded number of times, and a read sums a base and
# at most about half as much again.
FOLD_BYTES = 32 * 1024
FOLD_DELTAS = 256


class Compactor:
    def __init__(
        self, client: RedisClient, buckets: int, retention: Retention, timeout_s: float
    ) -> None:
        self.client, self.buckets = client, buckets
        self.retention, self.timeout_s = retention, timeout_s
        # Guards _queue, _queued, _closed and the counts; notified when a bucket is queued or
        # the compactor closes.
        self._lock = threading.Lock()
        self.due = threading.Condition(self._lock)
        self._queue: deque[tuple[int, int]] = deque()
        self._queued: set[tuple[int, int]] = set()
        self._closed = False
        self.compactions = 0  # applied by this instance
        self.failures = 0
        self._thread: threading.Thread | None = None

    def request(self, hour: int, bucket: int) -> None:
        """Queue a bucket for compaction (once, however often asked while it waits)."""
        with self._lock:
            item = (hour, bucket)
            if self._closed or item in self._queued or len(self._queue) >= MAX_QUEUED:
                return
            self._queued.add(item)
            self._queue.append(item)
            self.due.notify()

    def compact(self, hour: int, bucket: int) -> bool:
        """Compact one bucket now; True if this call folded it."""
        if hour < self.retention.cutoff():
            return False  # out of the window: it expires unread
        deadline = time.monotonic() + self.timeout_s
        key = layout.bucket_key(hour, bucket, self.buckets)
        read = Call(key, ("LRANGE", key, 0, -1))
        self.client.execute([read], deadline, resend_unknown=True)
        if read.state != "done":
            raise ConnectionError(f"cannot read {key}: {read.error}")
        if not read.reply:
            return False
        header, *elements = read.reply
        base = layout.base_chunks(header)
        deltas = len(elements) - base
        delta_bytes = sum(len(e) for e in elements[base:])
        base_bytes = sum(len(e) for e in elements[:base])
        worth = delta_bytes >= max(FOLD_BYTES, base_bytes // 2) or deltas >= FOLD_DELTAS
        if deltas < 2 or not worth:
            return False
        sums = Sums(hour)
        sums.add(elements)
        chunks = sums.pack(layout.CHUNK_ROWS, layout.CHUNK_BYTES)
        new = layout.new_header(len(chunks))
        expire_at = self.retention.expire_at(hour)
        call = Call(
            key,
            ("FCALL", layout.COMPACT_FUNCTION, 1, key, header, len(read.reply), new, expire_at,
             *chunks),
            write=True,
        )  # fmt: skip
        self.client.execute([call], deadline, resend_unknown=True)  # at most once: the token
        if call.state != "done":
            raise ConnectionError(f"cannot compact {key}: {call.error}")
        return call.reply == 1

    # -- the thread --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="flowagg-redis-compact", daemon=True)
        self._thread.start()

    def compact_once(self, timeout: float | None = None) -> bool:
        """Take one queued bucket (waiting up to ``timeout``) and compact it; False if none."""
        with self._lock:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._queue and not self._closed:
                if deadline is not None and deadline <= time.monotonic():
                    return False
                self.due.wait(None if deadline is None else deadline - time.monotonic())
            if not self._queue:
                return False
            item = self._queue.popleft()
            self._queued.discard(item)
        try:
            folded = self.compact(*item)
        except Exception as exc:  # logged and counted; the next commit asks again
            log.warning("compaction of hour %d bucket %d failed: %s", *item, exc)
            with self._lock:
                self.failures += 1
            return True
        if folded:
            with self._lock:
                self.compactions += 1
        return True

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
            try:
                self.compact_once()
            except Exception:
                log.exception("compaction step failed")

    def close(self, timeout: float | None = None) -> None:
        with self._lock:
            self._closed = True
            self._queue.clear()
            self._queued.clear()
            self.due.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
