"""The OpenAPI document: real responses conform to it, and fuzzing from it finds no 5xx."""

import json
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from flowagg import create_app
from flowagg.web.openapi import openapi_document
from tests.conftest import WAIT_TIMEOUT, flow


@pytest.fixture(scope="module")
def fuzz_app():
    app = create_app({"FLOWAGG_PARTITIONS": 4, "FLOWAGG_LOG_LEVEL": "warning"})
    yield app
    assert app.extensions["flowagg"].close(WAIT_TIMEOUT)


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    return schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)


def test_document_is_served_and_complete(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    assert document == json.loads(json.dumps(openapi_document()))
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {
        "/flows",
        "/flows/top",
        "/flows/series",
        "/flows/hours",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/",
        "/page.js",
        "/page.css",
    }
    # Every route the app serves is documented (HEAD and OPTIONS come with GET).
    served = {
        (rule.rule, method.lower())
        for rule in client.application.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert served == documented


REAL_REQUESTS = [
    ("POST", "/flows", json.dumps([flow(), flow(hour=2)]), 200),
    ("POST", "/flows", "[]", 200),
    ("POST", "/flows", json.dumps([{**flow(), "bytes_tx": -1}]), 400),
    ("POST", "/flows", "nope", 400),
    ("GET", "/flows?hour=1", None, 200),
    ("GET", "/flows?hour=999", None, 200),
    ("GET", "/flows?hour=x", None, 400),
    ("GET", "/flows", None, 400),
    ("GET", "/flows?hour=1&format=csv", None, 200),
    ("GET", "/flows?hour=1&format=xml", None, 400),
    ("GET", "/flows/top?start=1&end=2", None, 200),
    (
        "GET",
        "/flows/top?start=1&by=src_app&src_app=foo&src_app=x&order=bytes_rx&limit=1",
        None,
        200,
    ),
    ("GET", "/flows/top?start=1&end=2&format=csv", None, 200),
    ("GET", "/flows/top?start=2&end=1", None, 400),
    ("GET", "/flows/top?start=1&bogus=1", None, 400),
    ("GET", "/flows/series?start=0&end=3&by=vpc_id", None, 200),
    ("GET", "/flows/series?start=0&end=3&format=csv", None, 200),
    ("GET", "/flows/series?start=1&by=", None, 400),
    ("GET", "/flows/hours", None, 200),
    ("GET", "/flows/hours?x=1", None, 400),
    ("GET", "/", None, 200),
    ("GET", "/page.js", None, 200),
    ("GET", "/page.css", None, 200),
    ("GET", "/healthz", None, 200),
    ("GET", "/readyz", None, 200),
    ("GET", "/metrics", None, 200),
    ("GET", "/openapi.json", None, 200),
]


@pytest.mark.parametrize(
    ("method", "url", "body", "status"),
    REAL_REQUESTS,
    ids=[f"{m} {u} {s}" for m, u, _, s in REAL_REQUESTS],
)
def test_real_responses_conform_to_the_document(fuzz_app, api_schema, method, url, body, status):
    client = fuzz_app.test_client()
    client.post("/flows", data=json.dumps([flow(tx=2**63 - 1)] * 3))  # sums beyond 64 bits
    response = client.open(url, method=method, data=body)
    assert response.status_code == status
    api_schema[url.split("?")[0]][method].validate_response(response)


def test_a_refused_query_conforms(api_schema):
    app = create_app({"FLOWAGG_MAX_QUERY_ROWS": 1, "FLOWAGG_LOG_LEVEL": "warning"})
    try:
        client = app.test_client()
        client.post("/flows", data=json.dumps([flow(src="a"), flow(src="b")]))
        for path in ("/flows/top", "/flows/series"):
            response = client.get(f"{path}?start=1")
            assert response.status_code == 422
            api_schema[path]["GET"].validate_response(response)
    finally:
        assert app.extensions["flowagg"].close(WAIT_TIMEOUT)


def test_big_sums_conform(fuzz_app, api_schema):
    client = fuzz_app.test_client()
    client.post("/flows", data=json.dumps([flow(hour=77, tx=2**63 - 1)] * 4))
    response = client.get("/flows?hour=77")
    assert response.get_json()[0]["bytes_tx"] == 4 * (2**63 - 1)
    api_schema["/flows"]["GET"].validate_response(response)
    for path in ("/flows/top", "/flows/series"):
        response = client.get(f"{path}?start=77")
        assert response.status_code == 200
        api_schema[path]["GET"].validate_response(response)


POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
FUZZED = [
    ("/flows", "POST", POSITIVE),
    ("/flows", "POST", NEGATIVE),
    ("/flows", "GET", POSITIVE),
    ("/flows", "GET", NEGATIVE),
    ("/flows/top", "GET", POSITIVE),
    ("/flows/top", "GET", NEGATIVE),
    ("/flows/series", "GET", POSITIVE),
    ("/flows/series", "GET", NEGATIVE),
    ("/flows/hours", "GET", POSITIVE),  # it takes no parameter to get wrong
]
# What the document cannot say of a range query, so valid-looking requests may still get 400.
CROSS_PARAMETER_RULES = re.compile(
    r"must not be before 'start'|more than FLOWAGG_MAX_QUERY_HOURS|query parameter 'by' names"
)


@pytest.mark.parametrize(
    ("path", "method", "mode"), FUZZED, ids=[f"{m} {p}-{g}" for p, m, g in FUZZED]
)
def test_fuzzed_requests_never_get_5xx(api_schema, path, method, mode):
    """Bounded fuzzing from the document: valid and invalid requests alike never get a 5xx,
    and every response matches the document (status, content type, body)."""

    @given(case=api_schema[path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
        assert response.status_code < 500
        if mode is POSITIVE and response.status_code == 400:
            if path == "/flows":
                # JSON Schema counts 1.0 as an integer; the API insists on integer literals.
                assert _has_float(case.body), response.text
            else:
                assert CROSS_PARAMETER_RULES.search(response.json()["error"]), response.text

    run()


def _has_float(value) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    return False
