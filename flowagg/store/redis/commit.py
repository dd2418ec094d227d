"""The ingest path of the Redis store: per partition a ring buffer, a drainer and group commits.

A request's part for partition ``hour % N`` is put in that partition's ring buffer together with
a ``Ticket``. The partition's drainer (``flowagg-drain-<i>``) takes everything pending, sums it
per (hour, key) in the native ``HourTables`` and commits the sums as one ``flowagg_v1_commit``
call per (hour, bucket) hash, pipelined per primary (client.py): a group commit, whatever the
number of requests it holds. Only when the replies are in does it set every ticket's outcome and
publish how far it got (``done_seq``); the POST waits for its tickets, so it is answered 200 only
once all its flows are in Redis.

A request with an Idempotency-Key does not join the step's sums: its own sums travel as a
separate contribution of each bucket's call, with the marker that applies it at most once per
bucket (functions.lua). So its retry, from any instance, completes exactly the buckets it misses.

Outcomes. A call that got its reply is committed; one refused by Redis was certainly not executed;
one sent without a reply (a timeout, a cut connection) may have run. A keyed request's outcome
is that of its own calls; the requests without a key share the outcome of the step's calls that
carry their sums (they were summed together). Calls are never sent again once they may have run,
so nothing is ever applied twice by the service itself.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from flowagg.schema import Flow
from flowagg.store.base import PartitionStats, ReadTimeout
from flowagg.store.redis import layout
from flowagg.store.redis.client import Call, RedisClient
from flowagg.store.ringbuffer import RingBuffer, deadline_after, remaining
from flowagg.store.table import HourTables

log = logging.getLogger("flowagg.redis")

# What a step did to the flows of a request (Ticket.outcome).
APPLIED = "applied"  # every flow is in Redis
NOTHING = "nothing"  # none is
PARTLY = "partly"  # some buckets are, the others certainly not
MAYBE = "maybe"  # some calls may or may not have run

CommitObserver = Callable[[int, float, bool], None]  # (flows, seconds, committed) per step

# Drainers per partition: one, as every partition of the service has. The step protocol below
# lets several commit at once (each publishing only after the step taken before it), which
# overlaps one step's Python work with another's wait for Redis; measured, the gain was within
# the machine's noise, so a partition keeps the one drainer the design gives it.
COMMITTERS = 1


@dataclass(eq=False)
class Ticket:
    """One request's part in one partition, from its put to the outcome of its commit."""

    end_seq: int  # sequence number of its last flow in the partition's buffer
    count: int
    key: str | None  # the Idempotency-Key, if any
    flows: list[Flow]
    outcome: str | None = None  # set by the drainer, under the partition's mutex
    reason: str = ""  # what went wrong, when the outcome is not APPLIED


Outcomes = dict[Ticket, tuple[str, str]]  # a step's tickets: (outcome, reason)


def combine(states: list[str]) -> str:
    """The outcome of a group of calls from their states (done, refused, unknown)."""
    if all(s == "done" for s in states):
        return APPLIED
    if "unknown" in states:
        return MAYBE
    return PARTLY if "done" in states else NOTHING


