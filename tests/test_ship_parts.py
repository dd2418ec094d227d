"""The shipper's parts on their own: the mapping, the record rules, the state file, and the
client against real HTTP servers (the service, and a scripted one for faults)."""

from __future__ import annotations

import gzip
import http.server
import io
import json
import threading
import time

import pytest

from flowagg.client import BadRequest, Client, ConnectionFailed, KeyReused, Unauthorized
from flowagg.ship.networks import MapError, Networks, load
from flowagg.ship.progress import Progress
from flowagg.ship.records import Counts, FormatError, Parser, detect
from flowagg.ship.shipper import Totals
from flowagg.ship.state import State, StateError
from tests.conftest import WAIT_TIMEOUT, flow
from tests.vpclogs import MAP

NETWORKS = {
    "10.0.0.0/8": "corp",
    "10.1.0.0/16": "web",
    "10.1.2.3/32": "db",
    "2600:1f18::/32": "v6",
    "2600:1f18:1::/48": "v6web",
}


@pytest.mark.parametrize(
    ("address", "name"),
    [
        (b"10.9.9.9", "corp"),
        (b"10.1.9.9", "web"),
        (b"10.1.2.3", "db"),
        (b"10.1.2.4", "web"),
        (b"11.0.0.1", "outside"),
        (b"2600:1f18::1", "v6"),
        (b"2600:1f18:1:ffff::1", "v6web"),
        (b"2600:1f19::1", "outside"),
        (b"::ffff:10.1.2.3", "outside"),  # an IPv6 address, whatever it embeds
        (b"not-an-ip", None),
        (b"10.1.2", None),
    ],
)
def test_the_longest_prefix_names_an_address(address, name):
    networks = Networks(NETWORKS, unmapped="outside")
    assert networks.name(address) == name
    assert networks.name(address) == name  # from the memo now
    assert networks.memo[address] == name


def test_the_mapping_file(tmp_path):
    (tmp_path / "map").write_text(MAP)
    networks = load(str(tmp_path / "map"))
    assert [networks.name(a) for a in (b"10.1.2.3", b"10.1.2.4", b"2600:1f18:1::1")] == [
        "db",
        "api",
        "v6web",
    ]
    for text, message in [
        ("10.0.0.0/8 a\n10.0.0.0/8 b\n", "line 2: 10.0.0.0/8 is 'a' on line 1 already"),
        ("10.0.0.0/8\n", "line 1: expected 'CIDR NAME'"),
        ("10.0.0.0/33 a\n", "line 1: '10.0.0.0/33' does not appear to be an IPv4 or IPv6"),
    ]:
        (tmp_path / "bad").write_text(text)
        with pytest.raises(MapError, match=message.replace("(", r"\(")):
            load(str(tmp_path / "bad"))


def parse(lines: list[str], header: str | None = None, **kwargs) -> tuple[dict, Counts]:
    fmt = detect((header or lines[0]).encode())
    counts = Counts()
    parser = Parser(fmt, Networks(NETWORKS), counts, "f.log", **kwargs)
    agg: dict = {}
    raw = [line.encode() for line in lines]
    assert parser.parse(raw, 0, len(raw), 10**9, 1, agg) == (len(raw), counts.flows_in)
    return {k: tuple(v) for k, v in agg.items()}, counts


def v2(src, dst, sport, dport, size, start=7200, action="ACCEPT", status="OK") -> str:
    return f"2 1 eni {src} {dst} {sport} {dport} 6 1 {size} {start} {start + 60} {action} {status}"


def test_both_directions_of_a_connection_land_on_one_key():
    agg, counts = parse(
        [
            v2("10.1.0.5", "10.1.2.3", 40000, 5432, 100),  # web -> db, the request
            v2("10.1.2.3", "10.1.0.5", 5432, 40000, 900),  # db -> web, the reply
            v2("10.1.0.5", "10.9.0.1", 0, 0, 7, start=3599),  # ICMP: as sent, hour 0
            v2("10.1.0.5", "10.9.0.1", 443, 443, 8, start=3600),  # equal ports: as sent
        ]
    )
    assert agg == {
        ("web", "db", "unknown", 2): (100, 900),
        ("web", "corp", "unknown", 0): (7, 0),
        ("web", "corp", "unknown", 1): (8, 0),
    }
    assert (counts.records, counts.flows_in, sum(counts.skipped.values())) == (4, 4, 0)


