"""``python -m flowagg``: serve with waitress; on SIGTERM or SIGINT, shut down cleanly.

    python -m flowagg [--host 127.0.0.1] [--port 8080] [--threads 8] [--shutdown-timeout 30]
    python -m flowagg token NAME ROLE    # a new bearer token, and its line for the tokens file

Settings come from ``FLOWAGG_*`` environment variables as for ``waitress-serve``. Exit status:
0 after a clean shutdown, 1 if it did not finish in time, 2 if start-up was refused.
"""

from __future__ import annotations

import argparse
import logging
import sys

from flowagg import create_app, warn_if_open
from flowagg.config import ConfigError
from flowagg.shutdown import serve
from flowagg.store.durable import CorruptFile, DataDirInUse
from flowagg.tokens import ROLES, new_token

log = logging.getLogger("flowagg")


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
    if argv[:1] == ["token"]:
        return token_command(argv[1:])
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
    args = parser.parse_args(argv)
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
    return serve(
        app,
        shutdown_timeout=args.shutdown_timeout,
        host=args.host,
        port=args.port,
        threads=args.threads,
    )


if __name__ == "__main__":
    sys.exit(main())
