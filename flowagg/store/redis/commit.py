"""The ingest path of the Redis store: per partition a ring buffer, a drainer and group commits.

A request's part for partition ``hour % N`` (a native ``Pack``) is put in that partition's ring
buffer together with a ``Ticket``, as one batch. The partition's drainer (``flowagg-drain-<i>``)
takes every pending batch and hands the step to the ``Committer`` (writer.py), which writes it to
Redis in one group commit and says, per ticket, what became of its flows. Only then does the
drainer set the tickets' outcomes and publish how far it got (``done_seq``); a POST waits for its
tickets, so it is answered 200 only once all its flows are in Redis.

A POST waits until its own deadline (FLOWAGG_REDIS_TIMEOUT_MS and a margin, from its arrival).
A ticket that no step has taken by then is cancelled: the step that takes its batch later leaves
it out, so "nothing was applied" is the truth. One that a step has taken and not finished is
answered "may have been applied". So a POST is answered in bounded time even behind a step that
waits for a primary that does not answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from flowagg.store.base import PartitionStats, ReadTimeout
from flowagg.store.ringbuffer import RingBuffer, deadline_after, remaining
from flowagg.store.table import Pack

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
# How long a drainer lingers for more requests after a thin step (writer.THIN_ROWS): flows of
# one request spread over many hours make many small appends, and a step of several requests
# makes fewer, larger ones. After a step that was not thin it takes what is pending at once.
LINGER_S = 0.005


@dataclass(eq=False)
class Ticket:
    """One request's part in one partition, from its put to the outcome of its commit."""

    end_seq: int  # sequence number of its last flow in the partition's buffer
    count: int
    key: str | None  # the Idempotency-Key, if any
    pack: Pack
    taken: bool = False  # a step took it (set under the partition's mutex)
    outcome: str | None = None  # set under the partition's mutex
    reason: str = ""  # what went wrong, when the outcome is not APPLIED


Outcomes = dict[Ticket, tuple[str, str]]  # a step's tickets: (outcome, reason)
Commit = Callable[[list[Ticket]], tuple[Outcomes, bool]]  # and whether the step was thin


class CommitPartition:
    def __init__(
        self,
        index: int,
        buffer_capacity: int,
        commit: Commit,
        on_commit: CommitObserver | None = None,
    ) -> None:
        self.index = index
        self.buffer: RingBuffer[Pack] = RingBuffer(buffer_capacity)
        self._commit = commit
        self._on_commit = on_commit
        # Guards _tickets, _done_seq and every ticket's taken and outcome. Taken around a put,
        # so that a drainer that took a request's flows also finds its ticket.
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
        self._thin = False  # the last step was thin: the next one lingers (written by drainers)
        self._threads: list[threading.Thread] = []

    # -- producers -------------------------------------------------------------------------

    def put(self, pack: Pack, key: str | None) -> Ticket:
        """Put a part whose room was reserved in the buffer; never blocks."""
        with self._mutex:
            seq = self.buffer.put_reserved(pack)
            ticket = Ticket(seq, len(pack), key, pack)
            self._tickets.append(ticket)
            return ticket

    def wait(self, ticket: Ticket, deadline: float | None) -> bool:
        """Wait until ``ticket`` has its outcome; at the deadline, cancel it if no step took it
        (its outcome is then NOTHING). False if it is still being committed."""
        with self.committed:
            while ticket.outcome is None:
                left = remaining(deadline)
                if left == 0.0:
                    if ticket.taken:
                        return False
                    ticket.outcome = NOTHING
                    ticket.reason = "no commit took it in time"
                    return True
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
            batches, seq = self.buffer.take_batches(timeout, LINGER_S if self._thin else 0.0)
            taken = sum(len(b) for b in batches)
            with self._mutex:
                tickets = []
                while self._tickets and self._tickets[0].end_seq <= seq:
                    ticket = self._tickets.popleft()
                    if ticket.outcome is None:  # not cancelled by its POST
                        ticket.taken = True
                        tickets.append(ticket)
            previous, self._taken_seq = self._taken_seq, seq
        if not tickets:
            self._publish(previous, seq)
            return taken
        started = time.perf_counter()
        try:
            outcomes, self._thin = self._commit(tickets)
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
                self._on_commit(sum(t.count for t in tickets), time.perf_counter() - started, ok)
            except Exception:  # a metric must never hold up the drainer
                log.exception("partition %d: commit observer failed", self.index)
        return taken

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
                with self.committed:  # a persistent fault must not spin a core
                    self.committed.wait(0.05)
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
