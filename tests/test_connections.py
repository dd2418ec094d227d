"""What one client can hold of the service as ``make run`` and ``python -m flowagg`` serve it.

Against real server processes on 127.0.0.1: slow senders (slowloris) must not take every
connection, an idle connection is closed, a body or header over the limit is refused from its
headers alone. Two controls show the attacks are real: waitress with its own defaults loses every
connection to the slowloris, and clients that never read pin every worker of waitress alone,
which is what the nginx in front (tests/test_nginx.py) is for.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
from waitress.adjustments import Adjustments

from flowagg.__main__ import (
    CHANNEL_TIMEOUT_S,
    CLEANUP_INTERVAL_S,
    CONNECTION_LIMIT,
    MAX_HEADER_BYTES,
    open_files_needed,
    raise_open_files,
    waitress_flags,
    waitress_settings,
)
from flowagg.config import resolve
from tests.conftest import WAIT_TIMEOUT, flow
from tests.hostile import Endpoint, NonReader, Slowloris, fill_hour, probe, probe_unanswered
from tests.launch import LAUNCHERS, MAKE_RUN, Launched, launch
from tests.serverproc import ROOT, WAITRESS

SLOWLORIS_SOCKETS = 200
BYTE_INTERVAL_S = 2.0  # well inside the channel timeout: waitress never sees them idle
ATTACK_S = 20.0  # probes keep coming for this long; the idle connection closes within it
PROBE_TIMEOUT_S = 5.0  # a health probe is answered within this, or the server is down
STUCK_PROBE_S = 3.0  # a probe unanswered this long shows an outage in the controls
SMALL_BODY_LIMIT = 4096
BIG_HOUR = 7
BIG_HOUR_KEYS = 20_000  # an answer of about 1.9 MB
NON_READERS = 8  # as many as waitress has threads
SPOOLED_UPLOADS = 30
PIPELINED = 50


@pytest.fixture(scope="module", autouse=True)
def client_files():
    raise_open_files(2 * CONNECTION_LIMIT)  # ours: the clients' sockets


@pytest.fixture(scope="module")
def servers():
    """One server of each launcher, with the default settings."""
    started: dict[str, Launched] = {}
    try:
        for name in LAUNCHERS:
            started[name] = launch(name)
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def small_limit_servers():
    """One server of each launcher with FLOWAGG_MAX_BODY_BYTES=4096."""
    started: dict[str, Launched] = {}
    try:
        for name in LAUNCHERS:
            started[name] = launch(name, {"FLOWAGG_MAX_BODY_BYTES": str(SMALL_BODY_LIMIT)})
        yield started
    finally:
        for server in started.values():
            server.stop()


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def send_head(endpoint: Endpoint, head: str, body: bytes = b"") -> Answer:
    """Send a request's ``head`` (and ``body``, if any) on a raw socket; read the answer."""
    sock = endpoint.connect()
    try:
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            return Answer(response.status, response.headers, response.read())
        finally:
            response.close()
    finally:
        sock.close()


def assert_refused(launcher: str, answer: Answer, status: int, message: str, waitress: str):
    """A refusal by waitress itself: JSON naming the limit from ``python -m flowagg``, waitress's
    own text (``waitress``) from ``waitress-serve``; the connection is closed either way."""
    assert answer.status == status
    assert answer.headers["Connection"] == "close"
    if launcher == "python -m flowagg":
        assert answer.headers["Content-Type"] == "application/json"
        assert json.loads(answer.body) == {"error": message}
    else:
        assert answer.body.startswith(waitress.encode())


def post_head(length: int, *extra: str) -> str:
    lines = ["POST /flows HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {length}", *extra]
    return "".join(line + "\r\n" for line in lines)


def wait_closed_by_server(sock, deadline: float) -> None:
    """Block until the server closes ``sock`` (end of stream or reset); fail at ``deadline``."""
    sock.settimeout(max(0.0, deadline - time.monotonic()))
    try:
        assert sock.recv(1) == b""
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError("the server did not close the idle connection in time") from None


