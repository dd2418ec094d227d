"""JSON answers, and the app-wide error handlers: every error answers ``{"error": "..."}``.

The store's exceptions (``flowagg.store.base``) map to statuses here, and refused POSTs are
counted by reason in ``flowagg_requests_rejected_total``.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from flowagg.schema import InvalidBody, encode
from flowagg.store.base import (
    Closed,
    Expired,
    InvalidRecord,
    KeyLimit,
    KeyReused,
    MemoryLimit,
    Overloaded,
    QueryTooLarge,
    ReadTimeout,
    Unavailable,
    Unreachable,
)
from flowagg.web.context import get_metrics
from flowagg.web.encoding import CorruptBody, TooLarge, UnsupportedEncoding

log = logging.getLogger("flowagg.api")

# Registers no route, only handlers for the whole app.
bp = Blueprint("errors", __name__)

RETRY_AFTER_S = "1"


class BadRequest(Exception):
    """A client error answered with 400 and the message."""


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
@bp.app_errorhandler(InvalidRecord)
def on_invalid_body(exc: Exception) -> Response:
    _reject("expired" if isinstance(exc, Expired) else "invalid")
    return error(400, str(exc))


@bp.app_errorhandler(CorruptBody)
def on_corrupt_body(exc: CorruptBody) -> Response:
    _reject("invalid")
    return error(400, str(exc))


@bp.app_errorhandler(TooLarge)
def on_too_large_decompressed(exc: TooLarge) -> Response:
    _reject("too_large")
    return error(413, str(exc))


@bp.app_errorhandler(UnsupportedEncoding)
def on_unsupported_encoding(exc: UnsupportedEncoding) -> Response:
    _reject("invalid")
    response = error(415, str(exc))
    response.headers["Accept-Encoding"] = "gzip, identity"  # RFC 7694
    return response


@bp.app_errorhandler(KeyLimit)
def on_key_limit(exc: KeyLimit) -> Response:
    # 429 without Retry-After: retrying does not help until hours expire.
    _reject("key_limit")
    return error(429, str(exc))


@bp.app_errorhandler(MemoryLimit)
def on_memory_limit(exc: MemoryLimit) -> Response:
    # As KeyLimit: 429 without Retry-After.
    _reject("memory_limit")
    return error(429, str(exc))


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


@bp.app_errorhandler(QueryTooLarge)
def on_query_too_large(exc: QueryTooLarge) -> Response:
    get_metrics().queries_refused.inc()
    return error(422, str(exc))


@bp.app_errorhandler(Unavailable)
def on_unavailable(exc: Unavailable) -> Response:
    # Logged once where the log failed; every POST after that is refused the same way.
    _reject("unavailable")
    return error(503, f"cannot store the request: {exc}")


# What a POST refused by an unreachable backend may have left behind, in the client's words:
# for a request with an Idempotency-Key, and for one without (which no retry can make whole).
_APPLIED = {
    "nothing": "nothing was applied, retry later",
    "partly": "part of the request was applied: retry it with the same Idempotency-Key,"
    " which applies only the rest",
    "maybe": "some or all of the request may have been applied: retry it with the same"
    " Idempotency-Key, which applies only what is missing",
}
_APPLIED_WITHOUT_KEY = {
    **_APPLIED,
    "partly": "part of the request was applied: retrying it counts that part twice",
    "maybe": "some or all of the request may have been applied: retrying it may count flows twice",
}


@bp.app_errorhandler(Unreachable)
def on_unreachable(exc: Unreachable) -> Response:
    _reject("unavailable")
    log.warning("backend unreachable: %s", exc)
    if exc.applied is None:
        return error(503, f"{exc}; retry later", retry_after=True)
    keyed = request.environ.get("HTTP_IDEMPOTENCY_KEY") is not None
    said = (_APPLIED if keyed else _APPLIED_WITHOUT_KEY)[exc.applied]
    return error(503, f"{exc}; {said}", retry_after=True)


@bp.app_errorhandler(Exception)
def on_unexpected(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error(500, "internal error")
