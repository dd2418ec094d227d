"""Where the CPU time of a POST and a GET goes, stage by stage, in process.

    .venv/bin/python -m loadtest.bench_paths

No HTTP and no threads: each stage of the service's write and read paths runs alone on the
same data as the HTTP benchmark (keys and bodies from ``loadtest.drivers``), best of several
repeats, next to what the ceiling and the naive peer do instead. Under the GIL all of it runs on
one core, so these sums bound the ratios that ``make bench`` can show whatever the threads do.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flowagg import create_app
from flowagg.schema import decode_flows, encode
from flowagg.store.memory import PartitionedStore
from flowagg.store.table import HourTables
from loadtest import ceiling, naive
from loadtest.drivers import batches, flow_json

PARTITIONS = 8


def best_of(fn: Callable[[], object], repeats: int, number: int) -> float:
    """Seconds per call, the best of ``repeats`` runs of ``number`` calls."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()  # no collection of an earlier stage's garbage inside this one
        started = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - started) / number)
    return best


# Distinct 1,000-flow bodies a write path cycles through, as post.lua posts them: over 24 hours
# they cover 40 x 1,000 / 24 keys of each hour, so merges probe a table far larger than a cache
# line's worth of keys (one body merged again and again would find every key in the cache).
BODIES = 40


