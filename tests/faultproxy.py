"""A fault-injecting TCP proxy for the tests, after Toxiproxy: one proxy in front of one server.

``FaultProxy`` listens on a free port of 127.0.0.1 and forwards every connection to the server.
``set(mode)`` changes what it does, to the connections it holds and to the ones that come:

    pass           bytes go both ways
    blackhole      connections are accepted and held, and every byte either way is swallowed:
                   the server is there and never answers (a partition, a stuck host)
    drop_replies   requests reach the server, its replies are swallowed: the server runs calls
                   whose answers never arrive
    reset          every connection is reset (RST) and new ones are refused: the server is
                   down (nothing sent to it can have run)

One thread (``fault-proxy-<port>``) serves all of it with ``selectors``; ``close()`` stops it and
closes every socket. Nothing here knows Redis: it passes bytes.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading

MODES = ("pass", "blackhole", "drop_replies", "reset")


class FaultProxy:
    def __init__(self, upstream_port: int, port: int = 0) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self.port = port
        self._listen()
        # Guards mode; the thread reads it for every chunk it moves.
        self._lock = threading.Lock()
        self.mode = "pass"
        self._pairs: dict[socket.socket, socket.socket] = {}  # each end -> the other end
        self._client: set[socket.socket] = set()  # the ends facing the client
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"fault-proxy-{self.port}")
        self._thread.daemon = True
        self._thread.start()

    def _listen(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._selector.register(self._listener, selectors.EVENT_READ, None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        with self._lock:
            self.mode = mode
        self._wake_w.send(b"x")  # the thread resets what it holds, if it is to

    def close(self) -> None:
        self._stopping = True
        self._wake_w.send(b"x")
        self._thread.join(10)
        for sock in [*self._pairs, self._listener, self._wake_r, self._wake_w]:
            if sock is not None:
                sock.close()
        self._selector.close()

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select(0.5):
                sock = key.fileobj
                if sock is self._listener:
                    self._accept()
                elif sock is self._wake_r:
                    self._wake_r.recv(4096)
                    self._apply_mode()
                elif sock in self._pairs:
                    self._move(sock)

    def _apply_mode(self) -> None:
        if self.mode == "reset":
            for client in list(self._client):
                self._drop(client, reset=True)
            if self._listener is not None:  # connecting is refused from now on
                self._selector.unregister(self._listener)
                self._listener.close()
                self._listener = None
        elif self._listener is None:
            self._listen()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()  # type: ignore[union-attr]
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _reset(client)
            return
        for end in (client, upstream):
            end.settimeout(5)  # sends; reads happen only once select says readable
            end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._selector.register(end, selectors.EVENT_READ, None)
        self._pairs[client], self._pairs[upstream] = upstream, client
        self._client.add(client)

    def _move(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        with self._lock:
            mode = self.mode
        towards_server = sock in self._client
        if mode == "pass" or (mode == "drop_replies" and towards_server):
            try:
                self._pairs[sock].sendall(data)
            except OSError:
                self._drop(sock)
        # blackhole, and replies under drop_replies: swallowed

    def _drop(self, sock: socket.socket, reset: bool = False) -> None:
        other = self._pairs.pop(sock, None)
        for end in (sock, other):
            if end is None:
                continue
            self._pairs.pop(end, None)
            self._selector.unregister(end)
            if reset and end in self._client:
                _reset(end)
            else:
                end.close()
            self._client.discard(end)


def _reset(sock: socket.socket) -> None:
    """Close with a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
