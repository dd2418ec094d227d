"""What the service's memory costs, by shape of the data: RSS of a real waitress-serve process.

    .venv/bin/python -m loadtest.bench_memory                    # every shape, 3 rounds
    .venv/bin/python -m loadtest.bench_memory --shapes one-key-per-hour --rounds 1

Each round starts a fresh ``waitress-serve`` (the bounds ``make run`` gives it) on 127.0.0.1 per
shape, takes its RSS once idle (after one POST and one GET, so lazy imports are done), loads the
shape with 50,000-flow bodies from 8 connections at once (fewer flows per body where names are
long, to stay under the 64 MiB body limit), waits until every flow is applied (a GET of each
partition), and takes its RSS again. The figure is RSS growth above the idle process, which is
what the tables hold plus whatever the allocator keeps of the requests' memory:

- one-key-per-hour    1,000,000 key-hours, each flow in an hour of its own
- short-names         1,000,000 key-hours, 10,000 keys per hour (100 hours), names ~7 bytes
- long-names          200,000 key-hours, 10,000 keys per hour, every name 1,024 bytes
- copies              20 bodies of 20,000 copies of one key with 1,024-byte names: ~0 growth
- one-big-body        one 64 MiB body: a flow with three 1,024-byte names, then tiny flows;
                      the peak RSS (VmHWM, reset first) above idle against the body's size
- one-big-body-long-names   the same with every flow a new key of three 1,024-byte names
- retention           short-names into the hours of a clock faked with libfaketime and
                      FLOWAGG_RETENTION_HOURS, then the clock moved past them: RSS after the
                      drop against RSS before the load

Targets (issue): <= 160 bytes per key-hour at one key per hour, <= 100 for short names, peak
<= 3x the body for one 64 MiB request, RSS back within 10 % after retention. Results go to
loadtest/results/memory-<time>.json and as a markdown table to stdout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import queue
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from loadtest import ROOT
from loadtest.servers import REQUEST_TIMEOUT, Server

CONNECTIONS = 8
BODY_FLOWS = 50_000
LONG = 1024  # bytes of a long name
FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


def flow(src: str, dest: str, vpc: str, hour: int, tx: int = 1) -> bytes:
    return (
        f'{{"src_app":"{src}","dest_app":"{dest}","vpc_id":"{vpc}",'
        f'"bytes_tx":{tx},"bytes_rx":2,"hour":{hour}}}'
    ).encode()


def bodies(flows: Iterator[bytes], per_body: int) -> Iterator[bytes]:
    chunk: list[bytes] = []
    for f in flows:
        chunk.append(f)
        if len(chunk) == per_body:
            yield b"[" + b",".join(chunk) + b"]"
            chunk = []
    if chunk:
        yield b"[" + b",".join(chunk) + b"]"


def short_names(key_hours: int, first_hour: int) -> Iterator[bytes]:
    for n in range(key_hours):
        k = n % 10_000
        yield flow(f"src-{k % 100}", f"dest-{k // 100}", "vpc-0", first_hour + n // 10_000)


def post_all(server: Server, payloads: list[bytes], connections: int = CONNECTIONS) -> list[int]:
    """POST every body, from ``connections`` keep-alive connections at once; the statuses."""
    work: queue.Queue[bytes] = queue.Queue()
    for body in payloads:
        work.put(body)
    statuses: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT)
        try:
            while True:
                try:
                    body = work.get_nowait()
                except queue.Empty:
                    return
                conn.request("POST", "/flows", body=body)
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
        except BaseException as exc:  # noqa: BLE001 (reported by the caller)
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(REQUEST_TIMEOUT * len(payloads))
    if errors:
        raise errors[0]
    return statuses


def applied(server: Server, partitions: int = 8) -> None:
    """Wait until every partition applied what it was given (a GET waits for its partition)."""
    for hour in range(partitions):
        status, _ = server.request("GET", f"/flows?hour={10**12 + hour}")
        if status != 200:
            raise RuntimeError(f"barrier GET answered {status}")


def hwm(server: Server) -> int:
    with open(f"/proc/{server.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def idle(server: Server) -> int:
    server.request("POST", "/flows", b"[]")
    server.request("GET", "/flows?hour=0")
    time.sleep(0.5)
    return server.rss()


def load(server: Server, payloads: list[bytes]) -> None:
    statuses = post_all(server, payloads)
    if set(statuses) != {200}:
        raise RuntimeError(f"{server.name}: POSTs answered {sorted(set(statuses))}")
    applied(server)


def per_key_hour(key_hours: int, make: Callable[[], Iterator[bytes]], per_body: int):
    def run(server: Server) -> dict:
        payloads = list(bodies(make(), per_body))
        base = idle(server)
        load(server, payloads)
        grown = server.rss() - base
        return {"idle": base, "growth": grown, "per_key_hour": grown / key_hours}

    return run


def copies(server: Server) -> dict:
    name = "c" * LONG
    body = next(bodies((flow(name, name, name, 5) for _ in range(20_000)), 20_000))
    base = idle(server)
    load(server, [body] * 20)
    grown = server.rss() - base
    return {"idle": base, "growth": grown, "per_key_hour": grown}


def one_big_body(server: Server, long: bool = False) -> dict:
    first = flow("a" * LONG, "b" * LONG, "c" * LONG, 9)
    limit = 64 * 2**20
    if long:  # every flow a new key of three long names
        count = limit // (len(first) + 1) - 1
        body = (
            b"["
            + b",".join(
                flow(f"{k:08d}" + "a" * (LONG - 8), "b" * LONG, "c" * LONG, 9) for k in range(count)
            )
            + b"]"
        )
    else:
        tiny = flow("a", "b", "c", 9)
        count = (limit - len(first) - 2) // (len(tiny) + 1)
        body = b"[" + first + (b"," + tiny) * count + b"]"
    assert len(body) <= limit
    base = idle(server)
    with open(f"/proc/{server.proc.pid}/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS
    load(server, [body])
    peak = hwm(server) - base
    return {"idle": base, "body": len(body), "peak": peak, "ratio": peak / len(body)}


def retention(server: Server, clock: Path) -> dict:
    """Two cycles of loading 100 hours and moving the clock past them: RSS after each drop
    against the idle process, and the second against the first (what a cycle leaves behind
    once the process has served such a load once)."""
    now = int(time.time()) // 3600
    base = idle(server)
    after = []
    for cycle in range(2):
        shift = 400 * cycle  # hours the clock is ahead by now
        load(server, list(bodies(short_names(1_000_000, now + shift - 99), BODY_FLOWS)))
        loaded = server.rss()
        clock.write_text(f"+{shift + 400}h\n")  # every hour loaded leaves the window
        time.sleep(1.5)  # libfaketime reads the file again after FAKETIME_CACHE_DURATION
        server.request("GET", "/flows/hours")  # a read applies retention
        time.sleep(0.5)
        after.append(server.rss())
    return {
        "idle": base,
        "loaded": loaded,
        "after": after,
        "ratio": after[0] / base,
        "steady": after[1] / after[0],
    }


SHAPES: dict[str, tuple[Callable[..., dict], str]] = {
    "one-key-per-hour": (
        per_key_hour(
            1_000_000, lambda: (flow("src-1", "dest-1", "vpc-0", h) for h in range(10**6)), 50_000
        ),
        "bytes per key-hour",
    ),
    "short-names": (
        per_key_hour(1_000_000, lambda: short_names(1_000_000, 1000), BODY_FLOWS),
        "bytes per key-hour",
    ),
    "long-names": (
        per_key_hour(
            200_000,
            lambda: (
                flow(f"{n % 10_000:08d}" + "s" * (LONG - 8), "d" * LONG, "v" * LONG, n // 10_000)
                for n in range(200_000)
            ),
            20_000,
        ),
        "bytes per key-hour",
    ),
    "copies": (copies, "growth bytes"),
    "one-big-body": (one_big_body, "peak / body"),
    "one-big-body-long-names": (lambda server: one_big_body(server, long=True), "peak / body"),
    "retention": (retention, "RSS after the drop / idle (2nd cycle / 1st)"),
}


def run_shape(name: str, out: Path, tree: Path = ROOT) -> dict:
    measure, _ = SHAPES[name]
    env = {}
    clock = None
    if name == "retention":
        if not Path(FAKETIME).exists():
            raise RuntimeError("retention needs libfaketime (Debian package faketime)")
        clock = Path(tempfile.mkstemp(prefix="flowagg-clock-")[1])
        clock.write_text("+0\n")
        env = {
            "LD_PRELOAD": FAKETIME,
            "FAKETIME_TIMESTAMP_FILE": str(clock),
            "FAKETIME_CACHE_DURATION": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FLOWAGG_RETENTION_HOURS": "200",
        }
    server = Server(
        "service",
        8,
        out / f"memory-{name}.log",
        cwd=tree,
        env={"FLOWAGG_LOG_LEVEL": "warning", **env},
    )
    server.start()
    try:
        return measure(server, clock) if clock else measure(server)
    finally:
        server.stop()
        if clock:
            clock.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--tree",
        type=Path,
        default=ROOT,
        help="serve the flowagg of this source tree instead (e.g. an older revision, its table"
        " module built in place)",
    )
    opts = parser.parse_args()
    shapes = [s for s in opts.shapes.split(",") if s]
    unknown = set(shapes) - set(SHAPES)
    if unknown:
        parser.error(f"unknown shapes {sorted(unknown)}; known: {', '.join(SHAPES)}")
    out = ROOT / "loadtest" / "results"
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict[str, list[dict]] = {name: [] for name in shapes}
    for round_no in range(1, opts.rounds + 1):
        for name in shapes:
            result = run_shape(name, out, opts.tree)
            results[name].append(result)
            print(f"round {round_no} {name}: {json.dumps(result)}", flush=True)
    print(f"\n{time.monotonic() - started:.0f} s; median and min-max over {opts.rounds} round(s)\n")
    print("| shape | figure | median (min–max) | idle RSS MiB |")
    print("| --- | --- | ---: | ---: |")
    for name in shapes:
        key = "ratio" if name.startswith("one-big-body") or name == "retention" else "per_key_hour"
        values = [r[key] for r in results[name]]
        fmt = ".2f" if key == "ratio" else ",.0f"
        idle_mib = statistics.median(r["idle"] for r in results[name]) / 2**20
        extra = ""
        if name == "retention":
            steady = [r["steady"] for r in results[name]]
            extra = f" ({statistics.median(steady):.2f})"
        print(
            f"| {name} | {SHAPES[name][1]} | {statistics.median(values):{fmt}}"
            f" ({min(values):{fmt}}–{max(values):{fmt}}){extra} | {idle_mib:.0f} |"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"memory-{stamp}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
