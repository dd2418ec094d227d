"""What one request gets from the Redis store, against real Redis: its key is bound only once it
was accepted, its fingerprint is exact, its answer depends only on its own calls, and errors that
prove nothing ran are resent until the timeout.

Stores run in this process, as instances would; faults come from Redis itself (maxmemory,
min-replicas-to-write, a failed save, a long script) or from the fault proxies of
tests/faultproxy.py in front of each primary.
"""

from __future__ import annotations

import itertools
import threading
import time
import zlib

import msgspec
import pytest
import redis

from flowagg.metrics import Metrics
from flowagg.schema import Flow
from flowagg.store.base import Expired, KeyReused, NameTooLong, Overloaded, Unreachable
from flowagg.store.redis import layout
from flowagg.store.redis.connection import ReplyError
from flowagg.store.redis.meta import LayoutMismatch
from tests.conftest import WAIT_TIMEOUT

NOW = int(time.time() // 3600)


def stored(cluster, key: str) -> bool:
    return bool(cluster.primary_of(key).client().exists(key))


def hour_keys(hour: int) -> list[str]:
    return [layout.bucket_key(hour, b, 16) for b in range(16)]


# -- 1. validation before any binding -------------------------------------------------------


@pytest.mark.parametrize(
    "bad, error",
    [
        (Flow("s", "d", "v", 1, 1, NOW + 50), Expired),
        (Flow("s" * 20, "d", "v", 1, 1, NOW), NameTooLong),
    ],
    ids=["far-future-hour", "long-name"],
)
def test_a_request_refused_for_its_content_binds_nothing(open_store, cluster, bad, error):
    store = open_store(cluster.url, retention_hours=48, max_name_bytes=10)
    good = Flow("s", "d", "v", 5, 7, NOW)
    # Refused, refused again (it was never bound), then the corrected body is applied.
    for _ in range(2):
        with pytest.raises(error):
            store.ingest([good, bad], WAIT_TIMEOUT, "k1")
        assert not stored(cluster, layout.request_key("k1"))
        assert not any(stored(cluster, k) for k in hour_keys(bad.hour))
    assert store.ingest([good], WAIT_TIMEOUT, "k1") == 1
    # The other order: accepted, then a refused body under the same key is another request.
    with pytest.raises(KeyReused, match="'k1' was already used for a request with other flows"):
        store.ingest([good, bad], WAIT_TIMEOUT, "k1")
    assert store.ingest([good], WAIT_TIMEOUT, "k1") == 1  # the retry, answered as the original
    assert store.read_hour(NOW, WAIT_TIMEOUT) == [("s", "d", "v", 5, 7)]
    assert store.hours_held(WAIT_TIMEOUT).count == 1


def test_a_request_refused_for_lack_of_room_binds_nothing(open_store, cluster):
    store = open_store(cluster.url, buffer_capacity=10, start=False)
    store.partitions[0].buffer.reserve(10)  # the buffer is full
    flows = [Flow("s", "d", "v", 1, 1, 3)]  # partition 0
    with pytest.raises(Overloaded, match="no room"):
        store.ingest(flows, 0.05, "full")
    store.partitions[0].buffer.cancel(10)
    assert not stored(cluster, layout.request_key("full"))


def collision() -> tuple[list[Flow], list[Flow]]:
    """Two different requests whose CRC-32 fingerprint (the old one) is the same."""
    seen: dict[int, int] = {}
    encoder = msgspec.msgpack.Encoder()
    for i in itertools.count():
        crc = zlib.crc32(encoder.encode([Flow(f"s{i}", "d", "v", 1, 1, 4)]))
        if crc in seen:
            return [Flow(f"s{seen[crc]}", "d", "v", 1, 1, 4)], [Flow(f"s{i}", "d", "v", 1, 1, 4)]
        seen[crc] = i
    raise AssertionError("unreachable")


def test_two_bodies_with_one_crc32_are_two_requests(open_store, cluster):
    first, second = collision()
    store = open_store(cluster.url)
    assert store.ingest(first, WAIT_TIMEOUT, "same") == 1
    with pytest.raises(KeyReused):
        store.ingest(second, WAIT_TIMEOUT, "same")
    assert store.read_hour(4, WAIT_TIMEOUT) == [(first[0].src_app, "d", "v", 1, 1)]


def test_a_marker_is_never_set_without_its_delta(open_store, cluster):
    """A keyed commit that fails in its bucket leaves no marker, so the retry applies it."""
    store = open_store(cluster.url)
    flows = [Flow("k", "d", "v", 3, 4, 6)]
    key = layout.bucket_key(6, layout.bucket_of("k", "d", "v", 16), 16)
    cluster.primary_of(key).client().set(key, "not a list")
    with pytest.raises(Unreachable) as failed:
        store.ingest(flows, WAIT_TIMEOUT, "m1")
    assert failed.value.applied == "maybe" and "WRONGTYPE" in str(failed.value)
    cluster.primary_of(key).client().delete(key)
    assert store.ingest(flows, WAIT_TIMEOUT, "m1") == 1
    assert store.ingest(flows, WAIT_TIMEOUT, "m1") == 1
    assert store.read_hour(6, WAIT_TIMEOUT) == [("k", "d", "v", 3, 4)]


def test_another_layout_refuses_to_start_naming_both(open_store, cluster):
    open_store(cluster.url, buckets=16, retention_hours=48)
    with pytest.raises(LayoutMismatch) as refused:
        open_store(cluster.url, buckets=8, retention_hours=48)
    assert str(refused.value) == (
        "the data in Redis has layout 'version=2 buckets=16 retention=48'"
        f" ({layout.LAYOUT_KEY}), this instance's settings give 'version=2 buckets=8"
        " retention=48': FLOWAGG_REDIS_BUCKETS and FLOWAGG_RETENTION_HOURS must be the same"
        " on every instance"
    )
    with pytest.raises(LayoutMismatch, match="retention=none"):
        open_store(cluster.url, buckets=16)


def test_another_layout_found_after_start_up_is_503_and_unready(open_store, faulty):
    first = open_store(faulty.url, buckets=16)
    assert first.ingest([Flow("s", "d", "v", 1, 1, 2)], WAIT_TIMEOUT) == 1  # layout recorded
    for proxy in faulty.proxies:  # Redis is unreachable while the other instance starts
        proxy.set("reset")
    late = open_store(faulty.url, buckets=8, timeout_s=0.3)
    faulty.heal()
    with pytest.raises(Unreachable) as refused:
        late.ingest([Flow("s", "d", "v", 1, 1, 2)], WAIT_TIMEOUT)
    assert refused.value.applied == "nothing" and "buckets=16" in str(refused.value)
    with pytest.raises(LayoutMismatch, match="buckets=8"):
        late.read_hour(2, WAIT_TIMEOUT)
    assert any("has layout 'version=2 buckets=16" in p for p in late.health(0.9))
    assert first.read_hour(2, WAIT_TIMEOUT) == [("s", "d", "v", 1, 1)]  # nothing written


# -- 4. per-request outcomes -----------------------------------------------------------------


def flows_on(cluster, hour: int, node, on: bool, count: int, prefix: str) -> list[Flow]:
    """``count`` flows of ``hour`` whose buckets are (or are not) on primary ``node``."""
    found = []
    for i in itertools.count():
        src = f"{prefix}{i}"
        key = layout.bucket_key(hour, layout.bucket_of(src, "d", "v", 16), 16)
        if (cluster.primary_of(key) is node) == on:
            found.append(Flow(src, "d", "v", 1, 1, hour))
            if len(found) == count:
                return found
    raise AssertionError("unreachable")


def one_step(store, requests: list[tuple[list[Flow], str | None]], before=None) -> list:
    """Put every request in the one partition, call ``before()``, commit them in one step,
    return each answer."""
    partition = store.partitions[0]
    answers: list = [None] * len(requests)

    def send(i: int, flows: list[Flow], key: str | None) -> None:
        try:
            answers[i] = store.ingest(flows, WAIT_TIMEOUT, key)
        except Exception as exc:
            answers[i] = exc

    threads = [threading.Thread(target=send, args=(i, *r)) for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + WAIT_TIMEOUT
    while len(partition._tickets) < len(requests):
        assert time.monotonic() < deadline, "the requests did not reach the partition"
        time.sleep(0.001)
    if before is not None:
        before()
    partition.drain_once(0)
    for t in threads:
        t.join(WAIT_TIMEOUT)
    return answers


@pytest.mark.parametrize("fault, lost", [("reset", "partly"), ("blackhole", "maybe")])
def test_each_request_of_a_step_is_answered_by_its_own_calls(open_store, faulty, fault, lost):
    victim = next(n for n in faulty.nodes if n is not faulty.primary_of(layout.HOURS_KEY))
    store = open_store(faulty.url, partitions=1, start=False, timeout_s=1.0)
    safe = flows_on(faulty, 8, victim, False, 20, "safe")
    touching = flows_on(faulty, 8, victim, True, 3, "hit") + safe[:2]
    answers = one_step(
        store,
        [(safe, None), (touching, None), (touching, "keyed")],
        lambda: faulty.proxy_of(victim).set(fault),  # once the key is bound, before the commit
    )
    assert answers[0] == 20  # its calls all committed: 200, whatever the others got
    for answer in answers[1:]:  # refused calls: part applied; unanswered ones: maybe
        assert isinstance(answer, Unreachable), answer
        assert answer.applied == lost, answer
    faulty.heal()
    other = open_store(faulty.url)  # another instance
    assert other.ingest(touching, WAIT_TIMEOUT, "keyed") == 5  # the retry completes it once
    rows = {r[0]: r[3] for r in other.read_hour(8, WAIT_TIMEOUT)}
    # The victim's calls never ran: the unkeyed request left its other buckets, the keyed one
    # all of itself once, the first request all of itself.
    assert {f.src_app: rows.get(f.src_app) for f in touching} == {
        **{f.src_app: 1 for f in touching[:3]},
        **{f.src_app: 3 for f in touching[3:]},
    }
    assert all(rows[f.src_app] == 1 for f in safe[2:])


# -- 4. errors that prove nothing ran are resent ------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    ["MOVED 1 127.0.0.1:1", "ASK 1 127.0.0.1:1", "TRYAGAIN x", "CLUSTERDOWN x", "READONLY x",
     "MASTERDOWN x", "LOADING x", "MISCONF x", "NOREPLICAS x", "OOM x", "BUSY x",
     "ERR Function not found"],
)  # fmt: skip
def test_errors_that_prove_nothing_ran_are_refusals(reply):
    assert ReplyError(reply).refused


