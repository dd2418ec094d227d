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
    def __init__(self, directory: Path, port: int, appendfsync: str, cluster: bool = True) -> None:
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
                    f"logfile {directory / 'redis.log'}",
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

    def kill(self) -> None:
        """SIGKILL by pid, and wait for the exit."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(START_TIMEOUT)

    def state(self) -> str:
        return self.client().execute_command("CLUSTER", "INFO").decode()


class RedisCluster:
    def __init__(self, root: Path, nodes: int = 3, appendfsync: str = "always") -> None:
        """``appendfsync``: always, everysec or no, or ``no-aof`` for no append-only file."""
        self.root = root
        self.nodes = [RedisNode(root / f"node-{i}", free_port(), appendfsync) for i in range(nodes)]

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
                + ["--cluster-replicas", "0", "--cluster-yes"],
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
        """Wait until every node says the cluster is ok and knows every node."""
        deadline = time.monotonic() + timeout
        states: list[str] = []
        while True:
            try:
                states = [node.state() for node in self.nodes]
                size = f"cluster_known_nodes:{len(self.nodes)}"
                if all("cluster_state:ok" in s and size in s for s in states):
                    return
            except redis.ConnectionError as exc:
                states = [repr(exc)]
            assert time.monotonic() < deadline, f"the Redis cluster is not ok in time: {states}"
            time.sleep(0.05)

    def primary_of(self, key: str) -> RedisNode:
        slot = self.nodes[0].client().execute_command("CLUSTER", "KEYSLOT", key)
        for node in self.nodes:
            for start, end, primary, *_ in node.client().execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end and int(primary[1]) == node.port:
                    return node
        raise AssertionError(f"no primary serves {key}")

    def flush(self) -> None:
        """Delete every key on every primary (the functions stay loaded)."""
        for node in self.nodes:
            node.client().flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


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


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> RedisCluster:
    """The session's cluster, emptied and with every node up, for one test."""
    for node in redis_cluster.nodes:
        if node.proc is None or node.proc.poll() is not None:
            node.start()
    redis_cluster.wait_ok()
    redis_cluster.flush()
    return redis_cluster
