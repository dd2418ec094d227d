"""Range queries end to end over HTTP: the top 10 by src_app over 1, 24 and 168 hours.

    .venv/bin/python -m loadtest.bench_queries            # 168 hours x 100,000 keys: ~3 GB, ~3 min
    .venv/bin/python -m loadtest.bench_queries --quick    # 168 hours x 20,000 keys: ~1 min

One ``waitress-serve --threads=8 wsgi:app`` on 127.0.0.1 with the default configuration. Every
hour gets the same ``--keys`` keys (``loadtest.drivers``: 1,000 src_apps, ``keys / 1000``
dest_apps), POSTed in bodies of 10,000 flows, so 168 hours hold 168 x keys key-hours (100,000
keys: 16.8 million, about 3 GB of server RSS at 173 bytes each, as measured then). Then each query,
over the newest 1, 24 and 168 hours, runs ``--repeats`` times one after another on one keep-alive
connection, timed from the request's first byte to the answer's last; the table gives the median
and the min-max. Every answer is checked against the totals the load implies.

Measured in the same run, as baselines:

- an empty range (hours that hold nothing): what any query costs in HTTP, parsing, waiting for
  the partitions and encoding, scanning nothing;
- the cost per key-hour scanned, ``(t - t_empty) / key-hours``: constant if the cost grows
  linearly in key-hours;
- the way without /flows/top: ``GET /flows?hour=H`` for every hour of the range, summed per
  src_app in Python by the client (1 and 24 hours; at 168 it would take minutes).

The run stops at ``--deadline`` seconds whatever it has done, and always stops the server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from loadtest import ROOT
from loadtest.drivers import batches
from loadtest.servers import REQUEST_TIMEOUT, Server, running

NEWEST_HOUR = 490_167  # hours since the epoch (2025-12-01 15:00 UTC), so the page shows dates
HOUR_MARK = 987_654_321_987  # stands for the hour in the bodies built once, replaced per hour
RANGES = (1, 24, 168)
BASELINE_RANGES = (1, 24)
BATCH = 10_000
TARGET_S = 0.3  # top 10 by src_app over 24 hours of 100,000 keys, end to end
RESULTS = ROOT / "loadtest" / "results"
QUERIES = {
    "top 10 by src_app": "/flows/top?by=src_app&limit=10",
    "top 10 by src_app, dest_app, vpc_id": "/flows/top?limit=10",
    "series, top 10 by src_app": "/flows/series?by=src_app&limit=10",
}


class Deadline(Exception):
    """The run's time is up."""


