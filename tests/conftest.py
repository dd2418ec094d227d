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


@pytest.fixture
def app() -> Iterator[Flask]:
    app = create_app({"FLOWAGG_PARTITIONS": 4, "FLOWAGG_BUFFER_CAPACITY": 1024})
    yield app
    assert app.extensions["flowagg"].close(WAIT_TIMEOUT), "a drainer did not stop"


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


class LiveServer:
    """A real waitress server on 127.0.0.1 running the app in this process.

    The I/O loop runs in small steps so that ``stop`` can end it between two steps and then
    close every socket from the loop's own thread (closing them under a running loop races).
    """

    def __init__(self, app: Flask, threads: int = 8) -> None:
        self.app = app
        self.server = create_server(app, host="127.0.0.1", port=0, threads=threads)
        self.port = self.server.effective_port
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="waitress-main", daemon=True)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            self.server.asyncore.loop(timeout=0.05, map=self.server._map, count=1)
        self.server.task_dispatcher.shutdown(timeout=WAIT_TIMEOUT)
        wasyncore.close_all(self.server._map)

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

    def stop(self) -> None:
        self._stopping.set()
        self.thread.join(WAIT_TIMEOUT)
        assert not self.thread.is_alive(), "waitress did not stop"


@pytest.fixture
def start_server() -> Iterator[Callable[..., LiveServer]]:
    """Start a real waitress server with the given config; stopped and closed on teardown."""
    servers: list[LiveServer] = []

    def start(config: dict | None = None) -> LiveServer:
        app = create_app(
            {"FLOWAGG_PARTITIONS": 8, "FLOWAGG_BUFFER_CAPACITY": 4096, **(config or {})}
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


def wait_until(predicate, timeout: float = WAIT_TIMEOUT) -> None:
    """Poll ``predicate`` until true; fail the test at the deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)
