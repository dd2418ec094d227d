"""The ``flows`` blueprint: HTTP <-> store. Every error answers JSON ``{"error": "..."}``."""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from flowagg.metrics import Metrics
from flowagg.openapi import openapi_document
from flowagg.schema import INT64_MAX, Flow, InvalidBody, decode_flows, encode
from flowagg.store.base import (
    MAX_KEY_LENGTH,
    Closed,
    Expired,
    FlowStore,
    KeyReused,
    Overloaded,
    ReadTimeout,
    Unavailable,
)

log = logging.getLogger(__name__)
access_log = logging.getLogger("flowagg.access")

bp = Blueprint("flows", __name__)

_HOUR = re.compile(r"[0-9]+")
_REQUEST_ID = re.compile(r"[\w.:@/+=-]{1,128}", re.ASCII)
_IDEMPOTENCY_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}")
RETRY_AFTER_S = "1"


class BadRequest(Exception):
    """A client error answered with 400 and the message."""


def get_store() -> FlowStore:
    return current_app.extensions["flowagg"]


def get_metrics() -> Metrics:
    return current_app.extensions["flowagg.metrics"]


def _ms(setting: str) -> float:
    return current_app.config[setting] / 1000


# -- flows -------------------------------------------------------------------------------------


@bp.post("/flows")
def post_flows() -> Response:
    # get_data() reads the raw body whatever the Content-Type (curl -d sends a form type) and
    # raises 413 before reading when Content-Length exceeds MAX_CONTENT_LENGTH.
    key = parse_idempotency_key(request.headers.getlist("Idempotency-Key"))
    flows = decode_flows(request.get_data(cache=False))
    accepted = get_store().ingest(
        flows, timeout=_ms("FLOWAGG_ENQUEUE_TIMEOUT_MS"), idempotency_key=key
    )
    metrics = get_metrics()
    metrics.requests_accepted.inc()
    metrics.flows_accepted.inc(accepted)
    g.accepted = accepted
    return json_response({"accepted": accepted})


@bp.get("/flows")
def get_flows() -> Response:
    started = time.perf_counter()
    hour = parse_hour(request.args.getlist("hour"))
    if hour > INT64_MAX:  # no flow can have such an hour
        return json_response([])
    rows = get_store().read_hour(hour, timeout=_ms("FLOWAGG_READ_TIMEOUT_MS"))
    # Rows were copied under the partition's read lock; encoding happens after its release.
    response = json_response([Flow(s, d, v, tx, rx, hour) for s, d, v, tx, rx in rows])
    get_metrics().read_seconds.observe(time.perf_counter() - started)
    return response


def parse_hour(values: list[str]) -> int:
    if not values:
        raise BadRequest("query parameter 'hour' is required")
    if len(values) > 1:
        raise BadRequest("query parameter 'hour' must be given once")
    if not _HOUR.fullmatch(values[0]):
        shown = values[0] if len(values[0]) <= 40 else values[0][:37] + "..."
        raise BadRequest(f"query parameter 'hour' must be a non-negative integer, got {shown!r}")
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


# -- operations --------------------------------------------------------------------------------


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process serves requests."""
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: drainers alive, buffers below the watermark (and the log writable, if any)."""
    failed = get_store().health(current_app.config["FLOWAGG_READY_BUFFER_PERCENT"] / 100)
    if failed:
        return json_response({"status": "unready", "failed": failed}, 503)
    return json_response({"status": "ready"})


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(get_metrics().registry), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/openapi.json")
def openapi() -> Response:
    return json_response(openapi_document())


# -- responses and errors ----------------------------------------------------------------------


def json_response(value: object, status: int = 200) -> Response:
    return Response(encode(value), status=status, mimetype="application/json")


def error(status: int, message: str, retry_after: bool = False) -> Response:
    response = json_response({"error": message}, status)
    if retry_after:
        response.headers["Retry-After"] = RETRY_AFTER_S
    return response


def _reject(reason: str) -> None:
    if request.method == "POST" and request.path == "/flows":
        get_metrics().requests_rejected.labels(reason).inc()


@bp.app_errorhandler(InvalidBody)
@bp.app_errorhandler(Expired)
def on_invalid_body(exc: Exception) -> Response:
    _reject("expired" if isinstance(exc, Expired) else "invalid")
    return error(400, str(exc))


@bp.app_errorhandler(BadRequest)
def on_bad_request(exc: BadRequest) -> Response:
    _reject("invalid")  # only counted for POST /flows (a bad Idempotency-Key)
    return error(400, str(exc))


@bp.app_errorhandler(HTTPException)
def on_http_error(exc: HTTPException) -> Response:
    if exc.code == 413:
        _reject("too_large")
        limit = current_app.config["FLOWAGG_MAX_BODY_BYTES"]
        return error(413, f"request body exceeds the limit of {limit} bytes")
    if exc.code == 404:
        return error(404, f"no such path: {request.path}")
    if exc.code == 405:
        response = error(405, f"method {request.method} not allowed on {request.path}")
        response.headers["Allow"] = ", ".join(exc.valid_methods or ())
        return response
    return error(exc.code or 500, exc.description or exc.name)


@bp.app_errorhandler(Overloaded)
def on_overloaded(exc: Overloaded) -> Response:
    _reject("overloaded")
    log.warning("overloaded: %s", exc)
    return error(503, f"overloaded: {exc}; nothing was applied, retry later", retry_after=True)


@bp.app_errorhandler(ReadTimeout)
def on_read_timeout(exc: ReadTimeout) -> Response:
    log.warning("read timed out: %s", exc)
    return error(503, f"{exc}; retry later", retry_after=True)


@bp.app_errorhandler(Closed)
def on_closed(exc: Closed) -> Response:
    _reject("unavailable")
    return error(503, "service is shutting down", retry_after=True)


@bp.app_errorhandler(KeyReused)
def on_key_reused(exc: KeyReused) -> Response:
    _reject("invalid")
    return error(422, str(exc))


@bp.app_errorhandler(Unavailable)
def on_unavailable(exc: Unavailable) -> Response:
    # Logged once where the log failed; every POST after that is refused the same way.
    _reject("unavailable")
    return error(503, f"cannot store the request: {exc}")


@bp.app_errorhandler(Exception)
def on_unexpected(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error(500, "internal error")


# -- request log -------------------------------------------------------------------------------


# Generated request ids: a random prefix per process and a counter, unique without a system
# call per request (uuid4 reads the kernel's random source every time).
_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count(1)


@bp.before_app_request
def start_request() -> None:
    ctx = g._get_current_object()
    ctx.started = time.perf_counter()
    given = request.headers.get("X-Request-ID", "")
    ctx.request_id = (
        given if _REQUEST_ID.fullmatch(given) else f"{_ID_PREFIX}{next(_id_counter):016x}"
    )


@bp.after_app_request
def log_request(response: Response) -> Response:
    ctx, req = g._get_current_object(), request._get_current_object()
    response.headers["X-Request-ID"] = ctx.request_id
    if access_log.isEnabledFor(logging.INFO):
        fields = {
            "method": req.method,
            "path": req.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - ctx.started) * 1000, 3),
            "request_id": ctx.request_id,
        }
        accepted = getattr(ctx, "accepted", None)
        if accepted is not None:
            fields["accepted"] = accepted
        access_log.info("request", extra={"fields": fields})
    return response
