"""Benchmark: ``flowagg ship`` from a 1,000,000-record .gz file to a local server.

    .venv/bin/python -m loadtest.bench_ship [--records 1000000]
        [--shapes vpc,wide,scan] [--rounds 1] [--callgrind 20000]

For each shape of log, a .gz file of ``--records`` records in the default format and a mapping
file are written to a temporary directory. Then, on a fresh data dir each time:

* **ship**: ``waitress-serve wsgi:app`` pinned to core 1 (``taskset``) and ``python -m flowagg
  ship`` pinned to core 0, from spawn to exit: records per second of wall clock (and as a share
  of the speed of ``gzip -dc`` of the same file to /dev/null on the same core, the floor), and
  the server's CPU seconds (user + system, from /proc) per record;
* **baseline**: the same records, each turned into its flow by the same rules but not summed,
  POSTed as JSON in batches of 10,000 flows (what an agent without pre-aggregation sends) to a
  server pinned the same way: the server's CPU per record.

The ratio of the two CPU figures is what pre-aggregation and compression save the server. With
``--callgrind N``, the per-record loop alone (read, decompress, parse, map, sum) runs over the
first N records of each file under ``valgrind --tool=callgrind``: instructions per record, a
figure other loads on the machine do not move. Shapes:

* ``vpc``: 48 applications (16 /16 prefixes with two nested /24 each) of 83 hosts, each calling
  three others, 4 called from 2,000 outside addresses and 6 calling out, over 24 hours: the
  many-records-per-key logs of a VPC;
* ``wide``: the same traffic pattern over 2,000 applications of one /24 each (200,000 hosts):
  fewer records per key;
* ``scan``: as ``vpc``, but every source address a new one (a scan from outside): the
  mapping's memo misses on half the records.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from flowagg.schema import encode
from flowagg.ship.networks import load
from flowagg.ship.records import DEFAULT_FIELDS, Counts, Parser
from flowagg.ship.source import Source

ROOT = Path(__file__).resolve().parent.parent
WAITRESS = str(Path(sys.executable).with_name("waitress-serve"))
BASE_TIME = 1_733_200_000
BASELINE_BATCH = 10_000
SHAPES = ("vpc", "wide", "scan")
_SERVING = re.compile(r"Serving on http://127\.0\.0\.1:(\d+)")


def write_logs(directory: Path, shape: str, records: int, seed: int = 1) -> tuple[Path, Path]:
    """The .gz log and the mapping file of ``shape``."""
    rng = random.Random(seed)
    if shape == "wide":
        apps = {f"app{i}": f"10.{i // 250}.{i % 250}.0/24" for i in range(2000)}
        hosts = {name: [f"{net[:-4]}{h}" for h in range(1, 101)] for name, net in apps.items()}
    else:
        apps = {f"app{i}": f"10.{i}.0.0/16" for i in range(16)}
        apps |= {f"app{i}-{j}": f"10.{i}.{j}.0/24" for i in range(16) for j in (1, 2)}  # nested
        hosts = {}
        for name, net in apps.items():
            base = net.split(".")
            third = base[2] if net.endswith("/24") else str(rng.choice((0, 3)))
            hosts[name] = [f"{base[0]}.{base[1]}.{third}.{h}" for h in range(1, 84)]
    names = list(apps)
    outside = [f"52.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
               for _ in range(2000)]  # fmt: skip
    # Who calls whom: each application a few others, some are called from outside and some
    # call out; the port is the server's.
    edges = [(a, b) for a in names for b in rng.sample(names, 3) if a != b]
    edges += [(None, b) for b in rng.sample(names, 4)] + [(a, None) for a in rng.sample(names, 6)]
    ports = {name: rng.choice((443, 80, 5432, 6379, 8080)) for name in names}
    (directory / f"{shape}.map").write_text("".join(f"{n} {k}\n" for k, n in apps.items()))
    path = directory / f"{shape}.log.gz"
    lines = []
    for i in range(records):
        client, server = rng.choice(edges)
        src = rng.choice(hosts[client]) if client else rng.choice(outside)
        if shape == "scan":  # every source a new outside address
            src = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{i % 256}"
        dst = rng.choice(hosts[server]) if server else rng.choice(outside)
        sport, dport = rng.randrange(32768, 61000), ports.get(server, 443)
        if rng.random() < 0.5:  # the reply
            src, dst, sport, dport = dst, src, dport, sport
        start = BASE_TIME + i * 86_400 // records
        action = "REJECT" if rng.random() < 0.03 else "ACCEPT"
        lines.append(
            f"2 123456789012 eni-0a1b2c3d {src} {dst} {sport} {dport} 6 {rng.randrange(1, 50)}"
            f" {rng.randrange(40, 200_000)} {start} {start + 60} {action} OK\n"
        )
    with gzip.open(path, "wt", compresslevel=6) as file:
        file.writelines(lines)
    return path, directory / f"{shape}.map"


class _Unsummed(dict):
    """An ``agg`` for the parser that keeps every record's flow instead of summing them."""

    def __init__(self) -> None:
        super().__init__()
        self.flows: list = []

    def get(self, key, default=None):  # noqa: ARG002 (never found: each record is new)
        return None

    def __setitem__(self, key, counters) -> None:
        src, dest, vpc, hour = key
        self.flows.append((src, dest, vpc, counters[0], counters[1], hour))


def parse_file(path: Path, map_path: Path, limit: int | None = None, summed: bool = True):
    """Read the file as the shipper does; the flows of every record if not ``summed``."""
    source = Source(str(path))
    source.start(tuple(DEFAULT_FIELDS), 0)
    parser = Parser(source.fmt, load(str(map_path)), Counts(), str(path))
    agg = {} if summed else _Unsummed()
    read = 0
    while limit is None or read < limit:
        lines, _ = source.read()
        if not lines:
            break
        lines = lines if limit is None else lines[: limit - read]
        parser.parse(lines, 0, len(lines), 10**12, 1, agg)
        read += len(lines)
    source.close()
    return parser.counts, agg


