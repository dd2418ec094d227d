"""``RedisStore``: the ``FlowStore`` of stateless instances over one Redis or a Redis Cluster.

Writes go through the partitions of commit.py: a POST is answered once every flow it holds is
committed in Redis, so it is in any GET sent afterwards to any instance, and an instance can die
at any moment without losing what it acknowledged. A read first waits for this instance's own
pending commits of the partition (read-your-writes for its clients), then reads every bucket of
the hour from the primaries, pipelined, and sums them exactly; rows come sorted by their names
(first appearance cannot be kept across instances). Range queries load each hour into a native
``HourTables`` and scan it, so grouping stays in C (query.py).

Retention works across instances (retention.py): each takes the window from its clock, as the
embedded store does, and Redis lists the hours that hold data.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from flowagg.schema import Flow, encode
from flowagg.store import query, table
from flowagg.store.base import (
    Closed,
    HoursHeld,
    KeyReused,
    Overloaded,
    Query,
    QueryTooLarge,
    Row,
    Series,
    StoreStats,
    Top,
    Unreachable,
)
from flowagg.store.memory import partition_problems
from flowagg.store.redis import layout
from flowagg.store.redis.client import Call, NoNode, RedisClient
from flowagg.store.redis.commit import (
    APPLIED,
    MAYBE,
    NOTHING,
    PARTLY,
    CommitPartition,
    Committer,
)
from flowagg.store.redis.retention import Retention
from flowagg.store.ringbuffer import Closed as BufferClosed
from flowagg.store.ringbuffer import Full, deadline_after, remaining, reserve_all

if TYPE_CHECKING:
    from flowagg.metrics import Metrics

log = logging.getLogger("flowagg.redis")


class RedisStore:
    """Partitions that commit to Redis; reads from Redis. See the module comment."""

    def __init__(
        self,
        url: str,
        partitions: int = 8,
        buffer_capacity: int = 262_144,
        buckets: int = 16,
        timeout_s: float = 2.0,
        idempotency_ttl_s: int = 24 * 60 * 60,
        retention_hours: int | None = None,
        max_query_rows: int | None = None,
        metrics: Metrics | None = None,
        start: bool = True,
        max_future_hours: int | None = None,
        max_name_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if partitions < 1 or buckets < 1:
            raise ValueError("partitions and buckets must be at least 1")
        observer = metrics.redis() if metrics is not None else None
        self.client = RedisClient(url, timeout_s, observer.count_error if observer else None)
        self.buckets = buckets
        self.timeout_s = timeout_s
        self.ttl_s = idempotency_ttl_s
        self.max_query_rows = max_query_rows
        self.window = Retention(
            self.client, buckets, retention_hours, max_future_hours, max_name_bytes, clock
        )
        committer = Committer(self.client, buckets, idempotency_ttl_s, self.window, timeout_s)
        on_commit = observer.observe_commit if observer else None
        self.partitions = [
            CommitPartition(i, buffer_capacity, committer, on_commit) for i in range(partitions)
        ]
        # Guards _closed.
        self._lock = threading.Lock()
        self._closed = False
        try:
            topology = self.client.topology()  # connects, and loads the functions
            log.info(
                "redis: %s with %d primaries: %s",
                "cluster" if topology.cluster else "one node",
                len(topology.primaries),
                ", ".join(n.name for n in topology.primaries),
            )
        except NoNode as exc:  # not fatal: the instance is unready until Redis answers
            log.warning("redis: %s; retrying on use", exc)
        if start:
            for partition in self.partitions:
                partition.start()

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def partition_for(self, hour: int) -> CommitPartition:
        return self.partitions[hour % len(self.partitions)]

    # -- ingest ----------------------------------------------------------------------------

    def ingest(
        self,
        flows: Sequence[Flow],
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Commit the batch to Redis and return its size once all of it is committed."""
        flows = flows if isinstance(flows, list) else list(flows)
        if self.closed:
            raise Closed("store is closed")
        # A retry of a keyed request is let through even if its hour has left the window since:
        # what it applied is there (or expired with the hour), and its answer is the original.
        if idempotency_key is None or not self._claim(idempotency_key, flows):
            self.window.check(flows)
        if not flows:
            return 0
        parts = table.split(flows, len(self.partitions))
        self._reserve(parts, timeout)
        tickets = [
            (self.partitions[i], self.partitions[i].put(part, idempotency_key))
            for i, part in parts.items()
        ]
        # A step takes at most the commit deadline plus one round trip in flight; this one may
        # wait behind the step before it.
        deadline = time.monotonic() + 4 * self.timeout_s + 1.0
        timed_out = [t for p, t in tickets if not p.wait(t, deadline)]
        outcomes = {t.outcome for _, t in tickets}
        if not timed_out and outcomes == {APPLIED}:
            return len(flows)
        if timed_out:
            applied, reason = MAYBE, "the commit did not finish in time"
        else:
            applied = _overall(outcomes)
            reason = next(t.reason for _, t in tickets if t.outcome != APPLIED)
        raise Unreachable(f"the request was not committed: {reason}", applied)

    def _claim(self, key: str, flows: list[Flow]) -> bool:
        """Bind ``key`` to these flows in Redis (first use: False) or check that it was bound to
        them (a retry: True); ``KeyReused`` if it was bound to other flows."""
        fingerprint = f"{zlib.crc32(_fingerprint_encoder.encode(flows))}:{len(flows)}"
        name = layout.request_key(key)
        call = Call(name, ("SET", name, fingerprint, "NX", "EX", self.ttl_s, "GET"))
        self.client.execute([call], time.monotonic() + self.timeout_s, resend_unknown=True)
        if call.state != "done":
            raise Unreachable(f"cannot check the Idempotency-Key: {call.error}", NOTHING)
        if call.reply is None:
            return False
        if call.reply.decode() != fingerprint:
            raise KeyReused(
                f"Idempotency-Key {key!r} was already used for a request with other flows"
            )
        return True

    def _reserve(self, parts: dict[int, list[Flow]], timeout: float | None) -> None:
        """Hold room for every part in its buffer, or none (ringbuffer.reserve_all)."""
        buffers = [p.buffer for p in self.partitions]
        try:
            reserve_all(buffers, {index: len(part) for index, part in parts.items()}, timeout)
        except BufferClosed:
            raise Closed("store is closed") from None
        except Full as exc:
            raise Overloaded(
                f"partition {exc.index} had no room for {len(parts[exc.index])} flows"
                f" within {timeout} s"
            ) from None

    # -- reads -----------------------------------------------------------------------------

    def read_hour(self, hour: int, timeout: float | None = None) -> list[Row]:
        if hour < self.window.cutoff():
            return []
        self.partition_for(hour).flush(timeout)
        return self._rows(hour)

    def read_hour_json(self, hour: int, timeout: float | None = None) -> bytes:
        return encode([Flow(*row, hour) for row in self.read_hour(hour, timeout)])

    def _rows(self, hour: int) -> list[Row]:
        calls = [Call(k, ("HGETALL", k)) for k in self._bucket_keys(hour)]
        self._read(calls, f"cannot read hour {hour}")
        return layout.rows_of(c.reply for c in calls)

    def _bucket_keys(self, hour: int) -> list[str]:
        return [layout.bucket_key(hour, b, self.buckets) for b in range(self.buckets)]

    def _read(self, calls: list[Call], what: str) -> None:
        """Run read calls (resent on any failure until the deadline); ``Unreachable`` unless all
        answered: never a partial answer."""
        self.client.execute(calls, time.monotonic() + self.timeout_s, resend_unknown=True)
        failed = next((c for c in calls if c.state != "done"), None)
        if failed is not None:
            raise Unreachable(f"{what} from Redis: {failed.error}")

    def flush(self, timeout: float | None = None) -> None:
        deadline = deadline_after(timeout)
        for partition in self.partitions:
            partition.flush(remaining(deadline))

    # -- range queries (query.py) ----------------------------------------------------------

    def top(self, query_: Query, timeout: float | None = None) -> Top:
        return query.top(query_, self._scanner(query_, self._prepare(query_, timeout)))

    def series(self, query_: Query, timeout: float | None = None) -> Series:
        return query.series(query_, self._scanner(query_, self._prepare(query_, timeout)))

    def hours_held(self, timeout: float | None = None) -> HoursHeld:
        self.flush(timeout)
        hours = self._stored_hours()
        return HoursHeld(len(hours), min(hours, default=None), max(hours, default=None))

    def _stored_hours(self, within: range | None = None) -> list[int]:
        """The hours holding data (in ``within``): listed in the hours set, not expired, and
        with at least one bucket (a commit that failed may have listed an hour it never
        filled)."""
        members = Call(layout.HOURS_KEY, ("SMEMBERS", layout.HOURS_KEY))
        self._read([members], "cannot list the hours")
        cutoff = self.window.cutoff()
        listed = sorted(h for h in map(int, members.reply) if h >= cutoff)
        if within is not None:
            listed = [h for h in listed if h in within]
        checks = [Call(k, ("EXISTS", k)) for h in listed for k in self._bucket_keys(h)]
        self._read(checks, "cannot list the hours")
        b = self.buckets
        return [h for i, h in enumerate(listed) if any(c.reply for c in checks[i * b : i * b + b])]

    def _prepare(self, query_: Query, timeout: float | None) -> list[int]:
        """Wait for this instance's commits of the range; refuse a query over too many
        key-hours before scanning. Returns the hours of the range that hold data."""
        deadline = deadline_after(timeout)
        n = len(self.partitions)
        touched = range(n) if len(query_.hours) >= n else {h % n for h in query_.hours}
        for index in sorted(touched):
            self.partitions[index].flush(remaining(deadline))
        hours = self._stored_hours(query_.hours)
        if self.max_query_rows is not None:
            # Every key has its two low fields (and carries rarely): fields / 2 bounds the keys.
            sizes = [Call(k, ("HLEN", k)) for h in hours for k in self._bucket_keys(h)]
            self._read(sizes, "cannot size the query")
            rows = sum(c.reply for c in sizes) // 2
            if rows > self.max_query_rows:
                raise QueryTooLarge(rows, self.max_query_rows)
        return hours

    def _scanner(self, query_: Query, stored: list[int]) -> query.Scan:
        def scan(hours: range, groups: table.Groups) -> None:
            for hour in (h for h in stored if h in hours):
                tables = table.HourTables()
                tables.merge_rows(hour, self._rows(hour))
                tables.scan(hour, groups, query_.filters)

        return scan

    # -- operations and lifecycle ------------------------------------------------------------

    def stats(self) -> StoreStats:
        return StoreStats([p.stats() for p in self.partitions], self.window.hours_dropped)

    def health(self, high_watermark: float) -> list[str]:
        problems = partition_problems(self.stats().partitions, high_watermark)
        return problems + self.client.health()

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new requests, commit everything pending, stop the drainers, disconnect."""
        deadline = deadline_after(timeout)
        with self._lock:
            self._closed = True
        for partition in self.partitions:
            partition.buffer.close()
        ok = all([p.close(remaining(deadline)) for p in self.partitions])
        self.client.close()
        return ok


def _overall(outcomes: set[str | None]) -> str:
    """What a request's parts together left behind (none of them timed out)."""
    if MAYBE in outcomes:
        return MAYBE
    if outcomes == {NOTHING}:
        return NOTHING
    return PARTLY


