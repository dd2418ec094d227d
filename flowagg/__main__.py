"""``python -m flowagg``: serve with waitress; on SIGTERM or SIGINT, shut down cleanly.

    python -m flowagg [serve] [--host 127.0.0.1] [--port 8080] [--threads 8]
                      [--shutdown-timeout 30] [--connection-limit 1000] [--channel-timeout 15]
    python -m flowagg --waitress-flags
    python -m flowagg token NAME ROLE    # a new bearer token, and its line for the tokens file
    python -m flowagg ship [options] FILE...   # VPC Flow Logs to the service (flowagg.ship)

``flowagg`` (the console script ``pip install`` puts on the PATH) is the same command.

Settings come from ``FLOWAGG_*`` environment variables as for ``waitress-serve``. Exit status:
0 after a clean shutdown, 1 if it did not finish in time, 2 if start-up was refused.

Both ways of serving bound what one client can hold with the same waitress settings
(``waitress_settings``): ``--waitress-flags`` prints them as ``waitress-serve`` options, which is
how ``make run`` gets them.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
from collections.abc import Mapping
from typing import Any

from flowagg.config import ConfigError, resolve
from flowagg.tokens import ROLES, new_token

log = logging.getLogger("flowagg")

# What one client can hold of the server. waitress's own defaults let 99 sockets that send a
# header byte now and then take every connection (limit 100), and spool a body of up to 1 GiB to
# disk before refusing it.
CONNECTION_LIMIT = 1000  # connections held open; waitress counts its listener and wake-up pipe
CHANNEL_TIMEOUT_S = 15  # a connection idle this long (nothing in flight, sent or received) closes
CLEANUP_INTERVAL_S = 5  # how often idle connections are looked for: they close 15 to 20 s idle
MAX_HEADER_BYTES = 32_768  # request line and headers; nginx's cap too (4 buffers of 8k)
# A connection may hold its socket, a temporary file for a large body and one for a large answer;
# the process needs that many open files, and some of its own (logs, the data dir).
FILES_PER_CONNECTION = 3
SPARE_FILES = 64


def waitress_settings(
    settings: Mapping[str, Any],
    connection_limit: int = CONNECTION_LIMIT,
    channel_timeout: int = CHANNEL_TIMEOUT_S,
) -> dict[str, Any]:
    """The waitress adjustments that bound one client, for the app's resolved ``settings``."""
    return {
        "connection_limit": connection_limit,
        "channel_timeout": channel_timeout,
        "cleanup_interval": min(CLEANUP_INTERVAL_S, channel_timeout),
        # waitress refuses a size >= its setting, so each is the largest accepted plus one. It
        # answers 413 to a Content-Length over FLOWAGG_MAX_BODY_BYTES as soon as the headers
        # are in, before any body byte is read.
        "max_request_header_size": MAX_HEADER_BYTES + 1,
        "max_request_body_size": settings["FLOWAGG_MAX_BODY_BYTES"] + 1,
        # poll(), not select(): select() refuses a descriptor past 1023, and waitress's loop dies
        # of it; a thousand connections with their temporary files get there.
        "asyncore_use_poll": True,
    }


def waitress_flags(adjustments: Mapping[str, Any]) -> list[str]:
    """``adjustments`` as ``waitress-serve`` options: ``--connection-limit=1000``, ..."""
    flags = []
    for name, value in adjustments.items():
        option = name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{option}" if value else f"--no-{option}")
        else:
            flags.append(f"--{option}={value}")
    return flags


def open_files_needed(connection_limit: int) -> int:
    return FILES_PER_CONNECTION * connection_limit + SPARE_FILES


def raise_open_files(needed: int) -> None:
    """Raise the soft limit on open files to ``needed``, as far as the hard limit lets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "open files are limited to %d, fewer than the %d that --connection-limit needs",
            soft,
            needed,
        )


def token_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flowagg token",
        description="Print a new random bearer token, then its line for FLOWAGG_TOKENS_FILE"
        " (which holds only the token's hash).",
    )
    parser.add_argument("name", help="who uses it: shown in the access log, never the token")
    parser.add_argument("role", choices=sorted(ROLES), help="read, write, or admin (both)")
    args = parser.parse_args(argv)
    try:
        token, line = new_token(args.name, args.role)
    except ValueError as exc:
        parser.error(str(exc))
    print(token)
    print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ship"]:  # imports nothing of the server
        from flowagg.ship.cli import main as ship

        return ship(argv[1:])
    if argv[:1] == ["token"]:
        return token_command(argv[1:])
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    return serve_command(argv)


def serve_command(argv: list[str]) -> int:
    from flowagg import create_app, warn_if_open
    from flowagg.shutdown import serve
    from flowagg.store.durable import CorruptFile, DataDirInUse

    parser = argparse.ArgumentParser(prog="python -m flowagg", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    parser.add_argument("--threads", type=int, default=8, help="waitress worker threads")
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds for requests in flight and the store to finish after SIGTERM",
    )
    parser.add_argument(
        "--connection-limit",
        type=int,
        default=CONNECTION_LIMIT,
        help="connections held open at once; more wait in the listen backlog",
    )
    parser.add_argument(
        "--channel-timeout",
        type=int,
        default=CHANNEL_TIMEOUT_S,
        help="seconds after which an idle connection is closed",
    )
    parser.add_argument(
        "--waitress-flags",
        action="store_true",
        help="print the waitress-serve options that bound one client (make run uses them), exit",
    )
    args = parser.parse_args(argv)
    if args.connection_limit < 1 or args.channel_timeout < 1:
        parser.error("--connection-limit and --channel-timeout must be >= 1")
    if args.waitress_flags:
        try:
            settings = resolve(os.environ)
        except ConfigError as exc:
            print(f"flowagg: invalid configuration: {exc}", file=sys.stderr)
            return 2
        adjustments = waitress_settings(settings, args.connection_limit, args.channel_timeout)
        print(" ".join(waitress_flags(adjustments)))
        return 0
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app = create_app()
    except (ConfigError, CorruptFile, DataDirInUse, OSError) as exc:
        log.critical("refusing to start: %s", exc)
        return 2
    if "flowagg.tokens" not in app.extensions:
        warn_if_open([args.host])
    raise_open_files(open_files_needed(args.connection_limit))
    return serve(
        app,
        shutdown_timeout=args.shutdown_timeout,
        host=args.host,
        port=args.port,
        threads=args.threads,
        **waitress_settings(app.config, args.connection_limit, args.channel_timeout),
    )


if __name__ == "__main__":
    sys.exit(main())