class Server:
    def __init__(self, data: Path, log: Path) -> None:
        cmd = ["taskset", "-c", "1", WAITRESS, "--host=127.0.0.1", "--port=0", "--threads=8"]
        env = {**os.environ, "FLOWAGG_DATA_DIR": str(data), "FLOWAGG_LOG_LEVEL": "warning"}
        self.log = open(log, "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*cmd, "wsgi:app"], cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while not (found := _SERVING.search(log.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log.read_text()}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{found.group(1)}"

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        self.log.close()


def run_ship(work: Path, path: Path, map_path: Path) -> dict:
    server = Server(work / "data-ship", work / "server-ship.log")
    try:
        before = server.cpu_seconds()
        started = time.perf_counter()
        done = subprocess.run(
            ["taskset", "-c", "0", sys.executable, "-m", "flowagg", "ship", "--url", server.url,
             "--map", str(map_path), "--state", str(work / "ship.state"), str(path)],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        server_cpu = server.cpu_seconds() - before
    finally:
        server.stop()
    records = int(re.search(r"records read: ([\d,]+)", done.stderr).group(1).replace(",", ""))
    flows = re.search(r"flows sent: ([\d,]+) .* in ([\d,]+) POSTs", done.stderr)
    return {
        "records": records,
        "wall_s": wall,
        "records_per_s": records / wall,
        "server_cpu_s": server_cpu,
        "flows": int(flows.group(1).replace(",", "")),
        "posts": int(flows.group(2).replace(",", "")),
    }


def gunzip_seconds(path: Path) -> float:
    """Wall time of ``gzip -dc`` of the file to /dev/null on the shipper's core: the floor."""
    started = time.perf_counter()
    with open(os.devnull, "wb") as null:
        subprocess.run(["taskset", "-c", "0", "gzip", "-dc", str(path)], stdout=null, check=True)
    return time.perf_counter() - started


def run_baseline(work: Path, records: int, flows: list) -> dict:
    bodies = [
        encode([dict(zip(("src_app", "dest_app", "vpc_id", "bytes_tx", "bytes_rx", "hour"), f,
                         strict=True)) for f in flows[i : i + BASELINE_BATCH]])
        for i in range(0, len(flows), BASELINE_BATCH)
    ]  # fmt: skip
    server = Server(work / "data-base", work / "server-base.log")
    try:
        before = server.cpu_seconds()
        for body in bodies:
            request = urllib.request.Request(server.url + "/flows", data=body, method="POST")
            with urllib.request.urlopen(request, timeout=120) as answer:
                json.loads(answer.read())
        server_cpu = server.cpu_seconds() - before
    finally:
        server.stop()
    return {"server_cpu_s": server_cpu, "posts": len(bodies), "records": records}


def callgrind(path: Path, map_path: Path, records: int) -> float | None:
    """Instructions per record of the per-record loop, counted by callgrind."""
    if shutil.which("valgrind") is None:
        return None
    code = (
        "import sys; from pathlib import Path; from loadtest.bench_ship import parse_file;"
        f" parse_file(Path({str(path)!r}), Path({str(map_path)!r}), {records})"
    )
    counted = []
    for limit in (0, records):  # the difference leaves start-up out
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
             sys.executable, "-c", code.replace(f"{records})", f"{limit})")],
            cwd=ROOT, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        counted.append(int(re.search(r"Collected : (\d+)", done.stderr).group(1)))
    return (counted[1] - counted[0]) / records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--callgrind", type=int, default=0, metavar="N")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "loadtest" / "results" / "bench_ship.json"
    )
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="flowagg-bench-ship-") as tmp:
        work = Path(tmp)
        for shape in args.shapes.split(","):
            path, map_path = write_logs(work, shape, args.records)
            _, unsummed = parse_file(path, map_path, summed=False)
            for round_ in range(args.rounds):
                for stale in ("data-ship", "data-base"):
                    shutil.rmtree(work / stale, ignore_errors=True)
                (work / "ship.state").unlink(missing_ok=True)
                ship = run_ship(work, path, map_path)
                ship["gunzip_s"] = gunzip_seconds(path)
                base = run_baseline(work, ship["records"], unsummed.flows)
                ratio = (base["server_cpu_s"] / base["records"]) / (
                    ship["server_cpu_s"] / ship["records"]
                )
                row = {"shape": shape, "round": round_ + 1, "ship": ship, "baseline": base,
                       "server_cpu_ratio": ratio, "gz_bytes": path.stat().st_size}  # fmt: skip
                print(
                    f"{shape} round {round_ + 1}: {ship['records']:,} records in"
                    f" {ship['wall_s']:.2f} s = {ship['records_per_s']:,.0f} records/s"
                    f" ({ship['gunzip_s'] / ship['wall_s']:.0%} of gzip -dc's speed);"
                    f" {ship['flows']:,} flows in {ship['posts']} POSTs; server CPU per record"
                    f" {1e6 * ship['server_cpu_s'] / ship['records']:.2f} us shipped vs"
                    f" {1e6 * base['server_cpu_s'] / base['records']:.2f} us one flow per record"
                    f" ({ratio:.1f}x less)",
                    flush=True,
                )
                results.setdefault(shape, []).append(row)
            if args.callgrind:
                per_record = callgrind(path, map_path, args.callgrind)
                results[shape][-1]["callgrind_ir_per_record"] = per_record
                print(f"{shape}: callgrind {per_record:,.0f} instructions per record", flush=True)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
