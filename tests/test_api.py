import json

import pytest

from flowagg.schema import LARGE_BODY, SLICE_FLOWS
from tests.conftest import Flows, flow

WORKED_EXAMPLE = [
    flow("foo", "bar", "vpc-0", 100, 300, 1),
    flow("foo", "bar", "vpc-0", 200, 600, 1),
    flow("baz", "qux", "vpc-0", 100, 500, 1),
    flow("baz", "qux", "vpc-0", 100, 500, 2),
    flow("baz", "qux", "vpc-1", 100, 500, 2),
]


def test_worked_example(flows):
    assert flows.post(WORKED_EXAMPLE) == {"accepted": 5}
    assert flows.get(1) == [
        flow("foo", "bar", "vpc-0", 300, 900, 1),
        flow("baz", "qux", "vpc-0", 100, 500, 1),
    ]
    assert flows.get(2) == [
        flow("baz", "qux", "vpc-0", 100, 500, 2),
        flow("baz", "qux", "vpc-1", 100, 500, 2),
    ]
    assert flows.get(3) == []


def test_get_response_is_a_json_array_with_fields_in_order(client, flows):
    flows.post([flow()])
    response = client.get("/flows?hour=1")
    assert response.headers["Content-Type"] == "application/json"
    assert response.data == (
        b'[{"src_app":"foo","dest_app":"bar","vpc_id":"vpc-0","bytes_tx":1,"bytes_rx":2,"hour":1}]'
    )


def test_body_is_parsed_as_json_whatever_the_content_type(client, flows):
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        response = client.post("/flows", data=json.dumps([flow()]), content_type=content_type)
        assert response.status_code == 200 and response.get_json() == {"accepted": 1}
    assert flows.get(1) == [flow(tx=3, rx=6)]


def test_empty_batch_accepts_zero(flows):
    assert flows.post([]) == {"accepted": 0}
    assert flows.get(0) == []


def test_unknown_fields_are_ignored(flows):
    assert flows.post([{**flow(), "extra": {"nested": [1]}, "proto": "tcp"}]) == {"accepted": 1}
    assert flows.get(1) == [flow()]


def test_order_is_first_appearance(flows):
    flows.post([flow(src="z"), flow(src="a"), flow(src="m")])
    flows.post([flow(src="a"), flow(src="b")])
    assert [r["src_app"] for r in flows.get(1)] == ["z", "a", "m", "b"]


def test_keys_are_not_joined_and_case_sensitive(flows):
    flows.post(
        [
            flow("a", "b:c", "v"),
            flow("a:b", "c", "v"),
            flow("a", "b", "c:v"),
            flow("a", "b:c", "v"),
            flow("A", "b:c", "v"),
            flow("a", "b:c", "V"),
        ]
    )
    assert flows.get(1) == [
        flow("a", "b:c", "v", 2, 4),
        flow("a:b", "c", "v"),
        flow("a", "b", "c:v"),
        flow("A", "b:c", "v"),
        flow("a", "b:c", "V"),
    ]


def test_unicode_names_round_trip(flows):
    names = ("zähler", "服务-东", "vpc-🚀")
    flows.post([flow(*names, 5, 7, 4), flow(*names, 1, 1, 4)])
    assert flows.get(4) == [flow(*names, 6, 8, 4)]


def test_sums_beyond_2_to_the_64_are_exact(flows):
    big = 2**63 - 1
    flows.post([flow(tx=big, rx=big)] * 5)
    flows.post([flow(tx=big, rx=1)] * 3)
    [row] = flows.get(1)
    assert row["bytes_tx"] == 8 * big > 2**64
    assert row["bytes_rx"] == 5 * big + 3


def test_hours_are_independent_across_and_within_partitions(flows):
    # With 4 partitions, hours 1 and 5 share a partition; 2 does not.
    flows.post([flow(hour=1), flow(hour=5, tx=10), flow(hour=2, tx=100)])
    assert flows.get(1) == [flow(hour=1)]
    assert flows.get(5) == [flow(hour=5, tx=10)]
    assert flows.get(2) == [flow(hour=2, tx=100)]


def test_large_hour_values(flows):
    big_hour = 2**63 - 1
    flows.post([flow(hour=big_hour)])
    assert flows.get(big_hour) == [flow(hour=big_hour)]
    assert flows.get(2**70) == []


