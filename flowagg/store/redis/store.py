"""``RedisStore``: the ``FlowStore`` of stateless instances over one Redis or a Redis Cluster.

Writes go through the partitions of commit.py and the group commits of writer.py: a POST is
answered once every flow it holds is committed in Redis, so it is in any GET sent afterwards to
any instance, and an instance can die at any moment without losing what it acknowledged. Every
request is answered within ``FLOWAGG_REDIS_TIMEOUT_MS`` and a margin, whatever Redis does.

A POST is checked before anything is written or bound: a keyed retry is recognised first
(idempotency.py, without binding), then the records are checked against the window of Redis's
clock and the name limit (retention.py), then room is reserved, and only then is the key bound.

A read first waits for this instance's own pending commits of the partition (read-your-writes for
its clients; other instances' POSTs were committed before they were answered), then reads every
bucket of the hour from the primaries in one round and sums the packed blobs exactly in C
(``Sums``), which also writes the JSON: rows sorted by their names, the same on every instance.
Range queries load each hour into a native ``HourTables`` and scan it, so grouping stays in C.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flowagg.schema import Flow
from flowagg.store import query, table
from flowagg.store.base import (
    Closed,
    HoursHeld,
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
from flowagg.store.redis.cache import Entry, HourCache
from flowagg.store.redis.client import Call, NoNode, RedisClient
from flowagg.store.redis.clock import RedisClock
from flowagg.store.redis.commit import APPLIED, MAYBE, NOTHING, PARTLY, CommitPartition
from flowagg.store.redis.compaction import Compactor
from flowagg.store.redis.idempotency import RequestKeys, fingerprint
from flowagg.store.redis.meta import LayoutCheck, LayoutMismatch
from flowagg.store.redis.retention import Retention
from flowagg.store.redis.writer import Committer
from flowagg.store.ringbuffer import Closed as BufferClosed
from flowagg.store.ringbuffer import Full, remaining, reserve_all

if TYPE_CHECKING:
    from flowagg.metrics import Metrics

log = logging.getLogger("flowagg.redis")

ANSWER_MARGIN_S = 0.5  # a POST is answered by FLOWAGG_REDIS_TIMEOUT_MS plus this
HOURS_PER_ROUND = 48  # hours a range query reads in one round (16 buckets each by default)


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
        wait_replicas: int = 0,
        redis_time: Callable[[], float] | None = None,
        cache_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        """``clock`` is this host's wall clock (compared with Redis's); ``redis_time``, if
        given, stands in for Redis's TIME (tests move it)."""
        if partitions < 1 or buckets < 1:
            raise ValueError("partitions and buckets must be at least 1")
        observer = metrics.redis() if metrics is not None else None
        count_error = observer.count_error if observer else None
        self.client = RedisClient(url, timeout_s, count_error, wait_replicas)
        self.buckets, self.timeout_s = buckets, timeout_s
        self.max_query_rows = max_query_rows
        self.clock = RedisClock(self.client, clock, redis_time)
        self.window = Retention(
            self.clock, buckets, retention_hours, max_future_hours, max_name_bytes
        )
        self.layout = LayoutCheck(self.client, buckets, retention_hours)
        self.keys = RequestKeys(self.client, idempotency_ttl_s)
        self.compactor = Compactor(self.client, buckets, self.window, timeout_s)
        self.cache = HourCache(buckets, cache_bytes)
        committer = Committer(
            self.client, buckets, idempotency_ttl_s, self.window, timeout_s,
            self.compactor.request, self.layout.ensure,
        )  # fmt: skip
        on_commit = observer.observe_commit if observer else None
        self.partitions = [
            CommitPartition(i, buffer_capacity, committer.commit, on_commit)
            for i in range(partitions)
        ]
        # Guards _closed.
        self._lock = threading.Lock()
        self._closed = False
        self._connect()  # LayoutMismatch stops the start
        if start:
            self.clock.start(timeout_s)
            self.compactor.start()
            for partition in self.partitions:
                partition.start()

    def _connect(self) -> None:
        """Find the nodes, check the layout, read the clock; Redis unreachable is not fatal
        (the instance is unready until it answers), another layout is (LayoutMismatch)."""
        deadline = time.monotonic() + self.timeout_s
        try:
            topology = self.client.topology(deadline)
            self.layout.ensure(deadline, quiet=True)
            self.clock.sync(deadline)
        except LayoutMismatch:  # an Unreachable too, but one that waiting does not mend
            self.client.close()
            raise
        except (NoNode, Unreachable) as exc:
            log.warning("redis: %s; retrying on use", exc)
            return
        except BaseException:
            self.client.close()
            raise
        log.info(
            "redis: %s with %d primaries: %s",
            "cluster" if topology.cluster else "one node",
            len(topology.primaries),
            ", ".join(n.name for n in topology.primaries),
        )

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
        deadline = time.monotonic() + self.timeout_s + ANSWER_MARGIN_S
        flows = flows if isinstance(flows, list) else list(flows)
        if self.closed:
            raise Closed("store is closed")
        try:
            self.layout.ensure(self._round_deadline(deadline))
        except LayoutMismatch as exc:
            raise Unreachable(str(exc), NOTHING) from None
        retry = False
        if idempotency_key is not None:
            print_ = fingerprint(flows)
            retry = self.keys.lookup(idempotency_key, print_, self._round_deadline(deadline))
        if not retry:  # a retry is answered as the original, even once its hour expired
            self.window.check(flows)
        if not flows and idempotency_key is None:
            return 0
        packs = table.pack(flows, len(self.partitions)) if flows else {}
        wait = remaining(deadline) if timeout is None else min(timeout, remaining(deadline))
        self._reserve(packs, wait)
        try:
            if idempotency_key is not None and not retry:
                self.keys.bind(idempotency_key, print_, self._round_deadline(deadline))
            tickets = [
                (self.partitions[i], self.partitions[i].put(pack, idempotency_key))
                for i, pack in packs.items()
            ]
        except BaseException:
            for i, pack in packs.items():
                self.partitions[i].buffer.cancel(len(pack))
            raise
        late = [t for p, t in tickets if not p.wait(t, deadline)]
        outcomes = {t.outcome for _, t in tickets} - {None}
        if not late and outcomes <= {APPLIED}:
            return len(flows)
        if late:
            applied, reason = MAYBE, "the commit did not finish in time"
        else:
            applied = _overall(outcomes)
            reason = next(t.reason for _, t in tickets if t.outcome != APPLIED)
        raise Unreachable(f"the request was not committed: {reason}", applied)

    def _round_deadline(self, deadline: float) -> float:
        return min(deadline, time.monotonic() + self.timeout_s)

    def _reserve(self, packs: dict[int, table.Pack], timeout: float | None) -> None:
        """Hold room for every part in its buffer, or none (ringbuffer.reserve_all)."""
        buffers = [p.buffer for p in self.partitions]
        try:
            reserve_all(buffers, {index: len(pack) for index, pack in packs.items()}, timeout)
        except BufferClosed:
            raise Closed("store is closed") from None
        except Full as exc:
            raise Overloaded(
                f"partition {exc.index} had no room for {len(packs[exc.index])} flows"  # type: ignore[index]
                f" within {timeout:.3g} s"
            ) from None

    # -- reads -----------------------------------------------------------------------------

    def read_hour(self, hour: int, timeout: float | None = None) -> list[Row]:
        entry = self._entry(hour, self._read_deadline(timeout))
        if entry is None:
            return []
        rows = entry.rows()
        self.cache.settle(hour, entry)
        return rows

    def read_hour_json(self, hour: int, timeout: float | None = None) -> bytes:
        entry = self._entry(hour, self._read_deadline(timeout))
        if entry is None:
            return b"[]"
        answer = entry.json()
        self.cache.settle(hour, entry)
        return answer

    def _read_deadline(self, timeout: float | None) -> float:
        limit = self.timeout_s if timeout is None else min(timeout, self.timeout_s)
        return time.monotonic() + limit

    def _entry(self, hour: int, deadline: float) -> Entry | None:
        """Every bucket of ``hour`` as Redis holds it now, after this instance's own pending
        commits of it (read-your-writes); None below the window."""
        if hour < self.window.cutoff():
            return None
        self.layout.ensure(deadline)
        self.partition_for(hour).flush(remaining(deadline))
        return self._entries([hour], deadline)[hour]

    def _entries(self, hours: list[int], deadline: float) -> dict[int, Entry]:
        """Every bucket of these hours as Redis holds them now, read in one round (cache.py)."""
        self.cache.forget_before(self.window.cutoff())
        asked = [(hour, *self.cache.calls(hour)) for hour in hours]
        calls = [call for _, _, mine in asked for call in mine]
        self._read(calls, deadline, f"cannot read hour {hours[0]}" if len(hours) == 1 else
                   f"cannot read hours {hours[0]} to {hours[-1]}")  # fmt: skip
        return {hour: self.cache.update(hour, held, mine) for hour, held, mine in asked}

    def _read(self, calls: list[Call], deadline: float, what: str) -> None:
        """Run read calls (resent on any failure until the deadline); ``Unreachable`` unless all
        answered: never a partial answer."""
        self.client.execute(calls, deadline, resend_unknown=True)
        failed = next((c for c in calls if c.state != "done"), None)
        if failed is not None:
            raise Unreachable(f"{what} from Redis: {failed.error}")

    def flush(self, timeout: float | None = None) -> None:
        deadline = self._read_deadline(timeout)
        for partition in self.partitions:
            partition.flush(remaining(deadline))

    # -- range queries (query.py) ----------------------------------------------------------

    def top(self, query_: Query, timeout: float | None = None) -> Top:
        return query.top(query_, self._scanner(query_, timeout))

    def series(self, query_: Query, timeout: float | None = None) -> Series:
        return query.series(query_, self._scanner(query_, timeout))

    def hours_held(self, timeout: float | None = None) -> HoursHeld:
        deadline = self._read_deadline(timeout)
        for partition in self.partitions:
            partition.flush(remaining(deadline))
        hours = self._stored_hours(None, deadline)
        return HoursHeld(len(hours), min(hours, default=None), max(hours, default=None))

    def _stored_hours(self, within: range | None, deadline: float) -> list[int]:
        """The listed hours in the window (and ``within``) with a bucket that exists."""
        self.layout.ensure(deadline)
        members = self.window.members()
        self._read([members], deadline, "cannot list the hours")
        hours = self.window.held(members, within)
        checks = self.window.existence(hours)
        self._read(checks, deadline, "cannot list the hours")
        return self.window.with_data(hours, checks)

    def _scanner(self, query_: Query, timeout: float | None) -> query.Scan:
        """Wait for this instance's commits of the range, then load every hour of the range
        that holds data once, for every scan; a query over more key-hours than the limit is
        refused (``QueryTooLarge``) as soon as the hours loaded pass it, before any scan."""
        deadline = self._read_deadline(timeout)
        n = len(self.partitions)
        touched = range(n) if len(query_.hours) >= n else {h % n for h in query_.hours}
        for index in sorted(touched):
            self.partitions[index].flush(remaining(deadline))
        hours = self._stored_hours(query_.hours, deadline)
        entries: dict[int, Entry] = {}
        held = 0
        for start in range(0, len(hours), HOURS_PER_ROUND):
            # The first round shares the query's deadline; each later one, once the one before
            # answered, has a round trip's time of its own.
            round_deadline = deadline if start == 0 else self._read_deadline(None)
            for hour, entry in self._entries(hours[start:start + HOURS_PER_ROUND],
                                             round_deadline).items():  # fmt: skip
                held += len(entry)
                if self.max_query_rows is not None and held > self.max_query_rows:
                    raise QueryTooLarge(held, self.max_query_rows)  # before any scan
                entry.tables()
                self.cache.settle(hour, entry)
                entries[hour] = entry

        def scan(within: range, groups: table.Groups) -> None:
            for hour in (h for h in entries if h in within):
                entries[hour].tables().scan(hour, groups, query_.filters)

        return scan

    # -- operations and lifecycle ------------------------------------------------------------

    def stats(self) -> StoreStats:
        return StoreStats([p.stats() for p in self.partitions], self.window.hours_dropped)

    def health(self, high_watermark: float) -> list[str]:
        problems = partition_problems(self.stats().partitions, high_watermark)
        problems += self.layout.problems() + self.clock.problems()
        return problems + self.client.health(time.monotonic() + self.timeout_s)

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new requests, commit everything pending, stop the threads, disconnect."""
        deadline = self._read_deadline(timeout) if timeout is not None else None
        with self._lock:
            self._closed = True
        for partition in self.partitions:
            partition.buffer.close()
        ok = all([p.close(remaining(deadline)) for p in self.partitions])
        self.compactor.close(remaining(deadline))
        self.clock.close(remaining(deadline))
        self.client.close()
        return ok


def _overall(outcomes: set[str | None]) -> str:
    """What a request's parts together left behind (none of them timed out)."""
    if MAYBE in outcomes:
        return MAYBE
    if outcomes == {NOTHING}:
        return NOTHING
    return PARTLY


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
        wait_replicas=config["FLOWAGG_REDIS_WAIT_REPLICAS"],
        cache_bytes=config["FLOWAGG_REDIS_CACHE_BYTES"],
    )
