"""Benchmark of the Redis store against the embedded store: everything scale-out is measured by.

    .venv/bin/python -m loadtest.bench_redis          # ~15 min
    .venv/bin/python -m loadtest.bench_redis --quick  # ~4 min

Everything runs on 127.0.0.1 in one run, so the ratios compare like with like. Two Redis
backends are started once: ``node``, one redis-server without an append-only file, and
``cluster``, 3 primaries (tests/redis_cluster.py; AOF with ``appendfsync everysec``, ``--aof``
picks another). In each round, every server starts afresh (``waitress-serve --threads=8`` with
the flags ``make run`` passes, log level warning) and:

    post     wrk posts 1,000-flow batches (loadtest/wrk/post.lua, at most 10,000 keys an hour)
             over 1 hour and over 24 hours, with 16 and with 64 connections, for ``--duration``
             seconds, to the embedded store (the baseline), then on each backend to one instance
             and to two together (each driven by its own wrk with that many connections). Redis
             CPU per flow: the primaries' ``used_cpu_user + used_cpu_sys`` (INFO cpu) over the
             run, divided by the flows committed; the instances' cores: their CPU time over the
             run's wall time.
    get      GET of an hour holding 10,000 keys (loadtest/wrk/get.lua, 16 connections): the
             embedded store, then one instance on each backend, and one with its cache off
             (FLOWAGG_REDIS_CACHE_BYTES=0: every GET fetches and sums the whole hour).
    range    24 hours of 10,000 keys each; GET /flows/top?start=..&end=.. over the 24 hours, one
             client, ``--queries`` times: the median time, embedded against Redis (with its
             cache, and without: the first query of an instance).
    mixed    two instances on the cluster; 8 clients post 100-flow batches (one flow of their own
             key) to one and every 5th request read their hour from the other, checking that it
             counts every batch of theirs acknowledged so far (read-your-writes; must be 0).

Ratios are taken within a round (Redis against the embedded store of the same round and shape)
and reported as the median over rounds with their min-max. Last, the arithmetic of a 16-core host
taking 2 million flows/s, from the measured CPU per flow of an instance and of Redis. Raw figures
go to ``loadtest/results/redis-<timestamp>/results.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

from loadtest import ROOT
from loadtest.drivers import Load, WrkDriver, batches
from loadtest.servers import Server
from tests.redis_cluster import RedisCluster, RedisNode, free_port

RESULTS = ROOT / "loadtest" / "results"
SHAPES = {"1 hour": 1, "24 hours": 24}
HOUR0 = 100  # post.lua's first hour
GET_HOUR = 1_000_000
RANGE0 = 2_000_000  # the range queries' first hour
MIXED_HOUR = 500
TARGET_FLOWS = 2_000_000  # the 16-core host's load, for the arithmetic
HOST_CORES = 16


class Backend:
    """A Redis backend: its URL for the instances and its primaries for INFO cpu."""

    def __init__(self, name: str, url: str, nodes: list[RedisNode], second_url: str) -> None:
        self.name, self.url, self.nodes, self.second_url = name, url, nodes, second_url

    def cpu(self) -> float:
        total = 0.0
        for node in self.nodes:
            info = redis.Redis("127.0.0.1", node.port).info("cpu")
            total += info["used_cpu_user"] + info["used_cpu_sys"]
        return total

    def flush(self) -> None:
        for node in self.nodes:
            redis.Redis("127.0.0.1", node.port).flushall()


def start(name: str, opts, env: dict[str, str]) -> Server:
    server = Server(
        name, opts.threads, opts.out / f"{name}.log", env={"FLOWAGG_LOG_LEVEL": "warning", **env}
    )
    server.start()
    return server


def post_load(servers: list[Server], hours: int, connections: int, opts) -> tuple[float, float]:
    """Flows/s of every server together, each driven by its own wrk at the same time, and the
    cores the servers used meanwhile."""
    driver = WrkDriver(opts.wrk_threads)
    params = {"flows": 1000, "keys": 10_000, "spread": hours, "hour0": HOUR0, "bodies": 16}
    load = Load("post1000", params, 1000)
    results: list[dict] = []

    def drive(server: Server) -> None:
        results.append(driver.run(server.url, load, opts.duration, connections))

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


def post_round(figures: dict, backends: list[Backend], opts, log) -> None:
    for label, hours in SHAPES.items():
        for conns in opts.connections:
            shape = f"{label}, {conns}"
            server = start("embedded", opts, {})
            try:
                rate, cores = post_load([server], hours, conns, opts)
            finally:
                server.stop()
            figures[f"post {shape} embedded"] = {"flows": rate, "cores": cores}
            for backend in backends:
                for count in (1, 2):
                    backend.flush()
                    envs = [
                        {"FLOWAGG_REDIS_URL": backend.url},
                        {"FLOWAGG_REDIS_URL": backend.second_url},
                    ][:count]
                    servers = []
                    try:
                        for i, env in enumerate(envs):
                            servers.append(start(f"redis-{backend.name}-{i}", opts, env))
                        cpu = backend.cpu()
                        rate, cores = post_load(servers, hours, conns, opts)
                        used = backend.cpu() - cpu
                    finally:
                        for server in servers:
                            server.stop()
                    flows = rate * opts.duration
                    figures[f"post {shape} {backend.name} x{count}"] = {
                        "flows": rate,
                        "cores": cores,
                        "redis_us": 1e6 * used / flows,
                        "instance_us": 1e6 * cores / rate,
                    }
            log(
                f"  post {shape}: "
                + ", ".join(
                    f"{k.rsplit(' ', 2)[-2]} {k.rsplit(' ', 1)[-1]} {v['flows']:,.0f}"
                    for k, v in figures.items()
                    if k.startswith(f"post {shape} ")
                )
            )


def load_hour(server: Server, hour: int, keys: int = 10_000) -> None:
    server.post_all(batches(keys, hour, 1000))
    status, body = server.request("GET", f"/flows?hour={hour}")
    rows = json.loads(body) if status == 200 else []
    want = {(f"src-{k % 1000}", f"dest-{k // 1000 % 1000}", 1 + k % 1000) for k in range(keys)}
    if {(r["src_app"], r["dest_app"], r["bytes_tx"]) for r in rows} != want:
        raise RuntimeError(f"{server.name}: GET of the loaded hour {hour} is wrong")


def get_round(figures: dict, backends: list[Backend], opts, log) -> None:
    targets = [("embedded", None, {})]
    for backend in backends:
        targets.append((backend.name, backend, {"FLOWAGG_REDIS_URL": backend.url}))
    cluster = backends[-1]
    targets.append(
        (
            "cluster, no cache",
            cluster,
            {"FLOWAGG_REDIS_URL": cluster.url, "FLOWAGG_REDIS_CACHE_BYTES": "0"},
        )
    )
    driver = WrkDriver(opts.wrk_threads)
    for name, backend, env in targets:
        if backend is not None:
            backend.flush()
        server = start(f"get-{name.replace(', ', '-').replace(' ', '-')}", opts, env)
        try:
            load_hour(server, GET_HOUR)
            raw = driver.run(server.url, Load("get10k", {"hour": GET_HOUR}, 0), opts.duration, 16)
            if raw["errors"]:
                raise RuntimeError(f"{name}: {raw['errors']} errors")
            figures[f"get {name}"] = raw["requests"] / raw["duration_s"]
            figures[f"range {name}"] = range_queries(server, opts.queries)
        finally:
            server.stop()
    log(
        "  get req/s: "
        + ", ".join(f"{k[4:]} {v:,.0f}" for k, v in figures.items() if k.startswith("get "))
    )
    log(
        "  range ms: "
        + ", ".join(
            f"{k[6:]} first {v['first']:.1f} median {v['median']:.1f}"
            for k, v in figures.items()
            if k.startswith("range ")
        )
    )


def range_queries(server: Server, queries: int) -> dict:
    """Load 24 hours of 10,000 keys, then time the top 10 by src_app over them."""
    for hour in range(RANGE0, RANGE0 + 24):
        server.post_all(batches(10_000, hour, 1000))
    path = f"/flows/top?start={RANGE0}&end={RANGE0 + 23}&by=src_app&limit=10"
    times = []
    for _ in range(queries):
        started = time.perf_counter()
        status, body = server.request("GET", path)
        times.append(1000 * (time.perf_counter() - started))
        if status != 200 or json.loads(body)["total"]["groups"] != 1000:
            raise RuntimeError(f"{server.name}: the range query answered {status}: {body[:200]!r}")
    return {"first": times[0], "median": statistics.median(times)}


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
        mine, acked = f"client-{c}", 0
        try:
            while time.monotonic() < deadline:
                batch = [_flow(mine)] + [_flow(f"noise-{rng.randrange(5000)}") for _ in range(99)]
                post.request("POST", "/flows", json.dumps(batch))
                response = post.getresponse()
                response.read()
                with lock:
                    totals["posts" if response.status == 200 else "errors"] += 1
                if response.status != 200:
                    continue
                acked += 1
                if acked % 5:
                    continue
                get.request("GET", f"/flows?hour={MIXED_HOUR}")
                response = get.getresponse()
                rows = json.loads(response.read())
                own = [r["bytes_tx"] for r in rows if r["src_app"] == mine]
                with lock:
                    totals["gets"] += 1
                    if response.status != 200:
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
    return {
        "src_app": src,
        "dest_app": "d",
        "vpc_id": "v",
        "bytes_tx": 1,
        "bytes_rx": 1,
        "hour": MIXED_HOUR,
    }


def bench(opts, log) -> dict:
    root = Path(tempfile.mkdtemp(prefix="flowagg-bench-redis-"))
    node = RedisNode(root / "node", free_port(), "no-aof", cluster=False)
    cluster = RedisCluster(root / "cluster", appendfsync=opts.aof)
    rounds: list[dict] = []
    try:
        node.start()
        cluster.start()
        backends = [
            Backend("node", f"redis://{node.address}", [node], f"redis://{node.address}"),
            Backend("cluster", cluster.url, cluster.nodes, f"redis://{cluster.nodes[1].address}"),
        ]
        for round_no in range(opts.rounds):
            log(f"round {round_no + 1}")
            figures: dict = {}
            post_round(figures, backends, opts, log)
            get_round(figures, backends, opts, log)
            backends[1].flush()
            servers = [start("mixed-a", opts, {"FLOWAGG_REDIS_URL": backends[1].url})]
            try:
                servers.append(
                    start("mixed-b", opts, {"FLOWAGG_REDIS_URL": backends[1].second_url})
                )
                figures["mixed"] = mixed(servers, opts.duration)
            finally:
                for server in servers:
                    server.stop()
            log(f"  mixed: {figures['mixed']}")
            rounds.append(figures)
    finally:
        node.kill()
        cluster.stop()
    return {"rounds": rounds, "options": {k: str(v) for k, v in vars(opts).items()}}


def median_range(values: list[float], fmt: str) -> str:
    """The median and, in brackets, the range: the noise of the machine over the rounds."""
    median, low, high = (fmt.format(f(values)) for f in (statistics.median, min, max))
    return median if len(values) == 1 else f"{median} ({low}–{high})"


def report(results: dict) -> str:
    rounds = results["rounds"]
    lines = [
        "| shape | embedded flows/s | embedded CPU µs/flow | backend | one instance | vs embedded"
        " | two instances | vs one | Redis CPU µs/flow | instance CPU µs/flow |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    shapes = sorted(
        {
            k[5:].rsplit(" ", 1)[0]
            for r in rounds
            for k in r
            if k.startswith("post ") and k.endswith(" embedded")
        }
    )
    for shape in shapes:
        base = [r[f"post {shape} embedded"]["flows"] for r in rounds]
        own = [1e6 * r[f"post {shape} embedded"]["cores"] / r[f"post {shape} embedded"]["flows"]
               for r in rounds]  # fmt: skip
        for name in ("node", "cluster"):
            one = [r[f"post {shape} {name} x1"] for r in rounds]
            two = [r[f"post {shape} {name} x2"] for r in rounds]
            ratio = [o["flows"] / b for o, b in zip(one, base, strict=True)]
            gain = [t["flows"] / o["flows"] for t, o in zip(two, one, strict=True)]
            lines.append(
                f"| {shape} conns | {median_range(base, '{:,.0f}')}"
                f" | {median_range(own, '{:.2f}')} | {name}"
                f" | {median_range([o['flows'] for o in one], '{:,.0f}')}"
                f" | {median_range(ratio, '{:.2f}x')}"
                f" | {median_range([t['flows'] for t in two], '{:,.0f}')}"
                f" | {median_range(gain, '{:.2f}x')}"
                f" | {median_range([o['redis_us'] for o in one], '{:.2f}')}"
                f" | {median_range([o['instance_us'] for o in one], '{:.2f}')} |"
            )
    lines += ["", "| GET of a 10,000-key hour | req/s | vs embedded |", "| --- | ---: | ---: |"]
    for name in ("embedded", "node", "cluster", "cluster, no cache"):
        rates = [r[f"get {name}"] for r in rounds]
        ratio = [r[f"get {name}"] / r["get embedded"] for r in rounds]
        lines.append(
            f"| {name} | {median_range(rates, '{:,.0f}')} | {median_range(ratio, '{:.2f}x')} |"
        )
    lines += [
        "",
        "| top 10 over 24 hours of 10,000 keys | first query ms | median ms | median vs embedded |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in ("embedded", "node", "cluster", "cluster, no cache"):
        first = [r[f"range {name}"]["first"] for r in rounds]
        median = [r[f"range {name}"]["median"] for r in rounds]
        ratio = [r[f"range {name}"]["median"] / r["range embedded"]["median"] for r in rounds]
        lines.append(
            f"| {name} | {median_range(first, '{:.1f}')} | {median_range(median, '{:.1f}')}"
            f" | {median_range(ratio, '{:.2f}x')} |"
        )
    total = {
        k: sum(r["mixed"][k] for r in rounds) for k in ("violations", "gets", "posts", "errors")
    }
    lines += [
        "",
        f"Mixed load over two instances on the cluster: {total['violations']}"
        f" read-your-writes violations in {total['gets']:,} checked GETs"
        f" ({total['posts']:,} POSTs, {total['errors']} errors).",
        "",
    ]
    lines += arithmetic(rounds)
    return "\n".join(lines) + "\n"


def arithmetic(rounds: list[dict]) -> list[str]:
    """How many instances and primaries a 16-core host needs for TARGET_FLOWS, from the CPU per
    flow each used: an instance is one core (the GIL), a primary is one core (Redis runs commands
    on one thread), each kept below 80 % busy."""
    lines = []
    for shape in ("1 hour, 16", "24 hours, 16"):
        key = f"post {shape} cluster x1"
        if not all(key in r for r in rounds):
            continue
        inst = statistics.median(r[key]["instance_us"] for r in rounds)
        red = statistics.median(r[key]["redis_us"] for r in rounds)
        instances = math.ceil(TARGET_FLOWS * inst / 1e6 / 0.8)
        primaries = math.ceil(TARGET_FLOWS * red / 1e6 / 0.8)
        cores = instances + primaries
        verdict = "fits" if cores <= HOST_CORES else "does not fit"
        lines.append(
            f"{TARGET_FLOWS:,} flows/s of 1,000-flow batches over {shape.split(',')[0]}:"
            f" an instance spends {inst:.2f} µs of CPU per flow and Redis {red:.2f}, so"
            f" {instances} instances and {primaries} primaries at 80 % of a core each,"
            f" {cores} cores: {verdict} on a {HOST_CORES}-core host."
        )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 4 s loads")
    parser.add_argument("--rounds", type=int, help="rounds (default 3)")
    parser.add_argument("--duration", type=int, help="seconds per load (default 6)")
    parser.add_argument("--queries", type=int, default=9, help="range queries per server")
    parser.add_argument("--threads", type=int, default=8, help="waitress threads of every server")
    parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        default=[16, 64],
        help="connections per instance (default 16 and 64)",
    )
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="results directory (default loadtest/results)")
    parser.add_argument(
        "--aof",
        choices=("everysec", "always", "no", "no-aof"),
        default="everysec",
        help="the cluster primaries' appendfsync, or no-aof for none (default everysec)",
    )
    opts = parser.parse_args(argv)
    opts.rounds = opts.rounds or (1 if opts.quick else 3)
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
