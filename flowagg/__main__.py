"""``python -m flowagg``: serve with waitress; on SIGTERM or SIGINT, shut down cleanly.

    python -m flowagg [--host 127.0.0.1] [--port 8080] [--threads 8] [--shutdown-timeout 30]

Settings come from ``FLOWAGG_*`` environment variables as for ``waitress-serve``. Exit status:
0 after a clean shutdown, 1 if it did not finish in time, 2 if start-up was refused.
"""

from __future__ import annotations

import argparse
import logging
import sys

from flowagg import create_app
from flowagg.config import ConfigError
from flowagg.shutdown import serve
from flowagg.store.durable import CorruptFile, DataDirInUse

log = logging.getLogger("flowagg")


def main(argv: list[str] | None = None) -> int:
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
    return serve(
        app,
        shutdown_timeout=args.shutdown_timeout,
        host=args.host,
        port=args.port,
        threads=args.threads,
    )


if __name__ == "__main__":
    sys.exit(main())
