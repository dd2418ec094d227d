"""Where the CPU time of a POST and a GET goes, stage by stage, in process.

    .venv/bin/python -m loadtest.bench_paths

No HTTP and no threads: each stage of the service's write and read paths runs alone on the
same data as the HTTP benchmark (keys and bodies from ``loadtest.drivers``), best of several
repeats, next to what the ceiling and the naive peer do instead. Under the GIL all of it runs on
one core, so these sums bound the ratios that ``make bench`` can show whatever the threads do.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from flowagg.schema import Flow, decode_flows, encode
from flowagg.store.memory import PartitionedStore
from flowagg.store.partition import Partition
from flowagg.store.table import HourTable
from loadtest import naive
from loadtest.drivers import batches, flow_json


def best_of(fn: Callable[[], object], repeats: int, number: int) -> float:
    """Seconds per call, the best of ``repeats`` runs of ``number`` calls."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - started) / number)
    return best


def write_path(keys: int, repeats: int) -> list[tuple[str, float]]:
    """Microseconds per 1,000-flow POST for each stage, the flows spread over ``keys`` keys."""
    hour = 7
    body = b"[" + b",".join(flow_json(k % keys, hour, 1 + k, 2) for k in range(1000)) + b"]"
    flows = decode_flows(body)
    store = PartitionedStore(partitions=8, start=False)
    partition = Partition(0, buffer_capacity=1024)
    sums = partition._sum(flows)[hour]
    table = HourTable()
    table.merge(dict(sums))  # merging again below adds to existing rows, as in a busy hour
    hours: naive.Hours = {}
    naive.add(hours, flows)
    stages = [
        ("decode and validate (all three servers)", lambda: decode_flows(body), 200),
        ("service: split by partition", lambda: store.split(flows), 1000),
        ("service: sum per key, outside the lock", lambda: partition._sum(flows), 500),
        ("service: merge into the table, under the lock", lambda: table.merge(sums), 500),
        ("naive: add to the dict, under the lock", lambda: naive.add(hours, flows), 500),
    ]
    return [(name, best_of(fn, repeats, number) * 1e6) for name, fn, number in stages]


def read_path(repeats: int) -> list[tuple[str, float]]:
    """Microseconds per GET of a 10,000-key hour for each stage."""
    hour = 1_000_000
    flows = [f for body in batches(10_000, hour, 1000) for f in decode_flows(body)]
    partition = Partition(0, buffer_capacity=len(flows))
    partition.enqueue(flows)
    partition.drain_once()
    table = partition._tables[hour]
    rows = table.rows()
    hours: naive.Hours = {}
    naive.add(hours, flows)
    answer = naive.flows_of(hours, hour)

    def view() -> list[Flow]:  # the expression in flowagg.web.flows.get_flows
        return [Flow(s, d, v, tx, rx, hour) for s, d, v, tx, rx in rows]

    stages = [
        ("service: copy rows under the read lock", table.rows),
        ("service: rows -> Flow records", view),
        ("naive: dict -> Flow records, under the lock", lambda: naive.flows_of(hours, hour)),
        ("encode JSON (both)", lambda: encode(answer)),
    ]
    return [(name, best_of(fn, repeats, 20) * 1e6) for name, fn in stages]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for title, figures in (
        ("POST of 1,000 flows, each on its own key", write_path(1000, args.repeats)),
        ("POST of 1,000 flows over 100 keys", write_path(100, args.repeats)),
        ("GET of a 10,000-key hour", read_path(args.repeats)),
    ):
        print(f"\n{title}\n")
        print("| stage | µs |\n| --- | ---: |")
        for name, micros in figures:
            print(f"| {name} | {micros:,.0f} |")


if __name__ == "__main__":
    main()
