"""Benchmark: the partition's reader/writer lock against one plain mutex.

One partition, in process (no HTTP, so the lock is what differs): writer threads enqueue
1,000-flow batches while reader threads read hours of the same partition, the drainer merging
throughout. Both variants run in alternation, several rounds, on the same pre-built flows.

    .venv/bin/python -m loadtest.bench_lock [--rounds 5] [--batches 400] [--readers 4]

Prints flows/s and reads/s per variant (median of rounds, with min-max) and rw/plain ratios.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from contextlib import contextmanager

from flowagg.schema import Flow
from flowagg.store.partition import Partition


class PlainLock:
    """The baseline: readers and the writer all take one mutex."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()

    @contextmanager
    def read_lock(self):
        with self._mutex:
            yield

    write_lock = read_lock


def make_batches(count: int, size: int, keys: int, hours: int) -> list[list[Flow]]:
    return [
        [
            Flow(f"src-{(b * size + i) % keys}", "dest", "vpc-0", 100, 200, (b + i) % hours)
            for i in range(size)
        ]
        for b in range(count)
    ]


def run_once(variant: str, batches, writers: int, readers: int, hours: int) -> tuple[float, float]:
    partition = Partition(0, buffer_capacity=65_536)
    if variant == "plain":
        partition.lock = PlainLock()
    partition.start()
    start = threading.Barrier(writers + readers + 1)
    done = threading.Event()
    reads = [0] * readers

    def write(w: int) -> None:
        start.wait()
        for batch in batches[w::writers]:
            partition.enqueue(batch)

    def read(r: int) -> None:
        start.wait()
        hour = r
        while not done.is_set():
            partition.read(hour % hours, timeout=60)
            reads[r] += 1
            hour += 1

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    threads += [threading.Thread(target=read, args=(r,)) for r in range(readers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads[:writers]:
        t.join()
    partition.flush(timeout=60)
    elapsed = time.perf_counter() - t0
    done.set()
    for t in threads[writers:]:
        t.join()
    partition.close(timeout=60)
    flows = sum(len(b) for b in batches)
    return flows / elapsed, sum(reads) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=400, help="1,000-flow batches per round")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--keys", type=int, default=2_000, help="distinct keys per hour")
    parser.add_argument("--hours", type=int, default=4)
    args = parser.parse_args()

    batches = make_batches(args.batches, 1000, args.keys, args.hours)
    results: dict[str, list[tuple[float, float]]] = {"rwlock": [], "plain": []}
    for _ in range(args.rounds):
        for variant in results:  # alternate so drift on a shared machine hits both alike
            results[variant].append(
                run_once(variant, batches, args.writers, args.readers, args.hours)
            )

    print(
        f"{args.rounds} rounds, {args.batches} x 1,000 flows,"
        f" {args.writers} writers, {args.readers} readers"
    )
    print(f"{'variant':8} {'flows/s (median, min-max)':>34} {'reads/s (median, min-max)':>30}")
    medians = {}
    for variant, rows in results.items():
        flows, reads = [r[0] for r in rows], [r[1] for r in rows]
        medians[variant] = (statistics.median(flows), statistics.median(reads))
        print(
            f"{variant:8} {medians[variant][0]:>14,.0f} ({min(flows):,.0f}-{max(flows):,.0f})"
            f" {medians[variant][1]:>12,.0f} ({min(reads):,.0f}-{max(reads):,.0f})"
        )
    rw, plain = medians["rwlock"], medians["plain"]
    print(f"rwlock/plain: flows/s {rw[0] / plain[0]:.2f}x, reads/s {rw[1] / plain[1]:.2f}x")


if __name__ == "__main__":
    main()
