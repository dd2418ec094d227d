"""Everything HTTP: the endpoints, the error answers, request ids and the access log.

    flows.py       the ``flows`` blueprint: POST /flows, GET /flows?hour=H
    queries.py     the ``queries`` blueprint: GET /flows/top, /flows/series, /flows/hours
    page.py        the ``page`` blueprint: GET / (static/: the top-talkers page)
    formats.py     JSON or CSV: what a GET asked for, and CSV answers
    ops.py         the ``ops`` blueprint: /healthz, /readyz, /metrics, /openapi.json
    errors.py      JSON answers; the app-wide error handlers (store exceptions -> statuses)
    requestlog.py  request ids and the access log line
    openapi.py     the OpenAPI 3.1 document
    context.py     the current app's store and metrics

This package reaches the store only through ``flowagg.store.base`` (the interface and its
exceptions), never a concrete store: ``create_app`` picks one and calls ``register``.
"""

from __future__ import annotations

from flask import Flask

from flowagg.web import errors, flows, ops, page, queries, requestlog


def register(app: Flask) -> None:
    """Register the endpoints, error handlers and request log on ``app``."""
    for blueprint in (flows.bp, queries.bp, page.bp, ops.bp, errors.bp, requestlog.bp):
        app.register_blueprint(blueprint)
