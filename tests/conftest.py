from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from waitress import wasyncore
from waitress.server import create_server

from flowagg import create_app
from tests.redis_cluster import (  # noqa: F401 (Redis fixtures)
    cluster,
    faulty,
    open_store,
    proxied_cluster,
    redis_cluster,
    redis_node,
)

# Upper bound for any wait in a test: generous, since CI machines are shared and slow.
WAIT_TIMEOUT = 10.0


def flow(src="foo", dest="bar", vpc="vpc-0", tx=1, rx=2, hour=1) -> dict:
    return {
        "src_app": src,
        "dest_app": dest,
        "vpc_id": vpc,
        "bytes_tx": tx,
        "bytes_rx": rx,
        "hour": hour,
    }


@pytest.fixture(params=["memory", "durable"])
def store_config(request, tmp_path) -> dict:
    """Run the API and concurrency tests against both stores: the contract is the same."""
    if request.param == "memory":
        return {}
    return {"FLOWAGG_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def app(store_config) -> Iterator[Flask]:
    app = create_app({"FLOWAGG_PARTITIONS": 4, "FLOWAGG_BUFFER_CAPACITY": 1024, **store_config})
    yield app
    assert app.extensions["flowagg"].close(WAIT_TIMEOUT), "a drainer did not stop"


@pytest.fixture
def make_app(store_config):
    """Create apps with a given config, in memory and durable alike (each durable app in a
    directory of its own); every store is closed on teardown."""
    apps = []

    def make(clock=time.time, **config):
        own = dict(store_config)
        if "FLOWAGG_DATA_DIR" in own:
            own["FLOWAGG_DATA_DIR"] += f"-{len(apps)}"
        base = {"FLOWAGG_PARTITIONS": 4, "FLOWAGG_BUFFER_CAPACITY": 1024, **own}
        app = create_app({**base, **config}, clock=clock)
        apps.append(app)
        return app

    yield make
    for app in apps:
        assert app.extensions["flowagg"].close(WAIT_TIMEOUT)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class Flows:
    """POST and GET /flows through the test client, asserting the status."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def post(self, records: list[dict], status: int = 200):
        response = self.client.post("/flows", data=json.dumps(records))
        assert response.status_code == status, response.get_data(as_text=True)
        return response.get_json()

    def get(self, hour: int) -> list[dict]:
        response = self.client.get(f"/flows?hour={hour}")
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.mimetype == "application/json"
        return response.get_json()


@pytest.fixture
def flows(client: FlaskClient) -> Flows:
    return Flows(client)


class Client:
    """HTTP to a server listening on 127.0.0.1:``port``."""

    port: int

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT_TIMEOUT)

    def request(self, method: str, path: str, body=None, headers=None):
        """One request on a new connection; returns (status, parsed JSON body)."""
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()


class LiveServer(Client):
    """A real waitress server on 127.0.0.1 running the app in this process."""

    def __init__(self, app: Flask, threads: int = 8) -> None:
        self.app = app
        self.socket_map: dict = {}
        self.server = create_server(
            app, map=self.socket_map, host="127.0.0.1", port=0, threads=threads
        )
        self.port = self.server.effective_port
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="waitress-main", daemon=True)

    def _run(self) -> None:
        # One short poll at a time, so that stop() is noticed within 50 ms; only this thread
        # touches the sockets, so none is closed under a select() in progress (and stop() need
        # not pull waitress's trigger, which this loop may already have closed).
        while not self._stopping.is_set():
            wasyncore.loop(timeout=0.05, map=self.socket_map, count=1)
        for channel in list(self.socket_map.values()):
            channel.close()

    def stop(self) -> None:
        self.server.task_dispatcher.shutdown(timeout=WAIT_TIMEOUT)
        self._stopping.set()
        self.thread.join(WAIT_TIMEOUT)
        assert not self.thread.is_alive(), "waitress did not stop"


@pytest.fixture
def start_server(store_config) -> Iterator[Callable[..., LiveServer]]:
    """Start a real waitress server with the given config; stopped and closed on teardown."""
    servers: list[LiveServer] = []

    def start(config: dict | None = None) -> LiveServer:
        app = create_app(
            {
                "FLOWAGG_PARTITIONS": 8,
                "FLOWAGG_BUFFER_CAPACITY": 4096,
                **store_config,
                **(config or {}),
            }
        )
        server = LiveServer(app)
        servers.append(server)
        server.thread.start()
        return server

    yield start
    for server in servers:
        server.stop()
        assert server.app.extensions["flowagg"].close(WAIT_TIMEOUT), "a drainer did not stop"


@pytest.fixture
def live_server(start_server) -> LiveServer:
    return start_server()


class FakeClock:
    """A wall clock the test moves, in hours since the Unix epoch as the hours window reads it."""

    def __init__(self, hour: int) -> None:
        self.now = hour * 3600 + 1800.0

    def __call__(self) -> float:
        return self.now

    def advance(self, hours: int = 1) -> None:
        self.now += hours * 3600

    @property
    def hour(self) -> int:
        return int(self.now // 3600)


class Stall:
    """Holds a partition's drainer inside its merge until released."""

    def __init__(self, partition):
        self.partition = partition
        self.entered = threading.Event()
        self.release = threading.Event()
        original = partition._merge

        def stalled_merge(sums):
            self.entered.set()
            assert self.release.wait(WAIT_TIMEOUT)
            original(sums)

        partition._merge = stalled_merge


def wait_until(predicate, timeout: float = WAIT_TIMEOUT) -> None:
    """Poll ``predicate`` until true; fail the test at the deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)
