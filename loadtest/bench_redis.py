"""Benchmark of the Redis store: instances over a 3-primary cluster against the embedded store.

    .venv/bin/python -m loadtest.bench_redis            # about 3 minutes
    .venv/bin/python -m loadtest.bench_redis --quick    # about 2 minutes

Everything runs on 127.0.0.1 in one run, so the ratios compare like with like. A Redis Cluster of
3 primaries (tests/redis_cluster.py: Debian's redis-server, AOF with ``appendfsync everysec``;
``--aof`` picks another) is started once. In each round, every server starts afresh
(``waitress-serve --threads=8``) and wrk posts 1,000-flow batches (loadtest/wrk/post.lua, at most
10,000 keys an hour, 8 connections) for ``--duration`` seconds, over 1 hour and over 24 hours, to:

    embedded     one instance with the in-memory store (the baseline)
    redis        one instance over the cluster
    redis x2     two instances together, each driven by its own wrk with 8 connections

For the Redis runs the CPU time of the three redis-server processes is divided by the flows
committed (Redis CPU per flow; the flowagg processes' cores are shown too), and after the 1-hour
run of one instance the keys of that hour are counted per primary (HLEN / 2 of each bucket): the
spread is max / min. Last, a mixed load over two instances: 8 clients each post 100-flow batches
(one flow of their own key) to one instance and every 5th request read their hour from the
other, checking that it counts every batch of theirs acknowledged so far (read-your-writes
violations; must be 0).

Ratios are taken within a round and reported as the median over rounds with their min-max.
Raw figures go to ``loadtest/results/redis-<timestamp>/results.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from flowagg.store.redis import layout
from loadtest import ROOT
from loadtest.drivers import Load, WrkDriver
from loadtest.servers import Server
from tests.redis_cluster import RedisCluster

RESULTS = ROOT / "loadtest" / "results"
SCENARIOS = {"1 hour": 1, "24 hours": 24}
HOUR0 = 100  # post.lua's first hour: the current hour of the 1-hour load
MIXED_HOUR = 500


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu(cluster: RedisCluster) -> float:
    return sum(cpu_seconds(node.proc.pid) for node in cluster.nodes)


def start(name: str, out: Path, threads: int, env: dict[str, str]) -> Server:
    server = Server(name, threads, out / f"{name}.log", env=env)
    server.start()
    return server


def post_load(servers: list[Server], hours: int, opts) -> tuple[float, float]:
    """Flows/s of every server together, each driven by its own wrk at the same time, and the
    cores the servers used meanwhile (their CPU time over the wall time)."""
    driver = WrkDriver(opts.wrk_threads)
    params = {"flows": 1000, "keys": 10_000, "spread": hours, "hour0": HOUR0, "bodies": 16}
    load = Load("post1000", params, 1000)
    results: list[dict] = []

    def drive(server: Server) -> None:
        results.append(driver.run(server.url, load, opts.duration, opts.connections))

    threads = [threading.Thread(target=drive, args=(s,)) for s in servers]
    started = time.monotonic(), sum(s.cpu_seconds() for s in servers)
    for t in threads:
        t.start()
    for t in threads:
        t.join(opts.duration + 120)
    cores = (sum(s.cpu_seconds() for s in servers) - started[1]) / (time.monotonic() - started[0])
    errors = sum(r["errors"] for r in results)
    if errors or len(results) != len(servers):
        raise RuntimeError(f"the load had {errors} errors")
    return sum((r["requests"] * 1000) / r["duration_s"] for r in results), cores


def spread(cluster: RedisCluster, hour: int, buckets: int) -> dict:
    """Keys of ``hour`` per primary, from the size of each bucket."""
    keys = {node.address: 0 for node in cluster.nodes}
    for bucket in range(buckets):
        key = layout.bucket_key(hour, bucket, buckets)
        node = cluster.primary_of(key)
        keys[node.address] += node.client().hlen(key) // 2
    return {"keys": keys, "max_over_min": max(keys.values()) / max(1, min(keys.values()))}


def mixed(servers: list[Server], seconds: float, clients: int = 8) -> dict:
    """Clients post to one instance and read from the other; count read-your-writes misses."""
    deadline = time.monotonic() + seconds
    totals = {"posts": 0, "gets": 0, "violations": 0, "errors": 0}
    lock = threading.Lock()

    def client(c: int) -> None:
        rng = random.Random(c)
        here, there = servers[c % 2], servers[1 - c % 2]
        post = http.client.HTTPConnection("127.0.0.1", here.port, timeout=60)
        get = http.client.HTTPConnection("127.0.0.1", there.port, timeout=60)
        mine, acked, n = f"client-{c}", 0, 0
        try:
            while time.monotonic() < deadline:
                batch = [_flow(mine)] + [_flow(f"noise-{rng.randrange(5000)}") for _ in range(99)]
                post.request("POST", "/flows", json.dumps(batch))
                response = post.getresponse()
                response.read()
                if response.status != 200:
                    with lock:
                        totals["errors"] += 1
                    continue
                acked += 1
                n += 1
                with lock:
                    totals["posts"] += 1
                if n % 5:
                    continue
                get.request("GET", f"/flows?hour={MIXED_HOUR}")
                response = get.getresponse()
                rows = json.loads(response.read())
                own = (
                    [r["bytes_tx"] for r in rows if r["src_app"] == mine]
                    if response.status == 200
                    else None
                )
                with lock:
                    totals["gets"] += 1
                    if own is None:
                        totals["errors"] += 1
                    elif own != [acked]:
                        totals["violations"] += 1
        except (OSError, http.client.HTTPException, ValueError) as exc:
            with lock:
                totals["errors"] += 1
                totals.setdefault("first_error", repr(exc))
        finally:
            post.close()
            get.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return totals


def _flow(src: str) -> dict:
    return {"src_app": src, "dest_app": "d", "vpc_id": "v", "bytes_tx": 1, "bytes_rx": 1,
            "hour": MIXED_HOUR}  # fmt: skip


def bench(opts, log) -> dict:
    out = opts.out
    root = Path(tempfile.mkdtemp(prefix="flowagg-bench-redis-"))
    cluster = RedisCluster(root, appendfsync=opts.aof).start()
    env = {"FLOWAGG_REDIS_URL": cluster.url, "FLOWAGG_LOG_LEVEL": "warning"}
    second = {**env, "FLOWAGG_REDIS_URL": f"redis://{cluster.nodes[1].address}"}
    embedded_env = {"FLOWAGG_LOG_LEVEL": "warning"}
    rounds: list[dict] = []
    try:
        for round_no in range(opts.rounds):
            figures: dict = {}
            for label, hours in SCENARIOS.items():
                server = start("embedded", out, opts.threads, embedded_env)
                try:
                    rate, figures[f"embedded cores {label}"] = post_load([server], hours, opts)
                    figures[f"embedded {label}"] = rate
                finally:
                    server.stop()
                cluster.flush()
                server = start("redis", out, opts.threads, env)
                try:
                    cpu = redis_cpu(cluster)
                    rate, figures[f"redis cores {label}"] = post_load([server], hours, opts)
                    figures[f"redis {label}"] = rate
                    figures[f"redis cpu us/flow {label}"] = (
                        1e6 * (redis_cpu(cluster) - cpu) / (rate * opts.duration)
                    )
                    if hours == 1:
                        figures["spread"] = spread(cluster, HOUR0, 16)
                finally:
                    server.stop()
                cluster.flush()
                servers = [start("redis-a", out, opts.threads, env)]
                try:
                    servers.append(start("redis-b", out, opts.threads, second))
                    rate, figures[f"redis x2 cores {label}"] = post_load(servers, hours, opts)
                    figures[f"redis x2 {label}"] = rate
                finally:
                    for server in servers:
                        server.stop()
                shown = [f"{k} {v:,.0f}" for k, v in figures.items() if k.endswith(label)]
                log(f"round {round_no + 1} {label}: " + ", ".join(shown))
            cluster.flush()
            servers = [start("redis-a", out, opts.threads, env)]
            try:
                servers.append(start("redis-b", out, opts.threads, second))
                figures["mixed"] = mixed(servers, opts.duration)
            finally:
                for server in servers:
                    server.stop()
            log(f"round {round_no + 1}: spread {figures['spread']}, mixed {figures['mixed']}")
            rounds.append(figures)
    finally:
        cluster.stop()
    return {"rounds": rounds, "options": {k: str(v) for k, v in vars(opts).items()}}


def median_range(values: list[float], fmt: str) -> str:
    """The median and, in brackets, the range: the noise of the machine over the rounds."""
    median, low, high = (fmt.format(f(values)) for f in (statistics.median, min, max))
    return f"{median} ({low}–{high})"


def report(results: dict) -> str:
    rounds = results["rounds"]
    lines = [
        "| store | hours | flows/s | vs embedded | flowagg cores | Redis CPU µs/flow |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label in SCENARIOS:
        base = [r[f"embedded {label}"] for r in rounds]
        cores = median_range([r[f"embedded cores {label}"] for r in rounds], "{:.2f}")
        lines.append(f"| embedded | {label} | {median_range(base, '{:,.0f}')} | 1 | {cores} | – |")
        for name, who in (
            ("redis", "one instance over the cluster"),
            ("redis x2", "two instances"),
        ):
            rates = median_range([r[f"{name} {label}"] for r in rounds], "{:,.0f}")
            ratios = median_range([r[f"{name} {label}"] / r[f"embedded {label}"] for r in rounds],
                                  "{:.2f}x")  # fmt: skip
            cores = median_range([r[f"{name} cores {label}"] for r in rounds], "{:.2f}")
            cpu = "–"
            if name == "redis":
                cpu = median_range([r[f"redis cpu us/flow {label}"] for r in rounds], "{:.1f}")
            lines.append(f"| {who} | {label} | {rates} | {ratios} | {cores} | {cpu} |")
    spreads = median_range([r["spread"]["max_over_min"] for r in rounds], "{:.2f}")
    total = {
        k: sum(r["mixed"][k] for r in rounds) for k in ("violations", "gets", "posts", "errors")
    }
    lines += [
        "",
        f"Keys of the current hour per primary, max / min: {spreads}"
        f" (round 1: {rounds[0]['spread']['keys']}).",
        f"Mixed load over two instances: {total['violations']} read-your-writes violations in"
        f" {total['gets']:,} checked GETs ({total['posts']:,} POSTs, {total['errors']} errors).",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 4 s")
    parser.add_argument("--rounds", type=int, help="rounds (default 3)")
    parser.add_argument("--duration", type=int, help="seconds per load (default 6)")
    parser.add_argument("--threads", type=int, default=8, help="waitress threads of every server")
    parser.add_argument("--connections", type=int, default=8, help="connections per instance")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="results directory (default loadtest/results)")
    parser.add_argument(
        "--aof",
        choices=("everysec", "always", "no", "no-aof"),
        default="everysec",
        help="the primaries' appendfsync, or no-aof for no append-only file (default everysec)",
    )
    opts = parser.parse_args(argv)
    opts.rounds = opts.rounds or (2 if opts.quick else 3)
    opts.duration = opts.duration or (4 if opts.quick else 6)
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    opts.out = (opts.out or RESULTS) / f"redis-{stamp}"
    opts.out.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.monotonic()
    results = bench(opts, log)
    results["seconds"] = time.monotonic() - started
    (opts.out / "results.json").write_text(json.dumps(results, indent=2))
    table = report(results)
    (opts.out / "results.md").write_text(table)
    print(table)
    log(f"{results['seconds']:.0f} s; results in {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
