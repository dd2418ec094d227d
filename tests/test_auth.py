"""Bearer tokens with roles, and no writes from other sites' pages."""

import hashlib
import json
import logging
import subprocess
import sys

import pytest

from flowagg import create_app, logs, warn_if_open
from flowagg.tokens import Tokens, TokensFileError, new_token
from flowagg.web.guard import waitress_hosts
from tests.conftest import WAIT_TIMEOUT, flow
from tests.serverproc import ROOT, WAITRESS, ServerProcess
from tests.test_operations import scrape, value

BODY = json.dumps([flow()])


@pytest.fixture
def tokens_file(tmp_path):
    """A tokens file with one token of each role; returns (path, {role: token})."""
    tokens, lines = {}, ["# name role hash", ""]
    for name, role in (("agent-7", "write"), ("grafana", "read"), ("ops", "admin")):
        tokens[role], line = new_token(name, role)
        lines.append(line)
    path = tmp_path / "tokens"
    path.write_text("\n".join(lines) + "\n")
    return path, tokens


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# -- cross-site writes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin, allowed, status",
    [
        (None, None, 200),  # agents and curl send no Origin
        ("http://localhost", None, 200),  # the service's own origin (the test client's Host)
        ("http://LOCALHOST:80", None, 200),  # the same, spelled otherwise
        ("https://evil.example", None, 403),
        ("null", None, 403),  # a sandboxed page or a file
        ("http://localhost:8080", None, 403),  # another port is another origin
        ("https://console.example", "https://console.example", 200),
        ("https://console.example:8443", "https://console.example", 403),
    ],
    ids=["none", "own", "own-spelled", "foreign", "null", "other-port", "allowed", "not-allowed"],
)
def test_a_post_from_another_site_is_refused_in_open_mode(make_app, origin, allowed, status):
    app = make_app(**({"FLOWAGG_ALLOWED_ORIGINS": allowed} if allowed else {}))
    client = app.test_client()
    headers = {} if origin is None else {"Origin": origin}
    response = client.post("/flows", data=BODY, headers={"Content-Type": "text/plain", **headers})
    assert response.status_code == status, response.get_data(as_text=True)
    rows = client.get("/flows?hour=1", headers=headers).get_json()  # reads are not refused
    assert len(rows) == (1 if status == 200 else 0)
    if status == 403:
        assert response.get_json() == {
            "error": f"a POST from the web origin {origin!r} is refused: only the service's own"
            " origin and FLOWAGG_ALLOWED_ORIGINS may write"
        }
        assert value(scrape(client), "flowagg_requests_rejected_total", reason="forbidden") == 1


# -- tokens ------------------------------------------------------------------------------------


def test_without_a_valid_token_every_request_but_health_is_401(make_app, tokens_file):
    path, tokens = tokens_file
    client = make_app(FLOWAGG_TOKENS_FILE=str(path)).test_client()
    for method, url in (("POST", "/flows"), ("GET", "/flows?hour=1"), ("GET", "/metrics"),
                        ("GET", "/openapi.json"), ("GET", "/nowhere")):  # fmt: skip
        for headers, challenge in (
            ({}, 'Bearer realm="flowagg"'),
            (bearer("not-a-token"), 'Bearer realm="flowagg", error="invalid_token"'),
            ({"Authorization": f"Basic {tokens['admin']}"}, 'Bearer realm="flowagg"'),
        ):
            response = client.open(url, method=method, data=BODY, headers=headers)
            assert response.status_code == 401, (method, url, headers)
            assert response.headers["WWW-Authenticate"] == challenge
            assert response.get_json() == {
                "error": "a valid bearer token is required (Authorization: Bearer <token>)"
            }
    for url in ("/healthz", "/readyz"):
        assert client.get(url).status_code == 200
    client.post("/flows", data=BODY, headers=bearer(tokens["write"]))
    assert client.get("/flows?hour=1", headers=bearer(tokens["read"])).get_json() == [flow()]
    samples = scrape_with(client, tokens["read"])
    assert value(samples, "flowagg_requests_rejected_total", reason="unauthorized") == 3


def scrape_with(client, token):
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics", headers=bearer(token)).get_data(as_text=True)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize(
    "role, post, get, metrics",
    [("write", 200, 403, 403), ("read", 403, 200, 200), ("admin", 200, 200, 200)],
)
def test_each_role_may_do_what_it_says(make_app, tokens_file, role, post, get, metrics):
    path, tokens = tokens_file
    client = make_app(FLOWAGG_TOKENS_FILE=str(path)).test_client()
    auth = bearer(tokens[role])
    response = client.post("/flows", data=BODY, headers=auth)
    assert response.status_code == post
    if post == 403:
        assert response.get_json() == {
            "error": "the token 'grafana' has the role 'read'; POST /flows needs write"
        }
    assert client.get("/flows?hour=1", headers=auth).status_code == get
    assert client.get("/metrics", headers=auth).status_code == metrics


def test_the_token_name_is_logged_never_the_token(make_app, tokens_file, capsys):
    path, tokens = tokens_file
    app = make_app(FLOWAGG_TOKENS_FILE=str(path), FLOWAGG_LOG_FORMAT="json")
    logs.flush()
    capsys.readouterr()
    app.test_client().post("/flows", data=BODY, headers=bearer(tokens["write"]))
    app.test_client().post("/flows", data=BODY, headers=bearer("wrong"))
    assert logs.flush(WAIT_TIMEOUT)
    err = capsys.readouterr().err
    lines = [json.loads(x) for x in err.splitlines() if '"flowagg.access"' in x]
    assert [(x["status"], x.get("token")) for x in lines] == [(200, "agent-7"), (401, None)]
    assert all(token not in err for token in tokens.values())


