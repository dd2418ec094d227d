"""Which node serves which key: the slot map of a cluster (or one node), and the nodes known.

``SlotMap`` asks a node whether it runs in cluster mode (``INFO cluster``) and, if so, which
primary serves which slot (``CLUSTER SLOTS``); one node without cluster mode serves every key. A
map is asked for when there is none, or when a reply said it may be out of date (``invalidate``,
after a MOVED, a CLUSTERDOWN, a node that cannot be reached), at most every
``REFRESH_INTERVAL_S``, and by one caller at a time: the others go on with the map they have, or,
when there is none yet, wait for the first one until their deadline. Each node is asked for a
share of the caller's time left, so a node that does not answer costs that share, no more. No
network I/O happens under the lock. Nodes that a new map no longer names (primaries or replicas)
are forgotten, their idle connections closed; the seed is always kept, to start again from.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from hiredis import pack_command
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from flowagg.store.redis.connection import Node, ReplyError, left

log = logging.getLogger("flowagg.redis")

REFRESH_INTERVAL_S = 0.1  # the slot map is asked for at most this often


class NoNode(Exception):
    """No node could be asked for the slot map."""


@dataclass
class Topology:
    cluster: bool
    primaries: list[Node]
    slots: list[Node | None] = field(default_factory=list)  # the primary of each slot
    known: list[Node] = field(default_factory=list)  # primaries and replicas, to ask next time

    def node_for(self, key: str) -> Node | None:
        if not self.cluster:
            return self.primaries[0]
        return self.slots[key_slot(key.encode())]


class SlotMap:
    def __init__(self, seed: tuple[str, int], auth: tuple[str, ...] = ()) -> None:
        self._seed, self._auth = seed, auth
        # Guards _nodes, _topology, _stale, _refreshing and _refreshed_at. Notified when a
        # refresh ends, for callers waiting for the first map or for a refused call's cause.
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        self._nodes: dict[tuple[str, int], Node] = {}
        self._topology: Topology | None = None
        self._stale = False  # a reply said the map may be out of date
        self._refreshing = False  # one caller is asking the nodes now
        self._refreshed_at = -REFRESH_INTERVAL_S

    def current(self, deadline: float) -> Topology:
        """The map, asked for if there is none or it may be stale; ``NoNode`` if no node
        answered before the deadline and there is no map to go on with."""
        with self._lock:
            while True:
                now = time.monotonic()
                current = self._topology
                due = current is None or (
                    self._stale and now - self._refreshed_at >= REFRESH_INTERVAL_S
                )
                if not due:
                    return current  # type: ignore[return-value]
                if not self._refreshing:
                    self._refreshing = True
                    candidates = self._candidates()
                    break
                if current is not None:
                    return current  # another caller is refreshing it
                if now >= deadline:
                    raise NoNode("no Redis node answered yet")
                self.changed.wait(deadline - now)
        found, problems = None, []
        try:
            found = self._discover(candidates, deadline, problems)
        finally:
            forgotten = self._install(found)
        for node in forgotten:
            node.forget()
        if found is not None:
            return found
        with self._lock:
            if self._topology is not None:
                return self._topology
        raise NoNode("no Redis node answers: " + "; ".join(problems))

    def invalidate(self) -> None:
        """A reply said the map may be out of date: the next caller asks again."""
        with self._lock:
            self._stale = True

    def moved(self, slot: int, node: Node) -> None:
        """A MOVED reply: the slot is served by ``node`` now; the whole map is asked for next."""
        with self._lock:
            if self._topology is not None and self._topology.cluster:
                self._topology.slots[slot] = node
            self._stale = True

    def node_at(self, address: str) -> Node:
        host, _, port = address.rpartition(":")
        with self._lock:
            return self._node(host, int(port))

    def nodes(self) -> list[Node]:
        with self._lock:
            return list(self._nodes.values())

    def _candidates(self) -> list[Node]:
        # Caller holds _lock. The nodes to ask: the primaries of the map, the rest, the seed.
        known = self._topology.known if self._topology is not None else []
        seed = self._node(*self._seed)
        ordered = [n for n in known if n is not seed] + [seed]
        if self._topology is not None:
            primaries = set(self._topology.primaries)
            ordered.sort(key=lambda n: n not in primaries)
        return ordered

    def _install(self, found: Topology | None) -> list[Node]:
        """Put a new map in place (if any) and end the refresh; returns the forgotten nodes."""
        with self._lock:
            self._refreshing = False
            self._refreshed_at = time.monotonic()
            forgotten = []
            if found is not None:
                self._topology, self._stale = found, False
                keep = {(n.host, n.port) for n in found.known} | {self._seed}
                for address in [a for a in self._nodes if a not in keep]:
                    forgotten.append(self._nodes.pop(address))
            self.changed.notify_all()
            return forgotten

    def _discover(self, candidates: list[Node], deadline: float, problems: list[str]):
        """Ask the candidates in turn, each for a share of the time left; no lock held."""
        for i, node in enumerate(candidates):
            share = left(deadline) / max(1, min(3, len(candidates) - i))
            if share <= 0:
                break
            try:
                return self._ask(node, time.monotonic() + share)
            except (OSError, ReplyError, ValueError) as exc:
                problems.append(f"{node.name}: {exc}")
        return None

    def _ask(self, node: Node, deadline: float) -> Topology:
        conn = node.take(deadline)
        try:
            conn.send(pack_command(("INFO", "cluster")), deadline)
            info = conn.read(deadline)
            if isinstance(info, ReplyError):
                raise info
            if b"cluster_enabled:1" not in info:
                node.give(conn)
                return Topology(False, [node], known=[node])
            conn.send(pack_command(("CLUSTER", "SLOTS")), deadline)
            ranges = conn.read(deadline)
            if isinstance(ranges, ReplyError):
                raise ranges
        except BaseException:
            conn.close()
            raise
        node.give(conn)
        slots: list[Node | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        primaries: dict[str, Node] = {}
        known: dict[str, Node] = {}
        with self._lock:
            for start, end, primary, *replicas in ranges:
                owner = self._node(primary[0].decode() or node.host, int(primary[1]))
                primaries[owner.name] = known[owner.name] = owner
                slots[start : end + 1] = [owner] * (end - start + 1)
                for replica in replicas:
                    other = self._node(replica[0].decode() or node.host, int(replica[1]))
                    known[other.name] = other
        missing = slots.count(None)
        if missing:
            log.warning("redis: %d slots are served by no primary (per %s)", missing, node.name)
        ordered = sorted(primaries.values(), key=lambda n: n.name)
        return Topology(True, ordered, slots, list(known.values()))

    def _node(self, host: str, port: int) -> Node:
        # Caller holds _lock.
        node = self._nodes.get((host, port))
        if node is None:
            node = self._nodes[(host, port)] = Node(host, port, self._auth)
        return node
