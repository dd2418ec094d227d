"""Benchmark: what durability costs in ingest throughput, and how long a restart takes.

    .venv/bin/python -m loadtest.bench_durability throughput [--seconds 8] [--rounds 3]
    .venv/bin/python -m loadtest.bench_durability restart [--flows 10000000] [--keys 100000]

``throughput`` starts ``waitress-serve wsgi:app`` on 127.0.0.1 (port 0) once per variant and
round -- in memory, then FLOWAGG_FSYNC=never, interval and always, each on a fresh data dir --
and has 16 client threads POST 1,000-flow batches as fast as they are answered. It counts the
flows acknowledged in ``--seconds`` after a one-second warm-up and prints the median per variant
and its ratio to the in-memory median of the same run (the machine is shared: only ratios
measured side by side mean anything).

``restart`` ingests ``--flows`` flows over ``--keys`` distinct rows into a data dir (in process,
through the durable store, in 1,000-flow batches), closes it, and times start-ups on that
directory: recovery in process, and ``waitress-serve`` from spawn until it serves. It then fills
the log up to just below FLOWAGG_SNAPSHOT_BYTES, the most a restart can have to replay, and
times that too, and a start-up from the snapshot alone.

Every server listens on 127.0.0.1 only; every run is bounded in time and in requests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from flowagg.config import DEFAULTS
from flowagg.schema import Flow
from flowagg.store.durable import DurableStore

ROOT = Path(__file__).resolve().parent.parent
WAITRESS = str(Path(sys.executable).with_name("waitress-serve"))
VARIANTS = {"memory": None, "never": "never", "interval": "interval", "always": "always"}
BATCH = 1000
HOURS = 4
START_TIMEOUT_S = 600.0  # a restart on a big data dir may take a while; never forever
_SERVING = re.compile(r"Serving on http://127\.0\.0\.1:(\d+)")


def flow_for(k: int) -> Flow:
    """The flow of row ``k``: key k always falls in hour k % HOURS."""
    return Flow(f"src-{k % 1000}", f"dest-{k // 1000}", "vpc-0", 1500, 3000, 400_000 + k % HOURS)


def batch_flows(rng: random.Random, keys: int) -> list[Flow]:
    """1,000 flows over random rows among ``keys``."""
    return [flow_for(rng.randrange(keys)) for _ in range(BATCH)]


def spawn(env: dict[str, str], threads: int) -> tuple[subprocess.Popen, int, float]:
    """Start waitress-serve; returns the process, its port and seconds until it served."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [WAITRESS, "--host=127.0.0.1", "--port=0", f"--threads={threads}", "wsgi:app"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    for line in proc.stderr:
        match = _SERVING.search(line)
        if match:
            # Keep draining stderr so the server never blocks on a full pipe.
            threading.Thread(target=proc.stderr.read, name="bench-stderr", daemon=True).start()
            return proc, int(match.group(1)), time.perf_counter() - started
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError(f"server did not start: {line}")


def stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


# -- throughput ----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far; NaN where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    pid: int, port: int, bodies: list[bytes], clients: int, seconds: float
) -> tuple[float, float]:
    """Flows per second acknowledged by the server at ``port`` during ``seconds``, and the
    server's CPU microseconds per flow meanwhile (less sensitive to a busy machine)."""
    lock = threading.Lock()
    acked = [0]  # flows acknowledged so far, guarded by lock
    errors: list[str] = []
    start = threading.Barrier(clients + 1)
    stop_at = [float("inf")]

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            start.wait(60)
            for i in range(10**7):  # bounded by stop_at long before this
                if time.monotonic() >= stop_at[0]:
                    return
                conn.request("POST", "/flows", bodies[(c + i * clients) % len(bodies)])
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    errors.append(f"{response.status} {body[:200]!r}")
                    return
                with lock:
                    acked[0] += BATCH
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.monotonic() + 1.0 + seconds
    start.wait(60)
    time.sleep(1.0)  # warm-up, not counted
    with lock:
        before, t0, cpu0 = acked[0], time.perf_counter(), cpu_seconds(pid)
    time.sleep(seconds)
    with lock:
        after, t1, cpu1 = acked[0], time.perf_counter(), cpu_seconds(pid)
    for t in threads:
        t.join(120)
    if errors:
        raise RuntimeError(f"{len(errors)} client errors, first: {errors[0]}")
    return (after - before) / (t1 - t0), (cpu1 - cpu0) * 1e6 / max(1, after - before)


