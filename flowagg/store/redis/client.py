"""Talking to Redis: one node or a cluster, found from one seed; pipelines per primary; faults.

``RedisClient`` finds the nodes from one seed (topology.py: the slot map, refreshed by one caller
at a time and for a bounded time; no network I/O under its lock; nodes that left are forgotten).

``execute`` runs a list of ``Call``s before a deadline: each goes to the primary of its key's
slot; the calls of a primary are pipelined on one connection, every primary's pipeline is written
before any reply is read, and replies are read from whichever primary has them (``poll``), so one
node that does not answer costs the time left and delays nobody else's replies. Each call ends in
one of three states:

    done       the reply arrived (``reply``)
    refused    the call certainly did not run: an error reply that proves it (connection.py),
               no connection could be made, or its slot has no primary
    unknown    it was sent and no reply came (a timeout, a cut connection), or an error reply
               that does not prove it did not run, or WAIT said too few replicas have it

Refused calls are sent again until the deadline: after ``MOVED`` to the node it names (and the
map is refreshed), after ``ASK`` to the node it names preceded by ``ASKING``, after a missing
function with ``FUNCTION LOAD`` in front (a primary promoted by a failover may lack them), after
the others once the cause may have passed. Unknown calls are sent again only when the caller says
that is safe (reads). With ``wait_replicas`` N > 0, every primary's pipeline that holds a write
ends with ``WAIT N <time left>`` on the same connection; if fewer than N replicas acknowledged,
that pipeline's writes are unknown: applied on the primary, not known to survive its failover.
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from hiredis import pack_command
from redis.connection import parse_url

from flowagg.store.redis.connection import ConnectionLost, Node, ReplyError, left
from flowagg.store.redis.layout import LIBRARY
from flowagg.store.redis.topology import NoNode, SlotMap, Topology

log = logging.getLogger("flowagg.redis")

FUNCTIONS = resources.files("flowagg.store.redis").joinpath("functions.lua").read_text()
if not FUNCTIONS.startswith(f"#!lua name={LIBRARY}\n"):
    raise ImportError(f"functions.lua must declare the library {LIBRARY}")

BACKOFF_S = (0.01, 0.02, 0.05, 0.1, 0.2)  # pauses before each resend of refused calls

ErrorObserver = Callable[[str], None]  # called with the kind of every Redis error


@dataclass(eq=False)
class Call:
    key: str  # the key whose slot picks the primary
    args: tuple  # the command and its arguments (str, bytes or int)
    node: Node | None = None  # a node of its own instead (health checks)
    write: bool = False  # a write that WAIT must cover
    state: str = "new"  # new, (sent,) done, refused, unknown
    reply: Any = None
    error: BaseException | None = None
    ask: Node | None = None  # where an ASK sent it: its next send goes there, after ASKING


class Silent(Exception):
    """A node that did not answer a call in time is not sent any for a while (``silent_s``):
    its calls are refused at once (nothing sent), so that a blackholed primary costs every
    request touching it an instant, not the timeout; the first call after that asks it again."""

    def __init__(self, node: Node) -> None:
        super().__init__(f"{node.name} did not answer in time just before; not asked again yet")


class NotReplicated(Exception):
    """WAIT answered fewer replicas than asked for (or did not answer)."""


class RedisClient:
    def __init__(
        self,
        url: str,
        timeout_s: float,
        on_error: ErrorObserver | None = None,
        wait_replicas: int = 0,
    ) -> None:
        options = parse_url(url)
        self.timeout_s = timeout_s
        self.wait_replicas = wait_replicas
        seed = (options.get("host", "127.0.0.1"), int(options.get("port", 6379)))
        password, username = options.get("password"), options.get("username")
        auth = tuple(x for x in (username, password) if x) if password else ()
        self._on_error = on_error
        self.silent_s = min(1.0, timeout_s)  # how long a node that timed out is left alone
        self.map = SlotMap(seed, auth)
        self.changed = self.map.changed  # notified when a refresh of the map ends

    def topology(self, deadline: float | None = None) -> Topology:
        """The slot map (topology.py); ``NoNode`` if there is none and no node answers."""
        return self.map.current(time.monotonic() + self.timeout_s if deadline is None else deadline)

    # -- running calls -----------------------------------------------------------------------

    def execute(self, calls: Sequence[Call], deadline: float, resend_unknown: bool = False) -> None:
        """Run ``calls`` (see the module comment); each ends done, refused or unknown."""
        pending = list(calls)
        for attempt in range(1_000_000):
            try:
                topology = self.topology(deadline)
            except NoNode as exc:
                self._count(exc)
                for call in pending:
                    call.state, call.error = "refused", exc
            else:
                self._round(topology, pending, deadline)
            retry = [c for c in pending if _retryable(c, resend_unknown)]
            pause = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            if not retry or left(deadline) <= pause:
                return
            with self.changed:  # a refresh in progress may end the wait early
                self.changed.wait(pause)
            pending = retry

    def _round(self, topology: Topology, calls: list[Call], deadline: float) -> None:
        """Send every call once: write every node's pipeline, then read every reply."""
        groups: dict[Node, list[Call]] = {}
        for call in calls:
            node = call.node or call.ask or topology.node_for(call.key)
            if node is None:
                call.state, call.error = "refused", ReplyError("CLUSTERDOWN slot not served")
                continue
            groups.setdefault(node, []).append(call)
        sent = []
        now = time.monotonic()
        for node, group in groups.items():
            if node.silent_until > now and group[0].node is None:  # health checks still ask it
                for call in group:
                    call.state, call.error = "refused", Silent(node)
                continue
            try:
                conn = node.take(deadline)
            except OSError as exc:  # nothing was sent
                self._count(exc)
                self.map.invalidate()
                if isinstance(exc, TimeoutError):
                    node.silent_until = time.monotonic() + self.silent_s
                for call in group:
                    call.state, call.error = "refused", exc
                continue
            if left(deadline) <= 0:  # nothing was sent
                node.give(conn)
                for call in group:
                    call.state, call.error = "refused", TimeoutError("no time left to send it")
                continue
            expected = self._pipeline(node, group, deadline)
            try:
                conn.send(b"".join(pack_command(args) for args, _ in expected), deadline)
            except OSError as exc:  # what went out before the error may run
                conn.close()
                self._fail(group, exc)
                continue
            sent.append((node, conn, group, expected))
        self._read_all(sent, deadline)

    def _pipeline(self, node: Node, group: list[Call], deadline: float) -> list[tuple]:
        """The commands for one node: (args, what its reply is for) in order."""
        expected: list[tuple] = []
        if not node.functions_loaded and any(c.args[0] in ("FCALL", "FCALL_RO") for c in group):
            expected.append((("FUNCTION", "LOAD", "REPLACE", FUNCTIONS), "load"))
        for call in group:
            call.state, call.reply, call.error = "sent", None, None
            if call.ask is not None:
                expected.append((("ASKING",), None))
            expected.append((call.args, call))
        if self.wait_replicas and any(c.write for c in group):
            # Redis answers WAIT when its timeout passes: a tenth of the time left (at least
            # 20 ms) is kept for that answer to reach us before our own deadline.
            time_left = left(deadline)
            ms = max(1, int((time_left - max(0.02, time_left / 10)) * 1000))
            expected.append((("WAIT", self.wait_replicas, ms), "wait"))
        return expected

    def _read_all(self, sent: list, deadline: float) -> None:
        """Read the replies of every pipeline sent, from whichever node has them."""
        waiting = {conn.fileno(): (node, conn, group, iter([what for _, what in expected]))
                   for node, conn, group, expected in sent}  # fmt: skip
        current: dict[int, tuple] = {fd: next(it) for fd, (_, _, _, it) in waiting.items()}
        poller = select.poll()
        for fd in waiting:
            poller.register(fd, select.POLLIN)
        last_look = False
        while waiting:
            for fd in list(waiting):
                node, conn, group, it = waiting[fd]
                try:
                    while (reply := conn.reply()) is not False:
                        node.answered_at = time.monotonic()
                        self._take(node, group, current[fd], reply)
                        current[fd] = next(it)
                except StopIteration:  # every reply is in: the connection can be used again
                    del waiting[fd]
                    poller.unregister(fd)
                    node.give(conn)
                    node.silent_until = 0.0  # it answers
                except Exception as exc:  # a reply not understood
                    self._drop(waiting, poller, fd, exc)
            if not waiting or last_look:
                break
            timeout = left(deadline)
            # Past the deadline, one look at what has arrived: a thread that got no CPU for a
            # while must not call late a reply that is waiting in its socket.
            last_look = timeout <= 0
            for fd, _events in poller.poll(max(0.0, timeout) * 1000):
                try:
                    waiting[fd][1].receive()
                except OSError as exc:
                    self._drop(waiting, poller, fd, exc)
        for fd in list(waiting):
            lost = ConnectionLost(f"no reply from {waiting[fd][0].name} before the deadline")
            lost.timed_out = True
            self._drop(waiting, poller, fd, lost)

    def _drop(self, waiting: dict, poller, fd: int, exc: BaseException) -> None:
        node, conn, group, _ = waiting.pop(fd)
        poller.unregister(fd)
        conn.close()
        now = time.monotonic()
        if (
            isinstance(exc, ConnectionLost)
            and exc.timed_out
            and now - node.answered_at > (self.timeout_s)
        ):  # nothing at all from it for a whole timeout: not merely this host being slow
            node.silent_until = now + self.silent_s
        self._fail([c for c in group if c.state == "sent"], exc)
        if self.wait_replicas:  # the writes' replication was never confirmed
            self._unconfirmed(group, NotReplicated(
                f"no answer from {node.name} to how many of FLOWAGG_REDIS_WAIT_REPLICAS="
                f"{self.wait_replicas} replicas acknowledged in time ({exc})"))  # fmt: skip

    def _take(self, node: Node, group: list[Call], what, reply) -> None:
        """Record one reply: a call's, or that of a FUNCTION LOAD, ASKING or WAIT."""
        if what == "load":
            if isinstance(reply, ReplyError):
                self._count(reply)
                log.warning("redis: cannot load the functions on %s: %s", node.name, reply)
            else:
                node.functions_loaded = True
            return
        if what == "wait":
            if isinstance(reply, ReplyError) or reply < self.wait_replicas:
                got = reply if isinstance(reply, int) else 0
                self._unconfirmed(group, NotReplicated(
                    f"{got} of FLOWAGG_REDIS_WAIT_REPLICAS={self.wait_replicas} replicas of"
                    f" {node.name} acknowledged in time"))  # fmt: skip
            return
        if what is None:  # ASKING's +OK
            return
        call: Call = what
        call.ask = None
        if not isinstance(reply, ReplyError):
            call.state, call.reply, call.error = "done", reply, None
            return
        self._count(reply)
        call.error = reply
        call.state = "refused" if reply.refused else "unknown"
        if call.state == "unknown":
            return
        code = reply.code
        if code in ("MOVED", "ASK"):
            target = self.map.node_at(str(reply).split(" ")[2])
            if code == "ASK":
                call.ask = target
            else:
                self.map.moved(int(str(reply).split(" ")[1]), target)
        elif "Function not found" in str(reply):
            node.functions_loaded = False
        elif code in ("CLUSTERDOWN", "READONLY", "MASTERDOWN"):
            self.map.invalidate()

    def _fail(self, calls: list[Call], exc: BaseException) -> None:
        self._count(exc)
        self.map.invalidate()
        for call in calls:
            call.state, call.error = "unknown", exc

    def _unconfirmed(self, group: list[Call], exc: BaseException) -> None:
        for call in group:
            if call.write and call.state == "done":
                call.state, call.error = "unknown", exc

    def _count(self, exc: BaseException) -> None:
        if self._on_error is not None:
            self._on_error(error_kind(exc))

    # -- operations ---------------------------------------------------------------------------

    def health(self, deadline: float) -> list[str]:
        """Failed checks: every primary must answer PING, and a cluster must say it is ok. One
        round for all of them, so a node that does not answer costs the time left once."""
        try:
            topology = self.topology(deadline)
        except NoNode as exc:
            return [f"redis: {exc}"]
        pings = [Call("", ("PING",), node=n) for n in topology.primaries]
        states = [Call("", ("CLUSTER", "INFO"), node=n) for n in topology.primaries]
        self._round(topology, pings + (states if topology.cluster else []), deadline)
        problems = [
            f"redis: primary {call.node.name} does not answer: {call.error}"  # type: ignore[union-attr]
            for call in pings
            if call.state != "done"
        ]
        answered = [c for c in states if c.state == "done"] if topology.cluster else []
        if answered and b"cluster_state:ok" not in answered[0].reply:
            problems.append(f"redis: cluster state is not ok according to {answered[0].node.name}")  # type: ignore[union-attr]
        return problems

    def close(self) -> None:
        for node in self.map.nodes():
            node.forget()


def _retryable(call: Call, resend_unknown: bool) -> bool:
    if call.state == "unknown":
        return resend_unknown and not isinstance(call.error, NotReplicated)
    if call.state != "refused" or isinstance(call.error, Silent):
        return False
    return not (isinstance(call.error, ReplyError) and call.error.lasting)


def error_kind(exc: BaseException) -> str:
    """A short, bounded name for a Redis error, for the errors metric."""
    if isinstance(exc, ReplyError):
        if "Function not found" in str(exc):
            return "function_missing"
        code = exc.code
        return code.lower() if code in KINDS else "response"
    if isinstance(exc, NotReplicated):
        return "not_replicated"
    if isinstance(exc, Silent):
        return "silent"
    if isinstance(exc, TimeoutError | ConnectionLost):
        return "timeout"
    if isinstance(exc, OSError | NoNode):
        return "connection"
    return "other"


KINDS = frozenset(
    ["MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "MASTERDOWN", "LOADING", "MISCONF"]
    + ["NOREPLICAS", "OOM", "BUSY", "NOPERM"]
)