@pytest.mark.parametrize("reply", ["ERR Error running script", "WRONGTYPE Operation", "ERR x"])
def test_other_errors_may_have_run(reply):
    assert not ReplyError(reply).refused


def resent_until(store, metrics, kind: str, release) -> int:
    """POST in a thread; once Redis has refused it with ``kind`` at least once, ``release()``
    the fault; return the POST's answer."""
    answer: list = []
    thread = threading.Thread(
        target=lambda: answer.append(store.ingest([Flow("r", "d", "v", 1, 1, 9)], 1.0))
    )
    thread.start()
    deadline = time.monotonic() + WAIT_TIMEOUT
    while not (metrics.registry.get_sample_value("flowagg_redis_errors_total", {"kind": kind})):
        assert time.monotonic() < deadline, f"no {kind} error seen"
        time.sleep(0.005)
    release()
    thread.join(WAIT_TIMEOUT)
    return answer[0]


@pytest.mark.parametrize(
    "setting, refusing, normal, kind",
    [("maxmemory", 1, 0, "oom"), ("min-replicas-to-write", 1, 0, "noreplicas")],
    ids=["out-of-memory", "no-replicas"],
)
def test_a_write_refused_by_a_primary_is_resent_and_applied_once(
    open_store, cluster, setting, refusing, normal, kind
):
    metrics = Metrics()
    store = open_store(cluster.url, metrics=metrics, timeout_s=5.0)
    nodes = cluster.primaries()
    for node in nodes:
        node.client().config_set(setting, refusing)

    def release():
        for node in nodes:
            node.client().config_set(setting, normal)

    try:
        assert resent_until(store, metrics, kind, release) == 1
    finally:
        release()
    assert store.read_hour(9, WAIT_TIMEOUT) == [("r", "d", "v", 1, 1)]