def throughput(args: argparse.Namespace) -> None:
    rng = random.Random(1)
    bodies = [
        json.dumps([{f: getattr(x, f) for f in Flow.__struct_fields__} for x in b]).encode()
        for b in (batch_flows(rng, args.keys) for _ in range(64))
    ]
    results: dict[str, list[float]] = {v: [] for v in VARIANTS}
    costs: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_no in range(args.rounds):
        for variant, mode in VARIANTS.items():  # alternate, so drift hits every variant alike
            data = tempfile.mkdtemp(prefix="flowagg-bench-")
            env = {} if mode is None else {"FLOWAGG_DATA_DIR": data, "FLOWAGG_FSYNC": mode}
            proc, port, _ = spawn(env, args.threads)
            try:
                rate, cost = measure(proc.pid, port, bodies, args.clients, args.seconds)
            finally:
                stop(proc)
                shutil.rmtree(data, ignore_errors=True)
            results[variant].append(rate)
            costs[variant].append(cost)
            print(
                f"round {round_no + 1} {variant:8} {rate:12,.0f} flows/s"
                f" {cost:6.2f} server CPU us/flow",
                flush=True,
            )
    base = statistics.median(results["memory"])
    base_cost = statistics.median(costs["memory"])
    print(
        f"\n{args.clients} clients, {BATCH:,}-flow batches, waitress --threads={args.threads},"
        f" {args.rounds} rounds of {args.seconds:g} s"
    )
    print("| variant | flows/s (median) | min-max | ratio | server CPU us/flow | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for variant, rates in results.items():
        median, cost = statistics.median(rates), statistics.median(costs[variant])
        print(
            f"| {variant} | {median:,.0f} | {min(rates):,.0f}-{max(rates):,.0f}"
            f" | {median / base:.2f}x | {cost:.2f} | {cost / base_cost:.2f}x |"
        )


# -- restart -------------------------------------------------------------------------------


def ingest(store: DurableStore, flows: int, keys: int) -> None:
    """``flows`` flows in 1,000-flow batches that cycle through all ``keys`` rows."""
    pool = [
        [flow_for((b * BATCH + i) % keys) for i in range(BATCH)] for b in range(-(-keys // BATCH))
    ]
    for i in range(flows // BATCH):
        store.ingest(pool[i % len(pool)])


def directory_summary(data: Path) -> str:
    sizes = {p.name: p.stat().st_size for p in sorted(data.iterdir()) if p.name != "LOCK"}
    return ", ".join(f"{name.split('-')[0]} {size / 2**20:.1f} MiB" for name, size in sizes.items())


def time_restarts(data: Path, partitions: int, label: str) -> None:
    print(f"{label}: on disk {directory_summary(data)}", flush=True)
    started = time.perf_counter()
    store = DurableStore(data, partitions=partitions, start=False)
    recovered = time.perf_counter() - started
    rows = sum(len(r) for p in store.partitions for r in p.copy_tables()[0].values())
    store.close()
    env = {"FLOWAGG_DATA_DIR": str(data), "FLOWAGG_PARTITIONS": str(partitions)}
    proc, _, serving = spawn(env, 4)
    stop(proc)
    print(
        f"{label}: recovery in process {recovered:.2f} s ({rows:,} rows);"
        f" waitress-serve spawn to serving {serving:.2f} s",
        flush=True,
    )


def restart(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="flowagg-restart-"))
    partitions = DEFAULTS["FLOWAGG_PARTITIONS"]
    try:
        started = time.perf_counter()
        store = DurableStore(data, partitions=partitions, fsync="never")
        ingest(store, args.flows, args.keys)
        store.close()
        print(
            f"ingested {args.flows:,} flows over {args.keys:,} rows in"
            f" {time.perf_counter() - started:.0f} s (in process, fsync=never)",
            flush=True,
        )
        time_restarts(data, partitions, "after ingest")
        # Worst case: the log just below the snapshot threshold, all of it to replay.
        store = DurableStore(data, partitions=partitions, fsync="never", start=False)
        store.write_snapshot(store.begin_snapshot())  # start from a snapshot and an empty log
        threshold = DEFAULTS["FLOWAGG_SNAPSHOT_BYTES"]
        rng = random.Random(3)
        batch = batch_flows(rng, args.keys)
        filled = 0
        while store._wal.size + 60_000 < threshold:
            store.ingest(batch)
            filled += BATCH
            if filled % 262_144 < BATCH:
                for partition in store.partitions:
                    partition.drain_once()
        store.close()
        print(f"filled the log with {filled:,} more flows", flush=True)
        time_restarts(data, partitions, "log at the snapshot threshold")
        # Best case: everything in the snapshot, nothing to replay.
        store = DurableStore(data, partitions=partitions, fsync="never", start=False)
        store.write_snapshot(store.begin_snapshot())
        store.close()
        time_restarts(data, partitions, "snapshot only")
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run")
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--clients", type=int, default=16)
    t.add_argument("--threads", type=int, default=16, help="waitress worker threads")
    t.add_argument("--keys", type=int, default=100_000, help="distinct rows posted")
    r = sub.add_parser("restart")
    r.add_argument("--flows", type=int, default=10_000_000)
    r.add_argument("--keys", type=int, default=100_000, help="distinct rows")
    args = parser.parse_args()
    if args.command == "throughput":
        throughput(args)
    else:
        restart(args)


if __name__ == "__main__":
    main()
