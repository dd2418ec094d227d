"""The Redis store in this process against a real 3-primary Redis Cluster (tests/redis_cluster.py).

Two stores on the same cluster stand for two instances: what one commits, the other reads.
"""

from __future__ import annotations

import random
import threading
import time
from itertools import pairwise

import pytest

from flowagg.metrics import Metrics
from flowagg.schema import Flow
from flowagg.store.base import (
    Expired,
    HoursHeld,
    KeyReused,
    NameTooLong,
    Query,
    QueryTooLarge,
    ReadTimeout,
    Unreachable,
)
from flowagg.store.memory import PartitionedStore
from flowagg.store.redis import compaction, layout
from flowagg.store.redis.store import RedisStore
from flowagg.store.table import Sums
from tests.conftest import WAIT_TIMEOUT
from tests.test_packed import decode

INT64_MAX = 2**63 - 1


@pytest.fixture
def make_store(cluster):
    stores = []

    def make(**options) -> RedisStore:
        options = {"partitions": 3, "buffer_capacity": 4096, "timeout_s": 1.0, **options}
        store = RedisStore(cluster.url, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        assert store.close(WAIT_TIMEOUT)


def test_counters_beyond_2_64_are_exact_in_one_commit_and_across_commits(make_store, cluster):
    a, b = make_store(), make_store()
    # One request summing past 2**64 (sent split into low part and carry) ...
    assert a.ingest([Flow("big", "d", "v", INT64_MAX, INT64_MAX, 1)] * 5, WAIT_TIMEOUT) == 5
    # ... and requests each below 2**63 whose total is not (the low part overflows in Redis).
    for _ in range(3):
        assert b.ingest([Flow("big", "d", "v", INT64_MAX, 1, 1)], WAIT_TIMEOUT) == 1
    total_tx, total_rx = 8 * INT64_MAX, 5 * INT64_MAX + 3
    assert total_tx > 2**65
    for store in (a, b):
        assert store.read_hour(1, WAIT_TIMEOUT) == [("big", "d", "v", total_tx, total_rx)]
    assert b.read_hour_json(1, WAIT_TIMEOUT) == (
        b'[{"src_app":"big","dest_app":"d","vpc_id":"v",'
        b'"bytes_tx":%d,"bytes_rx":%d,"hour":1}]' % (total_tx, total_rx)
    )
    # Stored as packed deltas: a list per bucket, its header, then blobs of summed rows: a's
    # request summed in one delta, b's three requests one delta each.
    key = layout.bucket_key(1, layout.bucket_of("big", "d", "v", 16), 16)
    header, *blobs = cluster.primary_of(key).client().lrange(key, 0, -1)
    assert layout.base_chunks(header) == 0
    assert sorted(row for blob in blobs for row in decode(blob)) == [
        ("big", "d", "v", INT64_MAX, 1),
        ("big", "d", "v", INT64_MAX, 1),
        ("big", "d", "v", INT64_MAX, 1),
        ("big", "d", "v", 5 * INT64_MAX, 5 * INT64_MAX),
    ]


NAMES = ["a:b", "a", "b:c", "b", "|", ",", "\x00", "\n", "{x}", "}", "1:", "3:a:b", "é", " "]


def test_names_with_any_separator_are_keys_of_their_own(make_store):
    a, b = make_store(), make_store()
    flows = [Flow(src, dest, "v", 1, i, 2) for i, (src, dest) in enumerate(pairwise(NAMES))]
    flows += [Flow("a", "b:c", "w", 10, 10, 2), Flow("a:b", "c", "w", 20, 20, 2)]
    assert a.ingest(flows, WAIT_TIMEOUT) == len(flows)
    expected = sorted((f.src_app, f.dest_app, f.vpc_id, f.bytes_tx, f.bytes_rx) for f in flows)
    assert b.read_hour(2, WAIT_TIMEOUT) == expected  # sorted by names, on every instance
    assert len(expected) == len(flows)


def test_rows_are_sorted_by_names_whatever_the_arrival_order(make_store):
    a, b = make_store(), make_store()
    names = [f"k{i:03d}" for i in range(200)]
    random.Random(7).shuffle(names)
    for i in range(0, 200, 50):
        (a if i % 100 else b).ingest([Flow(n, "d", "v", 1, 1, 3) for n in names[i : i + 50]], 5)
    rows = a.read_hour(3, WAIT_TIMEOUT)
    assert [r[0] for r in rows] == sorted(names) and rows == b.read_hour(3, WAIT_TIMEOUT)


def test_a_retry_to_another_instance_is_answered_and_counted_once(make_store):
    a, b = make_store(), make_store()
    flows = [Flow(f"s{i}", "d", "v", i, 1, 4 + i % 3) for i in range(60)]
    assert a.ingest(flows, WAIT_TIMEOUT, "req-1") == 60
    assert b.ingest(flows, WAIT_TIMEOUT, "req-1") == 60
    assert a.ingest(flows, WAIT_TIMEOUT, "req-1") == 60
    rows = [r for hour in (4, 5, 6) for r in b.read_hour(hour, WAIT_TIMEOUT)]
    assert sorted(r[3] for r in rows) == list(range(60)) and {r[4] for r in rows} == {1}
    with pytest.raises(KeyReused, match="'req-1' was already used for a request with other flows"):
        b.ingest(flows[:1], WAIT_TIMEOUT, "req-1")


def test_the_same_key_on_two_instances_at_once_is_applied_once(make_store):
    stores = [make_store(), make_store()]
    flows = [Flow(f"s{i}", "d", "v", 1, 1, 7) for i in range(100)]
    barrier = threading.Barrier(2)
    answers = []

    def send(store):
        barrier.wait(WAIT_TIMEOUT)
        answers.append(store.ingest(flows, WAIT_TIMEOUT, "twice"))

    threads = [threading.Thread(target=send, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_TIMEOUT)
    assert answers == [100, 100]
    assert stores[0].read_hour(7, WAIT_TIMEOUT) == sorted(
        (f"s{i}", "d", "v", 1, 1) for i in range(100)
    )


def key_not_on(cluster, node, prefix: str) -> str:
    """An Idempotency-Key whose request key does not live on ``node``."""
    for i in range(1000):
        key = f"{prefix}-{i}"
        if cluster.primary_of(layout.request_key(key)) is not node:
            return key
    raise AssertionError("no key found")


def test_a_request_applied_in_part_is_completed_by_its_retry_once(make_store, cluster):
    """A primary is killed: the keyed request commits on the others only (503, "partly"); its
    retry through another instance, once the primary is back, applies exactly the rest."""
    a, b = make_store(timeout_s=0.3), make_store()
    # Not the primary of the hours set (a commit notes its hours there first) nor of the key.
    victim = next(n for n in cluster.nodes if n is not cluster.primary_of(layout.HOURS_KEY))
    key = key_not_on(cluster, victim, "partial")
    flows = [Flow(f"s{i}", "d", "v", i, 2 * i, 9) for i in range(300)]  # every bucket
    victim.kill()
    with pytest.raises(Unreachable) as failed:
        a.ingest(flows, WAIT_TIMEOUT, key)
    assert failed.value.applied == "partly", failed.value
    assert "Redis did not commit" in str(failed.value)
    with pytest.raises(Unreachable, match="cannot read hour 9 from Redis"):
        a.read_hour(9, WAIT_TIMEOUT)  # never a partial answer
    assert any(victim.address in problem for problem in a.health(0.9))
    victim.start()
    cluster.wait_ok()
    assert b.ingest(flows, WAIT_TIMEOUT, key) == 300
    assert a.ingest(flows, WAIT_TIMEOUT, key) == 300  # and a is back by itself
    expected = sorted((f"s{i}", "d", "v", i, 2 * i) for i in range(300))
    assert a.read_hour(9, WAIT_TIMEOUT) == expected
    assert a.health(0.9) == []


def test_a_request_without_key_that_failed_says_so_and_nothing_is_answered_200(make_store, cluster):
    store = make_store(timeout_s=0.3)
    victim = cluster.primary_of(layout.HOURS_KEY)  # every commit notes its hours there first
    victim.kill()
    with pytest.raises(Unreachable) as failed:
        store.ingest([Flow("s", "d", "v", 1, 1, 11)], WAIT_TIMEOUT)
    assert failed.value.applied == "nothing"
    victim.start()
    cluster.wait_ok()
    assert store.ingest([Flow("s", "d", "v", 1, 1, 11)], WAIT_TIMEOUT) == 1
    assert store.read_hour(11, WAIT_TIMEOUT) == [("s", "d", "v", 1, 1)]


def test_functions_are_loaded_again_on_a_primary_that_lost_them(make_store, cluster):
    metrics = Metrics()
    store = make_store(metrics=metrics)
    assert store.ingest([Flow("first", "d", "v", 1, 1, 12)], WAIT_TIMEOUT) == 1  # loads them
    for node in cluster.nodes:
        node.client().function_flush()
    assert store.ingest([Flow(f"s{i}", "d", "v", 1, 1, 12) for i in range(50)], WAIT_TIMEOUT) == 50
    assert len(store.read_hour(12, WAIT_TIMEOUT)) == 51
    # One error per call that met a primary without them (the listing and the buckets' calls).
    missing = {"kind": "function_missing"}
    assert metrics.registry.get_sample_value("flowagg_redis_errors_total", missing) >= 3
    assert metrics.registry.get_sample_value("flowagg_redis_commit_flows_count") >= 2
    assert metrics.registry.get_sample_value("flowagg_redis_commit_flows_sum") == 51
    for node in cluster.nodes:
        [library] = node.client().function_list()  # RESP2: [name, value, ...] per library
        assert library[library.index(b"library_name") + 1] == b"flowagg_v2"


def test_the_window_follows_redis_time_and_redis_expires_the_data(make_store, cluster):
    """Both instances take the window from the same clock (here a stand-in for Redis's TIME);
    no instance deletes anything: every bucket carries an expiry computed from its hour."""
    hour = int(time.time() // 3600)  # buckets expire by Redis's real clock: a current hour
    now = [hour * 3600 + 1800.0]
    a = make_store(retention_hours=2, redis_time=lambda: now[0])
    b = make_store(retention_hours=2, redis_time=lambda: now[0])
    assert a.ingest([Flow("s", "d", "v", 1, 1, hour)], WAIT_TIMEOUT) == 1
    assert b.ingest([Flow("k", "d", "v", 1, 1, hour)], WAIT_TIMEOUT, "late") == 1
    keys = [layout.bucket_key(hour, b, 16) for b in range(16)]
    held = [k for k in keys if cluster.primary_of(k).client().exists(k)]
    assert held and all(
        cluster.primary_of(k).client().execute_command("EXPIRETIME", k)
        == (hour + 3) * 3600 + layout.EXPIRY_MARGIN_S
        for k in held
    )
    now[0] += 5 * 3600  # the window is [hour + 3, hour + 6]
    assert b.read_hour(hour, WAIT_TIMEOUT) == []  # below the window: not served ...
    assert all(cluster.primary_of(k).client().exists(k) for k in held)  # ... nor deleted
    for late in (hour + 2, hour + 7):
        window = rf"the window \[{hour + 3}, {hour + 6}\]"
        with pytest.raises(Expired, match=rf"\$\[0\]\.hour: hour {late} is outside {window}"):
            b.ingest([Flow("s", "d", "v", 1, 1, late)], WAIT_TIMEOUT)
    # A retry of a keyed request is answered as the first time, also once its hour expired.
    assert b.ingest([Flow("k", "d", "v", 1, 1, hour)], WAIT_TIMEOUT, "late") == 1
    assert b.read_hour(hour, WAIT_TIMEOUT) == []
    assert a.ingest([Flow("s", "d", "v", 1, 1, hour + 4)], WAIT_TIMEOUT) == 1
    assert b.hours_held(WAIT_TIMEOUT) == HoursHeld(1, hour + 4, hour + 4)


def test_a_commit_to_an_hour_redis_has_expired_leaves_nothing_and_lists_nothing(
    make_store, cluster
):
    """An instance whose idea of now lags Redis's accepts an hour that Redis has expired: the
    buckets it writes are deleted in the same call, and the hour is not listed."""
    hour = int(time.time() // 3600) - 10
    store = make_store(retention_hours=2, redis_time=lambda: hour * 3600 + 1800.0)
    assert store.ingest([Flow(f"s{i}", "d", "v", 1, 1, hour) for i in range(50)], 5) == 50
    assert store.read_hour(hour, WAIT_TIMEOUT) == []
    keys = [layout.bucket_key(hour, b, 16) for b in range(16)]
    assert not any(cluster.primary_of(k).client().exists(k) for k in keys)
    hours = cluster.primary_of(layout.HOURS_KEY).client().zrange(layout.HOURS_KEY, 0, -1)
    assert str(hour).encode() not in hours
    assert store.hours_held(WAIT_TIMEOUT) == HoursHeld(0, None, None)


def test_a_name_over_the_limit_is_refused_whole(make_store):
    store = make_store(max_name_bytes=4)
    flows = [Flow("abcd", "d", "v", 1, 1, 13), Flow("s", "é" * 3, "v", 1, 1, 13)]
    with pytest.raises(
        NameTooLong, match=r"\$\[1\]\.dest_app: longer than FLOWAGG_MAX_NAME_BYTES=4"
    ):
        store.ingest(flows, WAIT_TIMEOUT)
    assert store.read_hour(13, WAIT_TIMEOUT) == []


def test_range_queries_answer_as_the_embedded_store(make_store):
    redis_store, memory = make_store(), PartitionedStore(partitions=3)
    rng = random.Random(3)
    try:
        for _ in range(5):
            flows = [
                Flow(
                    rng.choice("abcde"),
                    rng.choice("xyz"),
                    rng.choice(["v1", "v2"]),
                    rng.randrange(10**12),
                    rng.randrange(10**6),
                    rng.randrange(20, 26),
                )
                for _ in range(300)
            ]
            redis_store.ingest(flows, WAIT_TIMEOUT)
            memory.ingest(flows, WAIT_TIMEOUT)
        queries = [
            Query(20, 25),
            Query(21, 23, by=("src_app",), order="bytes_rx", limit=2),
            Query(20, 30, by=("dest_app", "vpc_id"), filters=(("a", "b"), None, ("v2",))),
        ]
        for q in queries:
            assert redis_store.top(q, WAIT_TIMEOUT) == memory.top(q, WAIT_TIMEOUT)
            assert redis_store.series(q, WAIT_TIMEOUT) == memory.series(q, WAIT_TIMEOUT)
        assert redis_store.hours_held(WAIT_TIMEOUT) == memory.hours_held(WAIT_TIMEOUT)
    finally:
        assert memory.close(WAIT_TIMEOUT)


def test_a_query_over_too_many_key_hours_is_refused_before_scanning(make_store):
    store = make_store(max_query_rows=100)
    store.ingest([Flow(f"s{i}", "d", "v", 1, 1, 30 + i % 2) for i in range(120)], WAIT_TIMEOUT)
    assert store.top(Query(30, 30), WAIT_TIMEOUT).total.groups == 60
    with pytest.raises(QueryTooLarge, match="would scan 120 key-hours"):
        store.top(Query(30, 31), WAIT_TIMEOUT)


def test_a_later_step_answers_its_posts_but_reads_wait_for_every_earlier_step(make_store):
    """Two drainers of a partition commit at once. The second step's POST is answered as soon as
    it is committed; a read still waits until the first, held in its commit, is done too."""
    store = make_store(start=False)
    partition = store.partition_for(40)
    entered, release = threading.Event(), threading.Event()
    original = partition._commit

    def held_commit(tickets):
        if not entered.is_set():  # the first step waits here, with its flows taken
            entered.set()
            assert release.wait(WAIT_TIMEOUT)
        return original(tickets)

    partition._commit = held_commit
    answers: dict[str, int] = {}

    def post(name: str) -> None:
        answers[name] = store.ingest([Flow(name, "d", "v", 1, 1, 40)], WAIT_TIMEOUT)

    first = threading.Thread(target=post, args=("first",))
    second = threading.Thread(target=post, args=("second",))
    partition.start(drainers=2)
    try:
        first.start()
        assert entered.wait(WAIT_TIMEOUT)
        second.start()
        second.join(WAIT_TIMEOUT)
        assert answers == {"second": 1}  # committed and answered while the first is held
        with pytest.raises(ReadTimeout):
            store.read_hour(40, 0.2)  # the first step's flow may not be in Redis yet
    finally:
        release.set()
        first.join(WAIT_TIMEOUT)
    assert answers == {"first": 1, "second": 1}
    assert store.read_hour(40, WAIT_TIMEOUT) == [
        ("first", "d", "v", 1, 1),
        ("second", "d", "v", 1, 1),
    ]


def test_one_node_without_cluster_mode_serves_every_key(redis_node):
    redis_node.client().flushall()
    a = RedisStore(f"redis://{redis_node.address}", partitions=2, timeout_s=1.0)
    b = RedisStore(f"redis://{redis_node.address}", partitions=3, timeout_s=1.0)
    try:
        assert not a.client.topology().cluster
        flows = [Flow(f"s{i}", "d", "v", INT64_MAX, i, 50 + i % 3) for i in range(90)]
        assert a.ingest(flows, WAIT_TIMEOUT, "single") == 90
        assert b.ingest(flows, WAIT_TIMEOUT, "single") == 90
        rows = [r for hour in (50, 51, 52) for r in b.read_hour(hour, WAIT_TIMEOUT)]
        assert sorted(rows) == sorted((f"s{i}", "d", "v", INT64_MAX, i) for i in range(90))
        assert a.health(0.9) == []
    finally:
        assert a.close(WAIT_TIMEOUT) and b.close(WAIT_TIMEOUT)


def test_a_cached_hour_is_checked_against_redis_on_every_read(make_store, monkeypatch):
    monkeypatch.setattr(compaction, "FOLD_BYTES", 0)  # fold any two deltas
    a, b = make_store(), make_store()
    flows = [Flow(f"s{i}", "d", "v", 1, 1, 60) for i in range(300)]  # every bucket
    assert a.ingest(flows, WAIT_TIMEOUT) == 300
    assert len(a.read_hour(60, WAIT_TIMEOUT)) == 300
    hits = a.cache.hits
    assert a.read_hour_json(60, WAIT_TIMEOUT) == a.read_hour_json(60, WAIT_TIMEOUT)
    assert a.cache.hits == hits + 2  # nothing changed: answered from what a holds
    assert b.ingest(flows[:10], WAIT_TIMEOUT) == 10  # another instance writes
    rows = {r[0]: r[3] for r in a.read_hour(60, WAIT_TIMEOUT)}
    assert sum(rows.values()) == 310 and all(rows[f.src_app] == 2 for f in flows[:10])
    for bucket in range(16):  # b folds every bucket: other headers, the same sums
        b.compactor.compact(60, bucket)
    assert {r[0]: r[3] for r in a.read_hour(60, WAIT_TIMEOUT)} == rows
    assert a.read_hour_json(60, WAIT_TIMEOUT) == b.read_hour_json(60, WAIT_TIMEOUT)


def test_a_compaction_applies_at_most_once_whoever_runs_it(make_store, cluster, monkeypatch):
    monkeypatch.setattr(compaction, "FOLD_BYTES", 0)
    a, b = make_store(buckets=1), make_store(buckets=1)
    key = layout.bucket_key(61, 0, 1)
    node = cluster.primary_of(key).client()
    for i in range(20):
        assert a.ingest([Flow(f"s{i % 5}", "d", "v", 1, i, 61)], WAIT_TIMEOUT) == 1
    read = node.lrange(key, 0, -1)
    header, *elements = read
    sums = Sums(61)
    sums.add(elements)
    chunks = sums.pack(layout.CHUNK_ROWS, layout.CHUNK_BYTES)
    fold = ("FCALL", layout.COMPACT_FUNCTION, 1, key, header, len(read), layout.new_header(1), 0)
    assert node.execute_command(*fold, *chunks) == 1
    assert node.execute_command(*fold, *chunks) == 0  # sent again: nothing more happens
    assert len(node.lrange(key, 0, -1)) == 2  # the new header and one base chunk
    # Two instances compacting while a third writes: every count kept, once.
    stop, errors = threading.Event(), []

    def compact(store):
        while not stop.is_set():
            try:
                store.compactor.compact(61, 0)
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=compact, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    writer = make_store(buckets=1)
    try:
        for i in range(200):
            assert writer.ingest([Flow(f"s{i % 5}", "d", "v", 1, 1, 61)], WAIT_TIMEOUT) == 1
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT_TIMEOUT)
    assert errors == []
    rows = writer.read_hour(61, WAIT_TIMEOUT)
    assert [(r[0], r[3]) for r in rows] == [(f"s{i}", 44) for i in range(5)]
    assert sum(r[4] for r in rows) == sum(range(20)) + 200
