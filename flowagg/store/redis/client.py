"""Talking to Redis: one node or a cluster, found from one seed; pipelines per primary; faults.

``RedisClient`` asks the seed (or any node it already knows) whether it runs in cluster mode
(``INFO cluster``) and, if so, which primary serves which slot (``CLUSTER SLOTS``); one node
without cluster mode serves every key. It loads the functions library (functions.lua) on every
primary it finds, with ``FUNCTION LOAD REPLACE``, and again on a primary that answers
"Function not found".

``execute`` runs a list of ``Call``s: each goes to the primary of its key's slot, the calls of a
primary are pipelined on one connection, and every primary's pipeline is written before any
reply is read, so a commit over three primaries costs one round trip, not three (hiredis packs
the commands in C: str, bytes and int arguments, nothing else). Each call then
knows one of three states:

    done       the reply arrived (``reply``)
    refused    the call was certainly not executed: MOVED/ASK, CLUSTERDOWN, TRYAGAIN, READONLY,
               LOADING, "Function not found", out of memory, or no connection could be made
    unknown    it was sent and no reply came (a timeout, a connection cut): it may have run

Refused calls whose cause passes (a slot that moved, a failover in progress, a node that lost the
functions) are sent again, after refreshing the slot map or reloading the functions, until the
deadline. Unknown calls are sent again only when the caller says that is safe (reads).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis
from hiredis import pack_command
from redis import exceptions
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.retry import Retry

from flowagg.store.redis.layout import LIBRARY

log = logging.getLogger("flowagg.redis")

FUNCTIONS = resources.files("flowagg.store.redis").joinpath("functions.lua").read_text()
if not FUNCTIONS.startswith(f"#!lua name={LIBRARY}\n"):
    raise ImportError(f"functions.lua must declare the library {LIBRARY}")

BACKOFF_S = (0.02, 0.05, 0.1, 0.2)  # pauses before each resend of refused calls, then the last

ErrorObserver = Callable[[str], None]  # called with the kind of every Redis error


@dataclass(eq=False)
class Call:
    key: str  # the key whose slot picks the primary
    args: tuple  # the command and its arguments
    node: Node | None = None  # a node of its own instead (a health check)
    state: str = "new"  # new, done, refused, unknown
    reply: Any = None
    error: Exception | None = None


@dataclass(eq=False)
class Node:
    host: str
    port: int
    pool: redis.ConnectionPool
    functions_loaded: bool = False

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Topology:
    cluster: bool
    primaries: list[Node]
    slots: list[Node] = field(default_factory=list)  # the primary of each slot (cluster only)

    def node_for(self, key: str) -> Node | None:
        if not self.cluster:
            return self.primaries[0]
        return self.slots[key_slot(key.encode())]


class NoNode(Exception):
    """No node could be asked for the slot map."""


class RedisClient:
    def __init__(self, url: str, timeout_s: float, on_error: ErrorObserver | None = None) -> None:
        options = parse_url(url)
        self.timeout_s = timeout_s
        self._seed = (options.pop("host", "127.0.0.1"), int(options.pop("port", 6379)))
        # RESP3: HGETALL answers a map, SMEMBERS a set.
        self._options = {
            **options,
            "protocol": 3,
            "retry": Retry(NoBackoff(), 0),  # execute() decides what is sent again, and when
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
        }
        self._on_error = on_error
        # Guards _nodes, _topology and _generation; held while the topology is refreshed.
        self._lock = threading.Lock()
        self._nodes: dict[tuple[str, int], Node] = {}
        self._topology: Topology | None = None
        self._generation = 0  # bumped at every refresh, so concurrent callers refresh once

    # -- topology ----------------------------------------------------------------------------

    def topology(self) -> Topology:
        with self._lock:
            if self._topology is None:
                self._refresh()
            assert self._topology is not None
            return self._topology

    def refresh(self, seen_generation: int | None = None) -> None:
        """Ask the nodes for the slot map again (unless another caller did since
        ``seen_generation``) and load the functions on primaries that lack them."""
        with self._lock:
            if seen_generation is None or seen_generation == self._generation:
                self._refresh()

    def _refresh(self) -> None:
        # Caller holds _lock. The seed first, then every node met so far.
        candidates = [self._seed, *(a for a in self._nodes if a != self._seed)]
        problems = []
        for address in candidates:
            try:
                self._topology = self._ask(self._node(*address))
                self._generation += 1
                break
            except (exceptions.RedisError, OSError) as exc:
                problems.append(f"{address[0]}:{address[1]}: {exc}")
        else:
            self._topology = None
            raise NoNode("no Redis node answers: " + "; ".join(problems))
        for node in self._topology.primaries:
            if not node.functions_loaded:
                self._load_functions(node)

    def _ask(self, node: Node) -> Topology:
        info = self._command(node, "INFO", "cluster").decode()
        if "cluster_enabled:1" not in info:
            return Topology(False, [node])
        slots: list[Node | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        primaries: dict[str, Node] = {}
        for start, end, primary, *_replicas in self._command(node, "CLUSTER", "SLOTS"):
            host = primary[0].decode() if primary[0] else node.host
            owner = self._node(host, int(primary[1]))
            primaries[owner.name] = owner
            slots[start : end + 1] = [owner] * (end - start + 1)
        missing = slots.count(None)
        if missing:
            log.warning("redis: %d slots are served by no primary (per %s)", missing, node.name)
        return Topology(True, sorted(primaries.values(), key=lambda n: n.name), slots)  # type: ignore[arg-type]

    def _node(self, host: str, port: int) -> Node:
        # Caller holds _lock.
        node = self._nodes.get((host, port))
        if node is None:
            pool = redis.ConnectionPool(host=host, port=port, **self._options)
            node = self._nodes[(host, port)] = Node(host, port, pool)
        return node

    def _command(self, node: Node, *args: Any) -> Any:
        conn = node.pool.get_connection()
        try:
            conn.send_command(*args)
            return conn.read_response()
        except (exceptions.ConnectionError, exceptions.TimeoutError):
            conn.disconnect()
            raise
        finally:
            node.pool.release(conn)

    def _load_functions(self, node: Node) -> None:
        try:
            self._command(node, "FUNCTION", "LOAD", "REPLACE", FUNCTIONS)
        except (exceptions.RedisError, OSError) as exc:
            self._count(exc)
            log.warning("redis: cannot load the functions on %s: %s", node.name, exc)
            return
        node.functions_loaded = True
        log.info("redis: functions %s loaded on %s", LIBRARY, node.name)

    # -- running calls -----------------------------------------------------------------------

    def execute(self, calls: Sequence[Call], deadline: float, resend_unknown: bool = False) -> None:
        """Run ``calls`` (see the module comment); each ends done, refused or unknown."""
        pending = list(calls)
        attempt = 0
        while pending:
            with self._lock:
                generation = self._generation
            try:
                topology = self.topology()
            except NoNode as exc:
                self._count(exceptions.ConnectionError(str(exc)))
                for call in pending:
                    call.state, call.error = "refused", exc
                topology = None
            if topology is not None:
                self._round(topology, pending)
            retry = [c for c in pending if self._retryable(c, resend_unknown)]
            if topology is None or any(_moves(c.error) for c in pending if c.state != "done"):
                with contextlib.suppress(NoNode):  # said by the calls' own errors
                    self.refresh(generation)
            pause = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            if not retry or time.monotonic() + pause >= deadline:
                return
            time.sleep(pause)
            attempt += 1
            pending = retry

    def _round(self, topology: Topology, calls: list[Call]) -> None:
        """Send every call once: write every primary's pipeline, then read every reply."""
        groups: dict[int, tuple[Node, list[Call]]] = {}
        for call in calls:
            node = call.node or topology.node_for(call.key)
            if node is None:
                call.state, call.error = "refused", exceptions.ClusterDownError("slot not served")
                continue
            groups.setdefault(id(node), (node, []))[1].append(call)
        sent = []
        for node, group in groups.values():
            if not node.functions_loaded:
                with self._lock:
                    self._load_functions(node)
            try:
                conn = node.pool.get_connection()  # connects, if the pool had no connection
                _roomy(conn)
            except (exceptions.ConnectionError, exceptions.TimeoutError) as exc:
                self._count(exc)
                for call in group:
                    call.state, call.error = "refused", exc
                continue
            try:
                conn.send_packed_command([b"".join([pack_command(c.args) for c in group])])
            except Exception as exc:  # what went out before the error may run
                self._fail(conn, node, group, "unknown", exc)
                continue
            sent.append((node, conn, group))
        for node, conn, group in sent:
            self._read(node, conn, group)

    def _read(self, node: Node, conn: redis.Connection, group: list[Call]) -> None:
        for i, call in enumerate(group):
            try:
                call.reply, call.state, call.error = conn.read_response(), "done", None
            except (exceptions.ResponseError, exceptions.BusyLoadingError) as exc:
                call.state, call.error = self._refusal(node, exc), exc
                self._count(exc)
            except Exception as exc:  # a timeout, a cut connection, a reply not understood
                self._fail(conn, node, group[i:], "unknown", exc)
                return
        node.pool.release(conn)

    def _fail(self, conn, node: Node, calls: list[Call], state: str, exc: Exception) -> None:
        conn.disconnect()
        node.pool.release(conn)
        self._count(exc)
        for call in calls:
            call.state, call.error = state, exc

    def _refusal(self, node: Node, exc: exceptions.RedisError) -> str:
        """The state of a call answered with an error: refused, or unknown if it may have run."""
        if "Function not found" in str(exc):
            node.functions_loaded = False  # loaded again before the next round's send
            return "refused"
        if isinstance(exc, REFUSALS):
            return "refused"
        return "unknown"  # a function that failed halfway keeps what it wrote

    def _retryable(self, call: Call, resend_unknown: bool) -> bool:
        if call.state == "unknown":
            return resend_unknown
        if call.state != "refused":
            return False
        return not isinstance(call.error, exceptions.OutOfMemoryError)

    def _count(self, exc: BaseException) -> None:
        if self._on_error is not None:
            self._on_error(error_kind(exc))

    # -- operations ---------------------------------------------------------------------------

    def health(self) -> list[str]:
        """Failed checks: every primary must answer PING, and a cluster must say it is ok."""
        try:
            topology = self.topology()
        except NoNode as exc:
            return [f"redis: {exc}"]
        pings = [Call("", ("PING",), node=n) for n in topology.primaries]
        self._round(topology, pings)
        problems = [
            f"redis: primary {call.node.name} does not answer: {call.error}"  # type: ignore[union-attr]
            for call in pings
            if call.state != "done"
        ]
        answering = [call.node for call in pings if call.state == "done"]
        if topology.cluster and answering:
            state = Call("", ("CLUSTER", "INFO"), node=answering[0])
            self._round(topology, [state])
            if state.state != "done" or b"cluster_state:ok" not in state.reply:
                problems.append(f"redis: cluster state is not ok according to {answering[0].name}")
        return problems

    def close(self) -> None:
        with self._lock:
            for node in self._nodes.values():
                node.pool.disconnect()


