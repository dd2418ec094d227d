"""The ``flows`` blueprint: HTTP <-> store. Every error answers JSON ``{"error": "..."}``."""

from __future__ import annotations

import logging
import re

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from flowagg.idempotency import MAX_KEY_LENGTH, KeyReused
from flowagg.schema import INT64_MAX, Flow, InvalidBody, decode_flows, encode
from flowagg.store import Closed, FlowStore, ReadTimeout, Unavailable

log = logging.getLogger(__name__)

bp = Blueprint("flows", __name__)

_HOUR = re.compile(r"[0-9]+")
_IDEMPOTENCY_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}")


class BadRequest(Exception):
    """A client error answered with 400 and the message."""


def get_store() -> FlowStore:
    return current_app.extensions["flowagg"]


@bp.post("/flows")
def post_flows() -> Response:
    # get_data() reads the raw body whatever the Content-Type (curl -d sends a form type) and
    # raises 413 before reading when Content-Length exceeds MAX_CONTENT_LENGTH.
    key = parse_idempotency_key(request.headers.getlist("Idempotency-Key"))
    flows = decode_flows(request.get_data(cache=False))
    accepted = get_store().ingest(flows, idempotency_key=key)
    return json_response({"accepted": accepted})


@bp.get("/flows")
def get_flows() -> Response:
    hour = parse_hour(request.args.getlist("hour"))
    if hour > INT64_MAX:  # no flow can have such an hour
        return json_response([])
    timeout = current_app.config["FLOWAGG_READ_TIMEOUT_MS"] / 1000
    rows = get_store().read_hour(hour, timeout=timeout)
    # Rows were copied under the partition's read lock; encoding happens after its release.
    return json_response([Flow(s, d, v, tx, rx, hour) for s, d, v, tx, rx in rows])


def parse_hour(values: list[str]) -> int:
    if not values:
        raise BadRequest("query parameter 'hour' is required")
    if len(values) > 1:
        raise BadRequest("query parameter 'hour' must be given once")
    if not _HOUR.fullmatch(values[0]):
        shown = values[0] if len(values[0]) <= 40 else values[0][:37] + "..."
        raise BadRequest(f"query parameter 'hour' must be a non-negative integer, got {shown!r}")
    return int(values[0])


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


def json_response(value: object, status: int = 200) -> Response:
    return Response(encode(value), status=status, mimetype="application/json")


def error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


@bp.app_errorhandler(InvalidBody)
@bp.app_errorhandler(BadRequest)
def on_bad_request(exc: Exception) -> Response:
    return error(400, str(exc))


@bp.app_errorhandler(HTTPException)
def on_http_error(exc: HTTPException) -> Response:
    if exc.code == 413:
        limit = current_app.config["FLOWAGG_MAX_BODY_BYTES"]
        return error(413, f"request body exceeds the limit of {limit} bytes")
    if exc.code == 404:
        return error(404, f"no such path: {request.path}")
    if exc.code == 405:
        allowed = ", ".join(exc.valid_methods or ())
        response = error(405, f"method {request.method} not allowed on {request.path}")
        response.headers["Allow"] = allowed
        return response
    return error(exc.code or 500, exc.description or exc.name)


@bp.app_errorhandler(ReadTimeout)
def on_read_timeout(exc: ReadTimeout) -> Response:
    log.warning("read timed out: %s", exc)
    response = error(503, f"{exc}; retry later")
    response.headers["Retry-After"] = "1"
    return response


@bp.app_errorhandler(Closed)
def on_closed(exc: Closed) -> Response:
    response = error(503, "service is shutting down")
    response.headers["Retry-After"] = "1"
    return response


@bp.app_errorhandler(KeyReused)
def on_key_reused(exc: KeyReused) -> Response:
    return error(422, str(exc))


@bp.app_errorhandler(Unavailable)
def on_unavailable(exc: Unavailable) -> Response:
    # Logged once where the log failed; every POST after that is refused the same way.
    return error(503, f"cannot store the request: {exc}")


@bp.app_errorhandler(Exception)
def on_unexpected(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error(500, "internal error")