def test_skipped_records_are_counted_by_reason():
    agg, counts = parse(
        [
            v2("10.1.0.5", "10.1.2.3", 40000, 5432, 1),
            v2("10.1.0.5", "10.1.2.3", 40000, 5432, 2, action="REJECT"),
            "2 1 eni - - - - - - - 7200 7260 - NODATA",
            "2 1 eni - - - - - - - 7200 7260 - SKIPDATA",
            v2("10.1.0.5", "-", 40000, 5432, 3),
            v2("10.1.0.5", "10.1.2.3", 40000, 5432, "many"),
            v2("10.1.0.5", "10.1.2.300", 40000, 5432, 4),
            "2 1 eni 10.1.0.5",
            "",
        ]
    )
    assert agg == {("web", "db", "unknown", 2): (1, 0)}
    assert counts.records == 8  # the blank line is no record
    assert dict(counts.skipped) == {
        "action REJECT": 1,
        "log-status NODATA": 1,
        "log-status SKIPDATA": 1,
        "a needed field is '-'": 1,
        "malformed": 3,
    }
    assert counts.examples == [
        "f.log, line 6: a port, bytes or start is not a number: "
        + v2("10.1.0.5", "10.1.2.3", 40000, 5432, "many"),
        "f.log, line 7: an address is not an IP address: "
        + v2("10.1.0.5", "10.1.2.300", 40000, 5432, 4),
        "f.log, line 8: 4 fields, not 14: 2 1 eni 10.1.0.5",
    ]
    agg, _ = parse([v2("10.1.0.5", "10.1.2.3", 40000, 5432, 2, action="REJECT")],
                   include_rejected=True)  # fmt: skip
    assert agg == {("web", "db", "unknown", 2): (2, 0)}


def test_a_header_gives_the_order_and_vpc_id_is_used():
    header = "vpc_id bytes start srcaddr dstaddr dstport srcport log-status"
    agg, _ = parse(
        ["vpc-7 10 3600 10.1.0.1 10.9.0.1 443 50000 OK", "- 5 3600 10.1.0.1 10.9.0.1 443 50000 OK"],
        header=header,
        vpc_id="vpc-default",
    )
    assert agg == {("web", "corp", "vpc-7", 1): (10, 0), ("web", "corp", "vpc-default", 1): (5, 0)}
    assert detect(b"2 123 eni-1 10.0.0.1").header is False
    with pytest.raises(FormatError, match="the header names no srcport, start"):
        detect(b"version srcaddr dstaddr dstport bytes")


def test_the_state_file_is_replaced_whole_and_locked(tmp_path):
    path = tmp_path / "ship.state"
    state = State(path).open()
    state.files["1:2"] = {"seen": time.time(), "in_flight": None, "offset": 5}
    state.save()
    with pytest.raises(StateError, match="in use by another flowagg ship"):
        State(path).open()
    state.close()
    again = State(path).open()
    assert again.files["1:2"]["offset"] == 5
    again.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ship.state", "ship.state.lock"]
    document = json.loads(path.read_text())
    document["version"] = 2
    path.write_text(json.dumps(document))
    with pytest.raises(
        StateError, match="has state format version 2; this flowagg ship reads version 1"
    ):
        State(path).open()
    path.write_text('{"files": ')
    with pytest.raises(StateError, match="is not a flowagg ship state file"):
        State(path).open()


