"""flowagg: aggregate network flow records per hour, with read-your-writes GETs."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)

# The server's modules (Flask, the stores, the web layer) are imported by create_app when it
# runs, not with the package: the client and the shipper (flowagg.client, flowagg.ship) are
# parts of the package that need none of them.


def create_app(
    config: Mapping[str, Any] | None = None, *, clock: Callable[[], float] = time.time
) -> Flask:
    """Build the app: settings (defaults < environment < ``config``), store, web layer.

    ``waitress-serve --call flowagg:create_app`` works as well as ``wsgi:app``. An invalid
    setting stops start-up with one line naming the variable. ``clock`` is the wall clock the
    hours window follows (tests pass their own).
    """
    from flask import Flask

    from flowagg import logs, web
    from flowagg.config import ConfigError, for_log, resolve
    from flowagg.metrics import Metrics
    from flowagg.shutdown import exit_on_sigterm
    from flowagg.store.durable import open_durable_store
    from flowagg.store.memory import PartitionedStore, tune_allocator
    from flowagg.store.redis.meta import LayoutMismatch
    from flowagg.store.redis.store import open_redis_store
    from flowagg.tokens import Tokens, TokensFileError
    from flowagg.web.guard import waitress_hosts

    try:
        settings = resolve(os.environ, config)
    except ConfigError as exc:
        raise SystemExit(f"flowagg: invalid configuration: {exc}") from None
    app = Flask(__name__)
    app.config.update(settings)
    # Werkzeug answers 413 for larger bodies before reading them.
    app.config["MAX_CONTENT_LENGTH"] = app.config["FLOWAGG_MAX_BODY_BYTES"]
    log_buffer = logs.configure(
        app.config["FLOWAGG_LOG_FORMAT"],
        app.config["FLOWAGG_LOG_LEVEL"],
        app.config["FLOWAGG_LOG_BUFFER_BYTES"],
    )
    log.info("starting", extra={"fields": for_log(settings)})
    if app.config["FLOWAGG_REDIS_URL"] is None:  # the tables are in this process
        given = (config or {}).get("FLOWAGG_MAX_MEMORY_BYTES")
        given = os.environ.get("FLOWAGG_MAX_MEMORY_BYTES") if given is None else given
        log_memory_limit(app.config["FLOWAGG_MAX_MEMORY_BYTES"], bool(str(given or "").strip()))
        tune_allocator()

    tokens = None
    if app.config["FLOWAGG_TOKENS_FILE"] is not None:
        try:
            tokens = Tokens.load(app.config["FLOWAGG_TOKENS_FILE"])
        except (OSError, TokensFileError) as exc:
            raise SystemExit(
                f"flowagg: invalid configuration: FLOWAGG_TOKENS_FILE: {exc}"
            ) from None
        app.extensions["flowagg.tokens"] = tokens
    elif Path(sys.argv[0]).name == "waitress-serve":
        warn_if_open(waitress_hosts(sys.argv[1:]))

    metrics = Metrics()
    metrics.watch_log(log_buffer)
    if app.config["FLOWAGG_REDIS_URL"] is not None:  # stateless: everything is in Redis
        try:
            store = open_redis_store(app.config, metrics, clock)
        except LayoutMismatch as exc:  # one line, and the status of a refused start
            print(f"flowagg: refusing to start: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        exit_on_sigterm(store)
    elif app.config["FLOWAGG_DATA_DIR"] is None:
        store = PartitionedStore(
            partitions=app.config["FLOWAGG_PARTITIONS"],
            buffer_capacity=app.config["FLOWAGG_BUFFER_CAPACITY"],
            retention_hours=app.config["FLOWAGG_RETENTION_HOURS"],
            on_drain=metrics.observe_drain,
            max_query_rows=app.config["FLOWAGG_MAX_QUERY_ROWS"],
            max_future_hours=app.config["FLOWAGG_MAX_FUTURE_HOURS"],
            max_keys=app.config["FLOWAGG_MAX_KEYS"],
            max_name_bytes=app.config["FLOWAGG_MAX_NAME_BYTES"],
            clock=clock,
            max_memory_bytes=app.config["FLOWAGG_MAX_MEMORY_BYTES"],
        )
    else:  # replays the log before returning, so traffic is accepted only after recovery
        store = open_durable_store(app.config, metrics, clock)
        exit_on_sigterm(store)
    metrics.watch(store)
    # How long Idempotency-Keys are kept, 0 for not at all (the in-memory store keeps none):
    # answers say so in a header, so that a client knows whether its retries may count twice.
    memory = isinstance(store, PartitionedStore)
    app.extensions["flowagg.idempotency_window"] = (
        0 if memory else app.config["FLOWAGG_IDEMPOTENCY_TTL_S"]
    )
    app.extensions["flowagg"] = store
    app.extensions["flowagg.metrics"] = metrics
    app.extensions["flowagg.access"] = logs.AccessLog(log_buffer, app.config["FLOWAGG_LOG_FORMAT"])
    web.register(app)
    return app


def log_memory_limit(limit: int, given: bool) -> None:
    """One line at start-up: what the tables may hold, and where that figure comes from."""
    from flowagg.hostmemory import memory_available

    if given:
        log.info("memory: the tables may hold %d bytes (FLOWAGG_MAX_MEMORY_BYTES)", limit)
    else:
        available, source = memory_available()
        log.info(
            "memory: the tables may hold %d bytes (FLOWAGG_MAX_MEMORY_BYTES unset: a quarter"
            " of %d bytes, %s)",
            limit,
            available,
            source,
        )


def warn_if_open(hosts: list[str]) -> None:
    """One warning when the service, without tokens, listens beyond the loopback interface."""
    from flowagg.web.guard import is_loopback

    exposed = [h for h in hosts if not is_loopback(h)]
    if exposed:
        log.warning(
            "no FLOWAGG_TOKENS_FILE: anyone who reaches %s may read and write",
            ", ".join(exposed),
        )