# Errors that prove the call was not executed; the call may be sent again.
REFUSALS = (
    exceptions.AskError,  # and MovedError, its subclass
    exceptions.TryAgainError,
    exceptions.ClusterDownError,
    exceptions.ReadOnlyError,
    exceptions.BusyLoadingError,
    exceptions.OutOfMemoryError,
    exceptions.NoPermissionError,
)


SEND_BUFFER_BYTES = 4 * 1024 * 1024


def _roomy(conn: redis.Connection) -> None:
    """Give the connection a send buffer that holds a whole pipeline (the kernel caps it at
    net.core.wmem_max), so that writing one primary's pipeline never waits for that primary to
    execute it: with the default 16 KiB, the writes to the three primaries took turns."""
    sock = conn._sock
    if sock is not None and getattr(conn, "_flowagg_roomy", None) is not sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        conn._flowagg_roomy = sock  # type: ignore[attr-defined]


def _moves(exc: BaseException | None) -> bool:
    """Whether an error may mean that the slot map changed (a failover, a resharding, a node
    gone), so that it is worth asking again."""
    return not isinstance(exc, exceptions.TryAgainError | exceptions.OutOfMemoryError) and not (
        isinstance(exc, exceptions.ResponseError) and "Function not found" in str(exc)
    )


def error_kind(exc: BaseException) -> str:
    """A short, bounded name for a Redis error, for the errors metric."""
    if isinstance(exc, exceptions.ResponseError) and "Function not found" in str(exc):
        return "function_missing"
    for cls, kind in (
        (exceptions.MovedError, "moved"),
        (exceptions.AskError, "ask"),
        (exceptions.TryAgainError, "tryagain"),
        (exceptions.ClusterDownError, "clusterdown"),
        (exceptions.ReadOnlyError, "readonly"),
        (exceptions.BusyLoadingError, "loading"),
        (exceptions.OutOfMemoryError, "oom"),
        (exceptions.TimeoutError, "timeout"),
        (exceptions.ConnectionError, "connection"),
        (exceptions.ResponseError, "response"),
    ):
        if isinstance(exc, cls):
            return kind
    return "other"
