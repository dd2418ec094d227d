"""The shipped deploy/nginx.conf in front of the service: a real nginx from Debian's package,
over TLS, in front of a waitress started by ``make run``.

The configuration is the repository's own file with only its ports, paths and certificate
changed (``render``). Against it: 200 slowloris sockets and 8 clients that pipeline GETs and never
read, from one address, while another address's health probes and POSTs are answered; a body
over the limit refused from its headers; a per-address limit on requests in progress.
tests/test_connections.py shows the same attacks stopping waitress alone.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowagg.__main__ import CHANNEL_TIMEOUT_S, MAX_HEADER_BYTES, raise_open_files
from flowagg.config import DEFAULTS
from tests.conftest import WAIT_TIMEOUT, flow
from tests.hostile import Endpoint, NonReader, Slowloris, fill_hour, probe, reset
from tests.launch import Launched, launch
from tests.serverproc import ROOT

NGINX = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
OPENSSL = shutil.which("openssl")


def test_nginx_and_openssl_are_installed():
    # make test installs them with apt-get (as root); without them the tests below fail too.
    assert NGINX is not None and OPENSSL is not None, "nginx and openssl are needed"


CONF = ROOT / "deploy" / "nginx.conf"
CLIENT = "127.0.0.1"  # the well-behaved client's address
ATTACKER = "127.0.0.2"  # the hostile clients' address
GREEDY = "127.0.0.3"  # a client that holds many requests at once
SLOWLORIS_SOCKETS = 200
BYTE_INTERVAL_S = 2.0
NON_READERS = 8
PIPELINED = 50
BIG_HOUR = 7
BIG_HOUR_KEYS = 20_000  # an answer of about 1.9 MB, more than nginx keeps in memory
ATTACK_S = 15.0  # longer than client_header_timeout, so every slowloris socket meets it
PROBE_TIMEOUT_S = 5.0


def directive(conf: str, name: str) -> str:
    """The value of the one ``name`` directive in ``conf``."""
    [value] = re.findall(rf"^\s*{name}\s+([^;]+);", conf, re.M)
    return value


def seconds(value: str) -> int:
    assert value.endswith("s"), value
    return int(value[:-1])


def size(value: str) -> int:
    units = {"k": 1024, "m": 1024 * 1024}
    return int(value[:-1]) * units[value[-1]] if value[-1] in units else int(value)


def render(conf: str, port: int, upstream: int, prefix: Path, cert: Path, key: Path) -> str:
    """The shipped configuration with its port, upstream, files and certificate moved into the
    test's ``prefix``: each production value must be found where expected, nothing else changes."""
    for old, new in [
        ("listen 443 ssl;", f"listen {CLIENT}:{port} ssl;"),
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream};"),
        ("/etc/ssl/flowagg/fullchain.pem", str(cert)),
        ("/etc/ssl/flowagg/privkey.pem", str(key)),
        ("/run/nginx.pid", str(prefix / "nginx.pid")),
    ]:
        assert conf.count(old) == 1, old
        conf = conf.replace(old, new)
    for old, new in [("/var/log/nginx/", f"{prefix}/log/"), ("/var/lib/nginx/", f"{prefix}/lib/")]:
        assert old in conf, old
        conf = conf.replace(old, new)
    for system in ("/etc/", "/run/", "/var/"):
        assert system not in conf, f"{system} is outside the test's prefix"
    return conf


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((CLIENT, 0))
        return sock.getsockname()[1]


def nginx_test(conf: Path, prefix: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NGINX, "-t", "-p", str(prefix), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=WAIT_TIMEOUT,
    )


@dataclass
class Front:
    """nginx on ``port`` (TLS, certificate ``tls``) in front of ``upstream``."""

    nginx: subprocess.Popen
    port: int
    tls: ssl.SSLContext
    upstream: Launched | None
    conf: Path
    prefix: Path

    def endpoint(self, source: str = CLIENT) -> Endpoint:
        return Endpoint(self.port, tls=self.tls, source=source)

    def error_log(self) -> str:
        return (self.prefix / "log" / "error.log").read_text()


