"""A real Redis Cluster on 127.0.0.1 for the tests (and the benchmark): 3 primaries, no replicas.

``RedisCluster`` starts Debian's ``redis-server`` three times with ``cluster-enabled yes`` on free
ports, each in a directory of its own under a temporary one, joins them with
``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`` and waits until every node
says ``cluster_state:ok``. Every node keeps an append-only file fsynced at each write (the tests
restart a killed primary and expect what it acknowledged), and the cluster keeps serving the slots
of the live primaries while one is down (``cluster-require-full-coverage no``), so a test can tell
the requests that touch the stopped one from those that do not.

The ``redis_cluster`` fixture (session-scoped; tests/conftest.py makes it and ``cluster`` visible
to every test module) starts one for the whole run and stops every node by its pid at the end,
also on failure; ``redis_node`` does the same for one node without cluster mode. Without
redis-server (``make test`` installs it) the tests that use them fail; they never skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.faultproxy import FaultProxy

START_TIMEOUT = 30.0  # seconds for a node to answer, and for the cluster to be ok


def free_port() -> int:
    """A TCP port free on 127.0.0.1 whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


class RedisNode:
    def __init__(
        self,
        directory: Path,
        port: int,
        appendfsync: str,
        cluster: bool = True,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.directory, self.port = directory, port
        self.config = directory / "redis.conf"
        directory.mkdir(parents=True)
        self.config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {port}",
                    f"dir {directory}",
                    f"cluster-enabled {'yes' if cluster else 'no'}",
                    "cluster-config-file nodes.conf",
                    "cluster-node-timeout 2000",
                    "cluster-require-full-coverage no",
                    f"appendonly {'no' if appendfsync == 'no-aof' else 'yes'}",
                    f"appendfsync {'everysec' if appendfsync == 'no-aof' else appendfsync}",
                    'save ""',
                    "protected-mode yes",
                    "enable-protected-configs local",  # a test moves dir to fail a save
                    f"logfile {directory / 'redis.log'}",
                    *extra,
                    "",
                ]
            )
        )
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis("127.0.0.1", self.port, socket_timeout=START_TIMEOUT)

    def start(self) -> None:
        """Start from this node's own config and directory (its data and nodes.conf)."""
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed (make test installs Debian's redis-server)"
        self.proc = subprocess.Popen([server, str(self.config)], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:
                pass
            assert self.proc.poll() is None, f"redis-server on {self.port} exited; see its log"
            assert time.monotonic() < deadline, f"redis-server on {self.port} did not start"
            time.sleep(0.02)

    announced: int | None = None  # the port the node tells clients, if not its own

    def role(self) -> str:
        return self.client().info("replication")["role"]

    def kill(self) -> None:
        """SIGKILL by pid, and wait for the exit."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(START_TIMEOUT)

    def state(self) -> str:
        return self.client().execute_command("CLUSTER", "INFO").decode()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RedisCluster:
    def __init__(
        self, root: Path, nodes: int = 3, appendfsync: str = "always", replicas: int = 0
    ) -> None:
        """``appendfsync``: always, everysec or no, or ``no-aof`` for no append-only file;
        ``nodes`` primaries with ``replicas`` replicas each."""
        self.root, self.replicas = root, replicas
        count = nodes * (1 + replicas)
        self.nodes = [RedisNode(root / f"node-{i}", free_port(), appendfsync) for i in range(count)]

    @property
    def url(self) -> str:
        return f"redis://{self.nodes[0].address}"

    def start(self) -> RedisCluster:
        try:
            for node in self.nodes:
                node.start()
            cli = shutil.which("redis-cli")
            assert cli, "redis-cli is not installed (make test installs Debian's redis-tools)"
            subprocess.run(
                [cli, "--cluster", "create", *(n.address for n in self.nodes)]
                + ["--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                timeout=START_TIMEOUT,
            )
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every running node says the cluster is ok and knows every node."""
        deadline = time.monotonic() + timeout
        states: list[str] = []
        while True:
            try:
                states = [node.state() for node in self.nodes if node.running]
                size = f"cluster_known_nodes:{len(self.nodes)}"
                if all("cluster_state:ok" in s and size in s for s in states):
                    return
            except redis.ConnectionError as exc:
                states = [repr(exc)]
            assert time.monotonic() < deadline, f"the Redis cluster is not ok in time: {states}"
            time.sleep(0.05)

    def primary_of(self, key: str) -> RedisNode:
        running = [n for n in self.nodes if n.running]
        slot = running[0].client().execute_command("CLUSTER", "KEYSLOT", key)
        for node in running:
            for start, end, primary, *_ in node.client().execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end and int(primary[1]) in (node.port, node.announced):
                    return node
        raise AssertionError(f"no primary serves {key}")

    def primaries(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.running and n.role() == "master"]

    def flush(self) -> None:
        """Delete every key on every primary (the functions stay loaded)."""
        for node in self.primaries():
            node.client().flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


class ProxiedCluster(RedisCluster):
    """Primaries each behind a ``FaultProxy`` (tests/faultproxy.py). Every node tells clients the
    proxy's port (``cluster-announce-port``: in CLUSTER SLOTS, MOVED and ASK), so the instances
    reach the cluster only through the proxies; the cluster bus is direct. Made by hand (slots,
    then MEET), since ``redis-cli --cluster create`` would check the announced addresses."""

    def __init__(self, root: Path, nodes: int = 3) -> None:
        self.root, self.replicas = root, 0
        self.nodes, self.proxies = [], []
        for i in range(nodes):
            port = free_port()
            proxy = FaultProxy(port)
            announce = (f"cluster-announce-port {proxy.port}",
                        f"cluster-announce-bus-port {port + 10000}")  # fmt: skip
            node = RedisNode(root / f"node-{i}", port, "no-aof", extra=announce)
            node.announced = proxy.port
            self.nodes.append(node)
            self.proxies.append(proxy)

    @property
    def url(self) -> str:
        return f"redis://{self.proxies[0].address}"

    def start(self) -> ProxiedCluster:
        try:
            for node in self.nodes:
                node.start()
            share = 16384 // len(self.nodes)
            for i, node in enumerate(self.nodes):
                last = 16383 if i == len(self.nodes) - 1 else (i + 1) * share - 1
                node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
                node.client().execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            for node in self.nodes[1:]:
                self.nodes[0].client().execute_command(
                    "CLUSTER", "MEET", "127.0.0.1", node.port, node.port + 10000
                )
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def proxy_of(self, node: RedisNode) -> FaultProxy:
        return self.proxies[self.nodes.index(node)]

    def heal(self) -> None:
        for proxy in self.proxies:
            proxy.set("pass")

    def stop(self) -> None:
        super().stop()
        for proxy in self.proxies:
            proxy.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    root = Path(tempfile.mkdtemp(prefix="flowagg-redis-"))
    cluster = RedisCluster(root).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_node() -> Iterator[RedisNode]:
    """One Redis node without cluster mode, for the whole run."""
    root = Path(tempfile.mkdtemp(prefix="flowagg-redis-node-"))
    node = RedisNode(root / "node", free_port(), "always", cluster=False)
    try:
        node.start()
        yield node
    finally:
        node.kill()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def proxied_cluster() -> Iterator[ProxiedCluster]:
    """Three primaries behind fault proxies, for the whole run (started on first use)."""
    root = Path(tempfile.mkdtemp(prefix="flowagg-redis-proxied-"))
    cluster = ProxiedCluster(root).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def faulty(proxied_cluster: ProxiedCluster) -> ProxiedCluster:
    """The proxied cluster, every proxy passing and every key deleted, for one test."""
    proxied_cluster.heal()
    proxied_cluster.wait_ok()
    proxied_cluster.flush()
    return proxied_cluster


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> RedisCluster:
    """The session's cluster, emptied and with every node up, for one test."""
    for node in redis_cluster.nodes:
        if node.proc is None or node.proc.poll() is not None:
            node.start()
    redis_cluster.wait_ok()
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
def open_store():
    """Open Redis stores in this process (instances, for the tests); closed on teardown."""
    from flowagg.store.redis.store import RedisStore

    stores = []

    def make(url: str, **options) -> RedisStore:
        options = {"partitions": 3, "buffer_capacity": 4096, "timeout_s": 1.0, **options}
        store = RedisStore(url, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        assert store.close(START_TIMEOUT), "a drainer did not stop"
