"""The OpenAPI description of the range queries and of the page; openapi.py puts it in the document.

GET /flows/top, /flows/series   parameters (components.parameters), JSON and CSV answers
GET /flows/hours                the hours held
GET /, /page.js, /page.css      the page's three files
"""

from __future__ import annotations

from typing import Any

from flowagg.schema import INT64_MAX
from flowagg.store.base import NAME_FIELDS, ORDERS
from flowagg.web.queries import DEFAULT_LIMIT, MAX_LIMIT

_NAME = {"type": "string", "minLength": 1}
_HOUR = {"type": "integer", "minimum": 0, "maximum": INT64_MAX}
_SUM = {"type": "integer", "minimum": 0}  # exact at any size: may exceed 64 bits
_PAIR = {"type": "array", "items": _SUM, "minItems": 2, "maxItems": 2}  # [bytes_tx, bytes_rx]
_FIELD = f"({'|'.join(NAME_FIELDS)})"
_REF = "#/components/{}/{}".format


def _content(description: str, content: dict[str, Any], headers: dict | None = None) -> dict:
    response: dict[str, Any] = {"description": description, "content": content}
    if headers:
        response["headers"] = headers
    return response


def _json(schema_name: str, description: str, csv: str | None = None) -> dict:
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": _REF("schemas", schema_name)}}
    }
    if csv:
        content["text/csv"] = {"schema": {"type": "string", "description": csv}}
    return _content(description, content)


def _error(description: str, retry_after: bool = False) -> dict:
    headers = {"Retry-After": {"schema": {"type": "string"}, "required": True}}
    content = {"application/json": {"schema": {"$ref": _REF("schemas", "Error")}}}
    return _content(description, content, headers if retry_after else None)


def _parameter(name: str, schema: dict, description: str, required: bool = False) -> dict:
    parameter = {"name": name, "in": "query", "required": required, "schema": schema}
    return {**parameter, "description": description}


PARAMETERS = {
    "start": _parameter("start", _HOUR, "First hour of the range", required=True),
    "end": _parameter("end", _HOUR, "Last hour of the range, inclusive (default: start)"),
    "by": _parameter(
        "by",
        {
            "type": "string",
            "pattern": f"^{_FIELD}(,{_FIELD}){{0,2}}$",
            "default": ",".join(NAME_FIELDS),
        },
        "Fields to group by, comma-separated, each at most once; fields not grouped by are"
        " absent from the rows",
    ),
    **{
        field: {
            **_parameter(
                field,
                {"type": "array", "items": _NAME, "minItems": 1},
                f"Keep only flows with one of these {field}s (exact names; repeat the parameter"
                " for more). Filters of different fields must all match.",
            ),
            "style": "form",
            "explode": True,
        }
        for field in NAME_FIELDS
    },
    "order": _parameter(
        "order",
        {"enum": list(ORDERS), "default": ORDERS[0]},
        "Rank by bytes_tx + bytes_rx (bytes), bytes_tx or bytes_rx; largest first, ties by the"
        " group's names in code-point order",
    ),
    "limit": _parameter(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        "How many top groups",
    ),
    "format": _parameter(
        "format",
        {"enum": ["json", "csv"]},
        "csv: text/csv per RFC 4180 (also chosen by Accept: text/csv)",
    ),
}

_QUERY_ERRORS = {
    "400": _error("An unknown, repeated or invalid parameter (the message names it)"),
    "422": _error("The range holds more key-hours than FLOWAGG_MAX_QUERY_ROWS; nothing scanned"),
    "503": _error("A partition did not apply earlier POSTs in time", retry_after=True),
}


def _query(summary: str, operation: str, answer: dict) -> dict:
    return {
        "get": {
            "summary": summary,
            "operationId": operation,
            "parameters": [{"$ref": _REF("parameters", name)} for name in PARAMETERS],
            "responses": {"200": answer, **_QUERY_ERRORS},
        }
    }


def _file(summary: str, operation: str, mimetype: str) -> dict:
    answer = _content(summary, {mimetype: {"schema": {"type": "string"}}})
    return {"get": {"summary": summary, "operationId": operation, "responses": {"200": answer}}}


def paths() -> dict[str, Any]:
    return {
        "/flows/top": _query(
            "The top groups over a range of hours, with the rest as other and the total",
            "getTop",
            _json(
                "TopAnswer",
                "Rows largest first; sums exact at any size",
                csv="A header row (the grouped fields, bytes_tx, bytes_rx), the top rows, then"
                " other with its grouped fields empty",
            ),
        ),
        "/flows/series": _query(
            "The top groups over a range, and their sums in each hour of it",
            "getSeries",
            _json(
                "SeriesAnswer",
                "One entry per hour of the range, zeros for an empty hour",
                csv="A header row (hour, the grouped fields, bytes_tx, bytes_rx); per hour a row"
                " for each group, then other with its grouped fields empty",
            ),
        ),
        "/flows/hours": {
            "get": {
                "summary": "How many hours hold data, the oldest and the newest",
                "operationId": "getHours",
                "responses": {
                    "200": _json("HoursHeld", "Counted after every POST answered before it"),
                    "400": _error("A query parameter was given (it takes none)"),
                    "503": _error("A partition did not apply earlier POSTs in time", True),
                },
            }
        },
        "/": _file("The top-talkers page", "page", "text/html"),
        "/page.js": _file("The page's script", "pageScript", "text/javascript"),
        "/page.css": _file("The page's stylesheet", "pageStylesheet", "text/css"),
    }


def _object(properties: dict, required: list[str] | None = None) -> dict:
    return {
        "type": "object",
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
        "properties": properties,
    }


_NAMES = {field: _NAME for field in NAME_FIELDS}
_HEAD = {
    "start": _HOUR,
    "end": _HOUR,
    "by": {
        "type": "array",
        "items": {"enum": list(NAME_FIELDS)},
        "minItems": 1,
        "maxItems": 3,
        "uniqueItems": True,
    },
    "order": {"enum": list(ORDERS)},
}


def schemas() -> dict[str, Any]:
    summary = _object({"groups": _SUM, "bytes_tx": _SUM, "bytes_rx": _SUM})
    return {
        "TopAnswer": _object(
            {
                **_HEAD,
                "rows": {
                    "type": "array",
                    "maxItems": MAX_LIMIT,
                    "items": _object(
                        {**_NAMES, "bytes_tx": _SUM, "bytes_rx": _SUM}, ["bytes_tx", "bytes_rx"]
                    ),
                },
                "other": summary,
                "total": summary,
            }
        ),
        "SeriesAnswer": _object(
            {
                **_HEAD,
                "groups": {"type": "array", "maxItems": MAX_LIMIT, "items": _object(_NAMES, [])},
                "hours": {
                    "type": "array",
                    "items": _object(
                        {"hour": _HOUR, "values": {"type": "array", "items": _PAIR}, "other": _PAIR}
                    ),
                },
            }
        ),
        "HoursHeld": _object(
            {
                "count": _SUM,
                "oldest": {"oneOf": [_HOUR, {"type": "null"}]},
                "newest": {"oneOf": [_HOUR, {"type": "null"}]},
            }
        ),
    }