class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers POSTs from a script: ("close",) drops the connection, (status, headers, body)."""

    script: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((dict(self.headers), body, time.monotonic()))
        step = self.script.pop(0)
        if step == ("close",):
            self.close_connection = True
            self.connection.shutdown(2)
            return
        status, headers, answer = step
        data = json.dumps(answer).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    Scripted.seen = []
    thread = threading.Thread(target=server.serve_forever, name="scripted", daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(WAIT_TIMEOUT)


def test_retries_keep_one_key_and_honour_retry_after(scripted):
    Scripted.script = [
        ("close",),
        (503, {"Retry-After": "1"}, {"error": "overloaded; retry later"}),
        (200, {"Flowagg-Idempotency-Window": "600"}, {"accepted": 2}),
    ]
    retries = []
    url = f"http://127.0.0.1:{scripted.server_port}"
    with Client(url, "tok", on_retry=lambda *a: retries.append(a), backoff=0.01) as client:
        assert client.post([flow(), flow(tx=5)]) == 2
    assert client.retries == 2 and client.idempotency_window == 600
    assert [r[0] for r in retries] == [1, 2] and retries[1][1] >= 1.0
    assert retries[1][2] == "503: overloaded; retry later"
    keys = {headers["Idempotency-Key"] for headers, _, _ in Scripted.seen}
    assert len(keys) == 1 and len(Scripted.seen) == 3
    headers, body, _ = Scripted.seen[-1]
    assert headers["Content-Encoding"] == "gzip" and headers["Authorization"] == "Bearer tok"
    assert json.loads(gzip.decompress(body)) == [flow(), flow(tx=5)]
    assert Scripted.seen[2][2] - Scripted.seen[1][2] >= 1.0  # not before Retry-After


def test_retries_end_after_retry_for(scripted):
    Scripted.script = [("close",)] * 50
    client = Client(f"http://127.0.0.1:{scripted.server_port}", retry_for=0.5, backoff=0.05)
    with pytest.raises(ConnectionFailed):
        client.post([flow()], "k")
    assert 1 <= client.retries < 50


def test_refusals_raise_typed_errors_with_the_servers_message(start_server, store_config):
    server = start_server()
    kept = "FLOWAGG_DATA_DIR" in store_config
    with Client(f"http://127.0.0.1:{server.port}", compress=False) as client:
        with pytest.raises(BadRequest) as refused:
            client.post([{**flow(), "bytes_tx": -1}])
        assert refused.value.status == 400
        assert refused.value.message.startswith("$[0].bytes_tx: expected an integer >= 0")
        assert client.post([flow()], "key-1") == 1
        if kept:
            with pytest.raises(KeyReused, match="already used for a request with other flows"):
                client.post([flow(tx=9)], "key-1")
        assert client.probe() == (86400 if kept else 0)


def test_a_missing_token_is_unauthorized(start_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("agent write sha256:" + "0" * 64 + "\n")
    server = start_server({"FLOWAGG_TOKENS_FILE": str(tokens)})
    with Client(f"http://127.0.0.1:{server.port}") as client:
        assert client.probe() is not None  # /healthz needs no token
        with pytest.raises(Unauthorized, match="a valid bearer token is required"):
            client.post([flow()])


def test_the_progress_bar_on_a_terminal():
    stream = io.StringIO()
    progress = Progress(1000, stream, tty=True)
    totals = Totals()
    totals.counts.records = 5000
    progress._last = 0
    progress.update(500, totals)
    progress.log("a message")
    progress.close()
    text = stream.getvalue()
    assert "flowagg ship:  50%" in text and "records/s" in text and "a message" in text


def test_crlf_line_ends_and_the_last_line_of_a_gz_file(tmp_path):
    from flowagg.ship.records import DEFAULT_FIELDS
    from flowagg.ship.source import Source

    lines = [v2("10.1.0.5", "10.1.2.3", 40000, 5432, n) for n in (1, 2, 3)]
    (tmp_path / "crlf.log").write_bytes("".join(f"{line}\r\n" for line in lines).encode())
    with gzip.open(tmp_path / "last.log.gz", "wb") as file:
        file.write("\n".join(lines).encode())  # no newline after the last line
    for name, expected_end in [("crlf.log", sum(len(x) + 2 for x in lines)), ("last.log.gz", None)]:
        source = Source(str(tmp_path / name))
        source.start(DEFAULT_FIELDS, 0)
        read, agg, counts = [], {}, Counts()
        parser = Parser(source.fmt, Networks(NETWORKS), counts, name)
        while chunk := source.read()[0]:
            read += chunk
            parser.parse(chunk, 0, len(chunk), 100, 1, agg, None if source.crlf else b" ")
        assert agg == {("web", "db", "unknown", 2): [6, 0]}, name
        assert counts.records == 3 and source.unterminated == 0
        assert source.finished == name.endswith(".gz")
        if expected_end is not None:
            assert source.offset == expected_end
        source.close()
