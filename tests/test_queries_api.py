"""GET /flows/top, /flows/series and /flows/hours over HTTP, and CSV answers (also of GET /flows).

Values are checked against a plain model of the API (``expected_top``): sums per group in Python
ints, ranked by the order's value descending, ties by names ascending. The store's own model
tests (test_query.py) cover the grouping at random; these hold the HTTP contract to it.
"""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.conftest import Stall, flow

INT64_MAX = 2**63 - 1
FIELDS = ("src_app", "dest_app", "vpc_id")


class Queries:
    """GET a range query through the test client, asserting the status."""

    def __init__(self, client) -> None:
        self.client = client

    def get(self, path: str, status: int = 200, **headers):
        response = self.client.get(path, headers=headers)
        assert response.status_code == status, response.get_data(as_text=True)
        return response

    def json(self, path: str, status: int = 200) -> dict:
        response = self.get(path, status)
        assert response.mimetype == "application/json"
        return response.get_json()

    def csv(self, path: str, **headers) -> list[list[str]]:
        response = self.get(path, **headers)
        assert response.headers["Content-Type"] == "text/csv; charset=utf-8; header=present"
        assert "Accept" in response.headers["Vary"]
        text = response.get_data(as_text=True)
        assert text.endswith("\r\n")
        return list(csv.reader(io.StringIO(text, newline="")))


@pytest.fixture
def queries(client) -> Queries:
    return Queries(client)


def expected_top(records, start, end, by=FIELDS, filters=None, order="bytes", limit=10) -> dict:
    """The answer of /flows/top by the specification, from the records posted."""
    groups: dict[tuple, list[int]] = {}
    for r in records:
        if not start <= r["hour"] <= end:
            continue
        if any(r[field] not in names for field, names in (filters or {}).items()):
            continue
        sums = groups.setdefault(tuple(r[f] for f in by), [0, 0])
        sums[0] += r["bytes_tx"]
        sums[1] += r["bytes_rx"]

    def rank(item):
        names, (tx, rx) = item
        return (-{"bytes": tx + rx, "bytes_tx": tx, "bytes_rx": rx}[order], names)

    ranked = sorted(groups.items(), key=rank)
    rest = ranked[limit:]

    def summary(items):
        return {
            "groups": len(items),
            "bytes_tx": sum(s[0] for _, s in items),
            "bytes_rx": sum(s[1] for _, s in items),
        }

    return {
        "start": start,
        "end": end,
        "by": list(by),
        "order": order,
        "rows": [
            {**dict(zip(by, names, strict=True)), "bytes_tx": tx, "bytes_rx": rx}
            for names, (tx, rx) in ranked[:limit]
        ],
        "other": summary(rest),
        "total": summary(ranked),
    }


# Three apps over four hours, two VPCs: small enough to read, enough to rank and filter.
RECORDS = [
    flow("foo", "db", "vpc-0", 100, 200, 10),
    flow("foo", "db", "vpc-1", 50, 0, 11),
    flow("foo", "web", "vpc-0", 10, 10, 12),
    flow("bar", "db", "vpc-0", 300, 5, 10),
    flow("bar", "web", "vpc-1", 1, 1, 13),
    flow("baz", "web", "vpc-0", 7, 400, 11),
    flow("qux", "db", "vpc-0", 1, 1, 14),  # outside 10..13
]


@pytest.fixture
def loaded(flows, queries) -> Queries:
    flows.post(RECORDS)
    return queries


def test_the_specification_example_shape(loaded):
    answer = loaded.json("/flows/top?start=10&end=13&by=src_app&limit=2")
    assert answer == {
        "start": 10,
        "end": 13,
        "by": ["src_app"],
        "order": "bytes",
        "rows": [
            {"src_app": "baz", "bytes_tx": 7, "bytes_rx": 400},
            {"src_app": "foo", "bytes_tx": 160, "bytes_rx": 210},
        ],
        "other": {"groups": 1, "bytes_tx": 301, "bytes_rx": 6},
        "total": {"groups": 3, "bytes_tx": 468, "bytes_rx": 616},
    }


