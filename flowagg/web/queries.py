"""The ``queries`` blueprint: the top groups over a range of hours, per hour, and the hours held.

    GET /flows/top     the top ``limit`` groups of the hours ``start`` to ``end``, "other", total
    GET /flows/series  the same groups, hour by hour (the page's chart)
    GET /flows/hours   how many hours hold data, the oldest and the newest

Every parameter is parsed here before the store is asked: an unknown name, a repeated one or a
bad value is a 400 naming it, and nothing runs. The store counts every POST answered before the
query arrived and refuses a query over more than ``FLOWAGG_MAX_QUERY_ROWS`` key-hours
(``QueryTooLarge``, 422 in errors.py) before it scans anything.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.datastructures import MultiDict

from flowagg.schema import INT64_MAX
from flowagg.store.base import NAME_FIELDS, ORDERS, Query, Series, Top
from flowagg.web.context import get_metrics, get_store
from flowagg.web.errors import BadRequest, json_response
from flowagg.web.flows import parse_hour
from flowagg.web.formats import csv_response, negotiated, shown, wants_csv

bp = Blueprint("queries", __name__)

MAX_LIMIT = 1000
DEFAULT_LIMIT = 10
COUNTERS = ("bytes_tx", "bytes_rx")
# The names a range query takes; anything else is refused, so a typo never goes unnoticed.
PARAMETERS = ("start", "end", "by", "order", "limit", "format", *NAME_FIELDS)

_LIMIT = re.compile(r"[0-9]{1,4}")


@bp.get("/flows/top")
def get_top() -> Response:
    return _range_query("top", get_store().top, top_json, top_csv)


@bp.get("/flows/series")
def get_series() -> Response:
    return _range_query("series", get_store().series, series_json, series_csv)


def _range_query(
    kind: str,
    ask: Callable[[Query, float], Any],
    as_json: Callable[[Query, Any], dict],
    as_csv: Callable[[Query, Any], tuple[tuple[str, ...], list[tuple]]],
) -> Response:
    """Parse the parameters, ``ask`` the store, answer JSON or CSV; observe the latency."""
    started = time.perf_counter()
    query = parse_query(request.args)
    csv = wants_csv(request.args)
    answer = ask(query, _read_timeout())
    if csv:
        response = csv_response(*as_csv(query, answer))
    else:
        response = negotiated(json_response(as_json(query, answer)))
    get_metrics().query_seconds.labels(kind).observe(time.perf_counter() - started)
    return response


@bp.get("/flows/hours")
def get_hours() -> Response:
    refuse_unknown(request.args, ())
    held = get_store().hours_held(timeout=_read_timeout())
    return json_response({"count": held.count, "oldest": held.oldest, "newest": held.newest})


def _read_timeout() -> float:
    return current_app.config["FLOWAGG_READ_TIMEOUT_MS"] / 1000


# -- parameters --------------------------------------------------------------------------------


def parse_query(args: MultiDict) -> Query:
    """The ``Query`` of a range query's parameters; ``BadRequest`` names the first bad one."""
    refuse_unknown(args, PARAMETERS)
    start = _hour(args, "start")
    end = _hour(args, "end") if "end" in args else start
    if end < start:
        raise BadRequest(f"query parameter 'end' ({end}) must not be before 'start' ({start})")
    span, most = end - start + 1, current_app.config["FLOWAGG_MAX_QUERY_HOURS"]
    if span > most:
        raise BadRequest(
            f"query parameter 'end': hours {start} to {end} are {span} hours, more than"
            f" FLOWAGG_MAX_QUERY_HOURS={most}"
        )
    return Query(
        start=start,
        end=end,
        by=_by(args),
        filters=tuple(_filter(args, field) for field in NAME_FIELDS),
        order=_choice(args, "order", ORDERS),
        limit=_limit(args),
    )


def refuse_unknown(args: MultiDict, known: tuple[str, ...]) -> None:
    unknown = [name for name in args if name not in known]
    if unknown:
        expected = f"; expected {', '.join(known)}" if known else "; it takes none"
        raise BadRequest(f"unknown query parameter {shown(unknown[0])}{expected}")


