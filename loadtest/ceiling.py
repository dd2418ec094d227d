"""Baseline (b), the ceiling: POST /flows decodes and validates exactly like the service, then
stores nothing. No server that stores flows can answer POSTs faster than this one.

    waitress-serve --threads=8 --call loadtest.ceiling:create_app
"""

from __future__ import annotations

from flask import Flask, Response, request

from flowagg.config import DEFAULTS
from flowagg.schema import InvalidBody, decode_flows, encode


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = DEFAULTS["FLOWAGG_MAX_BODY_BYTES"]  # as the service

    @app.post("/flows")
    def post_flows() -> Response:
        flows = decode_flows(request.get_data(cache=False))
        return Response(encode({"accepted": len(flows)}), mimetype="application/json")

    @app.errorhandler(InvalidBody)
    def on_invalid(exc: InvalidBody) -> Response:
        return Response(encode({"error": str(exc)}), status=400, mimetype="application/json")

    return app