_fingerprint_encoder = msgspec.msgpack.Encoder()


def open_redis_store(
    config: Mapping[str, Any],
    metrics: Metrics | None = None,
    clock: Callable[[], float] = time.time,
) -> RedisStore:
    """A Redis store configured by the ``FLOWAGG_*`` settings (see config.py). It does not
    enforce FLOWAGG_MAX_KEYS: Redis's own maxmemory bounds what it holds."""
    return RedisStore(
        config["FLOWAGG_REDIS_URL"],
        partitions=config["FLOWAGG_PARTITIONS"],
        buffer_capacity=config["FLOWAGG_BUFFER_CAPACITY"],
        buckets=config["FLOWAGG_REDIS_BUCKETS"],
        timeout_s=config["FLOWAGG_REDIS_TIMEOUT_MS"] / 1000,
        idempotency_ttl_s=config["FLOWAGG_IDEMPOTENCY_TTL_S"],
        retention_hours=config["FLOWAGG_RETENTION_HOURS"],
        max_query_rows=config["FLOWAGG_MAX_QUERY_ROWS"],
        metrics=metrics,
        max_future_hours=config["FLOWAGG_MAX_FUTURE_HOURS"],
        max_name_bytes=config["FLOWAGG_MAX_NAME_BYTES"],
        clock=clock,
    )
