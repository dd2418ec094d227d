"""Benchmark harness: the service against its ceiling and a naive peer, same load, same run.

    .venv/bin/python -m loadtest.bench            # the full run (make bench), about 5 minutes
    .venv/bin/python -m loadtest.bench --quick    # a short one, about 2 minutes

Three servers are started one after another on 127.0.0.1, each with the same waitress thread
count: the service (``wsgi:app``), the ceiling (``loadtest/ceiling.py``: decode and validate
only) and the naive peer (``loadtest/naive.py``: one lock, one dict). Each round starts every
server afresh and drives it with the same bounded load -- wrk with the Lua scripts in
``loadtest/wrk/``, or locust's FastHttpUser (``loadtest/bench_locust.py``) where wrk is missing:

    post1        POST 1 flow per request
    post1000     POST 1,000 flows per request, all in one hour
    post1000x2   the same, each batch across an hour boundary (2 hours)
    post1000x24  the same, each batch spread over 24 hours
    get10k       GET of an hour holding 10,000 keys (loaded and checked before the run)
    mixed        95 % POSTs, 5 % GETs; every GET checks read-your-writes of its client's POSTs
    memory       RSS per distinct key-hour after loading --memory-keys keys, and RSS after
                 posting the same keys --memory-reposts more times (must stay flat)

Every scenario runs at each of --connections (default 16 and 64: more than waitress's threads),
the service in its default configuration: request lines on, written to its log file.

Ratios are taken within a round (the servers ran minutes apart, not hours) and reported as the
median over rounds with their min-max, which is the noise of this machine. Raw figures, the
markdown table and every server's log go to ``loadtest/results/<timestamp>/``.

``--compare REV`` also runs the service as of git revision REV (server "before") in every round,
so a change is measured against its predecessor in the same run; ``--profile`` samples every
server with py-spy during round 1 of each scenario (profile-<server>-<scenario>.txt).

This module holds the scenarios, the run and the command line; ``servers.py`` starts, stops and
measures the servers, ``drivers.py`` sends the load and ``report.py`` makes the tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from flowagg.config import DEFAULTS
from loadtest import ROOT
from loadtest.drivers import Load, LocustDriver, WrkDriver, batches
from loadtest.report import Results, report
from loadtest.servers import TARGETS, PeakRSS, Server, profiling, running

RESULTS = ROOT / "loadtest" / "results"
SCENARIOS = ("post1", "post1000", "post1000x2", "post1000x24", "get10k", "mixed")
STORING = ("post1", "post1000", "post1000x2", "post1000x24")  # what the ceiling runs
# Hours each POST of a scenario spreads its flows over (loadtest/wrk/post.lua).
SPREAD = {"post1": 1, "post1000": 1, "post1000x2": 2, "post1000x24": 24}

GET_HOUR = 1_000_000  # the hour that get10k loads and reads
MIXED_HOUR = 2_000_000  # mixed uses this hour plus the round number
MEMORY_HOUR = 3_000_000


# -- scenarios ---------------------------------------------------------------------------------


def load_for(scenario: str, round_no: int) -> Load:
    if scenario == "post1":
        return Load(scenario, {"flows": 1, "keys": 5_000, "spread": 1, "bodies": 2000}, 1)
    if scenario in SPREAD:  # 40 different bodies, at most 5,000 keys per hour
        params = {"flows": 1000, "keys": 5_000, "spread": SPREAD[scenario], "bodies": 40}
        return Load(scenario, params, 1000)
    if scenario == "get10k":
        return Load(scenario, {"hour": GET_HOUR}, 0)
    params = {"hour": MIXED_HOUR + round_no, "batch": 100, "keys": 1000, "get_every": 20}
    return Load(scenario, {**params, "run": f"r{round_no}"}, one_connection_per_thread=True)


def prepare_get_hour(server: Server) -> str:
    """Load 10,000 keys into GET_HOUR, check the answer, return its digest (to compare servers)."""
    keys = 10_000
    server.post_all(batches(keys, GET_HOUR, 1000))
    status, body = server.request("GET", f"/flows?hour={GET_HOUR}")
    rows = json.loads(body) if status == 200 else None
    if (
        not rows
        or len(rows) != keys
        or any(r["bytes_tx"] != 1 + k % 1000 for k, r in enumerate(rows))
    ):
        raise RuntimeError(f"{server.name}: GET of the loaded hour is wrong (status {status})")
    return hashlib.sha256(body).hexdigest()[:16]


def summarise(raw: dict, load: Load, rss: int, cores: float) -> dict:
    duration = raw["duration_s"]
    extra = raw.get("extra", {})
    ok = raw["requests"] - raw["errors"]
    flows = extra["flows_ok"] if "flows_ok" in extra else ok * load.flows_per_request
    return {
        "req_s": raw["requests"] / duration,
        "flows_s": flows / duration,
        "p50_ms": raw["p50_ms"],
        "p99_ms": raw["p99_ms"],
        "errors": raw["errors"],
        "rss": rss,
        "cores": cores,
        "get_p99_ms": raw.get("get_p99_ms"),
        "violations": extra.get("violations"),
        "gets": extra.get("gets"),
        "unknown": extra.get("unknown"),
        "first_violation": extra.get("first_violation"),
    }


def run_scenario(
    server: Server, driver, scenario: str, connections: int, round_no: int, opts
) -> dict:
    load = load_for(scenario, round_no)
    if scenario == "mixed":  # each run checks its own clients' rows
        load.params.update(hour=MIXED_HOUR + 100 * round_no + connections)
    if opts.warmup:  # discarded; the mixed warm-up writes to an hour of its own
        warm = Load(
            load.scenario, dict(load.params), load.flows_per_request, load.one_connection_per_thread
        )
        if scenario == "mixed":
            warm.params.update(hour=MIXED_HOUR + 10_000 + round_no, run=f"w{round_no}")
        driver.run(server.url, warm, opts.warmup, connections)
    profile = opts.profile and round_no == 1
    case = f"{scenario}@{connections}"
    name = f"{server.name}-{case}"  # every server's profile: the service's beside its baselines
    with PeakRSS(server) as peak, profiling(server, opts, name) if profile else nullcontext():
        raw = driver.run(server.url, load, opts.duration, connections)
    return summarise(raw, load, peak.peak, peak.cores)


def barrier_hour(hour: int) -> int:
    """An empty hour in the same partition as ``hour``: reading it waits for that partition."""
    partitions = int(os.environ.get("FLOWAGG_PARTITIONS", DEFAULTS["FLOWAGG_PARTITIONS"]))
    return hour + partitions


def run_memory(server: Server, bodies: list[bytes], keys: int, reposts: int) -> dict:
    """RSS above the idle process per distinct key-hour, then after re-posting the same keys."""
    server.post_all(iter([b"[]"]))  # one request of each kind, so lazy imports are done
    server.request("GET", "/flows?hour=0")
    time.sleep(0.5)
    idle = server.rss()

    def load_and_wait() -> int:
        server.post_all(iter(bodies))
        status, _ = server.request("GET", f"/flows?hour={barrier_hour(MEMORY_HOUR)}")
        if status != 200:
            raise RuntimeError(f"{server.name}: barrier GET answered {status}")
        return server.rss()

    loaded = load_and_wait()
    after = loaded
    for _ in range(reposts):
        after = load_and_wait()
    return {
        "keys": keys,
        "idle": idle,
        "loaded": loaded,
        "bytes_per_key_hour": (loaded - idle) / keys,
        "reposted": after,
        "flows_after": keys * (1 + reposts),
        "growth": after - loaded,
    }


# -- the run -----------------------------------------------------------------------------------


def bench(opts, log: Callable[[str], None]) -> Results:
    out = opts.out_dir
    driver = WrkDriver(opts.wrk_threads) if opts.driver == "wrk" else LocustDriver(out)
    results = Results(options={k: str(v) for k, v in vars(opts).items()})
    memory_bodies: list[bytes] = []
    if opts.memory:
        memory_bodies = list(batches(opts.memory_keys, MEMORY_HOUR, opts.memory_batch))
    trees = {name: ROOT for name in TARGETS}
    if opts.compare:
        trees["before"] = checkout(opts.compare, out / "before")
    for round_no in range(1, opts.rounds + 1):
        for name in opts.servers:
            scenarios = [s for s in opts.scenarios if name != "ceiling" or s in STORING]
            if not scenarios:
                continue
            with running(name, opts.threads, out / f"{name}.log", trees[name]) as server:
                for scenario in scenarios:
                    if scenario == "get10k":
                        results.digests[name] = prepare_get_hour(server)
                    for connections in opts.connections:
                        run = run_scenario(server, driver, scenario, connections, round_no, opts)
                        case = f"{scenario}@{connections}"
                        run.update(round=round_no, server=name, scenario=case)
                        results.runs.append(run)
                        log(
                            f"round {round_no} {name:8} {case:15} {run['req_s']:>9,.0f} req/s"
                            f" {run['flows_s']:>11,.0f} flows/s  p50 {run['p50_ms']:.1f} ms"
                            f"  p99 {run['p99_ms']:.1f} ms  errors {run['errors']}"
                        )
        for name in opts.memory:
            with running(name, opts.threads, out / f"{name}-memory.log", trees[name]) as server:
                mem = run_memory(server, memory_bodies, opts.memory_keys, opts.memory_reposts)
            mem.update(round=round_no, server=name)
            results.memory.append(mem)
            log(
                f"round {round_no} {name:8} memory    {mem['bytes_per_key_hour']:.0f} B/key-hour,"
                f" growth after {opts.memory_reposts} re-posts {mem['growth'] / 2**20:+.1f} MiB"
            )
    return results


def checkout(rev: str, into: Path) -> Path:
    """The service's files at git revision ``rev``, extracted into ``into`` (see --compare), with
    its native tables built in place where it has them."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", rev, "flowagg", "wsgi.py", "pyproject.toml"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    if (into / "flowagg" / "store" / "native").is_dir():
        # pip builds the extension as `make` does (its own setuptools, the tree's flags) into a
        # scratch directory; only the module is kept, beside the tree's sources.
        with tempfile.TemporaryDirectory() as built:
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile"]
                + ["--target", built, str(into)],
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
                check=True,
            )
            for module in Path(built, "flowagg", "store").glob("table*.so"):
                shutil.copy2(module, into / "flowagg" / "store")
    return into


