"""One partition: a ring buffer, the drainer thread that empties it, and the tables it fills.

Request threads put their flows into the buffer as ``Pack``s (table.pack: the partition's share of
a request, copied out of the decoded records, so that those die in the thread that made them) and
return at once. The drainer takes every pending pack in one go and hands them all to the
partition's ``HourTables`` (the native tables of table.c), which sums them per (hour, key) in C
under the write lock, without the GIL for a large batch, and only then publishes how far it got
(``applied_seq``). A merge is all or nothing, so a batch whose merge failed is retried whole,
never counted twice.

Read-your-writes: a reader notes the buffer's sequence number when it arrives and waits until
``applied_seq`` reaches it. Because ``applied_seq`` moves only after the merge, a reader never sees
"buffer empty" while the last batch is still being aggregated (the C++ original's bug). A reader
waits for its own partition only, and writers are never paused beyond the merge itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from flowagg.schema import Flow
from flowagg.store.base import PartitionStats, ReadTimeout, Row
from flowagg.store.ringbuffer import RingBuffer, deadline_after, remaining
from flowagg.store.rwlock import RWLock
from flowagg.store.table import Groups, HourTables, Pack, pack

log = logging.getLogger("flowagg.partition")

# Pause after a failed drain step before the next try, so a persistent fault does not spin.
RETRY_BACKOFF_S = 0.05
# How long the drainer lets flows gather after the first one arrives before it takes them all,
# unless someone waits for them (a read, a flush, a snapshot), a POST waits for room, or the buffer
# is half full (ringbuffer.py): one wake-up of the drainer per burst of POSTs instead of one per
# POST, while no reader ever waits for the linger.
LINGER_S = 0.02


DrainObserver = Callable[[int, float], None]  # (flows applied, seconds taken) per drain step


class Partition:
    def __init__(
        self, index: int, buffer_capacity: int, on_drain: DrainObserver | None = None
    ) -> None:
        self.index = index
        # Holds Packs; its capacity and sequence numbers count their flows.
        self.buffer: RingBuffer[Flow] = RingBuffer(buffer_capacity)
        self._on_drain = on_drain
        # Guards _tables, _cutoff and _tables_seq: readers copy rows or JSON out, the drainer
        # merges batches in, retention drops old hours.
        self.lock = RWLock()
        self._tables = HourTables()
        # Key-hours in _tables, kept beside them (written under the write lock) so that the
        # key budget can read it without the lock.
        self.keys_held = 0
        # Bytes the tables allocate (their exact count, copied after every change under the
        # write lock), so that the memory budget can read it without the lock.
        self.bytes_held = self._tables.nbytes
        self._cutoff = 0  # hours below this are expired: dropped, and never created again
        # Sequence number of the last flow in _tables; written under the write lock, so a copy
        # of the tables made under the read lock knows exactly which flows it holds.
        self._tables_seq = 0
        self._batch_seq = 0  # sequence number of the batch being merged (drainer only)
        # Guards _applied_seq; `applied` is notified by the drainer after each merge.
        self._progress = threading.Lock()
        self.applied = threading.Condition(self._progress)
        self._applied_seq = 0
        # Packs taken from the buffer whose merge failed: retried first, never dropped.
        # Touched only by the thread running drain_once.
        self._retry: list[Pack] = []
        self._thread: threading.Thread | None = None

    # -- producers -------------------------------------------------------------------------

    def enqueue(self, flows: Sequence[Flow], timeout: float | None = None) -> int:
        """Put ``flows`` (all of this partition) in the buffer as one pack; returns the
        sequence number of the last one. The stores pack a request themselves (memory.py)."""
        packed = pack(list(flows), 1)
        return self.buffer.put_many(packed[0], timeout) if packed else self.buffer.put_seq

    # -- the drainer -----------------------------------------------------------------------

    def drain_once(self, timeout: float | None = 0.0, linger: float = 0.0) -> int:
        """Take everything pending (waiting up to ``timeout`` for something, then ``linger``
        for more unless it is wanted now) and apply it.

        Returns the number of flows applied. This is the whole of the drainer's work, so tests
        can step a partition synchronously without starting its thread.
        """
        if self._retry:
            timeout, linger = 0.0, 0.0
        batch, seq = self.buffer.take_batches(timeout, linger)
        if self._retry:
            batch = self._retry + batch
        if not batch:
            self._publish(seq)
            return 0
        started = time.perf_counter()
        self._retry = batch  # kept until merged, so an exception below loses nothing
        self._batch_seq = seq
        self._merge(batch)
        self._retry = []
        applied = sum(map(len, batch))
        self._publish(seq)
        if self._on_drain is not None:
            try:
                self._on_drain(applied, time.perf_counter() - started)
            except Exception:  # a metric must never hold up readers or the drainer
                log.exception("partition %d: drain observer failed", self.index)
        return applied

    def _merge(self, batch: list[Pack]) -> None:
        """Add a batch to the tables under the write lock: all of it, or nothing if it raises.

        Flows of hours below the cutoff expired while queued (retention dropped their hour) and
        are skipped.
        """
        with self.lock.write_lock():
            _applied, new_keys = self._tables.merge(batch, self._cutoff)
            self.keys_held += new_keys
            self.bytes_held = self._tables.nbytes
            self._tables_seq = self._batch_seq

    def _publish(self, seq: int) -> None:
        with self._progress:
            if seq > self._applied_seq and not self._retry:
                self._applied_seq = seq
                self.applied.notify_all()

    def _run(self) -> None:
        while True:
            try:
                applied = self.drain_once(timeout=None, linger=LINGER_S)
            except Exception:
                log.exception("partition %d: drain failed; retrying the batch", self.index)
                time.sleep(RETRY_BACKOFF_S)  # a persistent fault must not spin a core
                continue
            if not applied and not self._retry and self.buffer.finished:
                return

    # -- readers ---------------------------------------------------------------------------

    @property
    def applied_seq(self) -> int:
        with self._progress:
            return self._applied_seq

    def count_new(self, part: Pack) -> int:
        """Distinct (hour, key) pairs of ``part`` the tables do not hold yet."""
        with self.lock.read_lock():
            return self._tables.count_new([part])

    def cost(self, part: Pack) -> int:
        """Bytes the tables would allocate to merge ``part`` now, exactly."""
        with self.lock.read_lock():
            return self._tables.cost([part])[1]

    def wait_applied(self, seq: int, timeout: float | None = None) -> None:
        """Block until every flow up to sequence number ``seq`` is in the table."""
        deadline = deadline_after(timeout)
        with self.applied:
            if self._applied_seq >= seq:
                return
        self.buffer.kick()  # a lingering drainer takes them now
        with self.applied:
            while self._applied_seq < seq:
                left = remaining(deadline)
                if left == 0.0:
                    raise ReadTimeout(
                        f"partition {self.index} did not apply pending flows within {timeout} s"
                    )
                self.applied.wait(left)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything enqueued so far has been applied."""
        self.wait_applied(self.buffer.put_seq, timeout)

    def read(self, hour: int, timeout: float | None = None) -> list[Row]:
        """Rows of ``hour``, including every flow enqueued before this call (read-your-writes)."""
        self.flush(timeout)
        with self.lock.read_lock():
            return self._tables.rows(hour)

    def read_json(self, hour: int, timeout: float | None = None) -> bytes:
        """The JSON answer of GET /flows for ``hour``, read-your-writes like ``read``.

        Encoded in C under the read lock (without the GIL for a large hour): about 40 ns a row,
        less than copying the rows out would cost.
        """
        self.flush(timeout)
        with self.lock.read_lock():
            return self._tables.encode(hour)

    def scan(self, hours: Sequence[int], groups: Groups, filters: tuple) -> None:
        """Add the rows of ``hours`` that pass ``filters`` to ``groups`` (table.c), under the
        read lock; the caller has waited for what it must count (``flush``)."""
        with self.lock.read_lock():
            for hour in hours:
                self._tables.scan(hour, groups, filters)

    def key_count(self, hours: Sequence[int]) -> int:
        """Key-hours held in ``hours``."""
        with self.lock.read_lock():
            return sum(map(self._tables.key_count, hours))

    def hours(self) -> list[int]:
        """The hours held, ascending."""
        with self.lock.read_lock():
            return self._tables.hours()

    def expire_before(self, cutoff: int) -> int:
        """Drop every hour below ``cutoff`` and refuse to recreate them; returns hours dropped."""
        with self.lock.write_lock():
            if cutoff <= self._cutoff:
                return 0
            self._cutoff = cutoff
            hours, keys = self._tables.drop_before(cutoff)
            self.keys_held -= keys
            self.bytes_held = self._tables.nbytes
            return hours

    def newest_hour(self) -> int:
        """The highest hour held, or -1."""
        with self.lock.read_lock():
            return self._tables.newest

    def stats(self) -> PartitionStats:
        with self.lock.read_lock():
            keys = self._tables.keys
            hours = len(self._tables)
        return PartitionStats(
            index=self.index,
            depth=len(self.buffer),
            capacity=self.buffer.capacity,
            lag=self.buffer.put_seq - self.applied_seq,
            keys=keys,
            hours=hours,
            drainer_alive=self.drainer_alive,
        )

    def copy_tables(self) -> tuple[dict[int, list[Row]], int]:
        """Every hour's rows, and the sequence number of the last flow they include."""
        with self.lock.read_lock():
            tables = self._tables
            return {hour: tables.rows(hour) for hour in tables.hours()}, self._tables_seq

    # -- start-up --------------------------------------------------------------------------

    def load(self, hour: int, rows: Sequence[Row]) -> None:
        """Add already summed rows of ``hour`` (a snapshot) to the tables, bypassing the buffer."""
        with self.lock.write_lock():
            self.keys_held += self._tables.merge_rows(hour, rows)
            self.bytes_held = self._tables.nbytes

    def apply(self, part: Pack) -> None:
        """Sum and merge ``part`` now, bypassing the buffer (replaying a log at start-up)."""
        with self.lock.write_lock():
            self.keys_held += self._tables.merge([part], self._cutoff)[1]
            self.bytes_held = self._tables.nbytes

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"partition {self.index} already started")
        self._thread = threading.Thread(
            target=self._run, name=f"flowagg-drain-{self.index}", daemon=True
        )
        self._thread.start()

    @property
    def drainer_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new flows, apply everything pending, stop the drainer.

        Returns False if the drainer did not finish within ``timeout`` seconds.
        """
        self.buffer.close()
        if self._thread is None:
            while self.drain_once(timeout=None) or self._retry or not self.buffer.finished:
                pass
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("partition %d: drainer still running after %s s", self.index, timeout)
            return False
        return True