def stop_nginx(nginx: subprocess.Popen) -> None:
    """Fast shutdown (SIGTERM); if the master hangs, kill it and its workers by pid."""
    children = Path(f"/proc/{nginx.pid}/task/{nginx.pid}/children")
    workers = [int(pid) for pid in children.read_text().split()] if children.exists() else []
    nginx.terminate()
    try:
        nginx.wait(WAIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        for pid in [nginx.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        nginx.wait(WAIT_TIMEOUT)


def wait_listening(nginx: subprocess.Popen, port: int, stderr: Path) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:
        assert nginx.poll() is None, stderr.read_text()
        try:
            socket.create_connection((CLIENT, port), timeout=WAIT_TIMEOUT).close()
            return
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "nginx did not listen in time"
            time.sleep(0.05)


@contextlib.contextmanager
def nginx_in_front(upstream: Launched | None) -> Iterator[Front]:
    """nginx with the shipped configuration in front of ``upstream`` (None: a closed port)."""
    # Not pytest's tmp_path: nginx's workers run as www-data when started as root, and must
    # reach their temporary directories here.
    prefix = Path(tempfile.mkdtemp(prefix="flowagg-nginx-"))
    prefix.chmod(0o755)
    nginx = None
    try:
        (prefix / "log").mkdir()
        (prefix / "lib").mkdir()
        cert, key = prefix / "cert.pem", prefix / "key.pem"
        subprocess.run(
            [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-subj", f"/CN={CLIENT}",
             "-addext", f"subjectAltName=IP:{CLIENT}", "-keyout", key, "-out", cert],
            check=True, capture_output=True, timeout=WAIT_TIMEOUT,
        )  # fmt: skip
        port = free_port()
        upstream_port = free_port() if upstream is None else upstream.port
        conf = prefix / "nginx.conf"
        conf.write_text(render(CONF.read_text(), port, upstream_port, prefix, cert, key))
        checked = nginx_test(conf, prefix)
        assert checked.returncode == 0, checked.stderr
        with open(prefix / "log" / "stderr.log", "w") as stderr:
            nginx = subprocess.Popen(
                [NGINX, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        wait_listening(nginx, port, prefix / "log" / "stderr.log")
        tls = ssl.create_default_context(cafile=str(cert))
        yield Front(nginx, port, tls, upstream, conf, prefix)
    finally:
        if nginx is not None:
            stop_nginx(nginx)
        shutil.rmtree(prefix, ignore_errors=True)


@pytest.fixture(scope="module")
def front() -> Iterator[Front]:
    """nginx in front of ``make run``, for the whole module."""
    raise_open_files(4 * SLOWLORIS_SOCKETS)
    upstream = launch("make run")
    try:
        with nginx_in_front(upstream) as front:
            yield front
    finally:
        upstream.stop()


def raw_answer(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """Read one answer from ``sock`` as sent: (status line, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        assert chunk, body
        body += chunk
    return status, headers, body


def test_the_shipped_config_passes_nginx_t_without_a_warning(front):
    checked = nginx_test(front.conf, front.prefix)
    assert checked.returncode == 0, checked.stderr
    lines = [line for line in checked.stderr.splitlines() if "[warn]" in line or "[emerg]" in line]
    if os.getuid() != 0:  # the user directive applies to a master started as root only
        lines = [line for line in lines if '"user" directive' not in line]
    assert lines == []


def test_the_config_agrees_with_the_service():
    conf = CONF.read_text()
    limit = DEFAULTS["FLOWAGG_MAX_BODY_BYTES"]
    assert size(directive(conf, "client_max_body_size")) == limit
    assert f"exceeds the limit of {limit} bytes" in conf
    count, each = directive(conf, "large_client_header_buffers").split()
    assert int(count) * size(each) == MAX_HEADER_BYTES
    assert f"{size(each)} bytes a line, {MAX_HEADER_BYTES} in all" in conf
    # nginx must drop an idle connection to waitress before waitress closes it under its feet.
    upstream = re.search(r"upstream flowagg \{(.*?)\n    \}", conf, re.S).group(1)
    assert seconds(directive(upstream, "keepalive_timeout")) < CHANNEL_TIMEOUT_S
    [per_address] = re.findall(r"limit_conn flowagg_per_address (\d+);", conf)
    assert f"(limit {per_address})" in conf


def test_requests_pass_through_over_tls(front):
    client = front.endpoint()
    body = json.dumps([flow(hour=40), flow(hour=40, tx=5)])
    status, headers, answer = client.request("POST", "/flows", body, {"X-Request-ID": "agent.1"})
    assert (status, answer, headers["X-Request-ID"]) == (200, {"accepted": 2}, "agent.1")
    status, headers, rows = client.request("GET", "/flows?hour=40")
    assert (status, rows) == (200, [flow(hour=40, tx=6, rx=4)])
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"])  # nginx's own id
    for path, expected in [("/healthz", {"status": "ok"}), ("/readyz", {"status": "ready"})]:
        assert client.request("GET", path)[::2] == (200, expected)


def test_a_gzip_body_passes_through_with_its_content_encoding(front):
    client = front.endpoint()
    body = gzip.compress(json.dumps([flow(hour=45, tx=7)] * 3).encode())
    status, _, answer = client.request("POST", "/flows", body, {"Content-Encoding": "gzip"})
    assert (status, answer) == (200, {"accepted": 3})
    assert client.request("GET", "/flows?hour=45")[::2] == (200, [flow(hour=45, tx=21, rx=6)])
    status, headers, answer = client.request("POST", "/flows", body, {"Content-Encoding": "br"})
    assert (status, headers["Accept-Encoding"]) == (415, "gzip, identity")
    assert answer == {"error": "Content-Encoding 'br' is not supported; send gzip or identity"}


@pytest.mark.parametrize("expect", [(), ("Expect: 100-continue",)], ids=["plain", "expect"])
def test_a_body_over_the_limit_is_refused_before_any_body_byte(front, expect):
    limit = DEFAULTS["FLOWAGG_MAX_BODY_BYTES"]
    lines = ["POST /flows HTTP/1.1", "Host: x", f"Content-Length: {limit + 1}", *expect]
    with front.endpoint().connect() as sock:
        sock.sendall("".join(line + "\r\n" for line in lines).encode() + b"\r\n")
        status, headers, body = raw_answer(sock)
    assert status == "HTTP/1.1 413 Request Entity Too Large"  # and no "100 Continue" first
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": f"request body exceeds the limit of {limit} bytes"}


def test_headers_over_the_cap_are_refused_with_json(front):
    with front.endpoint().connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n")
        status, _, body = raw_answer(sock)
    assert status.startswith("HTTP/1.1 431 ")
    assert "32768 in all" in json.loads(body)["error"]


def test_plain_http_to_the_tls_port_is_refused_with_json(front):
    status, _, body = Endpoint(front.port).request("GET", "/healthz")
    assert status == 400
    assert body == {"error": "plain HTTP sent to the HTTPS port; use https://"}


def test_no_answer_from_waitress_is_a_503_to_retry():
    with nginx_in_front(None) as front:
        status, headers, body = front.endpoint().request("GET", "/flows?hour=1")
    assert (status, headers["Retry-After"], headers["Content-Type"]) == (
        503,
        "1",
        "application/json",
    )
    assert body["error"].startswith("the service did not answer; retry later")


def test_one_address_may_have_16_requests_in_progress(front):
    """16 uploads from one address, each let through the limit (nginx asked for its body); the
    17th is refused at once, another address is not, and the limit frees as they go."""
    greedy, client = front.endpoint(GREEDY), front.endpoint()
    head = b"POST /flows HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
    held = []
    try:
        for _ in range(16):
            sock = greedy.connect()
            held.append(sock)
            sock.sendall(head)
            assert raw_answer(sock)[0] == "HTTP/1.1 100 Continue"  # past the limit
        status, headers, body = greedy.request("POST", "/flows", json.dumps([flow(hour=41)]))
        assert (status, headers["Retry-After"]) == (429, "1")
        assert "limit 16" in body["error"]
        assert client.request("POST", "/flows", json.dumps([flow(hour=41)]))[::2] == (
            200,
            {"accepted": 1},
        )
    finally:
        for sock in held:
            reset(sock)
    deadline = time.monotonic() + WAIT_TIMEOUT
    while (status := greedy.request("GET", "/healthz")[0]) == 429:  # nginx sees the resets
        assert time.monotonic() < deadline, "the address's requests were never released"
        time.sleep(0.05)
    assert status == 200
    assert client.request("GET", "/flows?hour=41")[::2] == (200, [flow(hour=41)])


def waitress_gets(front: Front) -> int:
    """GET /flows requests waitress has logged so far."""
    return sum("method=GET path=/flows " in line for line in list(front.upstream.lines))


def test_slow_and_non_reading_clients_stop_neither_probes_nor_posts(front):
    """From one address, 200 sockets trickling headers and 8 connections pipelining GETs of a
    1.9 MB hour without reading; from another, a probe, a POST and its GET every second, each
    answered. nginx closes the slow sockets at its header deadline, so waitress never sees them.
    It passes a connection's pipelined requests on one at a time, takes each answer off
    waitress into a temporary file, and closes the connection at its send deadline."""
    client, attacker = front.endpoint(), front.endpoint(ATTACKER)
    assert fill_hour(client, BIG_HOUR, BIG_HOUR_KEYS) > 1_500_000
    conf = CONF.read_text()
    header_deadline = seconds(directive(conf, "client_header_timeout"))
    send_deadline = seconds(directive(conf, "send_timeout"))
    slowloris = Slowloris(attacker, SLOWLORIS_SOCKETS, BYTE_INTERVAL_S)
    readers: list[NonReader] = []
    gets_before = waitress_gets(front)
    try:
        slowloris.start()
        started = time.monotonic()
        for _ in range(NON_READERS):
            readers.append(NonReader(attacker, f"/flows?hour={BIG_HOUR}", PIPELINED))
        rounds = 0
        while time.monotonic() < started + ATTACK_S:
            probe(client, PROBE_TIMEOUT_S)
            hour = 1000 + rounds
            posted = json.dumps([flow(src=f"client-{rounds}", hour=hour)])
            status, _, body = client.request("POST", "/flows", posted, timeout=PROBE_TIMEOUT_S)
            assert (status, body) == (200, {"accepted": 1}), rounds
            status, _, rows = client.request("GET", f"/flows?hour={hour}", timeout=PROBE_TIMEOUT_S)
            assert (status, rows) == (200, [flow(src=f"client-{rounds}", hour=hour)]), rounds
            rounds += 1
            time.sleep(1.0)  # pacing the rounds, not waiting for anything
        assert rounds >= ATTACK_S // 2
        deadline = started + send_deadline + WAIT_TIMEOUT
        while not all(reader.closed_by_server() for reader in readers):
            assert time.monotonic() < deadline, "nginx kept a client that does not read"
            time.sleep(0.1)
        # Every socket of the first wave met the header deadline, and the attack kept its
        # strength by opening new ones.
        assert len(slowloris.lifetimes) >= SLOWLORIS_SOCKETS
        assert max(slowloris.lifetimes) < header_deadline + BYTE_INTERVAL_S + 1
        assert (slowloris.open_now, slowloris.failed_connects) == (SLOWLORIS_SOCKETS, 0)
    finally:
        slowloris.close()
        for reader in readers:
            reader.close()
    log = front.error_log().splitlines()
    spooled = {
        line.split()[4]  # the connection's number, "*42"
        for line in log
        if "an upstream response is buffered to a temporary file" in line
        and f"client: {ATTACKER}," in line
        and f"GET /flows?hour={BIG_HOUR} " in line
    }
    assert len(spooled) >= NON_READERS  # every non-reading client's answer left waitress
    # Of their 400 pipelined GETs waitress saw a few (about 2 each, what socket buffers take).
    assert waitress_gets(front) - gets_before - rounds < NON_READERS * PIPELINED / 4
    limited = [line for line in log if "limiting connections" in line]
    assert not [line for line in limited if f"client: {ATTACKER}," in line]  # not what held them
