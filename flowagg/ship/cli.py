"""``flowagg ship [options] FILE...``: AWS VPC Flow Logs to a flowagg service, exactly once.

Exit status: 0 when everything was shipped (or, with --follow, on SIGTERM or SIGINT), 1 when the
server refused a batch or could not be reached in time (everything before it was shipped, and
the next run goes on from there), 2 on bad usage (options, the mapping file, the state file).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from flowagg.client import Client, FlowaggError
from flowagg.ship.follow import follow
from flowagg.ship.networks import MapError, Networks, load
from flowagg.ship.progress import Progress, summary
from flowagg.ship.records import DEFAULT_FIELDS, NEEDED, FormatError
from flowagg.ship.shipper import Settings, Shipper, Stop
from flowagg.ship.source import SourceError
from flowagg.ship.state import State, StateError

PROG = "flowagg ship"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Ship AWS VPC Flow Log files (plain or .gz) to flowagg: one flow per record,"
        " summed per batch, exactly once against a server that keeps Idempotency-Keys.",
        epilog="Exit status: 0 all shipped, 1 stopped (refused, or unreachable), 2 bad usage.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="flow log files, plain or .gz")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the service (%(default)s)")
    p.add_argument("--token", help="bearer token, role write (default: $FLOWAGG_TOKEN)")
    p.add_argument("--map", metavar="FILE", help="lines 'CIDR NAME': addresses to applications")
    p.add_argument("--unmapped", default="external", help="name of other addresses (%(default)s)")
    p.add_argument("--vpc-id", default="unknown", help="vpc_id when a record has none")
    p.add_argument("--include-rejected", action="store_true", help="ship REJECT records too")
    p.add_argument("--fields", help="field names of files without a header (default: v2 format)")
    p.add_argument("--batch", type=int, default=10_000, help="records per POST (%(default)s)")
    p.add_argument("--no-compress", action="store_true", help="send bodies without gzip")
    p.add_argument("--state", default="flowagg-ship.state", help="state file (%(default)s)")
    p.add_argument("--follow", action="store_true", help="keep reading as files grow or rotate")
    p.add_argument(
        "--flush-interval",
        type=float,
        default=5.0,
        help="with --follow: seconds a read line"
        " may wait for its batch to fill before it is sent (%(default)s)",
    )
    p.add_argument(
        "--rotate-wait",
        type=float,
        default=5.0,
        help="with --follow: seconds a rotated file is still read after it last grew (%(default)s)",
    )
    p.add_argument(
        "--retry-for",
        type=float,
        default=None,
        help="seconds to retry an unreachable or"
        " unavailable server before stopping (default 300; with --follow, for ever)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    usage = parser().error
    if args.batch < 1 or args.flush_interval <= 0 or args.rotate_wait < 0:
        usage("--batch must be >= 1, --flush-interval > 0, --rotate-wait >= 0")
    fields = tuple(DEFAULT_FIELDS)
    if args.fields:
        fields = tuple(args.fields.replace(",", " ").lower().replace("_", "-").split())
        missing = [name for name in NEEDED if name not in fields]
        if missing:
            usage(f"--fields names no {', '.join(missing)}")
    for path in args.files:
        if os.path.isdir(path) or (not args.follow and not os.path.isfile(path)):
            usage(f"{path}: no such file")
    try:
        networks = load(args.map, args.unmapped) if args.map else Networks(unmapped=args.unmapped)
    except MapError as exc:
        usage(f"--map: {exc}")
    retry_for = args.retry_for if args.retry_for is not None else (None if args.follow else 300)
    progress = Progress(sum(_size(p) for p in args.files))
    log = progress.log
    try:
        client = Client(
            args.url,
            args.token or os.environ.get("FLOWAGG_TOKEN") or None,
            compress=not args.no_compress,
            retry_for=retry_for,
            on_retry=lambda n, delay, why: log(f"{PROG}: {why}; retry {n} in {delay:.1f} s"),
        )
    except ValueError as exc:
        usage(f"--url: {exc}")
    try:
        state = State(args.state).open()
    except StateError as exc:
        progress.close()
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    settings = Settings(networks, fields, args.vpc_id, args.include_rejected, args.batch)
    shipper = Shipper(client, state, settings, log)
    started = time.monotonic()
    status = 0
    _signals_stop()
    try:
        _announce(client, state, args.files, log)
        if args.follow:
            follow(shipper, args.files, args.flush_interval, args.rotate_wait, progress)
        else:
            status = _once(shipper, args.files, progress)
    except KeyboardInterrupt:  # SIGINT or SIGTERM: what was sent is recorded
        status = 0 if args.follow else 1
        log(f"{PROG}: stopped by a signal; the next run goes on from here")
    except Stop as exc:
        log(f"{PROG}: stopped: {exc}")
        status = 1
    except FlowaggError as exc:
        log(f"{PROG}: stopped: {exc}")
        status = 1
    except OSError as exc:  # the state file cannot be written
        log(f"{PROG}: stopped: {exc}")
        status = 1
    finally:
        try:
            if state.dirty:
                state.save()
        except OSError as exc:
            log(f"{PROG}: cannot save {args.state}: {exc}")
            status = 1
        state.close()
        client.close()
        progress.close()
    print(summary(shipper.totals, client.retries, time.monotonic() - started), file=sys.stderr)
    return status


def _once(shipper: Shipper, paths: list[str], progress: Progress) -> int:
    status = 0
    done = 0
    for path in paths:
        size = _size(path)
        shipper.on_read = lambda tail, before=done: progress.update(
            before + tail.source.disk_position(), shipper.totals
        )
        tail = None
        try:
            tail = shipper.open(path)
            if tail is not None:
                shipper.pump(tail)
                shipper.finish(tail)
        except (SourceError, FormatError, OSError) as exc:
            progress.log(f"{PROG}: {path}: {exc}; the rest of it is not shipped")
            status = 1
            if tail is not None:
                tail.source.close()
        done += size
        shipper.drain()
        if shipper.state.dirty:
            shipper.state.save()
    return status


def _announce(client: Client, state: State, paths: list[str], log) -> None:
    """Say what delivery the server offers, and what the state holds in flight elsewhere."""
    window = client.probe()
    if window is None:
        log(
            f"{PROG}: the server does not say whether it keeps Idempotency-Keys: delivery is at"
            " least once (a batch sent again after a crash may count twice)"
        )
    elif window == 0:
        log(
            f"{PROG}: the server keeps no Idempotency-Keys (in-memory store): delivery is at"
            " least once (a batch in flight at a crash is sent again and may count twice)"
        )
    else:
        log(f"{PROG}: the server keeps Idempotency-Keys for {window} s: delivery is exactly once")
    now = time.time()
    given = {os.path.abspath(p) for p in paths}
    for entry in state.files.values():
        flight = entry["in_flight"]
        if flight is None:
            continue
        where = f"{entry['path']}, lines {flight['first_line']}-{flight['last_line']}"
        if os.path.abspath(entry["path"]) not in given:
            log(f"{PROG}: {where} are in flight from an earlier run: give that file to finish")
        elif window and now - flight["at"] > window:
            log(
                f"{PROG}: {where} were sent {now - flight['at']:.0f} s ago, longer than the"
                f" server keeps keys ({window} s): sending them again may count them twice"
            )


def _signals_stop() -> None:
    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
