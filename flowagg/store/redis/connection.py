"""Connections to Redis nodes: a socket, hiredis's parser, and a deadline on every wait.

A ``Conn`` is one TCP connection speaking RESP2. Everything it does is bounded by the caller's
deadline: connecting, sending (``sendall`` with the time left) and reading, which the client does
for several connections at once with ``poll`` (client.py), so a node that never answers costs the
time left and nothing more, and holds up no other node's replies. Error replies come back as
``ReplyError`` values, never raised, so a pipeline's other replies are still read.

A ``Node`` is one address and its idle connections (a small pool: taken by one caller at a
time, returned only with no reply pending). No lock is held during network I/O.

Which error replies prove that a command was not run (``refused``) is decided here, from the
first word of the reply, after Redis's own documentation of each: a cluster redirection or a
cluster that cannot serve (MOVED, ASK, TRYAGAIN, CLUSTERDOWN), a node that will not take writes
now (READONLY, MASTERDOWN, LOADING, MISCONF after a failed disk write, NOREPLICAS under
min-replicas-to-write, OOM past maxmemory, BUSY while a script runs) and a missing function. Any
other error may have come from a function that had begun (``unknown``).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Sequence

import hiredis

SEND_BUFFER_BYTES = 4 * 1024 * 1024
RECEIVE_BYTES = 256 * 1024
MAX_IDLE = 32  # idle connections kept per node

# First words of error replies after which the command certainly did not run.
REFUSED = frozenset(
    ["MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "MASTERDOWN", "LOADING", "MISCONF"]
    + ["NOREPLICAS", "OOM", "BUSY", "NOSCRIPT"]
)
# ... of which these will not pass by waiting: sent again they would be refused again.
LASTING = frozenset(["NOPERM", "NOAUTH", "WRONGPASS"])
FUNCTION_MISSING = "Function not found"


class ReplyError(Exception):
    """An error reply of Redis; ``code`` is its first word (MOVED, ERR, ...)."""

    @property
    def code(self) -> str:
        return str(self).split(" ", 1)[0]

    @property
    def refused(self) -> bool:
        """Whether the command certainly did not run."""
        return self.code in REFUSED or FUNCTION_MISSING in str(self) or self.code in LASTING

    @property
    def lasting(self) -> bool:
        return self.code in LASTING


class ConnectionLost(OSError):
    """The node closed the connection, or a reply did not come by the deadline."""

    timed_out = False  # the reply did not come in time (rather than a closed connection)


def left(deadline: float) -> float:
    return deadline - time.monotonic()


class Conn:
    """One connection to ``host:port``; not thread-safe (one caller at a time)."""

    def __init__(self, host: str, port: int, deadline: float, auth: Sequence[str] = ()) -> None:
        timeout = left(deadline)
        if timeout <= 0:
            raise TimeoutError(f"no time left to connect to {host}:{port}")
        self.sock = socket.create_connection((host, port), timeout=timeout)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A whole pipeline fits, so that writing one primary's never waits for it to run.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            self.reader = hiredis.Reader(replyError=ReplyError)
            if auth:
                self.send(hiredis.pack_command(("AUTH", *auth)), deadline)
                reply = self.read(deadline)
                if isinstance(reply, ReplyError):
                    raise reply
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes, deadline: float) -> None:
        self.sock.settimeout(max(left(deadline), 0.001))
        self.sock.sendall(data)

    def reply(self):
        """The next complete reply already received, or False."""
        return self.reader.gets()

    def receive(self) -> None:
        """Take what the socket holds (the caller saw it readable) into the parser."""
        self.sock.settimeout(0)
        try:
            data = self.sock.recv(RECEIVE_BYTES)
        except BlockingIOError:
            return
        if not data:
            raise ConnectionLost("the node closed the connection")
        self.reader.feed(data)

    def read(self, deadline: float):
        """One reply, waiting for it until the deadline (used where one node is asked)."""
        while (reply := self.reply()) is False:
            timeout = left(deadline)
            if timeout <= 0:
                raise ConnectionLost("no reply in time")
            self.sock.settimeout(timeout)
            try:
                data = self.sock.recv(RECEIVE_BYTES)
            except TimeoutError:
                raise ConnectionLost("no reply in time") from None
            if not data:
                raise ConnectionLost("the node closed the connection")
            self.reader.feed(data)
        return reply

    def stale(self) -> bool:
        """Whether an idle connection has something to read: the node closed it, or broke it."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        self.sock.close()


class Node:
    """A node's address, whether it has the functions, and its idle connections."""

    def __init__(self, host: str, port: int, auth: Sequence[str] = ()) -> None:
        self.host, self.port = host, port
        self.name = f"{host}:{port}"
        self._auth = tuple(auth)
        # Guards _idle and _forgotten; never held during I/O.
        self._lock = threading.Lock()
        self._idle: list[Conn] = []
        self._forgotten = False
        self.functions_loaded = False  # set once a FUNCTION LOAD succeeded; cleared on a miss
        self.silent_until = 0.0  # monotonic time before which it is not asked (client.Silent)
        self.answered_at = 0.0  # monotonic time of its last reply

    def take(self, deadline: float) -> Conn:
        """An idle connection, or a new one (connecting until the deadline at most). An idle
        connection with something to read was closed by the node (a restart): it is dropped, so
        that a call is never sent where it cannot be answered."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return Conn(self.host, self.port, deadline, self._auth)
            if not conn.stale():
                return conn
            conn.close()

    def give(self, conn: Conn) -> None:
        """Return a connection with no reply pending."""
        with self._lock:
            if not self._forgotten and len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def forget(self) -> None:
        """Close the idle connections; connections in use are closed when given back."""
        with self._lock:
            self._forgotten = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __repr__(self) -> str:
        return f"Node({self.name})"