class Bench:
    def __init__(self, server: Server, opts: argparse.Namespace) -> None:
        self.server, self.opts = server, opts
        self.ends = time.monotonic() + opts.deadline
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT)

    def check_time(self) -> None:
        if time.monotonic() > self.ends:
            raise Deadline(f"stopped at the deadline of {self.opts.deadline} s")

    def get(self, path: str) -> bytes:
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}: {body[:300]!r}")
        return body

    def timed(self, run: Callable[[], object], repeats: int) -> list[float]:
        run()  # warm-up, and the answer checked by the caller
        seconds = []
        for _ in range(repeats):
            self.check_time()
            started = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - started)
        return seconds

    def load(self, hours: int) -> float:
        """POST ``--keys`` keys into each of the newest ``hours`` hours; returns flows/s."""
        template = list(batches(self.opts.keys, HOUR_MARK, BATCH))
        mark = f'"hour":{HOUR_MARK}'.encode()
        started = time.perf_counter()
        for hour in range(NEWEST_HOUR - hours + 1, NEWEST_HOUR + 1):
            self.check_time()
            self.server.post_all(body.replace(mark, f'"hour":{hour}'.encode()) for body in template)
        status, body = self.server.request("GET", "/flows/hours")  # waits for every drainer
        held = json.loads(body)
        if status != 200 or held["count"] != hours or held["newest"] != NEWEST_HOUR:
            raise RuntimeError(f"the store holds {body!r} after the load")
        return hours * self.opts.keys / (time.perf_counter() - started)

    def check_top(self, body: bytes, hours: int, by_src: bool) -> None:
        """The totals the load implies: key k has src-{k % 1000}, bytes_tx 1 + k % 1000, rx 2."""
        keys, answer = self.opts.keys, json.loads(body)
        total_tx = hours * keys // 1000 * sum(range(1, 1001))
        total = answer["total"]
        expected_groups = 1000 if by_src else keys
        if (total["bytes_tx"], total["bytes_rx"], total["groups"]) != (
            total_tx,
            2 * hours * keys,
            expected_groups,
        ):
            raise RuntimeError(f"wrong totals over {hours} hours: {total}")
        if by_src and answer["rows"][0] != {
            "src_app": "src-999",
            "bytes_tx": hours * keys,
            "bytes_rx": 2 * hours * keys // 1000,
        }:
            raise RuntimeError(f"wrong top row over {hours} hours: {answer['rows'][0]}")

    def client_side_top(self, hours: int) -> dict[str, list[int]]:
        """Top 10 by src_app the way a client would without /flows/top."""
        sums: dict[str, list[int]] = {}
        for hour in range(NEWEST_HOUR - hours + 1, NEWEST_HOUR + 1):
            for row in json.loads(self.get(f"/flows?hour={hour}")):
                s = sums.setdefault(row["src_app"], [0, 0])
                s[0] += row["bytes_tx"]
                s[1] += row["bytes_rx"]
        ranked = sorted(sums.items(), key=lambda item: (-(item[1][0] + item[1][1]), item[0]))
        return dict(ranked[:10])

    def run(self) -> list[dict]:
        figures = []
        rate = self.load(max(RANGES))
        print(f"loaded {max(RANGES)} hours x {self.opts.keys:,} keys at {rate:,.0f} flows/s")
        figures.append({"what": "load", "flows_per_s": rate, "rss": self.server.rss()})
        empty = f"&start={NEWEST_HOUR + 1}&end={NEWEST_HOUR + 24}"
        for name, path in QUERIES.items():
            empty_seconds = self.timed(lambda p=path: self.get(p + empty), self.opts.repeats)
            figures.append({"what": name, "hours": 0, "key_hours": 0, "seconds": empty_seconds})
            for hours in RANGES:
                self.check_time()
                query = f"{path}&start={NEWEST_HOUR - hours + 1}&end={NEWEST_HOUR}"
                if name.startswith("top"):
                    self.check_top(self.get(query), hours, by_src="dest_app" not in name)
                seconds = self.timed(lambda q=query: self.get(q), self.opts.repeats)
                key_hours = hours * self.opts.keys
                figures.append(
                    {"what": name, "hours": hours, "key_hours": key_hours, "seconds": seconds}
                )
                print(f"{name}, {hours} h: {statistics.median(seconds) * 1000:,.1f} ms")
        for hours in BASELINE_RANGES:
            self.check_time()
            top = self.client_side_top(hours)
            if top["src-999"] != [hours * self.opts.keys, 2 * hours * self.opts.keys // 1000]:
                raise RuntimeError(f"client-side top is wrong: {top['src-999']}")
            repeats = self.opts.baseline_repeats
            seconds = self.timed(lambda h=hours: self.client_side_top(h), repeats)
            figures.append(
                {
                    "what": "client-side top 10 by src_app (GET /flows per hour)",
                    "hours": hours,
                    "key_hours": hours * self.opts.keys,
                    "seconds": seconds,
                }
            )
            print(f"client-side, {hours} h: {statistics.median(seconds):,.2f} s")
        return figures


def spread(seconds: list[float]) -> str:
    """Median (min–max) in milliseconds."""
    low, median, high = (1000 * x for x in (min(seconds), statistics.median(seconds), max(seconds)))
    return f"{median:,.1f} ({low:,.1f}–{high:,.1f})"


def report(figures: list[dict], opts: argparse.Namespace, elapsed: float) -> str:
    load = figures[0]
    lines = [
        f"{max(RANGES)} hours x {opts.keys:,} keys ({max(RANGES) * opts.keys:,} key-hours), loaded"
        f" at {load['flows_per_s']:,.0f} flows/s; server RSS {load['rss'] / 2**30:.2f} GiB"
        f" ({load['rss'] / (max(RANGES) * opts.keys):.0f} bytes per key-hour); median and min–max"
        f" of {opts.repeats} runs (client-side: {opts.baseline_repeats}); {elapsed:.0f} s in all.",
        "",
        "| query | hours | key-hours | ms | ns per key-hour above the empty range |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    empty: dict[str, float] = {}
    for f in figures[1:]:
        median = statistics.median(f["seconds"])
        if f["hours"] == 0:
            empty[f["what"]] = median
            lines.append(f"| {f['what']} | empty range | 0 | {spread(f['seconds'])} | – |")
            continue
        base = empty.get(f["what"], 0.0)
        per = (median - base) / f["key_hours"] * 1e9
        cells = [
            f["what"],
            str(f["hours"]),
            f"{f['key_hours']:,}",
            spread(f["seconds"]),
            f"{per:.1f}",
        ]
        lines.append(f"| {' | '.join(cells)} |")
    target = statistics.median(
        next(f for f in figures if f["what"] == "top 10 by src_app" and f["hours"] == 24)["seconds"]
    )
    verdict = "met" if target <= TARGET_S else "missed"
    lines += [
        "",
        f"top 10 by src_app over 24 hours: {target:.3f} s (target <= {TARGET_S} s: {verdict})",
    ]
    for f in figures:
        if f["what"].startswith("client-side"):
            ours = next(
                g for g in figures if g["what"] == "top 10 by src_app" and g["hours"] == f["hours"]
            )
            ratio = statistics.median(f["seconds"]) / statistics.median(ours["seconds"])
            lines.append(
                f"client-side top 10 over {f['hours']} h: {spread(f['seconds'])} ms,"
                f" {ratio:,.0f}x the time of /flows/top"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000, help="keys in every hour (x1000)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--baseline-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=900, help="seconds for the whole run")
    parser.add_argument("--quick", action="store_true", help="20,000 keys, 5 and 2 repeats")
    parser.add_argument("--out", type=Path, help="also write the raw figures here (JSON)")
    opts = parser.parse_args()
    if opts.quick:
        opts.keys, opts.repeats, opts.baseline_repeats = 20_000, 5, 2
    if opts.keys < 1000 or opts.keys % 1000:
        parser.error("--keys must be a multiple of 1000")
    started = time.monotonic()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with running("service", opts.threads, RESULTS / "bench-queries-server.log") as server:
        try:
            figures = Bench(server, opts).run()
        except Deadline as exc:
            print(exc, file=sys.stderr)
            return 1
    text = report(figures, opts, time.monotonic() - started)
    print("\n" + text)
    if opts.out:
        opts.out.write_text(json.dumps({"keys": opts.keys, "figures": figures}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
