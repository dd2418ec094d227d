"""The ``ops`` blueprint: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from flowagg.web.context import get_metrics, get_store
from flowagg.web.errors import json_response
from flowagg.web.flows import WINDOW_HEADER
from flowagg.web.openapi import openapi_document

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process serves requests. Open to all (no token), so any client learns
    from its header whether retries are deduplicated."""
    response = json_response({"status": "ok"})
    response.headers[WINDOW_HEADER] = str(current_app.extensions["flowagg.idempotency_window"])
    return response


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
