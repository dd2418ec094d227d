"""The ``flows`` blueprint: POST /flows and GET /flows?hour=H, between HTTP and the store."""

from __future__ import annotations

import re
import time

from flask import Blueprint, Response, current_app, request

from flowagg.schema import INT64_MAX, decode_flows
from flowagg.store.base import MAX_KEY_LENGTH
from flowagg.web.bodies import read_body
from flowagg.web.context import get_metrics, get_store
from flowagg.web.encoding import coding, gunzip_body
from flowagg.web.errors import BadRequest, json_response
from flowagg.web.formats import csv_response, negotiated, shown, wants_csv
from flowagg.web.guard import TOKEN
from flowagg.web.requestlog import note_accepted

bp = Blueprint("flows", __name__)

# On every 200 to POST /flows and on GET /healthz: seconds an Idempotency-Key is kept after its
# request was applied; 0 when keys are not kept (in memory), where a retry may count twice.
WINDOW_HEADER = "Flowagg-Idempotency-Window"

_HOUR = re.compile(r"[0-9]+")
_IDEMPOTENCY_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}")


def _ms(setting: str) -> float:
    return current_app.config[setting] / 1000


@bp.post("/flows")
def post_flows() -> Response:
    started = time.perf_counter()
    # read_body() reads the raw body whatever the Content-Type (curl -d sends a form type) and
    # raises 413 before reading when Content-Length exceeds MAX_CONTENT_LENGTH.
    environ = request.environ
    given = environ.get("HTTP_IDEMPOTENCY_KEY")  # repeated headers arrive joined by ", "
    key = parse_idempotency_key([] if given is None else [given])
    token = environ.get(TOKEN)
    if key is not None and token is not None:  # one client's keys never meet another's
        key = f"{token}/{key}"
    app = current_app._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
    limit = app.config["FLOWAGG_MAX_BODY_BYTES"]
    if coding(environ.get("HTTP_CONTENT_ENCODING")) is None:  # 415 before any byte is read
        size, body = request.content_length, None  # read once it may be held
    else:  # gzip: the decompressed size is bounded while decompressing
        body = gunzip_body(request.stream, limit)
        size = len(body)
    with app.extensions["flowagg.bodies"].hold(size):  # large bodies, a few at a time
        flows = decode_flows(read_body(request) if body is None else body)
        del body  # a large body's slices let their bytes go as they are stored
        accepted = get_store(app).ingest(
            flows, timeout=app.config["FLOWAGG_ENQUEUE_TIMEOUT_MS"] / 1000, idempotency_key=key
        )
    metrics = get_metrics(app)
    metrics.requests_accepted.inc()
    metrics.flows_accepted.inc(accepted)
    metrics.ingest_seconds.observe(time.perf_counter() - started)
    note_accepted(accepted, environ)
    response = json_response({"accepted": accepted})
    response.headers[WINDOW_HEADER] = str(app.extensions["flowagg.idempotency_window"])
    return response


@bp.get("/flows")
def get_flows() -> Response:
    started = time.perf_counter()
    hour = parse_hour(request.args.getlist("hour"))
    csv = wants_csv(request.args)
    timeout = _ms("FLOWAGG_READ_TIMEOUT_MS")
    if csv:
        rows = get_store().read_hour(hour, timeout) if hour <= INT64_MAX else []
        response = csv_response(CSV_HEADER, [(*row, hour) for row in rows])
    elif hour > INT64_MAX:  # no flow can have such an hour
        response = negotiated(json_response([]))
    else:
        body = get_store().read_hour_json(hour, timeout=timeout)
        response = negotiated(Response(body, mimetype="application/json"))
    get_metrics().read_seconds.observe(time.perf_counter() - started)
    return response


CSV_HEADER = ("src_app", "dest_app", "vpc_id", "bytes_tx", "bytes_rx", "hour")


def parse_hour(values: list[str], name: str = "hour") -> int:
    """A non-negative decimal integer given once as query parameter ``name``; a value beyond
    any stored hour comes back as ``INT64_MAX + 1``."""
    if not values:
        raise BadRequest(f"query parameter '{name}' is required")
    if len(values) > 1:
        raise BadRequest(f"query parameter '{name}' must be given once")
    if not _HOUR.fullmatch(values[0]):
        raise BadRequest(
            f"query parameter '{name}' must be a non-negative integer, got {shown(values[0])}"
        )
    digits = values[0].lstrip("0")
    if len(digits) > len(str(INT64_MAX)):  # beyond any stored hour; int() refuses 4,300+ digits
        return INT64_MAX + 1
    return int(digits or "0")


def parse_idempotency_key(values: list[str]) -> str | None:
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest("header Idempotency-Key must be given once")
    if not _IDEMPOTENCY_KEY.fullmatch(values[0]):
        raise BadRequest(
            f"header Idempotency-Key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters"
        )
    return values[0]
