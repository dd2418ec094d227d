"""One partition: a ring buffer, the drainer thread that empties it, and the table it fills.

Request threads ``enqueue`` validated flows into the buffer and return at once. The drainer takes
everything pending in one go, sums it per (hour, key) outside any lock, then merges the sums into
the table under the write lock, and only then publishes how far it got (``applied_seq``).

Read-your-writes: a reader notes the buffer's sequence number when it arrives and waits until
``applied_seq`` reaches it. Because ``applied_seq`` moves only after the merge, a reader never sees
"buffer empty" while the last batch is still being aggregated (the C++ original's bug). A reader
waits for its own partition only, and writers are never paused beyond the merge itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from operator import attrgetter

from flowagg.ringbuffer import RingBuffer, deadline_after, remaining
from flowagg.rwlock import RWLock
from flowagg.schema import Flow
from flowagg.table import HourTable, Row, Sums

log = logging.getLogger(__name__)

BatchSums = dict[int, Sums]  # a batch summed per hour and key

# Pause after a failed drain step before the next try, so a persistent fault does not spin.
RETRY_BACKOFF_S = 0.05


_HOUR = attrgetter("hour")
_KEY = attrgetter("src_app", "dest_app", "vpc_id")


class _Total:
    """The running sum of one key in a batch whose keys repeat."""

    __slots__ = ("bytes_tx", "bytes_rx")

    def __init__(self, bytes_tx: int, bytes_rx: int) -> None:
        self.bytes_tx = bytes_tx
        self.bytes_rx = bytes_rx


class ReadTimeout(Exception):
    """The partition did not apply earlier writes in time; the read was not answered."""


class Partition:
    def __init__(self, index: int, buffer_capacity: int) -> None:
        self.index = index
        self.buffer: RingBuffer[Flow] = RingBuffer(buffer_capacity)
        # Guards _tables: readers copy rows out, the drainer merges batches in.
        self.lock = RWLock()
        self._tables: dict[int, HourTable] = {}
        # Guards _applied_seq; `applied` is notified by the drainer after each merge.
        self._progress = threading.Lock()
        self.applied = threading.Condition(self._progress)
        self._applied_seq = 0
        # Flows taken from the buffer whose merge failed: retried first, never dropped.
        # Touched only by the thread running drain_once.
        self._retry: list[Flow] = []
        # Whether the last batch summed repeated keys; picks how to sum the next. Drainer only.
        self._repeats = False
        self._thread: threading.Thread | None = None

    # -- producers -------------------------------------------------------------------------

    def enqueue(self, flows: Sequence[Flow], timeout: float | None = None) -> int:
        """Put ``flows`` in the buffer; returns the sequence number of the last one.

        A part larger than the whole buffer goes in buffer-sized chunks, each waiting for room.
        """
        cap = self.buffer.capacity
        if len(flows) <= cap:
            return self.buffer.put_many(flows, timeout)
        seq = 0
        for start in range(0, len(flows), cap):
            seq = self.buffer.put_many(flows[start : start + cap], timeout)
        return seq

    # -- the drainer -----------------------------------------------------------------------

    def drain_once(self, timeout: float | None = 0.0) -> int:
        """Take everything pending (waiting up to ``timeout`` for something) and apply it.

        Returns the number of flows applied. This is the whole of the drainer's work, so tests
        can step a partition synchronously without starting its thread.
        """
        batch, seq = self.buffer.take_all(0.0 if self._retry else timeout)
        if self._retry:
            batch = self._retry + batch
        if batch:
            self._retry = batch  # kept until merged, so an exception below loses nothing
            self._merge(self._sum(batch))
            self._retry = []
        self._publish(seq)
        return len(batch)

    def _sum(self, batch: list[Flow]) -> BatchSums:
        """Sum a batch per hour and key, outside any lock."""
        hours = list(map(_HOUR, batch))
        if hours and hours.count(hours[0]) == len(hours):  # the usual batch: one hour
            return {hours[0]: self._sum_hour(batch)}
        by_hour: dict[int, list[Flow]] = {}
        for flow in batch:
            flows = by_hour.get(flow.hour)
            if flows is None:
                by_hour[flow.hour] = [flow]
            else:
                flows.append(flow)
        return {hour: self._sum_hour(flows) for hour, flows in by_hour.items()}

    def _sum_hour(self, flows: list[Flow]) -> Sums:
        """Sum the flows of one hour per key, the faster way for what recent batches looked like.

        Where every key comes once, each flow is its own sum: a dict built in C maps the keys to
        the flows themselves, allocating nothing per flow but its key. Where keys repeat, that
        dict is wrong and the Python loop below is the faster way, summing into a _Total per key
        (never into a flow of the batch, which a retry sums again). ``_repeats`` remembers which
        kind of batch this partition last saw.
        """
        if not self._repeats:
            keys = list(map(_KEY, flows))
            sums: Sums = dict(zip(keys, flows, strict=True))
            if len(sums) == len(keys):
                return sums
        sums = {}
        seen = sums.get
        for flow in flows:
            key = (flow.src_app, flow.dest_app, flow.vpc_id)
            total = seen(key)
            if total is None:
                sums[key] = _Total(flow.bytes_tx, flow.bytes_rx)
            else:
                total.bytes_tx += flow.bytes_tx
                total.bytes_rx += flow.bytes_rx
        self._repeats = len(sums) < len(flows)
        return sums

    def _merge(self, sums: BatchSums) -> None:
        """Add a batch's sums to the tables under the write lock (nothing here can fail midway)."""
        with self.lock.write_lock():
            for hour, rows in sums.items():
                table = self._tables.get(hour)
                if table is None:
                    table = self._tables[hour] = HourTable()
                table.merge(rows)

    def _publish(self, seq: int) -> None:
        with self._progress:
            if seq > self._applied_seq and not self._retry:
                self._applied_seq = seq
                self.applied.notify_all()

    def _run(self) -> None:
        while True:
            try:
                applied = self.drain_once(timeout=None)
            except Exception:
                log.exception("partition %d: drain failed; retrying the batch", self.index)
                time.sleep(RETRY_BACKOFF_S)  # a persistent fault must not spin a core
                continue
            if not applied and not self._retry and self.buffer.closed and not len(self.buffer):
                return

    # -- readers ---------------------------------------------------------------------------

    @property
    def applied_seq(self) -> int:
        with self._progress:
            return self._applied_seq

    def wait_applied(self, seq: int, timeout: float | None = None) -> None:
        """Block until every flow up to sequence number ``seq`` is in the table."""
        deadline = deadline_after(timeout)
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
            table = self._tables.get(hour)
            return table.rows() if table is not None else []

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
            while self.drain_once() or self._retry:
                pass
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("partition %d: drainer still running after %s s", self.index, timeout)
            return False
        return True
