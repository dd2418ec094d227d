"""Running a range query over hour tables: the scan, filter and group-by happen in C.

A store hands ``top`` and ``series`` a way to scan hours into a ``Groups`` (table.c): the
in-memory store scans its partitions' tables under their read locks; a remote store can load an
hour into an ``HourTables`` of its own and scan that. Everything per row runs in C; Python does
one call per hour.

``series`` scans the range twice: once to find the top groups over the whole range, then hour by
hour into Groups fixed to those groups, whose ``rest`` is the hour's "other". Keeping every hour's
groups from the first pass instead would hold all groups of all hours at once.
"""

from __future__ import annotations

from collections.abc import Callable

from flowagg.store.base import HourSeries, Query, Series, Summary, Top
from flowagg.store.table import Groups

# scan(hours, groups): add every row of these hours that passes the query's filters to groups.
Scan = Callable[[range, Groups], None]


def top(query: Query, scan: Scan) -> Top:
    groups = Groups(query.by)
    scan(query.hours, groups)
    rows, other, total = groups.top(query.limit, query.order)
    return Top(rows, Summary(*other), Summary(*total))


def series(query: Query, scan: Scan) -> Series:
    width = len(query.by)
    keys = [row[:width] for row in top(query, scan).rows]
    hours = []
    for hour in query.hours:
        groups = Groups(query.by, keys)
        scan(range(hour, hour + 1), groups)
        hours.append(HourSeries(hour, groups.values(keys), groups.rest))
    return Series(keys, hours)
