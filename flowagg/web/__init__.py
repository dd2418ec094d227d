"""Everything HTTP: the endpoints, the error answers, request ids and the access log.

    flows.py       the ``flows`` blueprint: POST /flows, GET /flows?hour=H
    queries.py     the ``queries`` blueprint: GET /flows/top, /flows/series, /flows/hours
    page.py        the ``page`` blueprint: GET / (static/: the top-talkers page)
    formats.py     JSON or CSV: what a GET asked for, and CSV answers
    ops.py         the ``ops`` blueprint: /healthz, /readyz, /metrics, /openapi.json
    errors.py      JSON answers; the app-wide error handlers (store exceptions -> statuses)
    requestlog.py  request ids and the access log line (a WSGI middleware)
    guard.py       bearer tokens and roles, and no POSTs from other sites (a WSGI middleware)
    bodies.py      large bodies decoded a few at a time
    openapi.py     the OpenAPI 3.1 document
    context.py     the current app's store and metrics

This package reaches the store only through ``flowagg.store.base`` (the interface and its
exceptions), never a concrete store: ``create_app`` picks one and calls ``register``.
"""

from __future__ import annotations

from flask import Flask

from flowagg.web import bodies, errors, flows, guard, ops, page, queries, requestlog
from flowagg.web.context import get_access_log


def register(app: Flask) -> None:
    """Register the endpoints and error handlers on ``app``, and wrap it in the request log."""
    for blueprint in (flows.bp, queries.bp, page.bp, ops.bp, errors.bp):
        app.register_blueprint(blueprint)
    rejected = app.extensions["flowagg.metrics"].requests_rejected

    def on_refused(reason: str) -> None:
        rejected.labels(reason).inc()

    app.extensions["flowagg.bodies"] = bodies.BodyGate(app.config["FLOWAGG_MAX_BODY_BYTES"])
    guarded = guard.Guard(
        app.wsgi_app,
        app.extensions.get("flowagg.tokens"),
        app.config["FLOWAGG_ALLOWED_ORIGINS"] or (),
        on_refused,
    )
    app.wsgi_app = requestlog.RequestLog(guarded, get_access_log(app))
