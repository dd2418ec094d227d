"""Request ids and the access log: one ``flowagg.access`` line per request, at info.

The line is built from its fields and handed to the log buffer (logs.py); the request thread
never writes it itself.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid

from flask import Blueprint, Response, g, request

from flowagg.web.context import get_access_log

# Registers no route, only hooks around every request of the app.
bp = Blueprint("requestlog", __name__)

_REQUEST_ID = re.compile(r"[\w.:@/+=-]{1,128}", re.ASCII)

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
    access_log = get_access_log()
    if access_log.enabled:
        fields = {
            "method": req.method,
            "path": req.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - ctx.started) * 1000, 3),
            "request_id": ctx.request_id,
        }
        accepted = getattr(ctx, "accepted", None)  # set by POST /flows
        if accepted is not None:
            fields["accepted"] = accepted
        access_log.write(fields)
    return response
