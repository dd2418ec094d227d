"""A failover, for real: a Redis Cluster of 3 primaries with a replica each, two instances with
``FLOWAGG_REDIS_WAIT_REPLICAS=1`` (every commit waits for ``WAIT 1`` on each primary it wrote to).
A primary is SIGKILLed right after acknowledged keyed POSTs; its replica takes over; every
acknowledged flow is then there exactly once, every "nothing was applied" absent, and every
"maybe", retried with its key, once. The instances forget the node that left.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from flowagg.schema import Flow
from flowagg.store.base import Unreachable
from tests.conftest import WAIT_TIMEOUT
from tests.redis_cluster import RedisCluster
from tests.test_redis_faults import Outcomes, check_outcomes, wait_ready, writer
from tests.test_redis_instances import start_instance


@pytest.fixture(scope="module")
def replicated():
    root = Path(tempfile.mkdtemp(prefix="flowagg-redis-replicated-"))
    cluster = RedisCluster(root, nodes=3, appendfsync="everysec", replicas=1).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def wait_for_failover(cluster: RedisCluster, killed) -> None:
    """Until the live nodes agree the cluster is ok again, with three primaries."""
    deadline = time.monotonic() + WAIT_TIMEOUT * 3
    while True:
        live = [n for n in cluster.nodes if n.running]
        try:
            ok = all("cluster_state:ok" in n.state() for n in live)
            if ok and len(cluster.primaries()) == 3 and killed not in cluster.primaries():
                return
        except Exception:  # a node busy with the failover
            pass
        assert time.monotonic() < deadline, "no failover"
        time.sleep(0.1)


def test_acknowledged_writes_survive_a_failover_with_wait(replicated, open_store):
    replicated.flush()
    instances, victim = [], None
    outcomes, stop = Outcomes(), threading.Event()
    try:
        for node in replicated.primaries()[:2]:
            instances.append(start_instance(node.address, FLOWAGG_REDIS_WAIT_REPLICAS="1",
                                            FLOWAGG_REDIS_TIMEOUT_MS="2000"))  # fmt: skip
        threads = [
            threading.Thread(target=writer, args=(instances[w % 2], outcomes, f"f{w}", stop))
            for w in range(6)
        ]
        try:
            for t in threads:
                t.start()
            outcomes.wait(random.randrange(30, 120), WAIT_TIMEOUT * 3)
            victim = random.choice(replicated.primaries())
            seed = next(n for n in replicated.primaries() if n is not victim)  # a seed is kept
            watcher = open_store(f"redis://{seed.address}")  # an instance that knows the victim
            assert victim.address in {n.name for n in watcher.client.map.nodes()}
            victim.kill()  # right after those acknowledgements, with writers still writing
            wait_for_failover(replicated, victim)
            wait_unnamed(seed, victim)  # the cluster's slot map no longer names it
            watcher.client.map.invalidate()  # as a refused call does
            watcher.client.topology()
            assert victim.address not in {n.name for n in watcher.client.map.nodes()}  # forgotten
            wait_ready(*instances)
            outcomes.wait(30, WAIT_TIMEOUT * 3)  # and more after it
        finally:
            stop.set()
            for t in threads:
                t.join(WAIT_TIMEOUT * 3)
        assert not any(t.is_alive() for t in threads) and outcomes.errors == []
        # The successor has no replica until the old primary is back as one: until then it
        # cannot confirm a write, and retries would only be refused.
        victim.start()
        replicated.wait_ok()
        wait_replicated(replicated)
        check_outcomes(instances, outcomes)  # the acknowledged ones replicated before their 200
    finally:
        for server in instances:
            server.kill()
        if victim is not None and not victim.running:
            victim.start()
        replicated.wait_ok()


def wait_unnamed(node, gone) -> None:
    """Until ``node``'s CLUSTER SLOTS names ``gone`` neither as a primary nor as a replica."""
    deadline = time.monotonic() + WAIT_TIMEOUT * 3
    while True:
        named = {int(n[1]) for r in node.client().execute_command("CLUSTER", "SLOTS")
                 for n in r[2:]}  # fmt: skip
        if gone.port not in named:
            return
        assert time.monotonic() < deadline, f"{node.address} still names {gone.address}"
        time.sleep(0.05)


def wait_replicated(cluster: RedisCluster) -> None:
    """Until every primary has a replica whose link is up."""
    deadline = time.monotonic() + WAIT_TIMEOUT * 3
    while True:
        infos = [n.client().info("replication") for n in cluster.primaries()]
        if all(i.get("connected_slaves", 0) >= 1 for i in infos):
            replicas = [n for n in cluster.nodes if n.running and n.role() == "slave"]
            if all(r.client().info("replication")["master_link_status"] == "up" for r in replicas):
                return
        assert time.monotonic() < deadline, f"not every primary has a replica: {infos}"
        time.sleep(0.1)


def test_a_commit_that_replicas_do_not_confirm_is_maybe(replicated, open_store):
    """WAIT times out when no replica acknowledges: the POST may have been applied (it was, on
    the primaries) and says so."""
    replicated.flush()
    seed = replicated.primaries()[0]
    store = open_store(f"redis://{seed.address}", wait_replicas=1, timeout_s=1.0)
    assert store.ingest([Flow("first", "d", "v", 1, 1, 3)], WAIT_TIMEOUT) == 1  # hour listed
    replicas = [n for n in replicated.nodes if n.running and n.role() == "slave"]
    for node in replicas:  # stalled: they take nothing from their primaries
        os.kill(node.proc.pid, signal.SIGSTOP)
    flows = [Flow(f"w{i}", "d", "v", 1, 1, 3) for i in range(40)]
    try:
        with pytest.raises(Unreachable) as failed:
            store.ingest(flows, WAIT_TIMEOUT)
    finally:
        for node in replicas:
            os.kill(node.proc.pid, signal.SIGCONT)
    assert failed.value.applied == "maybe"
    assert "FLOWAGG_REDIS_WAIT_REPLICAS=1 replicas" in str(failed.value)
    assert "acknowledged in time" in str(failed.value)
    wait_replicated(replicated)
    expected = sorted(
        (f.src_app, "d", "v", 1, 1) for f in [Flow("first", "d", "v", 1, 1, 3), *flows]
    )
    assert store.read_hour(3, WAIT_TIMEOUT) == expected  # applied, once
