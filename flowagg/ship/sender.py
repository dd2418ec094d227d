"""The thread that delivers batches, in the order they were read, one at a time.

For each batch it records the batch in flight in the state file (fsynced), POSTs it, and once
the server has answered 200 moves the file's offset past it. The reading thread meanwhile reads
the next batch and hands it over (it waits while one is already waiting), so that reading and
parsing overlap with the server's work and the round trip, while the state file still holds
at most one batch in flight per file, never a later one before an earlier was acknowledged.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from flowagg.client import Client, ConnectionFailed, FlowaggError, KeyReused, ServerError
from flowagg.schema import INT64_MAX, Flow
from flowagg.ship.state import State


class Stop(Exception):
    """The server refused a batch, or could not be reached in time: ship no further."""


@dataclass
class Job:
    """A batch to deliver: lines [first_line, next_line) at bytes [start, end) of a file."""

    path: str
    entry: dict  # the file's state entry
    start: int
    end: int
    first_line: int
    next_line: int
    agg: dict  # (src_app, dest_app, vpc_id, hour) -> [bytes_tx, bytes_rx]; {}: nothing to POST
    key: str

    def lines(self) -> str:
        return f"{self.first_line}-{self.next_line - 1}"


def flows_of(agg: dict) -> list[Flow]:
    flows = []
    for (src, dest, vpc, hour), (tx, rx) in agg.items():
        while tx > INT64_MAX or rx > INT64_MAX:  # one record holds at most 2^63-1 per counter
            part_tx, part_rx = min(tx, INT64_MAX), min(rx, INT64_MAX)
            flows.append(Flow(src, dest, vpc, part_tx, part_rx, hour))
            tx, rx = tx - part_tx, rx - part_rx
        flows.append(Flow(src, dest, vpc, tx, rx, hour))
    return flows


class Sender:
    def __init__(self, client: Client, state: State, totals) -> None:
        self.client = client
        self.state = state
        self.totals = totals  # posts and flows sent are counted here
        self._lock = threading.Lock()
        # Guards _pending, _busy and _failure. Notified when a job is handed over (the thread
        # waits for one) and when one is taken or done (submit and drain wait for that).
        self._changed = threading.Condition(self._lock)
        self._pending: Job | None = None  # handed over, not yet taken
        self._busy = False  # a job is being delivered
        self._failure: BaseException | None = None  # what stopped the thread; raised to callers
        self._thread = threading.Thread(target=self._run, name="flowagg-ship-sender", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Hand ``job`` over, once the one handed over before was taken; raises what stopped
        delivery, if anything did."""
        with self._changed:
            while self._pending is not None and self._failure is None:
                self._changed.wait()
            self._check()
            self._pending = job
            self._changed.notify_all()

    def drain(self) -> None:
        """Wait until every job handed over was delivered; raises what stopped delivery."""
        with self._changed:
            while (self._pending is not None or self._busy) and self._failure is None:
                self._changed.wait()
            self._check()

    def _check(self) -> None:
        """Raise the failure, if any (the lock is held)."""
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        while True:
            with self._changed:
                while self._pending is None:
                    self._changed.wait()
                job, self._pending, self._busy = self._pending, None, True
                self._changed.notify_all()
            try:
                self.deliver(job)
            except BaseException as exc:  # handed to the reading thread, which reports it
                with self._changed:
                    self._failure, self._busy = exc, False
                    self._changed.notify_all()
                return
            with self._changed:
                self._busy = False
                self._changed.notify_all()

    def deliver(self, job: Job) -> None:
        entry, state = job.entry, self.state
        if job.agg:
            flight = {
                "start": job.start,
                "end": job.end,
                "first_line": job.first_line,
                "last_line": job.next_line - 1,
                "key": job.key,
                "at": time.time(),
            }
            with state.lock:
                entry["in_flight"] = flight
                state.save()
            flows = flows_of(job.agg)
            try:
                self.client.post(flows, job.key)
            except KeyReused as exc:
                raise Stop(
                    f"{job.path}, lines {job.lines()}: refused by the server: {exc.message}."
                    " These lines were shipped before under this key with other settings (--map,"
                    " --unmapped, --vpc-id, --include-rejected): use those again"
                ) from None
            except ServerError as exc:
                if exc.status not in (502, 503, 504):  # refused: nothing of it was applied
                    with state.lock:
                        entry["in_flight"] = None
                        state.save()
                raise Stop(
                    f"{job.path}, lines {job.lines()}: refused by the server ({exc.status}):"
                    f" {exc.message}"
                ) from None
            except ConnectionFailed as exc:
                raise Stop(
                    f"{job.path}, lines {job.lines()}: {exc}; they are in flight and are sent"
                    " again by the next run"
                ) from None
            except FlowaggError as exc:
                raise Stop(f"{job.path}, lines {job.lines()}: {exc}") from None
            self.totals.posts += 1
            self.totals.flows += len(flows)
        with state.lock:
            entry["offset"], entry["line"], entry["in_flight"] = job.end, job.next_line, None
            state.dirty = True
