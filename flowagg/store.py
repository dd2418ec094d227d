"""The store: N partitions, routing by hour, and their lifecycle.

The HTTP layer sees only the ``FlowStore`` interface (ingest a validated batch, read an hour,
flush, close), so a durable or remote backend can replace ``PartitionedStore`` without touching it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from operator import attrgetter
from typing import Protocol

from flowagg.partition import Partition, ReadTimeout
from flowagg.ringbuffer import Closed, deadline_after, remaining
from flowagg.schema import Flow
from flowagg.table import Row

__all__ = ["Closed", "FlowStore", "PartitionedStore", "ReadTimeout", "Row"]

log = logging.getLogger(__name__)

_HOUR = attrgetter("hour")


class FlowStore(Protocol):
    def ingest(self, flows: Sequence[Flow]) -> int:
        """Apply a validated batch (eventually, but visibly to any later read); returns its size."""

    def read_hour(self, hour: int, timeout: float | None = None) -> list[Row]:
        """Summed rows of ``hour`` including every batch ingested before the call."""

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything ingested so far is applied."""

    def close(self, timeout: float | None = None) -> bool:
        """Apply everything pending, stop background work; False if it did not finish in time."""


class PartitionedStore:
    """Flows of hour ``h`` live in partition ``h % N``; each partition drains independently."""

    def __init__(self, partitions: int = 8, buffer_capacity: int = 262_144, start: bool = True):
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self.partitions = [Partition(i, buffer_capacity) for i in range(partitions)]
        if start:
            for partition in self.partitions:
                partition.start()

    def partition_for(self, hour: int) -> Partition:
        return self.partitions[hour % len(self.partitions)]

    def split(self, flows: Sequence[Flow]) -> dict[int, list[Flow]]:
        """Group a batch by partition index, keeping each group in request order."""
        n = len(self.partitions)
        if n == 1 or not flows:
            return {0: list(flows)} if flows else {}
        hours = list(map(_HOUR, flows))
        if hours.count(hours[0]) == len(hours):  # one hour, the usual batch: no loop in Python
            return {hours[0] % n: list(flows)}
        parts: dict[int, list[Flow]] = {}
        for flow in flows:
            index = flow.hour % n
            part = parts.get(index)
            if part is None:
                parts[index] = [flow]
            else:
                part.append(flow)
        return parts

    def ingest(self, flows: Sequence[Flow]) -> int:
        """Enqueue every part of the batch; returns once all are enqueued (not yet applied)."""
        for index, part in self.split(flows).items():
            self.partitions[index].enqueue(part)
        return len(flows)

    def read_hour(self, hour: int, timeout: float | None = None) -> list[Row]:
        return self.partition_for(hour).read(hour, timeout)

    def flush(self, timeout: float | None = None) -> None:
        deadline = deadline_after(timeout)
        for partition in self.partitions:
            partition.flush(remaining(deadline))

    def close(self, timeout: float | None = None) -> bool:
        deadline = deadline_after(timeout)
        for partition in self.partitions:
            partition.buffer.close()  # refuse new flows everywhere before waiting on any drainer
        return all([p.close(remaining(deadline)) for p in self.partitions])