def test_leading_zeros_in_hour(client, flows):
    flows.post([flow(hour=7)])
    assert client.get("/flows?hour=007").get_json() == [flow(hour=7)]


def test_batch_of_100k_flows_is_accepted(flows):
    batch = [flow(src=f"app-{i % 1000}", hour=i % 3) for i in range(100_000)]
    assert flows.post(batch) == {"accepted": 100_000}
    by_hour = [flows.get(h) for h in range(3)]
    assert [len(rows) for rows in by_hour] == [1000, 1000, 1000]
    rows = [row for rows in by_hour for row in rows]
    assert sum(r["bytes_tx"] for r in rows) == 100_000
    assert sum(r["bytes_rx"] for r in rows) == 200_000


def test_head_is_like_get_without_body(client, flows):
    flows.post([flow()])
    get, head = client.get("/flows?hour=1"), client.head("/flows?hour=1")
    assert head.status_code == 200 and head.data == b""
    assert head.headers["Content-Type"] == "application/json"
    assert head.headers["Content-Length"] == get.headers["Content-Length"]


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/nope", 404, "no such path: /nope"),
        ("GET", "/flows/1", 404, "no such path: /flows/1"),
        ("PUT", "/flows", 405, "method PUT not allowed on /flows"),
        ("DELETE", "/flows", 405, "method DELETE not allowed on /flows"),
    ],
    ids=["unknown-path", "unknown-subpath", "put", "delete"],
)
def test_unknown_paths_and_methods_answer_json(client, method, path, status, message):
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.get_json() == {"error": message}
    if status == 405:
        assert set(response.headers["Allow"].split(", ")) >= {"GET", "HEAD", "POST"}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "query parameter 'hour' is required"),
        ("?hour=", "query parameter 'hour' must be a non-negative integer, got ''"),
        ("?hour=-1", "query parameter 'hour' must be a non-negative integer, got '-1'"),
        ("?hour=%2B1", "query parameter 'hour' must be a non-negative integer, got '+1'"),
        ("?hour=1.5", "query parameter 'hour' must be a non-negative integer, got '1.5'"),
        ("?hour=abc", "query parameter 'hour' must be a non-negative integer, got 'abc'"),
        ("?hour=%20%201", "query parameter 'hour' must be a non-negative integer, got '  1'"),
        ("?hour=%C2%B2", "query parameter 'hour' must be a non-negative integer, got '²'"),
        ("?hour=1&hour=2", "query parameter 'hour' must be given once"),
        ("?hours=1", "query parameter 'hour' is required"),
    ],
    ids=[
        "missing",
        "empty",
        "negative",
        "signed",
        "fraction",
        "word",
        "spaces",
        "superscript",
        "twice",
        "typo",
    ],
)
def test_bad_hour_is_400_with_json_error(client, query, message):
    response = client.get("/flows" + query)
    assert response.status_code == 400
    assert response.get_json() == {"error": message}


def _with(**fields):
    return json.dumps([flow(), {**flow(), **fields}])


def _without(field):
    record = flow()
    del record[field]
    return json.dumps([flow(), record])


INT_RULE = "expected an integer >= 0 and <= 9223372036854775807"

