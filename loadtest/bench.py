"""Benchmark harness: the service against its ceiling and a naive peer, same load, same run.

    .venv/bin/python -m loadtest.bench            # the full run (make bench), about 5 minutes
    .venv/bin/python -m loadtest.bench --quick    # a short one, about 2 minutes

Three servers are started one after another on 127.0.0.1, each with the same waitress thread
count: the service (``wsgi:app``), the ceiling (``loadtest/ceiling.py``: decode and validate
only) and the naive peer (``loadtest/naive.py``: one lock, one dict). Each round starts every
server afresh and drives it with the same bounded load -- wrk with the Lua scripts in
``loadtest/wrk/``, or locust's FastHttpUser (``loadtest/bench_locust.py``) where wrk is missing:

    post1     POST 1 flow per request
    post1000  POST 1,000 flows per request
    get10k    GET of an hour holding 10,000 keys (loaded and checked before the run)
    mixed     95 % POSTs, 5 % GETs; every GET checks read-your-writes of its client's POSTs
    memory    RSS per distinct key-hour after loading --memory-keys keys, and RSS after
              posting the same keys --memory-reposts more times (must stay flat)

Ratios are taken within a round (the servers ran minutes apart, not hours) and reported as the
median over rounds with their min-max, which is the noise of this machine. Raw figures, the
markdown table and every server's log go to ``loadtest/results/<timestamp>/``.

``--compare REV`` also runs the service as of git revision REV (server "before") in every round,
so a change is measured against its predecessor in the same run; ``--profile`` samples the
service with py-spy during round 1 of each scenario.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path

from flowagg.config import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
WRK_DIR = ROOT / "loadtest" / "wrk"
RESULTS = ROOT / "loadtest" / "results"
RESULT_PREFIX = "FLOWAGG-RESULT "
START_TIMEOUT = 30.0  # seconds for a server to print its address
STOP_TIMEOUT = 10.0  # seconds for a server to exit after SIGTERM before it is killed
REQUEST_TIMEOUT = 120.0  # seconds for one request of the harness itself

# waitress-serve arguments that pick the app of each server.
TARGETS = {
    "service": ["wsgi:app"],
    "ceiling": ["--call", "loadtest.ceiling:create_app"],
    "naive": ["--call", "loadtest.naive:create_app"],
}
SCENARIOS = ("post1", "post1000", "get10k", "mixed")
STORING = ("post1", "post1000")  # the scenarios the ceiling runs: it stores nothing to GET

GET_HOUR = 1_000_000  # the hour that get10k loads and reads
MIXED_HOUR = 2_000_000  # mixed uses this hour plus the round number
MEMORY_HOUR = 3_000_000


def flow_json(k: int, hour: int, tx: int, rx: int) -> bytes:
    """Key number k as one flow record, named as the Lua scripts name it (common.lua)."""
    return (
        f'{{"src_app":"src-{k % 1000}","dest_app":"dest-{k // 1000 % 1000}",'
        f'"vpc_id":"vpc-{k // 1_000_000}","bytes_tx":{tx},"bytes_rx":{rx},"hour":{hour}}}'
    ).encode()


def batches(keys: int, hour: int, size: int) -> Iterator[bytes]:
    """POST bodies holding keys 0..keys-1 once each in ``hour``, ``size`` flows per body."""
    for start in range(0, keys, size):
        stop = min(keys, start + size)
        yield (
            b"[" + b",".join(flow_json(k, hour, 1 + k % 1000, 2) for k in range(start, stop)) + b"]"
        )


# -- servers -----------------------------------------------------------------------------------


class Server:
    """One waitress-serve process on 127.0.0.1 with a free port; stopped by ``stop()``."""

    def __init__(self, name: str, threads: int, log_path: Path, cwd: Path = ROOT) -> None:
        self.name = name
        self.threads = threads
        self.log_path = log_path
        self.cwd = cwd  # the tree whose flowagg and wsgi.py are served (see --compare)
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        waitress = Path(sys.executable).with_name("waitress-serve")
        cmd = [str(waitress), "--host=127.0.0.1", "--port=0", f"--threads={self.threads}"]
        # The log is a file, not a pipe: waitress warns about queued tasks under load, and a
        # pipe nobody reads would block the server once full.
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            target = TARGETS.get(self.name, TARGETS["service"])
            self.proc = subprocess.Popen(
                cmd + target, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            output = self.log_path.read_bytes()[offset:]  # this start's lines only
            match = re.search(rb"Serving on http://127\.0\.0\.1:(\d+)", output)
            if match:
                self.port = int(match.group(1))
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start; see {self.log_path}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def rss(self) -> int:
        """Resident set size in bytes (Linux)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server has used (Linux)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def post_all(self, bodies: Iterator[bytes]) -> None:
        """POST every body on one keep-alive connection, each after the previous answer."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        try:
            for body in bodies:
                conn.request("POST", "/flows", body=body)
                response = conn.getresponse()
                answer = response.read()
                if response.status != 200:
                    raise RuntimeError(f"{self.name}: POST answered {response.status}: {answer!r}")
        finally:
            conn.close()


@contextmanager
def running(name: str, threads: int, log_path: Path, cwd: Path = ROOT) -> Iterator[Server]:
    server = Server(name, threads, log_path, cwd)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class PeakRSS:
    """Samples a server's RSS in the background while a load runs; keeps the highest. Also
    takes the CPU time the server used meanwhile, in cores (1.0: one core busy throughout)."""

    def __init__(self, server: Server, interval: float = 0.2) -> None:
        self.server, self.interval, self.peak = server, interval, 0
        self.cores = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self.peak = max(self.peak, self.server.rss())
            except (OSError, RuntimeError):  # the server has gone; the scenario will say so
                return
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakRSS:
        self._started = (time.monotonic(), self.server.cpu_seconds())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with suppress(OSError):  # the server has gone; the scenario will say so
            wall, cpu = time.monotonic(), self.server.cpu_seconds()
            self.cores = (cpu - self._started[1]) / (wall - self._started[0])


# -- load drivers ------------------------------------------------------------------------------


@dataclass
class Load:
    """What one scenario run sends: a script (wrk) or user class (locust) and its options."""

    scenario: str
    params: dict[str, int | str]
    flows_per_request: int = 0  # 0: flows are counted by the script (mixed)
    one_connection_per_thread: bool = False


class WrkDriver:
    name = "wrk"
    SCRIPTS = {
        "post1": "post.lua",
        "post1000": "post.lua",
        "get10k": "get.lua",
        "mixed": "mixed.lua",
    }

    def __init__(self, connections: int, wrk_threads: int) -> None:
        self.connections, self.wrk_threads = connections, wrk_threads

    def run(self, url: str, load: Load, duration: int) -> dict:
        threads = self.connections if load.one_connection_per_thread else self.wrk_threads
        script = WRK_DIR / self.SCRIPTS[load.scenario]
        cmd = ["wrk", f"-t{threads}", f"-c{self.connections}", f"-d{duration}s", "--timeout=10s"]
        cmd += ["-s", str(script), url, "--", *(f"{k}={v}" for k, v in load.params.items())]
        env = {**os.environ, "LUA_PATH": f"{WRK_DIR}/?.lua;;"}
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=duration + 60, check=False
        )
        for line in proc.stdout.splitlines():
            if line.startswith(RESULT_PREFIX):
                raw = json.loads(line[len(RESULT_PREFIX) :])
                raw["errors"] = sum(raw["errors"].values())
                return raw
        raise RuntimeError(f"wrk printed no result (exit {proc.returncode}):\n{proc.stderr}")


class LocustDriver:
    """The fallback where wrk is missing: locust's FastHttpUser, one user per connection."""

    name = "locust"
    CLASSES = {"post1": "PostFlows", "post1000": "PostFlows", "get10k": "GetHour", "mixed": "Mixed"}

    def __init__(self, connections: int, out_dir: Path) -> None:
        self.connections, self.out_dir = connections, out_dir

    def run(self, url: str, load: Load, duration: int) -> dict:
        result_path = self.out_dir / "locust-result.json"
        result_path.unlink(missing_ok=True)
        locust = Path(sys.executable).with_name("locust")
        users = str(self.connections)
        cmd = [str(locust), "-f", str(ROOT / "loadtest" / "bench_locust.py"), "--headless"]
        cmd += ["-u", users, "-r", users, "-t", f"{duration}s", "--host", url, "--only-summary"]
        cmd += ["--loglevel", "WARNING", self.CLASSES[load.scenario]]
        env = {**os.environ, "FLOWAGG_BENCH_RESULT": str(result_path), "PYTHONPATH": str(ROOT)}
        env.update({f"FLOWAGG_BENCH_{k.upper()}": str(v) for k, v in load.params.items()})
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=duration + 90, check=False
        )
        if not result_path.exists():
            raise RuntimeError(f"locust wrote no result (exit {proc.returncode}):\n{proc.stderr}")
        return json.loads(result_path.read_text())


