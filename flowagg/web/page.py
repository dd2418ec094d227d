"""The ``page`` blueprint: ``GET /`` serves the top-talkers page, a client of the public API.

Three static files ship in the package (``static/``): ``index.html``, ``page.js`` and
``page.css``. The page asks ``/flows/hours``, ``/flows/top`` and ``/flows/series`` like any other
client and renders their answers in the browser; nothing is rendered here and nothing is fetched
from elsewhere, which the Content-Security-Policy enforces.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from flask import Blueprint, Response, request

bp = Blueprint("page", __name__)

STATIC = Path(__file__).resolve().parent / "static"

# Only this origin's script, style and API; no inline code, no frames, no plugins.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@cache
def _file(name: str) -> tuple[bytes, str]:
    """A static file's bytes and their ETag, read once: they change only with the package."""
    data = (STATIC / name).read_bytes()
    return data, hashlib.sha256(data).hexdigest()[:32]


def _static(name: str, mimetype: str) -> Response:
    data, etag = _file(name)
    response = Response(data, mimetype=mimetype)
    response.set_etag(etag)
    response.headers["Cache-Control"] = "no-cache"  # revalidate: an upgrade shows at once
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response.make_conditional(request)


@bp.get("/")
def index() -> Response:
    response = _static("index.html", "text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/page.js")
def script() -> Response:
    return _static("page.js", "text/javascript")


@bp.get("/page.css")
def stylesheet() -> Response:
    return _static("page.css", "text/css")