def test_idempotency_keys_are_scoped_to_the_token(tmp_path, tokens_file):
    path, tokens = tokens_file
    app = create_app({"FLOWAGG_TOKENS_FILE": str(path), "FLOWAGG_DATA_DIR": str(tmp_path / "data")})
    client = app.test_client()
    try:
        key = {"Idempotency-Key": "batch-1"}
        for role in ("write", "admin", "write"):  # the second write is a retry
            response = client.post("/flows", data=BODY, headers={**key, **bearer(tokens[role])})
            assert response.get_json() == {"accepted": 1}
        # Another client cannot make this key answer 422 for its owner, nor learn its body.
        other = json.dumps([flow(tx=99)])
        response = client.post("/flows", data=other, headers={**key, **bearer(tokens["admin"])})
        assert response.status_code == 422
        response = client.post("/flows", data=other, headers={**key, **bearer(tokens["write"])})
        assert response.status_code == 422
        rows = client.get("/flows?hour=1", headers=bearer(tokens["read"])).get_json()
        assert rows[0]["bytes_tx"] == 2  # applied once per client
    finally:
        assert app.extensions["flowagg"].close(WAIT_TIMEOUT)


@pytest.mark.parametrize(
    "text, error",
    [
        ("agent write", "line 1: expected 'NAME ROLE sha256:HEX'"),
        ("agent boss sha256:" + "0" * 64, "line 1: role must be one of read, write, admin"),
        ("agent write md5:abc", "line 1: the hash is 'sha256:' and 64 hex digits"),
        ("a b\x00 sha256:" + "0" * 64, "line 1: "),
        ("x read sha256:" + "0" * 64 + "\nx write sha256:" + "1" * 64, "line 2: the name 'x'"),
        ("# only a comment\n", "holds no token"),
    ],
    ids=["fields", "role", "hash", "name", "twice", "empty"],
)
def test_a_bad_tokens_file_stops_start_up_naming_the_line(tmp_path, text, error):
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(TokensFileError, match=error.replace("(", r"\(").replace(")", r"\)")):
        Tokens.load(path)
    with pytest.raises(SystemExit, match="FLOWAGG_TOKENS_FILE"):
        create_app({"FLOWAGG_TOKENS_FILE": str(path)})


def test_every_token_of_the_file_is_found_by_its_hash_and_none_else(tmp_path):
    made = [new_token(f"n{i}", "read") for i in range(5)]
    (tmp_path / "tokens").write_text("\n".join(line for _, line in made))
    tokens = Tokens.load(tmp_path / "tokens")
    for i, (token, line) in enumerate(made):
        assert line == f"n{i} read sha256:{hashlib.sha256(token.encode()).hexdigest()}"
        assert len(token) >= 40 and token not in line
        assert tokens.find(token).name == f"n{i}"
    assert tokens.find(made[0][0] + "x") is None
    assert tokens.find("") is None


def test_python_m_flowagg_token_makes_a_token_the_server_accepts(tmp_path):
    made = subprocess.run(
        [sys.executable, "-m", "flowagg", "token", "agent-9", "write"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT_TIMEOUT * 3,
        check=True,
    )
    token, line = made.stdout.splitlines()
    assert line == f"agent-9 write sha256:{hashlib.sha256(token.encode()).hexdigest()}"
    (tmp_path / "tokens").write_text(line + "\n")
    server = ServerProcess(
        [*WAITRESS, "wsgi:app"], {"FLOWAGG_TOKENS_FILE": str(tmp_path / "tokens")}
    )
    try:
        server.wait_serving()
        assert server.request("POST", "/flows", BODY, bearer(token)) == (200, {"accepted": 1})
        status, body = server.request("POST", "/flows", BODY)
        assert status == 401
        assert "no FLOWAGG_TOKENS_FILE" not in server.stderr
    finally:
        server.stop()
    refused = subprocess.run(
        [sys.executable, "-m", "flowagg", "token", "agent 9", "root"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT_TIMEOUT * 3,
    )
    assert refused.returncode == 2 and "invalid choice: 'root'" in refused.stderr


# -- the warning when open ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, hosts",
    [
        ([], ["0.0.0.0"]),
        (["--host=127.0.0.1", "--port=8080"], ["127.0.0.1"]),
        (["--host", "::1"], ["::1"]),
        (["--listen=10.0.0.5:80", "--listen=127.0.0.1:81"], ["10.0.0.5", "127.0.0.1"]),
        (["--unix-socket=/run/flowagg.sock"], []),
    ],
    ids=["default", "host=", "host", "listen", "unix"],
)
def test_the_hosts_waitress_serve_listens_on(argv, hosts):
    assert waitress_hosts([*argv, "wsgi:app"]) == hosts


def test_an_open_service_beyond_loopback_says_so_once():
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("flowagg")
    handler = Keep(logging.WARNING)
    logger.addHandler(handler)
    try:
        warn_if_open(["127.0.0.1", "localhost", "::1"])
        assert seen == []
        warn_if_open(["0.0.0.0", "127.0.0.1"])
    finally:
        logger.removeHandler(handler)
    assert seen == ["no FLOWAGG_TOKENS_FILE: anyone who reaches 0.0.0.0 may read and write"]