# -- scenarios ---------------------------------------------------------------------------------


def load_for(scenario: str, round_no: int) -> Load:
    if scenario == "post1":
        return Load(scenario, {"flows": 1, "keys": 10_000, "hours": 4, "bodies": 2000}, 1)
    if scenario == "post1000":
        return Load(scenario, {"flows": 1000, "keys": 10_000, "hours": 4, "bodies": 16}, 1000)
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


def run_scenario(server: Server, driver, scenario: str, round_no: int, opts) -> dict:
    load = load_for(scenario, round_no)
    if opts.warmup:  # discarded; the mixed warm-up writes to an hour of its own
        warm = Load(
            load.scenario, dict(load.params), load.flows_per_request, load.one_connection_per_thread
        )
        if scenario == "mixed":
            warm.params.update(hour=MIXED_HOUR + 1000 + round_no, run=f"w{round_no}")
        driver.run(server.url, warm, opts.warmup)
    profile = opts.profile and server.name == "service" and round_no == 1
    with PeakRSS(server) as peak, profiling(server, opts, scenario) if profile else nullcontext():
        raw = driver.run(server.url, load, opts.duration)
    return summarise(raw, load, peak.peak, peak.cores)


@contextmanager
def profiling(server: Server, opts, scenario: str) -> Iterator[None]:
    """Sample the server with py-spy while the load runs: only the thread holding the GIL, so
    the shares are of the one core that Python code gets. Writes profile-<scenario>.txt."""
    raw = opts.out_dir / f"profile-{scenario}.raw"
    cmd = [opts.py_spy, "record", "--pid", str(server.proc.pid), "--gil", "--rate", "200"]
    cmd += ["--duration", str(max(1, opts.duration - 1)), "--format", "raw", "--output", str(raw)]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        try:
            spy.wait(opts.duration + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    if raw.exists():
        summary = profile_summary(raw.read_text())
        (opts.out_dir / f"profile-{scenario}.txt").write_text(summary)


def profile_summary(raw: str, top: int = 15) -> str:
    """py-spy's raw stacks ("frame;frame;... count") as the functions with the most samples:
    on top of the stack (self) and anywhere in it (total)."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [re.sub(r" \((?:.*/)?([^/:]+)(?::\d+)?\)$", r" (\1)", f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("thread ", "process "))]
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + n
    lines = [f"{samples} samples of the thread holding the GIL", "", "self  total  function"]
    for frame, n in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"{100 * n / samples:4.1f}% {100 * total[frame] / samples:5.1f}%  {frame}")
    return "\n".join(lines) + "\n"


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


@dataclass
class Results:
    options: dict
    runs: list[dict] = field(default_factory=list)  # one per (round, server, scenario)
    memory: list[dict] = field(default_factory=list)  # one per (round, server)
    digests: dict[str, str] = field(default_factory=dict)

    def values(self, server: str, scenario: str, key: str) -> list[float]:
        return [
            r[key]
            for r in self.runs
            if r["server"] == server and r["scenario"] == scenario and r.get(key) is not None
        ]

    def ratios(self, scenario: str, key: str, num: str, den: str) -> list[float]:
        """Per round: num/den of the same scenario, both measured in that round."""
        by_round: dict[int, dict[str, float]] = {}
        for r in self.runs:
            if r["scenario"] == scenario and r["server"] in (num, den):
                by_round.setdefault(r["round"], {})[r["server"]] = r[key]
        return [v[num] / v[den] for v in by_round.values() if num in v and den in v and v[den]]


def bench(opts, log: Callable[[str], None]) -> Results:
    out = opts.out_dir
    driver = (
        WrkDriver(opts.connections, opts.wrk_threads)
        if opts.driver == "wrk"
        else LocustDriver(opts.connections, out)
    )
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
                    run = run_scenario(server, driver, scenario, round_no, opts)
                    run.update(round=round_no, server=name, scenario=scenario)
                    results.runs.append(run)
                    log(
                        f"round {round_no} {name:8} {scenario:9} {run['req_s']:>10,.0f} req/s"
                        f" {run['flows_s']:>12,.0f} flows/s  p50 {run['p50_ms']:.1f} ms"
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
    """The service's files at git revision ``rev``, extracted into ``into`` (see --compare)."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", rev, "flowagg", "wsgi.py"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


# -- the report --------------------------------------------------------------------------------


def spread(values: list[float], fmt: str = ",.0f") -> str:
    if not values:
        return "n/a"
    mid = format(statistics.median(values), fmt)
    if len(values) == 1:
        return mid
    return f"{mid} ({format(min(values), fmt)}–{format(max(values), fmt)})"


SCENARIO_TITLES = {
    "post1": "POST 1 flow",
    "post1000": "POST 1,000 flows",
    "get10k": "GET 10,000-key hour",
    "mixed": "mixed 95/5, RYW checked",
}


def report(results: Results, opts) -> str:
    lines = [
        f"{opts.rounds} rounds x {opts.duration} s per scenario, driver {opts.driver},"
        f" {opts.connections} connections, waitress --threads={opts.threads};"
        " each figure: median (min–max) over rounds.",
        "",
        "| scenario | server | req/s | flows/s | p50 ms | p99 ms | errors | peak RSS MiB"
        " | server CPU, cores |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scenario in opts.scenarios:
        for server in opts.servers:
            if not results.values(server, scenario, "req_s"):
                continue

            def v(key: str, server: str = server, scenario: str = scenario) -> list[float]:
                return results.values(server, scenario, key)

            flows = spread(v("flows_s")) if scenario != "get10k" else "–"
            lines.append(
                f"| {SCENARIO_TITLES[scenario]} | {server} | {spread(v('req_s'))}"
                f" | {flows} | {spread(v('p50_ms'), '.1f')}"
                f" | {spread(v('p99_ms'), '.1f')} | {sum(v('errors')):.0f}"
                f" | {spread([x / 2**20 for x in v('rss')])} | {spread(v('cores'), '.2f')} |"
            )
    lines += ["", "| target | measured | goal | met |", "| --- | ---: | ---: | --- |"]
    for title, figure, goal, met in targets(results, opts):
        lines.append(f"| {title} | {figure} | {goal} | {met} |")
    if results.memory:
        lines += [
            "",
            "| memory | idle RSS MiB | RSS after 1 post MiB | bytes per key-hour"
            " | RSS after re-posts MiB | growth MiB |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for server in opts.memory:
            rows = [m for m in results.memory if m["server"] == server]

            def mib(key: str, rows: list[dict] = rows) -> str:
                return spread([m[key] / 2**20 for m in rows], ".1f")

            per_key = spread([m["bytes_per_key_hour"] for m in rows])
            lines.append(
                f"| {server}, {opts.memory_keys:,} keys, then {opts.memory_reposts} re-posts"
                f" | {mib('idle')} | {mib('loaded')} | {per_key} | {mib('reposted')}"
                f" | {mib('growth')} |"
            )
    if len(set(results.digests.values())) > 1:
        lines += ["", f"WARNING: GET answers differ between servers: {results.digests}"]
    return "\n".join(lines)


def targets(results: Results, opts) -> list[tuple[str, str, str, str]]:
    rows = []

    def ratio(title: str, scenario: str, key: str, den: str, goal: float) -> None:
        values = results.ratios(scenario, key, "service", den)
        if values:
            met = "yes" if statistics.median(values) >= goal else "**no**"
            rows.append((title, spread(values, ".2f") + "x", f">= {goal}x", met))

    ratio("POST 1 flow, req/s service/ceiling", "post1", "req_s", "ceiling", 0.9)
    ratio("POST 1,000 flows, flows/s service/ceiling", "post1000", "flows_s", "ceiling", 0.8)
    ratio("POST 1,000 flows, flows/s service/naive", "post1000", "flows_s", "naive", 1.5)
    ratio("GET 10,000-key hour, req/s service/naive", "get10k", "req_s", "naive", 1.5)
    if opts.compare:
        for scenario, key in (
            ("post1", "req_s"),
            ("post1000", "flows_s"),
            ("get10k", "req_s"),
            ("mixed", "req_s"),
        ):
            values = results.ratios(scenario, key, "service", "before")
            if values:
                title = f"{SCENARIO_TITLES[scenario]}, {key[:-2]}/s service/before"
                rows.append((title, spread(values, ".2f") + "x", "(this change)", ""))
    violations = results.values("service", "mixed", "violations")
    if violations:
        gets = sum(results.values("service", "mixed", "gets"))
        total = int(sum(violations))
        rows.append(
            (
                "mixed: read-your-writes violations",
                f"{total} in {gets:,.0f} checked GETs",
                "0",
                "yes" if total == 0 else "**no**",
            )
        )
    get_p99 = results.values("service", "mixed", "get_p99_ms")
    if get_p99:
        met = "yes" if max(get_p99) < 50 else "**no**"
        rows.append(("mixed: GET p99 while POSTs run, ms", spread(get_p99, ".1f"), "< 50", met))
    memory = [m for m in results.memory if m["server"] == "service"]
    if memory:
        worst = max(m["bytes_per_key_hour"] for m in memory)
        per_key = spread([m["bytes_per_key_hour"] for m in memory])
        rows.append(
            (
                "memory per distinct key-hour, bytes",
                per_key,
                "<= 200",
                "yes" if worst <= 200 else "**no**",
            )
        )
        # Flat: re-posting the same keys grows RSS by under 5 % of what loading them took.
        growth = max(m["growth"] / (m["loaded"] - m["idle"]) for m in memory)
        rows.append(
            (
                f"RSS growth after {opts.memory_reposts} re-posts of the same keys",
                f"{growth:+.1%} of the load's RSS",
                "flat (< 5%)",
                "yes" if growth < 0.05 else "**no**",
            )
        )
    return rows


# -- command line ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s, 200,000 keys")
    parser.add_argument("--rounds", type=int, help="rounds per server (default 3)")
    parser.add_argument("--duration", type=int, help="seconds per scenario run (default 8)")
    parser.add_argument("--warmup", type=int, help="seconds of discarded load first (default 1)")
    parser.add_argument("--threads", type=int, default=8, help="waitress threads of every server")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections")
    parser.add_argument("--wrk-threads", type=int, default=2)
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
        help="record the service with py-spy (pip install py-spy) in round 1 of each scenario",
    )
    parser.add_argument(
        "--compare",
        metavar="REV",
        help="also run the service as of git revision REV, as server 'before', in every round",
    )
    opts = parser.parse_args(argv)
    quick = opts.quick
    defaults = {
        "rounds": 2 if quick else 3,
        "duration": 3 if quick else 8,
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
    known = [*TARGETS, "before"] if opts.compare else list(TARGETS)
    if opts.compare and "before" not in opts.servers:
        opts.servers.insert(1, "before")
    for name in opts.servers + opts.memory:
        if name not in known:
            parser.error(f"unknown server {name!r} (known: {', '.join(known)})")
    for name in opts.scenarios:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    if min(opts.rounds, opts.duration, opts.memory_keys, opts.memory_batch) < 1 or opts.warmup < 0:
        parser.error("rounds, duration and memory keys must be positive, warmup not negative")
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
