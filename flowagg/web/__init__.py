"""Everything HTTP: the endpoints, the error answers, request ids and the access log.

    flows.py       the ``flows`` blueprint: POST /flows, GET /flows?hour=H
    ops.py         the ``ops`` blueprint: /healthz, /readyz, /metrics, /openapi.json
    errors.py      JSON answers; the app-wide error handlers (store exceptions -> statuses)
    requestlog.py  request ids and the access log line (a WSGI middleware)
    openapi.py     the OpenAPI 3.1 document
    context.py     the current app's store and metrics

This package reaches the store only through ``flowagg.store.base`` (the interface and its
exceptions), never a concrete store: ``create_app`` picks one and calls ``register``.
"""

from __future__ import annotations

from flask import Flask

from flowagg.web import errors, flows, ops, requestlog
from flowagg.web.context import get_access_log


def register(app: Flask) -> None:
    """Register the endpoints and error handlers on ``app``, and wrap it in the request log."""
    for blueprint in (flows.bp, ops.bp, errors.bp):
        app.register_blueprint(blueprint)
    app.wsgi_app = requestlog.RequestLog(app.wsgi_app, get_access_log(app))
