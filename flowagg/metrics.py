"""Prometheus metrics, in a registry owned by the app (never the process-global default).

Request counters and histograms are updated where things happen; everything the store holds
(buffer depths, lag, keys, hours) is read from ``store.stats()`` at scrape time, so the ingest
path pays nothing for it. No label carries a flow key: cardinality is bounded by partitions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flowagg.store.base import FlowStore

REJECT_REASONS = (
    "invalid",
    "expired",
    "too_large",
    "overloaded",
    "unavailable",
    "key_limit",
    "memory_limit",
    "unauthorized",
    "forbidden",
)
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)  # seconds


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests_accepted = Counter(
            "flowagg_requests_accepted", "POST /flows requests accepted", registry=r
        )
        self.flows_accepted = Counter(
            "flowagg_flows_accepted", "Flows accepted by POST /flows", registry=r
        )
        self.requests_rejected = Counter(
            "flowagg_requests_rejected",
            "POST /flows requests rejected, by reason",
            ["reason"],
            registry=r,
        )
        for reason in REJECT_REASONS:  # export zeros, so rates work from the first scrape
            self.requests_rejected.labels(reason)
        self.ingest_seconds = Histogram(
            "flowagg_ingest_duration_seconds",
            "POST /flows latency of accepted requests, from arrival to the answer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.read_seconds = Histogram(
            "flowagg_read_duration_seconds",
            "GET /flows latency, from arrival to encoded response",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.query_seconds = Histogram(
            "flowagg_query_duration_seconds",
            "GET /flows/top and /flows/series latency, from arrival to encoded response",
            ["query"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        for query in ("top", "series"):
            self.query_seconds.labels(query)
        self.queries_refused = Counter(
            "flowagg_queries_refused",
            "Range queries refused (422) for scanning more than FLOWAGG_MAX_QUERY_ROWS key-hours",
            registry=r,
        )
        self.drain_batch = Histogram(
            "flowagg_drain_batch_flows",
            "Flows applied per drain step",
            buckets=(1, 10, 100, 1_000, 10_000, 100_000, 1_000_000),
            registry=r,
        )
        self.drain_seconds = Histogram(
            "flowagg_drain_duration_seconds",
            "Time to sum and merge one drain step",
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
            registry=r,
        )

        self.fsync_seconds = Histogram(
            "flowagg_fsync_duration_seconds",
            "Time of one group fsync of the write-ahead log (with a data directory)",
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
            registry=r,
        )

        # The process's resident memory, CPU time and open files (process_*), read from /proc
        # at scrape time.
        ProcessCollector(registry=r)

        self._redis: RedisMetrics | None = None

    def redis(self) -> RedisMetrics:
        """The Redis store's metrics, registered on first use (other stores export none)."""
        if self._redis is None:
            self._redis = RedisMetrics(self.registry)
        return self._redis

    def observe_drain(self, flows: int, seconds: float) -> None:
        self.drain_batch.observe(flows)
        self.drain_seconds.observe(seconds)

    def watch(self, store: FlowStore) -> None:
        self.registry.register(StoreCollector(store))

    def watch_log(self, log: Dropping) -> None:
        """Export how many log lines ``log`` (logs.LogBuffer) dropped, read at scrape time."""
        self.registry.register(
            CounterCollector(
                "flowagg_log_lines_dropped",
                "Log lines dropped because the log writer could not keep up",
                lambda: log.dropped,
            )
        )


class RedisMetrics:
    """Group commits to Redis and the errors Redis answered, by kind (bounded: see client.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.commit_seconds = Histogram(
            "flowagg_redis_commit_duration_seconds",
            "Time of one group commit to Redis: sums, function calls, replies",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.commit_flows = Histogram(
            "flowagg_redis_commit_flows",
            "Flows per group commit to Redis (its _count is the number of commits)",
            buckets=(1, 10, 100, 1_000, 10_000, 100_000, 1_000_000),
            registry=registry,
        )
        self.commits_failed = Counter(
            "flowagg_redis_commits_failed",
            "Group commits to Redis that did not commit every flow they held",
            registry=registry,
        )
        self.errors = Counter(
            "flowagg_redis_errors", "Errors talking to Redis, by kind", ["kind"], registry=registry
        )

    def observe_commit(self, flows: int, seconds: float, committed: bool) -> None:
        self.commit_flows.observe(flows)
        self.commit_seconds.observe(seconds)
        if not committed:
            self.commits_failed.inc()

    def count_error(self, kind: str) -> None:
        self.errors.labels(kind).inc()


class Dropping(Protocol):
    dropped: int


class CounterCollector(Collector):
    """One counter whose value is read at scrape time."""

    def __init__(self, name: str, documentation: str, value: Callable[[], float]) -> None:
        self.name, self.documentation, self.value = name, documentation, value

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.value())


class StoreCollector(Collector):
    """Reads the store's state at scrape time."""

    def __init__(self, store: FlowStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        stats = self.store.stats()
        gauges = {
            "depth": GaugeMetricFamily(
                "flowagg_buffer_depth_flows",
                "Flows waiting in a partition's buffer",
                labels=["partition"],
            ),
            "capacity": GaugeMetricFamily(
                "flowagg_buffer_capacity_flows",
                "Capacity of a partition's buffer",
                labels=["partition"],
            ),
            "lag": GaugeMetricFamily(
                "flowagg_drain_lag_flows",
                "Flows enqueued in a partition but not yet applied",
                labels=["partition"],
            ),
            "drainer_alive": GaugeMetricFamily(
                "flowagg_drainer_up",
                "1 while a partition's drainer thread runs",
                labels=["partition"],
            ),
        }
        for p in stats.partitions:
            for name, family in gauges.items():
                family.add_metric([str(p.index)], float(getattr(p, name)))
        yield from gauges.values()
        yield GaugeMetricFamily(
            "flowagg_keys", "Rows held: distinct keys summed over hours", stats.keys
        )
        if stats.keys_limit is not None:
            yield GaugeMetricFamily(
                "flowagg_keys_limit",
                "FLOWAGG_MAX_KEYS: the key-hours the store may hold (POSTs past it get 429)",
                stats.keys_limit,
            )
        if stats.memory_bytes is not None:
            yield GaugeMetricFamily(
                "flowagg_memory_bytes",
                "Bytes the native tables allocate (entries, slots, names, hours), counted exactly",
                stats.memory_bytes,
            )
        if stats.memory_limit is not None:
            yield GaugeMetricFamily(
                "flowagg_memory_limit_bytes",
                "FLOWAGG_MAX_MEMORY_BYTES: the bytes the tables may allocate (POSTs past it get"
                " 429)",
                stats.memory_limit,
            )
        yield GaugeMetricFamily("flowagg_hours", "Hours held", stats.hours)
        if stats.log_bytes is not None:
            yield GaugeMetricFamily(
                "flowagg_log_bytes", "Size of the current write-ahead log file", stats.log_bytes
            )
        yield CounterMetricFamily(
            "flowagg_hours_dropped",
            "Hour tables dropped by retention (flows still queued for an expired hour are"
            " discarded when drained)",
            value=stats.hours_dropped,
        )