@pytest.mark.parametrize(
    ("params", "spec"),
    [
        ("start=10", dict(start=10, end=10)),
        ("start=10&end=13", dict(start=10, end=13)),
        ("start=0&end=20&by=vpc_id", dict(start=0, end=20, by=("vpc_id",))),
        ("start=10&end=13&by=dest_app,src_app", dict(start=10, end=13, by=("dest_app", "src_app"))),
        (
            "start=10&end=13&order=bytes_tx&limit=1",
            dict(start=10, end=13, order="bytes_tx", limit=1),
        ),
        (
            "start=10&end=13&order=bytes_rx&by=src_app",
            dict(start=10, end=13, order="bytes_rx", by=("src_app",)),
        ),
        (
            "start=10&end=13&src_app=foo&src_app=bar&by=src_app,vpc_id",
            dict(start=10, end=13, by=("src_app", "vpc_id"), filters={"src_app": ("foo", "bar")}),
        ),
        (
            "start=10&end=13&src_app=foo&src_app=bar&vpc_id=vpc-0",
            dict(start=10, end=13, filters={"src_app": ("foo", "bar"), "vpc_id": ("vpc-0",)}),
        ),
        ("start=10&end=13&dest_app=none", dict(start=10, end=13, filters={"dest_app": ("none",)})),
        ("start=100&end=120", dict(start=100, end=120)),
        (f"start={INT64_MAX}", dict(start=INT64_MAX, end=INT64_MAX)),
        ("start=010&end=0013&limit=0003", dict(start=10, end=13, limit=3)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_top_agrees_with_the_model(loaded, params, spec):
    assert loaded.json(f"/flows/top?{params}") == expected_top(RECORDS, **spec)


def test_ties_are_broken_by_names_in_code_point_order(flows, queries):
    flows.post([flow(name, "d", "v", 5, 5, 1) for name in ["b", "é", "a", "B", "ab"]])
    rows = queries.json("/flows/top?start=1&by=src_app")["rows"]
    assert [row["src_app"] for row in rows] == ["B", "a", "ab", "b", "é"]


def test_sums_beyond_64_bits_are_exact_in_json_and_csv(flows, queries):
    flows.post([flow(tx=INT64_MAX, rx=INT64_MAX, hour=h) for h in range(4) for _ in range(3)])
    answer = queries.json("/flows/top?start=0&end=3&by=vpc_id")
    assert answer["rows"] == [
        {"vpc_id": "vpc-0", "bytes_tx": 12 * INT64_MAX, "bytes_rx": 12 * INT64_MAX}
    ]
    assert answer["total"]["bytes_tx"] == 12 * INT64_MAX > 2**64
    assert queries.csv("/flows/top?start=0&end=3&by=vpc_id&format=csv")[1] == [
        "vpc-0",
        str(12 * INT64_MAX),
        str(12 * INT64_MAX),
    ]


def test_a_query_counts_every_hour_it_spans(flows, queries):
    """The hours of the range lie in all four partitions: every one is summed."""
    flows.post([flow(hour=h, tx=h, rx=1) for h in range(50, 59)])
    assert queries.json("/flows/top?start=50&end=58")["rows"] == [
        {"src_app": "foo", "dest_app": "bar", "vpc_id": "vpc-0", "bytes_tx": 486, "bytes_rx": 9}
    ]


# -- /flows/series -----------------------------------------------------------------------------


def test_series_gives_the_top_groups_hour_by_hour(loaded):
    answer = loaded.json("/flows/series?start=9&end=13&by=src_app&limit=2")
    top = expected_top(RECORDS, 9, 13, by=("src_app",), limit=2)
    assert answer == {
        "start": 9,
        "end": 13,
        "by": ["src_app"],
        "order": "bytes",
        "groups": [{"src_app": "baz"}, {"src_app": "foo"}],
        "hours": [
            {"hour": 9, "values": [[0, 0], [0, 0]], "other": [0, 0]},
            {"hour": 10, "values": [[0, 0], [100, 200]], "other": [300, 5]},
            {"hour": 11, "values": [[7, 400], [50, 0]], "other": [0, 0]},
            {"hour": 12, "values": [[0, 0], [10, 10]], "other": [0, 0]},
            {"hour": 13, "values": [[0, 0], [0, 0]], "other": [1, 1]},
        ],
    }
    assert [{"src_app": r["src_app"]} for r in top["rows"]] == answer["groups"]
    # The hours add up to the range's top rows and their other.
    for i, row in enumerate(top["rows"]):
        assert sum(h["values"][i][0] for h in answer["hours"]) == row["bytes_tx"]
        assert sum(h["values"][i][1] for h in answer["hours"]) == row["bytes_rx"]
    assert sum(h["other"][0] for h in answer["hours"]) == top["other"]["bytes_tx"]


def test_series_with_filters_and_all_fields(loaded):
    answer = loaded.json("/flows/series?start=10&end=11&vpc_id=vpc-1")
    assert answer["groups"] == [{"src_app": "foo", "dest_app": "db", "vpc_id": "vpc-1"}]
    assert answer["hours"] == [
        {"hour": 10, "values": [[0, 0]], "other": [0, 0]},
        {"hour": 11, "values": [[50, 0]], "other": [0, 0]},
    ]


def test_series_as_csv_has_a_row_per_group_and_hour_then_other(loaded):
    rows = loaded.csv("/flows/series?start=10&end=11&by=src_app&limit=2&format=csv")
    assert rows == [
        ["hour", "src_app", "bytes_tx", "bytes_rx"],
        ["10", "baz", "0", "0"],
        ["10", "foo", "100", "200"],
        ["10", "", "300", "5"],
        ["11", "baz", "7", "400"],
        ["11", "foo", "50", "0"],
        ["11", "", "0", "0"],
    ]


# -- /flows/hours ------------------------------------------------------------------------------


def test_hours_held(flows, queries):
    assert queries.json("/flows/hours") == {"count": 0, "oldest": None, "newest": None}
    flows.post([flow(hour=h) for h in (7, 3, 12, 3, INT64_MAX)])
    assert queries.json("/flows/hours") == {"count": 4, "oldest": 3, "newest": INT64_MAX}


# -- CSV ---------------------------------------------------------------------------------------

AWKWARD = ["a,b", 'say "hi"', "two\nlines", "cr\rlf\r\n", " padded ", "=1+1", "é,ü"]


def test_top_as_csv(loaded):
    assert loaded.csv("/flows/top?start=10&end=13&by=src_app,vpc_id&limit=2&format=csv") == [
        ["src_app", "vpc_id", "bytes_tx", "bytes_rx"],
        ["baz", "vpc-0", "7", "400"],
        ["foo", "vpc-0", "110", "210"],
        ["", "", "351", "6"],
    ]


def test_csv_quotes_names_per_rfc_4180(flows, queries):
    flows.post([flow(name, "d", "v", 1, i, 1) for i, name in enumerate(AWKWARD)])
    raw = queries.get("/flows/top?start=1&by=src_app&order=bytes_rx&format=csv").get_data()
    assert raw.startswith(b'src_app,bytes_tx,bytes_rx\r\n"\xc3\xa9,\xc3\xbc",1,6\r\n=1+1,1,5\r\n')
    assert b'"say ""hi""",1,1\r\n' in raw and b'"two\nlines",1,2\r\n' in raw
    rows = queries.csv("/flows/top?start=1&by=src_app&order=bytes_rx&format=csv")
    assert [row[0] for row in rows[1:-1]] == AWKWARD[::-1]
    assert rows[-1] == ["", "0", "0"]


def test_accept_text_csv_picks_csv_and_format_wins(loaded):
    path = "/flows/top?start=10&end=13&by=src_app&limit=1"
    assert loaded.csv(path, Accept="text/csv")[0] == ["src_app", "bytes_tx", "bytes_rx"]
    assert loaded.csv(path, Accept="application/json;q=0.5, text/csv")[1] == ["baz", "7", "400"]
    for accept in ("application/json", "*/*", "text/html", "text/csv;q=0.1, application/json"):
        response = loaded.get(path, Accept=accept)
        assert response.mimetype == "application/json", accept
        assert response.headers["Vary"] == "Accept"
    assert loaded.get(path + "&format=json", Accept="text/csv").mimetype == "application/json"
    assert loaded.csv(path + "&format=csv", Accept="application/json")[1] == ["baz", "7", "400"]


def test_get_flows_as_csv(flows, queries):
    flows.post([flow(name, "dest", "v", 3, 4, 2) for name in AWKWARD] + [flow(hour=2)])
    expected = [["src_app", "dest_app", "vpc_id", "bytes_tx", "bytes_rx", "hour"]]
    expected += [[name, "dest", "v", "3", "4", "2"] for name in AWKWARD]
    expected += [["foo", "bar", "vpc-0", "1", "2", "2"]]
    assert queries.csv("/flows?hour=2&format=csv") == expected
    assert queries.csv("/flows?hour=2", Accept="text/csv") == expected
    header = expected[:1]
    assert queries.csv("/flows?hour=3&format=csv") == header
    assert queries.csv(f"/flows?hour={2**70}&format=csv") == header
    json_answer = queries.get("/flows?hour=2")
    assert json_answer.mimetype == "application/json" and json_answer.headers["Vary"] == "Accept"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/flows?hour=1&format=xml", "query parameter 'format' must be json or csv, got 'xml'"),
        ("/flows?hour=1&format=csv&format=csv", "query parameter 'format' must be given once"),
        ("/flows?format=csv", "query parameter 'hour' is required"),
    ],
    ids=["unknown format", "format twice", "no hour"],
)
def test_get_flows_refuses_a_bad_format(queries, url, message):
    assert queries.json(url, 400) == {"error": message}


# -- bad parameters ----------------------------------------------------------------------------

KNOWN = "expected start, end, by, order, limit, format, src_app, dest_app, vpc_id"
BAD_PARAMETERS = [
    ("", "query parameter 'start' is required"),
    ("end=3", "query parameter 'start' is required"),
    ("start=x", "query parameter 'start' must be a non-negative integer, got 'x'"),
    ("start=-1", "query parameter 'start' must be a non-negative integer, got '-1'"),
    ("start=1.5", "query parameter 'start' must be a non-negative integer, got '1.5'"),
    ("start=%201", "query parameter 'start' must be a non-negative integer, got ' 1'"),
    ("start=%D9%A1", "query parameter 'start' must be a non-negative integer, got '١'"),
    ("start=1&start=1", "query parameter 'start' must be given once"),
    (f"start={2**63}", f"query parameter 'start' must be at most {INT64_MAX}"),
    ("start=1&end=", "query parameter 'end' must be a non-negative integer, got ''"),
    ("start=1&end=1e3", "query parameter 'end' must be a non-negative integer, got '1e3'"),
    ("start=5&end=4", "query parameter 'end' (4) must not be before 'start' (5)"),
    (
        "start=0&end=744",
        "query parameter 'end': hours 0 to 744 are 745 hours, more than"
        " FLOWAGG_MAX_QUERY_HOURS=744",
    ),
    ("start=1&by=", "query parameter 'by' must name one or more of src_app, dest_app, vpc_id"),
    ("start=1&by=src", "query parameter 'by': 'src' is not one of src_app, dest_app, vpc_id"),
    ("start=1&by=src_app,", "query parameter 'by': '' is not one of src_app, dest_app, vpc_id"),
    (
        "start=1&by=src_app,%20vpc_id",
        "query parameter 'by': ' vpc_id' is not one of src_app, dest_app, vpc_id",
    ),
    ("start=1&by=hour", "query parameter 'by': 'hour' is not one of src_app, dest_app, vpc_id"),
    ("start=1&by=vpc_id,src_app,vpc_id", "query parameter 'by' names vpc_id twice"),
    ("start=1&by=src_app&by=vpc_id", "query parameter 'by' must be given once"),
    ("start=1&limit=0", "query parameter 'limit' must be an integer from 1 to 1000, got '0'"),
    ("start=1&limit=1001", "query parameter 'limit' must be an integer from 1 to 1000, got '1001'"),
    ("start=1&limit=-3", "query parameter 'limit' must be an integer from 1 to 1000, got '-3'"),
    ("start=1&limit=ten", "query parameter 'limit' must be an integer from 1 to 1000, got 'ten'"),
    ("start=1&limit=", "query parameter 'limit' must be an integer from 1 to 1000, got ''"),
    ("start=1&limit=1&limit=2", "query parameter 'limit' must be given once"),
    (
        "start=1&order=size",
        "query parameter 'order' must be one of bytes, bytes_tx, bytes_rx, got 'size'",
    ),
    (
        "start=1&order=Bytes",
        "query parameter 'order' must be one of bytes, bytes_tx, bytes_rx, got 'Bytes'",
    ),
    ("start=1&order=bytes&order=bytes", "query parameter 'order' must be given once"),
    ("start=1&src_app=", "query parameter 'src_app' must not be empty (no name is)"),
    ("start=1&vpc_id=v&vpc_id=", "query parameter 'vpc_id' must not be empty (no name is)"),
    ("start=1&format=tsv", "query parameter 'format' must be json or csv, got 'tsv'"),
    ("start=1&format=csv&format=json", "query parameter 'format' must be given once"),
    ("start=1&hour=1", f"unknown query parameter 'hour'; {KNOWN}"),
    ("start=1&Start=1", f"unknown query parameter 'Start'; {KNOWN}"),
    ("start=1&src=a", f"unknown query parameter 'src'; {KNOWN}"),
    ("hour=1", f"unknown query parameter 'hour'; {KNOWN}"),
    ("start=1&" + "x" * 100 + "=1", f"unknown query parameter '{'x' * 37}...'; {KNOWN}"),
]


@pytest.mark.parametrize("path", ["/flows/top", "/flows/series"])
@pytest.mark.parametrize(
    ("params", "message"), BAD_PARAMETERS, ids=[p or "nothing" for p, _ in BAD_PARAMETERS]
)
def test_a_bad_parameter_is_400_naming_it(loaded, path, params, message):
    assert loaded.json(f"{path}?{params}", 400) == {"error": message}


def test_hours_takes_no_parameter(queries):
    assert queries.json("/flows/hours?start=1", 400) == {
        "error": "unknown query parameter 'start'; it takes none"
    }


def test_the_range_limit_follows_the_setting(make_app):
    queries = Queries(make_app(FLOWAGG_MAX_QUERY_HOURS=3).test_client())
    assert queries.json("/flows/top?start=7&end=9")["total"]["groups"] == 0
    assert queries.json("/flows/series?start=7&end=10", 400) == {
        "error": "query parameter 'end': hours 7 to 10 are 4 hours, more than"
        " FLOWAGG_MAX_QUERY_HOURS=3"
    }


def test_a_query_over_too_many_key_hours_is_422_and_counted(make_app):
    app = make_app(FLOWAGG_MAX_QUERY_ROWS=5)
    client = app.test_client()
    client.post(
        "/flows", data=json.dumps([flow(f"s{k}", hour=h) for h in (1, 2) for k in range(3)])
    )
    queries = Queries(client)
    assert queries.json("/flows/top?start=1&end=1")["total"]["groups"] == 3
    message = (
        "the query would scan 6 key-hours, more than FLOWAGG_MAX_QUERY_ROWS=5; narrow the range"
    )
    for path in ("/flows/top", "/flows/series"):
        assert queries.json(f"{path}?start=1&end=2", 422) == {"error": message}
    assert "flowagg_queries_refused_total 2.0" in queries.get("/metrics").get_data(as_text=True)


def test_a_query_waits_for_earlier_posts_then_gives_up_with_503(make_app):
    """The drainer of hour 6's partition is held inside its merge: the query must not answer
    without the batch it holds, and answers 503 with Retry-After at the read timeout."""
    app = make_app(FLOWAGG_READ_TIMEOUT_MS=100)
    stall = Stall(app.extensions["flowagg"].partitions[6 % 4])
    client = app.test_client()
    try:
        client.post("/flows", data=json.dumps([flow(hour=6)]))
        assert stall.entered.wait(10)
        for path in ("/flows/top?start=5&end=7", "/flows/series?start=6", "/flows/hours"):
            response = client.get(path)
            assert response.status_code == 503, path
            assert response.headers["Retry-After"] == "1"
            assert "retry later" in response.get_json()["error"]
    finally:
        stall.release.set()
    assert Queries(client).json("/flows/top?start=6")["total"]["bytes_tx"] == 1


def test_query_latency_is_observed_per_query(loaded):
    loaded.json("/flows/top?start=10")
    loaded.json("/flows/top?start=10&format=json")
    loaded.json("/flows/series?start=10")
    loaded.json("/flows/top?start=x", 400)
    metrics = loaded.get("/metrics").get_data(as_text=True)
    assert 'flowagg_query_duration_seconds_count{query="top"} 2.0' in metrics
    assert 'flowagg_query_duration_seconds_count{query="series"} 1.0' in metrics
