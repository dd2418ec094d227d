"""Hostile clients for the connection tests, and the probes that check the service meanwhile.

``Slowloris`` sends request headers a byte at a time and never finishes them; ``NonReader``
pipelines requests and never reads an answer. Both open every socket from a chosen source address
on 127.0.0.0/8, so a test can tell one client address from another, and close every socket they
opened in ``close()``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import selectors
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from tests.conftest import WAIT_TIMEOUT, flow

TCP_ESTABLISHED = 1  # tcpi_state in struct tcp_info (linux/tcp_states.h)
SEND_TIMEOUT = 2.0  # a one-byte send never waits on an open connection; a dead one fails fast


@dataclass(frozen=True)
class Endpoint:
    """How to reach the server: its port on 127.0.0.1, TLS or not, from which source address."""

    port: int
    tls: ssl.SSLContext | None = None
    source: str = "127.0.0.1"
    host: str = "127.0.0.1"

    def connect(self, timeout: float = WAIT_TIMEOUT, rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:  # before connect(), so the advertised window is small too
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(timeout)
            sock.bind((self.source, 0))
            sock.connect((self.host, self.port))
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def connection(self, timeout: float = WAIT_TIMEOUT) -> http.client.HTTPConnection:
        source = (self.source, 0)
        if self.tls is None:
            return http.client.HTTPConnection(
                self.host, self.port, timeout=timeout, source_address=source
            )
        return http.client.HTTPSConnection(
            self.host, self.port, timeout=timeout, source_address=source, context=self.tls
        )

    def request(
        self, method: str, path: str, body=None, headers=None, timeout: float = WAIT_TIMEOUT
    ) -> tuple[int, http.client.HTTPMessage, Any]:
        """One request on a fresh connection: (status, headers, parsed JSON body)."""
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.headers, json.loads(response.read())
        finally:
            conn.close()


def probe(endpoint: Endpoint, timeout: float) -> None:
    """``GET /healthz`` on a fresh connection: ``200 {"status": "ok"}`` within ``timeout``."""
    status, _, body = endpoint.request("GET", "/healthz", timeout=timeout)
    assert (status, body) == (200, {"status": "ok"})


def probe_unanswered(endpoint: Endpoint, timeout: float) -> bool:
    """Whether a health probe went unanswered for ``timeout`` seconds."""
    try:
        probe(endpoint, timeout)
    except TimeoutError:
        return True
    return False


def reset(sock: socket.socket) -> None:
    """Close with a reset rather than a FIN, so the server drops whatever it still had to send."""
    with contextlib.suppress(OSError):  # already closed by the server
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def established(sock: socket.socket) -> bool:
    """Whether the TCP connection is still open both ways (Linux ``TCP_INFO``)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_ESTABLISHED


class Slowloris:
    """``count`` connections that send a request header one byte every ``interval`` seconds and
    never finish it. One the server closes is opened again at once, as an attacker would; its
    lifetime goes to ``lifetimes``. The attack runs in a thread from ``start()`` to ``close()``.
    """

    HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "

    def __init__(self, endpoint: Endpoint, count: int, interval: float) -> None:
        self.endpoint = endpoint
        self.count = count
        self.interval = interval
        self.selector = selectors.DefaultSelector()  # open connections -> time each was opened
        self.opened = 0  # connections opened in all
        self.lifetimes: list[float] = []  # of the connections the server closed, in seconds
        self.failed_connects = 0
        self.error: BaseException | None = None  # what stopped the attack thread, if anything
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)

    @property
    def open_now(self) -> int:
        return len(self.selector.get_map())

    def start(self) -> Slowloris:
        """Open every connection, then keep them trickling; returns once all are open."""
        self._refill()
        assert self.open_now == self.count, f"only {self.open_now} of {self.count} connected"
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(WAIT_TIMEOUT)
            assert not self._thread.is_alive(), "the slowloris thread did not stop"
        for key in list(self.selector.get_map().values()):
            self.selector.unregister(key.fileobj)
            reset(key.fileobj)
        self.selector.close()
        assert self.error is None, f"the attack failed: {self.error!r}"

    def _open(self) -> None:
        sock = self.endpoint.connect(timeout=WAIT_TIMEOUT)
        try:
            sock.sendall(self.HEAD)
            sock.settimeout(SEND_TIMEOUT)
        except BaseException:
            sock.close()
            raise
        self.selector.register(sock, selectors.EVENT_READ, time.monotonic())
        self.opened += 1

    def _refill(self) -> None:
        while self.open_now < self.count and not self._stopping.is_set():
            try:
                self._open()
            except OSError:
                self.failed_connects += 1
                return  # tried again at the next byte

    def _run(self) -> None:
        try:
            next_byte = time.monotonic() + self.interval
            while not self._stopping.is_set():
                timeout = max(0.0, min(next_byte - time.monotonic(), 0.2))
                for key, _ in self.selector.select(timeout):
                    self._readable(key)
                if time.monotonic() >= next_byte:
                    next_byte += self.interval
                    for key in list(self.selector.get_map().values()):
                        try:
                            key.fileobj.send(b"a")
                        except OSError:
                            self._closed_by_server(key)
                    self._refill()
        except BaseException as exc:  # reported by close()
            self.error = exc

    def _readable(self, key: selectors.SelectorKey) -> None:
        sock = key.fileobj
        sock.setblocking(False)
        try:
            sock.recv(4096)
        except (ssl.SSLWantReadError, BlockingIOError):
            sock.settimeout(SEND_TIMEOUT)
            return  # TLS records that carry no data (session tickets): still open
        except OSError:
            pass
        self._closed_by_server(key)  # end of stream, a reset, or an answer: the server is done

    def _closed_by_server(self, key: selectors.SelectorKey) -> None:
        self.lifetimes.append(time.monotonic() - key.data)
        self.selector.unregister(key.fileobj)
        key.fileobj.close()
        self._refill()


class NonReader:
    """A connection that pipelines ``count`` requests for ``path`` at once and never reads an
    answer. Its receive buffer is small, so what the server writes backs up at once."""

    def __init__(self, endpoint: Endpoint, path: str, count: int) -> None:
        self.sock = endpoint.connect(rcvbuf=4096)
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        try:
            self.sock.sendall(request * count)
        except BaseException:
            self.sock.close()
            raise

    def closed_by_server(self) -> bool:
        return not established(self.sock)

    def close(self) -> None:
        reset(self.sock)


def fill_hour(endpoint: Endpoint, hour: int, keys: int, batch: int = 5_000) -> int:
    """POST ``keys`` distinct keys into ``hour``; returns the size of its GET answer in bytes."""
    for start in range(0, keys, batch):
        flows = [
            flow(src=f"src-{i:06d}", hour=hour) for i in range(start, min(start + batch, keys))
        ]
        status, _, body = endpoint.request("POST", "/flows", json.dumps(flows))
        assert (status, body) == (200, {"accepted": len(flows)})
    conn = endpoint.connection()
    try:
        conn.request("GET", f"/flows?hour={hour}")
        response = conn.getresponse()
        assert response.status == 200
        return len(response.read())
    finally:
        conn.close()
