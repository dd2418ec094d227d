"""How the Redis store talks to a cluster, against real nodes: ASK is followed during a slot's
migration, MOVED after it; no call carries more than a bounded number of rows; the slot map is
refreshed by one caller at a time, and nothing waits for it behind a lock while a node is silent.
"""

from __future__ import annotations

import threading
import time

from flowagg.metrics import Metrics
from flowagg.schema import Flow
from flowagg.store.redis import layout, writer
from flowagg.store.redis.client import Call
from tests.conftest import WAIT_TIMEOUT
from tests.test_packed import decode


def node_id(node) -> str:
    return node.client().execute_command("CLUSTER", "MYID").decode()


def flows_in_bucket(hour: int, bucket: int, count: int, prefix: str = "s") -> list[Flow]:
    found, i = [], 0
    while len(found) < count:
        if layout.bucket_of(f"{prefix}{i}", "d", "v", 16) == bucket:
            found.append(Flow(f"{prefix}{i}", "d", "v", i, 1, hour))
        i += 1
    return found


def test_a_migrating_slot_is_followed_with_ask_and_then_moved(open_store, cluster):
    """During a migration a write of one key is sent where ASK says, after ASKING; one of
    several keys (a keyed request: list and markers) is refused with TRYAGAIN until the slot has
    moved, and resent until then; after it, MOVED sends everything to the new owner."""
    metrics = Metrics()
    store = open_store(cluster.url, metrics=metrics, timeout_s=5.0)
    hour, bucket = 30, 5
    key = layout.bucket_key(hour, bucket, 16)
    slot = layout.slot_of(hour, bucket, 16)
    source = cluster.primary_of(key)
    target = next(n for n in cluster.primaries() if n is not source)
    target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source))
    source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(target))
    first, keyed = flows_in_bucket(hour, bucket, 20), flows_in_bucket(hour, bucket, 5, "k")
    answers: list = []
    try:
        assert store.ingest(first, WAIT_TIMEOUT) == 20  # the key is not on the source: ASK
        keys_in = [n.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
                   for n in (source, target)]  # fmt: skip
        assert keys_in == [0, 1]  # the list, on the target
        assert count(metrics, "ask") >= 1
        assert sorted(store.read_hour(hour, WAIT_TIMEOUT)) == sorted(
            (f.src_app, "d", "v", f.bytes_tx, 1) for f in first
        )
        sender = threading.Thread(target=lambda: answers.append(store.ingest(keyed, 1.0, "k")))
        sender.start()
        deadline = time.monotonic() + WAIT_TIMEOUT
        while not count(metrics, "tryagain"):
            assert time.monotonic() < deadline, "no TRYAGAIN seen"
            time.sleep(0.005)
    finally:
        move(cluster, slot, target)
    sender.join(WAIT_TIMEOUT)
    assert answers == [5]  # resent until the slot had moved
    assert store.ingest(keyed, WAIT_TIMEOUT, "k") == 5  # a retry: still once
    assert sum(r[3] for r in store.read_hour(hour, WAIT_TIMEOUT)) == sum(
        f.bytes_tx for f in first + keyed
    )
    assert store.client.topology().node_for(key).port == target.port  # told by MOVED
    cluster.flush()
    move(cluster, slot, source)  # as the other tests expect it


def count(metrics: Metrics, kind: str) -> float:
    return metrics.registry.get_sample_value("flowagg_redis_errors_total", {"kind": kind}) or 0


def move(cluster, slot: int, owner) -> None:
    """Give ``slot`` to ``owner`` (its keys, if any, stay where they are)."""
    for node in cluster.primaries():
        node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(owner))
    cluster.wait_ok()


def test_no_call_carries_more_than_the_bound(open_store, cluster):
    store = open_store(cluster.url, buckets=1)
    node = cluster.primary_of(layout.bucket_key(40, 0, 1))
    node.client().config_resetstat()
    flows = [Flow(f"s{i}", "d", "v", 1, 1, 40) for i in range(9_000)]
    assert store.ingest(flows, WAIT_TIMEOUT) == 9_000
    assert store.ingest(flows[:5_000], WAIT_TIMEOUT, "keyed") == 5_000
    key = layout.bucket_key(40, 0, 1)
    _, *blobs = node.client().lrange(key, 0, -1)
    assert [len(decode(b)) for b in blobs] == [2000, 2000, 2000, 2000, 1000, 2000, 2000, 1000]
    calls = node.client().info("commandstats")["cmdstat_fcall"]["calls"]
    assert calls >= 8  # one blob of 2,000 rows per call at most (and a listing or two)
    markers = node.client().keys(f"{layout.PREFIX}idem:*")
    assert sorted(m.decode().rsplit(":", 2)[1] for m in markers) == ["0", "1", "2"]
    assert writer.CALL_ROWS == layout.CHUNK_ROWS == 2_000


def test_a_silent_node_holds_up_no_caller_and_one_refresh_runs_at_a_time(open_store, faulty):
    """The first node a refresh asks is blackholed: the refresh waits for it, outside any lock,
    while every other caller goes on with the map it has, and none starts a second refresh."""
    store = open_store(faulty.url, timeout_s=2.0)
    client = store.client
    topology = client.topology()
    silent = client.map._candidates()[0]
    faulty.proxies[[n.announced for n in faulty.nodes].index(silent.port)].set("blackhole")
    refreshes = []
    discover = client.map._discover

    def counted(*args):
        refreshes.append(threading.current_thread().name)
        return discover(*args)

    client.map._discover = counted
    client.map.invalidate()
    client.map._refreshed_at = -1.0  # as if the last refresh were long ago: the next one asks
    done = threading.Event()
    refresher = threading.Thread(
        target=lambda: (client.topology(time.monotonic() + 1.5), done.set()), name="refresher"
    )
    refresher.start()
    deadline = time.monotonic() + WAIT_TIMEOUT
    while not client.map._refreshing:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    try:
        # Meanwhile: other callers get the map they had, and a call to a live node is answered.
        assert [client.topology() for _ in range(20)] == [topology] * 20
        key = next(
            layout.bucket_key(1, b, 16)
            for b in range(16)
            if topology.node_for(layout.bucket_key(1, b, 16)) is not silent
        )
        call = Call(key, ("EXISTS", key))
        client.execute([call], time.monotonic() + 1.0)
        assert call.state == "done" and not done.is_set()  # answered during the refresh
    finally:
        faulty.heal()
        refresher.join(WAIT_TIMEOUT)
    assert refreshes == ["refresher"]