@pytest.mark.parametrize(
    "env, body_size",
    [({}, 64 * 1024 * 1024 + 1), ({"FLOWAGG_MAX_BODY_BYTES": "4096"}, 4097)],
    ids=["default", "4096"],
)
def test_waitress_flags_are_the_bounds_waitress_reads(env, body_size):
    out = subprocess.run(
        [sys.executable, "-m", "flowagg", "--waitress-flags"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=WAIT_TIMEOUT * 3,
        check=True,
    )
    flags = out.stdout.split()
    kw, rest = Adjustments.parse_args(flags)  # as waitress-serve parses its command line
    assert (kw.pop("help"), kw.pop("call"), rest) == (False, False, [])
    adj = Adjustments(**kw)
    got = (
        adj.connection_limit,
        adj.channel_timeout,
        adj.cleanup_interval,
        adj.max_request_header_size,
        adj.max_request_body_size,
        adj.asyncore_use_poll,
    )
    assert got == (1000, 15, 5, 32769, body_size, True)


def test_waitress_flags_round_trip_through_waitress_serve_options():
    adjustments = {"asyncore_use_poll": False, "log_socket_errors": True, "backlog": 64}
    flags = waitress_flags(adjustments)
    assert flags == ["--no-asyncore-use-poll", "--log-socket-errors", "--backlog=64"]
    kw, _ = Adjustments.parse_args(flags)
    adj = Adjustments(**{k: v for k, v in kw.items() if k not in ("help", "call")})
    assert (adj.asyncore_use_poll, adj.log_socket_errors, adj.backlog) == (False, True, 64)


@pytest.mark.parametrize(
    "argv",
    [[sys.executable, "-m", "flowagg", "--waitress-flags"], MAKE_RUN],
    ids=["waitress-flags", "make run"],
)
def test_an_invalid_body_limit_stops_start_up_with_one_line(argv):
    out = subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, "FLOWAGG_MAX_BODY_BYTES": "lots"},
        capture_output=True,
        text=True,
        timeout=WAIT_TIMEOUT * 3,
    )
    assert out.returncode != 0
    assert out.stdout == ""
    line = "flowagg: invalid configuration: FLOWAGG_MAX_BODY_BYTES='lots': expected an integer\n"
    assert out.stderr.startswith(line)


def test_make_run_passes_the_bounds_to_waitress_serve(servers):
    bounds = waitress_flags(waitress_settings(resolve(os.environ)))
    cmdline = servers["make run"].cmdline()  # the interpreter, the script, its arguments
    script = next(i for i, arg in enumerate(cmdline) if arg.endswith("/waitress-serve"))
    assert cmdline[script + 1 :] == [
        "--host=127.0.0.1",
        "--port=0",
        "--threads=8",
        *bounds,
        "wsgi:app",
    ]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_the_server_may_open_the_files_its_connections_need(servers, launcher):
    limit = servers[launcher].limits()["Max open files"]
    assert limit == "unlimited" or int(limit) >= open_files_needed(CONNECTION_LIMIT)


OVER_THE_LIMIT = [64 * 1024 * 1024 + 1, 2**30 - 1]
TOO_LARGE = "request body exceeds the limit of 67108864 bytes"  # as the app says it


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("length", OVER_THE_LIMIT, ids=["limit+1", "1GiB-1"])
def test_a_body_over_the_limit_is_refused_before_any_body_byte(servers, launcher, length):
    answer = send_head(Endpoint(servers[launcher].port), post_head(length))
    assert_refused(launcher, answer, 413, TOO_LARGE, "Request Entity Too Large")


@pytest.mark.parametrize("length", OVER_THE_LIMIT, ids=["limit+1", "1GiB-1"])
def test_python_m_flowagg_refuses_before_the_body_also_when_asked_to_continue(servers, length):
    head = post_head(length, "Expect: 100-continue")
    answer = send_head(Endpoint(servers["python -m flowagg"].port), head)
    # http.client would skip a "100 Continue"; had one come, the server would wait for the body.
    assert_refused("python -m flowagg", answer, 413, TOO_LARGE, "")


def test_waitress_serve_asked_to_continue_reads_at_most_the_limit(small_limit_servers):
    """waitress-serve (make run) tells an oversized request with ``Expect: 100-continue`` to go on
    and refuses it once the body passes the limit: what it reads is bounded by the limit."""
    sock = Endpoint(small_limit_servers["make run"].port).connect()
    try:
        head = post_head(SMALL_BODY_LIMIT + 1, "Expect: 100-continue") + "\r\n"
        sock.sendall(head.encode())
        continue_ = b"HTTP/1.1 100 Continue\r\n\r\n"
        received = b""
        while len(received) < len(continue_):
            chunk = sock.recv(len(continue_) - len(received))
            assert chunk, received
            received += chunk
        assert received == continue_
        sock.sendall(b" " * (SMALL_BODY_LIMIT + 1))
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            assert response.status == 413
        finally:
            response.close()
    finally:
        sock.close()