class Committer:
    """Turns one drain step into function calls and runs them (shared by the partitions)."""

    def __init__(self, client: RedisClient, buckets: int, ttl_s: int, window, timeout_s: float):
        self.client = client
        self.buckets = buckets
        self.ttl = str(ttl_s)
        self.window = window  # retention.Retention: the window, and the hours listed in Redis
        self.timeout_s = timeout_s

    def commit(self, batch: list[Flow], tickets: list[Ticket], first_seq: int) -> Outcomes:
        """Commit ``batch`` (the flows from ``first_seq`` on): every ticket's outcome and why."""
        deadline = time.monotonic() + self.timeout_s
        keyed = [t for t in tickets if t.key is not None]
        shared = HourTables()
        cutoff = self.window.cutoff()
        shared.merge(_without(batch, keyed, first_seq) if keyed else batch, cutoff)
        own = []
        for ticket in keyed:
            tables = HourTables()
            tables.merge(ticket.flows, cutoff)
            own.append((ticket, tables))
        hours = set(shared.hours()).union(*(t.hours() for _, t in own))
        noted = self.window.note(hours, deadline)
        if noted is not None:  # Redis could not be asked: nothing was sent
            return {ticket: (NOTHING, noted) for ticket in tickets}
        cutoff = self.window.cutoff()
        for tables in (shared, *(t for _, t in own)):
            tables.drop_before(cutoff)  # expired meanwhile, by another instance
        calls, shared_calls, own_calls = self._calls(shared, own)
        self.client.execute(calls, deadline)
        reason = _reason(calls)
        outcomes = {}
        for ticket in tickets:
            mine = own_calls.get(ticket) if ticket.key is not None else shared_calls
            outcomes[ticket] = (combine([c.state for c in mine or ()]), reason)
        return outcomes

    def _calls(self, shared: HourTables, own: list[tuple[Ticket, HourTables]]):
        """One call per (hour, bucket) holding the shared sums and each keyed request's own."""
        calls: list[Call] = []
        shared_calls: list[Call] = []
        own_calls: dict[Ticket, list[Call]] = {t: [] for t, _ in own}
        hours = set(shared.hours()).union(*(t.hours() for _, t in own))
        for hour in sorted(hours):
            common = self._contributions(shared.rows(hour))
            theirs = [(t, self._contributions(tables.rows(hour))) for t, tables in own]
            for bucket in range(self.buckets):
                small, wide = common[0][bucket], common[1][bucket]
                keys = [layout.bucket_key(hour, bucket, self.buckets)]
                args = [self.ttl, len(small) // 3, len(wide) // 5, *small, *wide]
                owners = []
                for ticket, (t_small, t_wide) in theirs:
                    if t_small[bucket] or t_wide[bucket]:
                        keys.append(layout.marker_key(hour, bucket, self.buckets, ticket.key))  # type: ignore[arg-type]
                        args += [len(t_small[bucket]) // 3, len(t_wide[bucket]) // 5]
                        args += t_small[bucket] + t_wide[bucket]
                        owners.append(ticket)
                if not (small or wide or owners):
                    continue
                call = Call(keys[0], ("FCALL", layout.COMMIT_FUNCTION, len(keys), *keys, *args))
                calls.append(call)
                if small or wide:
                    shared_calls.append(call)
                for ticket in owners:
                    own_calls[ticket].append(call)
        return calls, shared_calls, own_calls

    def _contributions(self, rows) -> tuple[list[list], list[list]]:
        """Per bucket, the arguments of the rows: `key tx rx` for counters below 2**63 (small),
        `key tx_low tx_carry rx_low rx_carry` for the rest (wide)."""
        buckets = self.buckets
        small: list[list] = [[] for _ in range(buckets)]
        wide: list[list] = [[] for _ in range(buckets)]
        crc32, low, split = zlib.crc32, layout.LOW, layout.split_counter
        for src, dest, vpc, tx, rx in rows:
            key = f"{len(src)}:{src}{len(dest)}:{dest}{len(vpc)}:{vpc}"  # layout.encode_names
            bucket = crc32(key.encode()) % buckets  # layout.bucket_of, inlined: once per row
            if tx < low and rx < low:
                small[bucket] += (key, tx, rx)
            else:
                wide[bucket] += (key, *split(tx), *split(rx))
        return small, wide


def _without(batch: list[Flow], keyed: list[Ticket], first_seq: int) -> list[Flow]:
    """The flows of ``batch`` that belong to no keyed ticket (their ranges are cut out)."""
    kept: list[Flow] = []
    at = 0
    for ticket in sorted(keyed, key=lambda t: t.end_seq):
        start = ticket.end_seq - ticket.count + 1 - first_seq
        kept += batch[at:start]
        at = start + ticket.count
    kept += batch[at:]
    return kept


def _reason(calls: list[Call]) -> str:
    failed = next((c for c in calls if c.state != "done"), None)
    return "" if failed is None else f"Redis did not commit: {failed.error}"


class CommitPartition:
    def __init__(
        self,
        index: int,
        buffer_capacity: int,
        committer: Committer,
        on_commit: CommitObserver | None = None,
    ) -> None:
        self.index = index
        self.buffer: RingBuffer[Flow] = RingBuffer(buffer_capacity)
        self._committer = committer
        self._on_commit = on_commit
        # Guards _tickets, _done_seq and every ticket's outcome. Taken around a put, so that a
        # drainer that took a request's flows also finds its ticket.
        self._mutex = threading.Lock()
        # Notified by a drainer once a step's outcomes are set, and again once it published
        # _done_seq; POSTs wait on it for their tickets, GETs and later steps for _done_seq.
        self.committed = threading.Condition(self._mutex)
        self._tickets: deque[Ticket] = deque()
        self._done_seq = 0  # every flow up to here has its outcome (committed or not)
        # Held by the drainer that is taking a step (its flows, its tickets, its place in line);
        # guards _taken_seq, the sequence number of the last flow any step took.
        self._take = threading.Lock()
        self._taken_seq = 0
        self._threads: list[threading.Thread] = []

    # -- producers -------------------------------------------------------------------------

    def put(self, flows: list[Flow], key: str | None) -> Ticket:
        """Put a part whose room was reserved in the buffer; never blocks."""
        with self._mutex:
            seq = self.buffer.put_reserved(flows)
            ticket = Ticket(seq, len(flows), key, flows)
            self._tickets.append(ticket)
            return ticket

    def wait(self, ticket: Ticket, deadline: float | None) -> bool:
        """Wait until ``ticket`` has its outcome; False if the deadline passed first."""
        with self.committed:
            while ticket.outcome is None:
                left = remaining(deadline)
                if left == 0.0:
                    return False
                self.committed.wait(left)
            return True

    # -- the drainer -----------------------------------------------------------------------

    def drain_once(self, timeout: float | None = 0.0) -> int:
        """Take everything pending (waiting up to ``timeout``), commit it, publish the outcome.

        Returns the number of flows taken. The whole of a drainer's work, so tests can step a
        partition synchronously. Steps of several drainers commit at the same time; each
        publishes how far it got only after the step taken before it did, so ``_done_seq``
        never passes a flow whose outcome is unknown.
        """
        with self._take:
            batch, seq = self.buffer.take_all(timeout)
            with self._mutex:
                tickets = []
                while self._tickets and self._tickets[0].end_seq <= seq:
                    tickets.append(self._tickets.popleft())
            previous, self._taken_seq = self._taken_seq, seq
        if not batch:
            self._publish(previous, seq)
            return 0
        started = time.perf_counter()
        try:
            outcomes = self._committer.commit(batch, tickets, seq - len(batch) + 1)
        except Exception as exc:  # a bug or an unexpected reply: say "maybe", never hang
            log.exception("partition %d: commit failed", self.index)
            outcomes = {ticket: (MAYBE, f"commit failed: {exc!r}") for ticket in tickets}
        with self._mutex:  # the POSTs of this step are answered now, whatever came before
            for ticket, (outcome, reason) in outcomes.items():
                ticket.outcome, ticket.reason = outcome, reason
            self.committed.notify_all()
        self._publish(previous, seq)
        if self._on_commit is not None:
            try:
                ok = all(outcome == APPLIED for outcome, _ in outcomes.values())
                self._on_commit(len(batch), time.perf_counter() - started, ok)
            except Exception:  # a metric must never hold up the drainer
                log.exception("partition %d: commit observer failed", self.index)
        return len(batch)

    def _publish(self, previous: int, seq: int) -> None:
        """Once the step before (ending at ``previous``) has published, publish ``seq``."""
        with self.committed:
            while self._done_seq < previous:
                self.committed.wait()  # that step's commit ends within its own deadlines
            if seq > self._done_seq:
                self._done_seq = seq
            self.committed.notify_all()

    def _run(self) -> None:
        while True:
            try:
                taken = self.drain_once(timeout=None)
            except Exception:
                log.exception("partition %d: drain step failed", self.index)
                time.sleep(0.05)  # a persistent fault must not spin a core
                continue
            if not taken and self.buffer.finished:
                return

    # -- readers ---------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every flow put so far has been committed (or failed)."""
        seq = self.buffer.put_seq
        deadline = deadline_after(timeout)
        with self.committed:
            while self._done_seq < seq:
                left = remaining(deadline)
                if left == 0.0:
                    raise ReadTimeout(
                        f"partition {self.index} did not commit pending flows within {timeout} s"
                    )
                self.committed.wait(left)

    def stats(self) -> PartitionStats:
        with self._mutex:
            done = self._done_seq
        return PartitionStats(
            index=self.index,
            depth=len(self.buffer),
            capacity=self.buffer.capacity,
            lag=self.buffer.put_seq - done,
            keys=0,
            hours=0,
            drainer_alive=self.drainer_alive,
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, drainers: int = COMMITTERS) -> None:
        if self._threads:
            raise RuntimeError(f"partition {self.index} already started")
        self._threads = [
            threading.Thread(
                target=self._run,
                name=f"flowagg-drain-{self.index}" + (f".{k}" if drainers > 1 else ""),
                daemon=True,
            )
            for k in range(drainers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def drainer_alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new flows, commit everything pending, stop the drainers."""
        self.buffer.close()
        if not self._threads:
            while self.drain_once(timeout=None) or not self.buffer.finished:
                pass
            return True
        deadline = deadline_after(timeout)
        for thread in self._threads:
            thread.join(remaining(deadline))
        if any(t.is_alive() for t in self._threads):
            log.warning("partition %d: drainers still running after %s s", self.index, timeout)
            return False
        return True