def test_a_write_refused_after_a_failed_save_is_resent(open_store, cluster):
    metrics = Metrics()
    store = open_store(cluster.url, metrics=metrics, timeout_s=5.0)
    nodes = cluster.primaries()
    dirs = {node: node.client().config_get("dir")["dir"] for node in nodes}
    for node in nodes:  # a save that fails: the directory cannot be written
        client = node.client()
        client.config_set("save", "3600 1")
        client.config_set("dir", "/proc")
        client.bgsave()
    deadline = time.monotonic() + WAIT_TIMEOUT
    while any(n.client().info("persistence")["rdb_last_bgsave_status"] != "err" for n in nodes):
        assert time.monotonic() < deadline
        time.sleep(0.01)

    def release():
        for node in nodes:
            client = node.client()
            client.config_set("dir", dirs[node])
            client.config_set("save", "")
            client.config_set("stop-writes-on-bgsave-error", "no")

    try:
        assert resent_until(store, metrics, "misconf", release) == 1
    finally:
        release()
        for node in nodes:
            node.client().config_set("stop-writes-on-bgsave-error", "yes")
    assert store.read_hour(9, WAIT_TIMEOUT) == [("r", "d", "v", 1, 1)]


def test_a_write_refused_while_a_script_runs_is_resent(open_store, cluster):
    metrics = Metrics()
    store = open_store(cluster.url, metrics=metrics, timeout_s=5.0)
    busy = cluster.primary_of(layout.HOURS_KEY)  # every commit lists its hours there first
    busy.client().config_set("busy-reply-threshold", 50)
    killed = []

    def run_script():
        try:
            busy.client().eval("while true do end", 0)
        except redis.ResponseError as exc:  # SCRIPT KILL ends it with an error
            killed.append(exc)

    script = threading.Thread(target=run_script)
    script.start()
    try:
        deadline = time.monotonic() + WAIT_TIMEOUT
        while True:  # until the node answers BUSY
            try:
                busy.client().ping()
            except Exception as exc:
                if "BUSY" in str(exc):
                    break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        answer = resent_until(store, metrics, "busy", lambda: busy.client().script_kill())
        assert answer == 1 and killed
    finally:
        script.join(WAIT_TIMEOUT)
        busy.client().config_set("busy-reply-threshold", 5000)
    assert store.read_hour(9, WAIT_TIMEOUT) == [("r", "d", "v", 1, 1)]