# -- command line ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s, 200,000 keys")
    parser.add_argument("--rounds", type=int, help="rounds per server (default 3)")
    parser.add_argument("--duration", type=int, help="seconds per scenario run (default 5)")
    parser.add_argument("--warmup", type=int, help="seconds of discarded load first (default 1)")
    parser.add_argument("--threads", type=int, default=8, help="waitress threads of every server")
    parser.add_argument(
        "--connections", default="16,64", help="concurrent connections, each value a run"
    )
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--driver", choices=("auto", "wrk", "locust"), default="auto")
    parser.add_argument("--servers", default="service,ceiling,naive")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--memory", default="service,naive", help="servers whose memory is measured ('' for none)"
    )
    parser.add_argument("--memory-keys", type=int, help="distinct keys loaded (default 1,000,000)")
    parser.add_argument("--memory-reposts", type=int, help="re-posts of the same keys (default 3)")
    parser.add_argument(
        "--memory-batch",
        type=int,
        default=1000,
        help="flows per POST while loading keys (default 1,000, as in post1000)",
    )
    parser.add_argument("--out", type=Path, help="results directory (default loadtest/results)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record every server with py-spy (pip install py-spy) in round 1 of each scenario",
    )
    parser.add_argument(
        "--compare",
        metavar="REV",
        help="also run the service as of git revision REV, as server 'before', in every round",
    )
    opts = parser.parse_args(argv)
    quick = opts.quick
    defaults = {
        "rounds": 1 if quick else 3,
        "duration": 3 if quick else 5,
        "warmup": 1,
        "memory_keys": 200_000 if quick else 1_000_000,
        "memory_reposts": 2 if quick else 3,
    }
    for key, value in defaults.items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    opts.py_spy = None
    if opts.profile:
        opts.py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(opts.py_spy).exists():
            parser.error("--profile needs py-spy: .venv/bin/pip install py-spy")
    if opts.driver == "auto":
        opts.driver = "wrk" if shutil.which("wrk") else "locust"
    opts.servers = [s for s in opts.servers.split(",") if s]
    opts.scenarios = [s for s in opts.scenarios.split(",") if s]
    opts.memory = [s for s in opts.memory.split(",") if s]
    opts.connections = [int(c) for c in opts.connections.split(",") if c]
    known = [*TARGETS, "before"] if opts.compare else list(TARGETS)
    if opts.compare and "before" not in opts.servers:
        opts.servers.insert(1, "before")
    for name in opts.servers + opts.memory:
        if name not in known:
            parser.error(f"unknown server {name!r} (known: {', '.join(known)})")
    for name in opts.scenarios:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    if min(opts.rounds, opts.duration, opts.memory_keys, opts.memory_batch, *opts.connections) < 1:
        parser.error("rounds, duration, connections and memory keys must be positive")
    if opts.warmup < 0:
        parser.error("warmup must not be negative")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    opts.out_dir = (opts.out or RESULTS) / stamp
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def log(line: str) -> None:
        print(line, flush=True)

    shown = opts.out_dir.relative_to(ROOT) if opts.out_dir.is_relative_to(ROOT) else opts.out_dir
    log(f"results in {shown}")
    results = bench(opts, log)
    table = report(results, opts)
    elapsed = time.monotonic() - started
    table += f"\n\nWhole run: {elapsed / 60:.1f} minutes."
    (opts.out_dir / "results.json").write_text(
        json.dumps(
            {
                "options": results.options,
                "runs": results.runs,
                "memory": results.memory,
                "digests": results.digests,
            },
            indent=1,
        )
    )
    (opts.out_dir / "table.md").write_text(table + "\n")
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