BAD_BODIES = [
    pytest.param(b"", "body is empty; expected a JSON array of flow records", id="empty-body"),
    pytest.param(b"[{", "body is not valid JSON: Input data was truncated", id="truncated"),
    pytest.param(
        b"nope",
        "body is not valid JSON: JSON is malformed: invalid character (byte 4)",
        id="not-json",
    ),
    pytest.param(
        b"[] []",
        "body is not valid JSON: JSON is malformed: trailing characters (byte 4)",
        id="trailing",
    ),
    pytest.param(
        b'{"src_app": "a"}', "$: expected a JSON array of flow records, got an object", id="object"
    ),
    pytest.param(b"null", "$: expected a JSON array of flow records, got null", id="null"),
    pytest.param(b"[" * 100_000, "body is not valid JSON: nested too deeply", id="deep-nesting"),
    pytest.param(
        b'[{"src_app": "a\xff"}]',
        "body is not valid JSON: a string is not UTF-8",
        id="not-utf8",
    ),
    pytest.param(
        b"9\xff",
        "body is not valid JSON: JSON is malformed: trailing characters (byte 2)",
        id="wrong-type-then-garbage",
    ),
    pytest.param(
        b'[{"hour": "x"} nul',
        "body is not valid JSON: JSON is malformed: expected ',' or ']' (byte 15)",
        id="bad-field-then-garbage",
    ),
    pytest.param(b"[1]", "$[0]: expected a flow record object, got 1", id="number-record"),
    pytest.param(b"[[]]", "$[0]: expected a flow record object, got an array", id="array-record"),
    pytest.param(_without("hour"), '$[1]: missing required field "hour"', id="missing-hour"),
    pytest.param(_without("src_app"), '$[1]: missing required field "src_app"', id="missing-src"),
    pytest.param(
        _with(src_app=""), '$[1].src_app: expected a non-empty string, got ""', id="empty-src"
    ),
    pytest.param(
        _with(dest_app=5), "$[1].dest_app: expected a non-empty string, got 5", id="int-dest"
    ),
    pytest.param(
        _with(vpc_id=None), "$[1].vpc_id: expected a non-empty string, got null", id="null-vpc"
    ),
    pytest.param(_with(bytes_tx="lots"), f'$[1].bytes_tx: {INT_RULE}, got "lots"', id="string-tx"),
    pytest.param(
        _with(bytes_tx="100"), f'$[1].bytes_tx: {INT_RULE}, got "100"', id="numeric-string"
    ),
    pytest.param(_with(bytes_tx=True), f"$[1].bytes_tx: {INT_RULE}, got true", id="bool-tx"),
    pytest.param(_with(bytes_rx=1.5), f"$[1].bytes_rx: {INT_RULE}, got 1.5", id="float-rx"),
    pytest.param(_with(bytes_rx=1.0), f"$[1].bytes_rx: {INT_RULE}, got 1.0", id="integral-float"),
    pytest.param(_with(bytes_rx=None), f"$[1].bytes_rx: {INT_RULE}, got null", id="null-rx"),
    pytest.param(_with(bytes_rx=-1), f"$[1].bytes_rx: {INT_RULE}, got -1", id="negative-rx"),
    pytest.param(
        _with(bytes_tx=2**63), f"$[1].bytes_tx: {INT_RULE}, got {2**63}", id="tx-overflow"
    ),
    pytest.param(_with(hour=-3), f"$[1].hour: {INT_RULE}, got -3", id="negative-hour"),
    pytest.param(_with(hour="1"), f'$[1].hour: {INT_RULE}, got "1"', id="string-hour"),
    pytest.param(_with(hour=[1]), f"$[1].hour: {INT_RULE}, got an array", id="array-hour"),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
def test_invalid_body_is_400_naming_record_and_field_and_applies_nothing(
    client, flows, body, message
):
    flows.post([flow(tx=7, rx=7)])
    response = client.post("/flows", data=body)
    assert response.status_code == 400
    assert response.get_json() == {"error": message}
    # The valid record before the bad one was not applied either.
    assert flows.get(1) == [flow(tx=7, rx=7)]


def test_error_names_the_first_bad_record_in_a_large_batch(client, flows):
    batch = [flow(hour=h % 5) for h in range(5000)]
    batch[3210]["bytes_tx"] = "lots"
    response = client.post("/flows", data=json.dumps(batch))
    assert response.get_json() == {"error": f'$[3210].bytes_tx: {INT_RULE}, got "lots"'}
    assert all(flows.get(h) == [] for h in range(5))


def test_long_bad_values_are_shortened_in_the_message(client):
    response = client.post("/flows", data=_with(bytes_tx="x" * 500))
    message = response.get_json()["error"]
    assert response.status_code == 400
    assert message.startswith(f'$[1].bytes_tx: {INT_RULE}, got "xxx')
    assert message.endswith("...") and len(message) < 150


def test_body_over_the_limit_is_413_and_nothing_applied():
    from flowagg import create_app

    app = create_app({"FLOWAGG_MAX_BODY_BYTES": 200})
    try:
        client = app.test_client()
        big = json.dumps([flow()] * 5)
        assert len(big) > 200
        response = client.post("/flows", data=big)
        assert response.status_code == 413
        assert response.get_json() == {"error": "request body exceeds the limit of 200 bytes"}
        small = json.dumps([flow()])
        assert client.post("/flows", data=small).get_json() == {"accepted": 1}
        assert client.get("/flows?hour=1").get_json() == [flow()]
    finally:
        app.extensions["flowagg"].close(10)


def test_hour_with_thousands_of_digits_is_an_empty_hour(client, flows):
    flows.post([flow(hour=1)])
    assert client.get("/flows?hour=" + "9" * 5000).get_json() == []
    assert client.get("/flows?hour=" + "0" * 5000 + "1").get_json() == [flow(hour=1)]


@pytest.mark.parametrize("where", [0, 49_999], ids=["first-record", "last-record"])
def test_an_invalid_body_costs_no_more_memory_than_a_valid_one_of_its_size(where):
    """Wording the error once meant decoding the whole body a second time into Python objects
    (ten times its size); now the error path skims it and looks at one record."""
    import tracemalloc

    from flowagg.schema import InvalidBody, decode_flows

    records = [flow(src=f"s{k}") for k in range(50_000)]
    valid = json.dumps(records).encode()
    records[where]["bytes_tx"] = "lots!"
    invalid = json.dumps(records).encode()

    def peak(body: bytes) -> int:
        tracemalloc.start()
        try:
            try:
                decoded = decode_flows(body)
                del decoded
            except InvalidBody as exc:
                assert str(exc) == (
                    f"$[{where}].bytes_tx: expected an integer >= 0 and <= 9223372036854775807,"
                    ' got "lots!"'
                )
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # The same, but for the exception and its message: a few hundred bytes.
    assert peak(invalid) <= peak(valid) + 64 * 1024


# -- large bodies: decoded a slice at a time ----------------------------------------------------


def large_body(records: list[dict]) -> bytes:
    body = json.dumps(records).encode()
    assert len(body) >= LARGE_BODY
    return body


def test_a_large_body_is_applied_whole(make_app):
    app = make_app(FLOWAGG_RETENTION_HOURS=None)
    client, flows = app.test_client(), Flows(app.test_client())
    count = 3 * SLICE_FLOWS + 5
    records = [flow(src=f"s{k % 1000}", hour=k % 3, tx=k) for k in range(count)]
    response = client.post("/flows", data=large_body(records))
    assert (response.status_code, response.get_json()) == (200, {"accepted": count})
    for hour in range(3):
        rows = {r["src_app"]: r["bytes_tx"] for r in flows.get(hour)}
        expected: dict[str, int] = {}
        for r in records:
            if r["hour"] == hour:
                expected[r["src_app"]] = expected.get(r["src_app"], 0) + r["bytes_tx"]
        assert rows == expected


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            {"bytes_tx": "lots"},
            'bytes_tx: expected an integer >= 0 and <= 9223372036854775807, got "lots"',
        ),
        ({"src_app": ""}, 'src_app: expected a non-empty string, got ""'),
        ({"hour": None}, "hour: expected an integer >= 0 and <= 9223372036854775807, got null"),
    ],
    ids=["counter", "empty-name", "null-hour"],
)
def test_a_bad_record_late_in_a_large_body_is_named_by_its_index_and_nothing_is_applied(
    make_app, bad, message
):
    app = make_app()
    client, flows = app.test_client(), Flows(app.test_client())
    count = 3 * SLICE_FLOWS
    records = [flow(src=f"s{k}", hour=7) for k in range(count)]
    at = 2 * SLICE_FLOWS + 17
    records[at] = {**records[at], **bad}
    response = client.post("/flows", data=large_body(records))
    assert response.status_code == 400
    assert response.get_json() == {"error": f"$[{at}].{message}"}
    assert flows.get(7) == []


def test_a_long_name_late_in_a_large_body_is_named_by_its_index(make_app):
    app = make_app(FLOWAGG_MAX_NAME_BYTES=16)
    client = app.test_client()
    records = [flow(src=f"s{k}", hour=7) for k in range(3 * SLICE_FLOWS)]
    at = SLICE_FLOWS + 3
    records[at] = {**records[at], "dest_app": "d" * 17}
    response = client.post("/flows", data=large_body(records))
    assert response.get_json() == {
        "error": f"$[{at}].dest_app: longer than FLOWAGG_MAX_NAME_BYTES=16 bytes of UTF-8"
    }
    assert Flows(client).get(7) == []