def _one(args: MultiDict, name: str) -> str | None:
    values = args.getlist(name)
    if len(values) > 1:
        raise BadRequest(f"query parameter '{name}' must be given once")
    return values[0] if values else None


def _hour(args: MultiDict, name: str) -> int:
    hour = parse_hour(args.getlist(name), name)
    if hour > INT64_MAX:
        raise BadRequest(f"query parameter '{name}' must be at most {INT64_MAX}")
    return hour


def _by(args: MultiDict) -> tuple[str, ...]:
    text = _one(args, "by")
    if text is None:
        return NAME_FIELDS
    if not text:
        raise BadRequest(f"query parameter 'by' must name one or more of {', '.join(NAME_FIELDS)}")
    fields = text.split(",")
    for i, name in enumerate(fields):
        if name not in NAME_FIELDS:
            raise BadRequest(
                f"query parameter 'by': {shown(name)} is not one of {', '.join(NAME_FIELDS)}"
            )
        if name in fields[:i]:
            raise BadRequest(f"query parameter 'by' names {name} twice")
    return tuple(fields)


def _filter(args: MultiDict, field: str) -> tuple[str, ...] | None:
    names = args.getlist(field)
    if not names:
        return None
    if "" in names:
        raise BadRequest(f"query parameter '{field}' must not be empty (no name is)")
    return tuple(dict.fromkeys(names))  # each name once, in the order given


def _choice(args: MultiDict, name: str, choices: tuple[str, ...]) -> str:
    value = _one(args, name)
    if value is None:
        return choices[0]
    if value not in choices:
        raise BadRequest(
            f"query parameter '{name}' must be one of {', '.join(choices)}, got {shown(value)}"
        )
    return value


def _limit(args: MultiDict) -> int:
    text = _one(args, "limit")
    if text is None:
        return DEFAULT_LIMIT
    if not (_LIMIT.fullmatch(text) and 1 <= int(text) <= MAX_LIMIT):
        raise BadRequest(
            f"query parameter 'limit' must be an integer from 1 to {MAX_LIMIT}, got {shown(text)}"
        )
    return int(text)


# -- answers -----------------------------------------------------------------------------------


def _head(query: Query) -> dict:
    return {"start": query.start, "end": query.end, "by": query.by, "order": query.order}


def _summary(summary) -> dict:
    return {"groups": summary.groups, "bytes_tx": summary.bytes_tx, "bytes_rx": summary.bytes_rx}


def top_json(query: Query, top: Top) -> dict:
    fields = (*query.by, *COUNTERS)
    return {
        **_head(query),
        "rows": [dict(zip(fields, row, strict=True)) for row in top.rows],
        "other": _summary(top.other),
        "total": _summary(top.total),
    }


def top_csv(query: Query, top: Top) -> tuple[tuple[str, ...], list[tuple]]:
    """The header, the top rows, then "other" with its names left empty (no name is empty)."""
    other = (*[""] * len(query.by), top.other.bytes_tx, top.other.bytes_rx)
    return (*query.by, *COUNTERS), [*top.rows, other]


def series_json(query: Query, series: Series) -> dict:
    return {
        **_head(query),
        "groups": [dict(zip(query.by, names, strict=True)) for names in series.groups],
        "hours": [{"hour": h.hour, "values": h.values, "other": h.other} for h in series.hours],
    }


def series_csv(query: Query, series: Series) -> tuple[tuple[str, ...], list[tuple]]:
    """The header; per hour a row for each top group (zeros included), then "other" with its
    names left empty."""
    other_names = [""] * len(query.by)
    rows = []
    for h in series.hours:
        rows += [
            (h.hour, *names, *sums) for names, sums in zip(series.groups, h.values, strict=True)
        ]
        rows.append((h.hour, *other_names, *h.other))
    return ("hour", *query.by, *COUNTERS), rows
