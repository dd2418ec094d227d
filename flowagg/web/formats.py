"""JSON or CSV: which one a GET asked for, and CSV answers written per RFC 4180.

A GET picks CSV with ``format=csv`` or, without ``format``, with an ``Accept`` header that
prefers ``text/csv`` to ``application/json``; JSON otherwise. The answer then varies with
``Accept``, and says so (``Vary``), so a cache never hands one client's format to another.

CSV has a header row, fields separated by commas and lines ended by CRLF; a field holding a
comma, a double quote, a CR or an LF is quoted, its quotes doubled. Names are written as
stored: a spreadsheet may read one that begins with ``=`` as a formula.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

from flask import Response, request
from werkzeug.datastructures import MultiDict

from flowagg.web.errors import BadRequest

FORMATS = ("json", "csv")
CSV_CONTENT_TYPE = "text/csv; charset=utf-8; header=present"


def shown(value: str, limit: int = 40) -> str:
    """``value`` quoted for an error message, cut to ``limit`` characters."""
    return repr(value if len(value) <= limit else value[: limit - 3] + "...")


def wants_csv(args: MultiDict) -> bool:
    """True if the request asks for CSV (``format``, else ``Accept``); a bad ``format`` is 400."""
    values = args.getlist("format")
    if len(values) > 1:
        raise BadRequest("query parameter 'format' must be given once")
    if values:
        if values[0] not in FORMATS:
            raise BadRequest(
                f"query parameter 'format' must be json or csv, got {shown(values[0])}"
            )
        return values[0] == "csv"
    return request.accept_mimetypes.best_match(("application/json", "text/csv")) == "text/csv"


def csv_response(header: Sequence[str], rows: Iterable[Sequence[object]]) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # QUOTE_MINIMAL: as RFC 4180 asks
    writer.writerow(header)
    writer.writerows(rows)
    return negotiated(Response(buffer.getvalue(), content_type=CSV_CONTENT_TYPE))


def negotiated(response: Response) -> Response:
    """Mark an answer whose format was chosen from the request's ``Accept``."""
    response.vary.add("Accept")
    return response