def one_chunk(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


CHUNK_FRAMING = len(one_chunk(b"x" * 0xFFF)) - 0xFFF  # for bodies of 0x100 to 0xfff bytes


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize(
    "framing, sent, status",
    [
        ("length", SMALL_BODY_LIMIT, 200),
        ("length", SMALL_BODY_LIMIT + 1, 413),
        ("chunked", SMALL_BODY_LIMIT, 200),
        ("chunked", SMALL_BODY_LIMIT + 1, 413),
    ],
    ids=["length-at-limit", "length-over", "chunked-at-limit", "chunked-over"],
)
def test_the_body_limit_is_flowagg_max_body_bytes(
    small_limit_servers, launcher, framing, sent, status
):
    """A body of FLOWAGG_MAX_BODY_BYTES is accepted, one byte more is not. A chunked body is
    counted as sent, its chunk framing included."""
    server = small_limit_servers[launcher]
    hour = 100 + sent + (framing == "chunked") * 10
    body = json.dumps([flow(hour=hour)]).encode()
    if framing == "length":
        head = post_head(sent)
        payload = body + b" " * (sent - len(body))  # JSON allows trailing whitespace
    else:
        head = "POST /flows HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        payload = one_chunk(body + b" " * (sent - CHUNK_FRAMING - len(body)))
    assert len(payload) == sent
    answer = send_head(Endpoint(server.port), head, payload)
    if status == 200:
        assert (answer.status, json.loads(answer.body)) == (200, {"accepted": 1})
    else:
        message = f"request body exceeds the limit of {SMALL_BODY_LIMIT} bytes"
        assert_refused(launcher, answer, 413, message, "Request Entity Too Large")
    assert server.rows([hour]) == ([flow(hour=hour)] if status == 200 else [])


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("size", [MAX_HEADER_BYTES, MAX_HEADER_BYTES + 1], ids=["at", "over"])
def test_request_headers_are_capped(servers, launcher, size):
    """The request line and headers, their closing blank line included, take at most 32 KiB."""
    head = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "
    head += "a" * (size - len(head) - 4) + "\r\n"
    assert len(head) + 2 == size
    answer = send_head(Endpoint(servers[launcher].port), head)
    if size == MAX_HEADER_BYTES:
        assert (answer.status, json.loads(answer.body)) == (200, {"status": "ok"})
    else:
        message = f"request headers exceed the limit of {MAX_HEADER_BYTES} bytes"
        assert_refused(launcher, answer, 431, message, "Request Header Fields Too Large")


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_malformed_head_is_refused_naming_the_problem(servers, launcher):
    answer = send_head(Endpoint(servers[launcher].port), "GET /healthz HTTP/1.1\r\nNo colon\r\n")
    assert_refused(launcher, answer, 400, "Invalid header", "Bad Request")


def files_open(server: Launched) -> int:
    return len(os.listdir(f"/proc/{server.pid}/fd"))


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_thousand_connections_and_their_files_keep_the_server_up(servers, launcher):
    """The connection limit, with spooled bodies taking the server past descriptor 1023 (where
    select() would end waitress's loop): beyond the limit a new connection waits; the ones held
    are served, and the waiting one is once they go."""
    server = servers[launcher]
    endpoint = Endpoint(server.port)
    # waitress counts its listener and its wake-up pipe among the connections.
    uploads, idle = [], []
    body = json.dumps([flow(src=f"{launcher}-{i}", hour=60) for i in range(6_000)]).encode()
    assert len(body) > 512 * 1024  # waitress spools a body this large to a temporary file
    try:
        for _ in range(SPOOLED_UPLOADS):
            sock = endpoint.connect()
            uploads.append(sock)
            sock.sendall(post_head(len(body)).encode() + b"\r\n" + body[:-1])
        for _ in range(CONNECTION_LIMIT - 2 - SPOOLED_UPLOADS):
            idle.append(endpoint.connect())
        deadline = time.monotonic() + WAIT_TIMEOUT
        while files_open(server) <= 1024:
            assert time.monotonic() < deadline, f"only {files_open(server)} files open"
            time.sleep(0.05)
        assert probe_unanswered(endpoint, STUCK_PROBE_S)  # at the limit: it waits its turn
        for sock in uploads:  # the connections held are served
            sock.sendall(body[-1:])
            response = http.client.HTTPResponse(sock)
            try:
                response.begin()
                assert (response.status, json.loads(response.read())) == (200, {"accepted": 6000})
            finally:
                response.close()
            sock.close()
        probe(endpoint, WAIT_TIMEOUT)
    finally:
        for sock in uploads + idle:
            sock.close()
    rows = server.rows([60])
    assert (
        sum(r["bytes_tx"] for r in rows if r["src_app"].startswith(launcher))
        == 6000 * SPOOLED_UPLOADS
    )


def test_slowloris_sockets_do_not_stop_health_probes(servers):
    """200 sockets sending a header byte every 2 s against each server; meanwhile a probe a
    second must be answered, and a connection that sends nothing is closed for idleness."""
    endpoints = {name: Endpoint(server.port) for name, server in servers.items()}
    attacks: dict[str, Slowloris] = {}
    idle = {}
    try:
        for name, endpoint in endpoints.items():
            attacks[name] = Slowloris(endpoint, SLOWLORIS_SOCKETS, BYTE_INTERVAL_S).start()
            idle[name] = endpoint.connect()
        idle_since = time.monotonic()
        probes = 0
        while time.monotonic() < idle_since + ATTACK_S:
            for name, endpoint in endpoints.items():
                try:
                    probe(endpoint, PROBE_TIMEOUT_S)
                except TimeoutError:
                    raise AssertionError(f"{name}: probe {probes} unanswered") from None
            probes += 1
            time.sleep(1.0)  # pacing the probes, not waiting for anything
        for name, sock in idle.items():
            wait_closed_by_server(sock, idle_since + CHANNEL_TIMEOUT_S + CLEANUP_INTERVAL_S + 3)
            assert time.monotonic() - idle_since >= CHANNEL_TIMEOUT_S, name
        for name, attack in attacks.items():  # the attack kept its strength throughout
            assert (attack.open_now, attack.lifetimes, attack.failed_connects) == (
                SLOWLORIS_SOCKETS,
                [],
                0,
            ), name
        assert probes >= ATTACK_S // 2
    finally:
        for attack in attacks.values():
            attack.close()
        for sock in idle.values():
            sock.close()


def test_control_slowloris_takes_every_connection_of_waitress_defaults():
    """Without the bounds (connection limit 100) the same attack stops every probe."""
    server = Launched([*WAITRESS, "--threads=8", "wsgi:app"], {}).wait_serving()
    try:
        endpoint = Endpoint(server.port)
        attack = Slowloris(endpoint, SLOWLORIS_SOCKETS, BYTE_INTERVAL_S).start()
        try:
            assert probe_unanswered(endpoint, STUCK_PROBE_S)
        finally:
            attack.close()
        probe(endpoint, WAIT_TIMEOUT)  # answered again once the attackers are gone
    finally:
        server.stop()


def test_control_clients_that_do_not_read_pin_every_worker_of_waitress_alone():
    """8 connections pipelining GETs of a 1.9 MB hour and never reading: each worker blocks once
    16 MB of answers wait for its client (waitress's outbuf high watermark), and stays blocked
    while the client stays connected. No waitress setting bounds that; nginx in front does."""
    server = launch("make run")
    try:
        endpoint = Endpoint(server.port)
        assert fill_hour(endpoint, BIG_HOUR, BIG_HOUR_KEYS) > 1_500_000
        readers = []
        try:
            for _ in range(NON_READERS):
                readers.append(NonReader(endpoint, f"/flows?hour={BIG_HOUR}", PIPELINED))
            deadline = time.monotonic() + ATTACK_S
            while not probe_unanswered(endpoint, STUCK_PROBE_S):
                assert time.monotonic() < deadline, "the clients never pinned every worker"
                time.sleep(0.5)  # pacing the probes
        finally:
            for reader in readers:
                reader.close()
        probe(endpoint, WAIT_TIMEOUT)  # the workers are free once the clients are gone
    finally:
        server.stop()