def write_path(hours: int, keys: int, repeats: int) -> list[tuple[str, float]]:
    """Microseconds per 1,000-flow POST for each stage: flow g in hour 100 + g % ``hours``, on
    key g // ``hours`` % ``keys``, as loadtest/wrk/post.lua builds them."""
    bodies = [
        b"["
        + b",".join(
            flow_json(g // hours % keys, 100 + g % hours, 1 + g % 1000, 2)
            for g in range(b * 1000, (b + 1) * 1000)
        )
        + b"]"
        for b in range(BODIES)
    ]
    requests = [decode_flows(body) for body in bodies]
    store = PartitionedStore(partitions=PARTITIONS, start=False)
    tables = [HourTables() for _ in range(PARTITIONS)]
    turn = iter(range(10**12))

    def pack() -> None:  # what one POST costs its request thread
        store.split(requests[next(turn) % BODIES])

    def pack_and_merge() -> None:  # ... and the drainers, for the same POST
        for index, part in store.split(requests[next(turn) % BODIES]).items():
            tables[index].merge([part])

    running = PartitionedStore(partitions=PARTITIONS)  # drainer threads started

    def decode_ingest_and_drain() -> None:
        # Every body decoded afresh and ingested, as request threads do, then everything
        # drained: what the records' lifetime across threads costs, which the stages above
        # (one thread, records kept) cannot show. Per POST: divided by BODIES below.
        for body in bodies:
            running.ingest(decode_flows(body))
        running.flush()

    for _ in range(BODIES):
        pack_and_merge()  # merging again below adds to existing rows, as in a busy hour
    decode_ingest_and_drain()
    hours_: naive.Hours = {}
    for flows in requests:
        naive.add(hours_, flows)
    try:
        return [
            (name, best_of(fn, repeats, number) * 1e6 / per)
            for name, fn, number, per in [
                ("decode and validate (all three servers)",
                 lambda: decode_flows(bodies[next(turn) % BODIES]), 200, 1),
                ("service: pack (split by partition, copy out of the records)", pack, 1000, 1),
                ("service: pack, and merge into every partition's tables", pack_and_merge, 500, 1),
                ("service: decode, ingest into a running store, drained (threads)",
                 decode_ingest_and_drain, 5, BODIES),
                ("naive: add to the dict, under the lock",
                 lambda: naive.add(hours_, requests[next(turn) % BODIES]), 200, 1),
            ]
        ]  # fmt: skip
    finally:
        running.close(5.0)


def read_path(repeats: int) -> list[tuple[str, float]]:
    """Microseconds per GET of a 10,000-key hour for each stage."""
    hour = 1_000_000
    tables = HourTables()
    flows = [f for body in batches(10_000, hour, 1000) for f in decode_flows(body)]
    tables.merge(flows)
    hours: naive.Hours = {}
    naive.add(hours, flows)
    answer = naive.flows_of(hours, hour)
    if tables.encode(hour) != encode(answer):
        raise RuntimeError("the service's answer differs from the naive peer's")
    return [
        (name, best_of(fn, repeats, 20) * 1e6)
        for name, fn in [
            ("service: the JSON answer, encoded from the tables", lambda: tables.encode(hour)),
            ("service: the rows as tuples (snapshots)", lambda: tables.rows(hour)),
            ("naive: dict -> Flow records, under the lock", lambda: naive.flows_of(hours, hour)),
            ("naive: encode the records", lambda: encode(answer)),
        ]
    ]


@contextmanager
def stderr_discarded() -> Iterator[None]:
    """Send file descriptor 2 (where the service's log thread writes) to /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def app_path(repeats: int) -> list[tuple[str, float]]:
    """Microseconds per one-flow POST through each server's whole WSGI app, called in process
    on a prepared environ: no HTTP server, so what is left is the app's own work. The service
    runs its default configuration, request lines included (its log thread writes them to
    /dev/null here)."""
    body = b"[" + flow_json(7, 100, 1, 2) + b"]"

    def environ() -> dict:
        return {
            "REQUEST_METHOD": "POST", "PATH_INFO": "/flows", "SCRIPT_NAME": "",
            "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080",
            "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1:8080", "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr, "wsgi.multithread": True,
            "wsgi.multiprocess": False, "wsgi.run_once": False,
        }  # fmt: skip

    def post(app: Callable) -> Callable[[], None]:
        def call() -> None:
            statuses = []
            answer = app(environ(), lambda status, headers, exc_info=None: statuses.append(status))
            b"".join(answer)
            getattr(answer, "close", lambda: None)()
            if statuses != ["200 OK"]:
                raise RuntimeError(f"POST through the app answered {statuses}")

        return call

    with stderr_discarded():
        service = create_app()
        try:
            apps = [("service", service), ("ceiling", ceiling.create_app()),
                    ("naive", naive.create_app())]  # fmt: skip
            return [
                (f"{name}: the whole app", best_of(post(app), repeats, 2000) * 1e6)
                for name, app in apps
            ]
        finally:
            service.extensions["flowagg"].close(5.0)


def targets(figures: dict[str, list[tuple[str, float]]]) -> list[tuple[str, str, str, str]]:
    rows = []
    for title in ("24 hours", "1 hour"):
        stages = dict(figures[f"POST of 1,000 flows over {title}, 5,000 keys per hour"])
        ratio = (
            stages["service: pack, and merge into every partition's tables"]
            / stages["decode and validate (all three servers)"]
        )
        rows.append(
            (f"pack and merge / decode, 1,000 flows over {title}", f"{ratio:.2f}x", "<= 0.35x",
             "yes" if ratio <= 0.35 else "**no**")
        )  # fmt: skip
    encode_us = dict(figures["GET of a 10,000-key hour"])[
        "service: the JSON answer, encoded from the tables"
    ]
    rows.append(
        ("encode a 10,000-key hour", f"{encode_us / 1000:.2f} ms", "<= 1 ms",
         "yes" if encode_us <= 1000 else "**no**")
    )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    figures = {
        "POST of 1,000 flows over 24 hours, 5,000 keys per hour": write_path(
            24, 5000, args.repeats
        ),
        "POST of 1,000 flows over 1 hour, 5,000 keys per hour": write_path(1, 5000, args.repeats),
        "GET of a 10,000-key hour": read_path(args.repeats),
        "POST of 1 flow through the WSGI app": app_path(args.repeats),
    }
    for title, stages in figures.items():
        print(f"\n{title}\n")
        print("| stage | µs |\n| --- | ---: |")
        for name, micros in stages:
            print(f"| {name} | {micros:,.0f} |")
    print("\n| target | measured | goal | met |\n| --- | ---: | ---: | --- |")
    for row in targets(figures):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
