"""Baseline (c), the naive peer: one global lock around one dict, no buffers, no threads.

POST decodes and validates like the service, then adds every flow under the lock before it
answers; GET builds the same JSON response as the service from the dict under the same lock.

    waitress-serve --threads=8 --call loadtest.naive:create_app
"""

from __future__ import annotations

import threading

from flask import Flask, Response, request

from flowagg.config import DEFAULTS
from flowagg.schema import Flow, InvalidBody, decode_flows, encode

Hours = dict[int, dict[tuple[str, str, str], list[int]]]


def add(hours: Hours, flows: list[Flow]) -> None:
    """What a POST does under the lock."""
    for f in flows:
        rows = hours.setdefault(f.hour, {})
        key = (f.src_app, f.dest_app, f.vpc_id)
        counters = rows.get(key)
        if counters is None:
            rows[key] = [f.bytes_tx, f.bytes_rx]
        else:
            counters[0] += f.bytes_tx
            counters[1] += f.bytes_rx


def flows_of(hours: Hours, hour: int) -> list[Flow]:
    """What a GET does under the lock."""
    return [Flow(*key, c[0], c[1], hour) for key, c in hours.get(hour, {}).items()]


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = DEFAULTS["FLOWAGG_MAX_BODY_BYTES"]  # as the service
    lock = threading.Lock()  # guards hours
    hours: Hours = {}

    @app.post("/flows")
    def post_flows() -> Response:
        flows = decode_flows(request.get_data(cache=False))
        with lock:
            add(hours, flows)
        return Response(encode({"accepted": len(flows)}), mimetype="application/json")

    @app.get("/flows")
    def get_flows() -> Response:
        hour = int(request.args["hour"])
        with lock:
            flows = flows_of(hours, hour)
        return Response(encode(flows), mimetype="application/json")

    @app.errorhandler(InvalidBody)
    def on_invalid(exc: InvalidBody) -> Response:
        return Response(encode({"error": str(exc)}), status=400, mimetype="application/json")

    return app
