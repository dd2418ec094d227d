"""POST /flows with Content-Encoding: gzip, bounded while it is decompressed."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import pytest

from tests.conftest import WAIT_TIMEOUT, flow
from tests.serverproc import WAITRESS, ServerProcess

RECORDS = [flow(tx=10, rx=20), flow(src="baz", tx=1, rx=2), flow(tx=5, rx=0)]
BODY = json.dumps(RECORDS).encode()
EXPECTED = [
    {**flow(tx=15, rx=20)},
    {**flow(src="baz", tx=1, rx=2)},
]


def post(client, body: bytes, encoding: str | None, **headers):
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return client.post("/flows", data=body, headers=headers)


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip.compress(BODY)),
        ("x-gzip", gzip.compress(BODY)),
        ("GZip", gzip.compress(BODY, compresslevel=1)),
        ("identity, gzip", gzip.compress(BODY)),
        ("identity", BODY),
        (None, BODY),
        # Two concatenated members are one stream (RFC 1952), as `cat a.gz b.gz` makes.
        ("gzip", gzip.compress(BODY[:7]) + gzip.compress(BODY[7:])),
    ],
    ids=["gzip", "x-gzip", "case", "identity-then-gzip", "identity", "none", "two-members"],
)
def test_compressed_and_plain_bodies_are_applied(client, encoding, body):
    response = post(client, body, encoding)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"accepted": 3}
    assert client.get("/flows?hour=1").get_json() == EXPECTED


BROKEN = gzip.compress(BODY)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (BODY, "body is not a valid gzip stream: Error -3 while decompressing data: incorrect"),
        (BROKEN[:-9], "body is not a valid gzip stream: it ends before the stream does"),
        (b"", "body is not a valid gzip stream: it ends before the stream does"),
        (BROKEN[:30] + bytes(b ^ 0x55 for b in BROKEN[30:]), "body is not a valid gzip stream"),
        (BROKEN + b"junk", "body is not a valid gzip stream: Error -3"),
        (gzip.compress(b"[1, 2"), "body is not valid JSON"),
        (gzip.compress(b'[{"src_app": 1}]'), "$[0].src_app: expected a non-empty string, got 1"),
    ],
    ids=["not-gzip", "truncated", "empty", "corrupt", "trailing-junk", "bad-json", "bad-record"],
)
def test_a_broken_stream_is_400_and_applies_nothing(client, body, message):
    response = post(client, body, "gzip")
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(message), response.get_json()
    assert client.get("/flows?hour=1").get_json() == []


@pytest.mark.parametrize("encoding", ["br", "deflate", "gzip, gzip", "compress", "zstd"])
def test_other_encodings_are_415(client, encoding):
    response = post(client, gzip.compress(BODY), encoding)
    assert response.status_code == 415
    assert response.headers["Accept-Encoding"] == "gzip, identity"
    assert response.get_json() == {
        "error": f"Content-Encoding {encoding!r} is not supported; send gzip or identity"
    }
    assert client.get("/flows?hour=1").get_json() == []


def test_the_decompressed_size_is_bounded_to_the_byte(make_app):
    app = make_app(FLOWAGG_MAX_BODY_BYTES=len(BODY))
    client = app.test_client()
    over = gzip.compress(BODY + b" ")  # one byte more once decompressed: valid JSON still
    response = post(client, over, "gzip")
    assert response.status_code == 413
    assert response.get_json() == {
        "error": f"body exceeds the limit of {len(BODY)} bytes once decompressed"
    }
    assert client.get("/flows?hour=1").get_json() == []
    assert post(client, gzip.compress(BODY), "gzip").get_json() == {"accepted": 3}
    assert client.get("/flows?hour=1").get_json() == EXPECTED
    text = client.get("/metrics").get_data(as_text=True)
    assert 'flowagg_requests_rejected_total{reason="too_large"} 1.0' in text


def test_a_key_refused_for_size_stays_free(make_app, store_config):
    app = make_app(FLOWAGG_MAX_BODY_BYTES=len(BODY))
    client = app.test_client()
    assert (
        post(client, gzip.compress(BODY + b" "), "gzip", **{"Idempotency-Key": "k"}).status_code
        == 413
    )
    response = post(client, gzip.compress(BODY), "gzip", **{"Idempotency-Key": "k"})
    assert response.get_json() == {"accepted": 3}
    kept = "FLOWAGG_DATA_DIR" in store_config
    assert response.headers["Flowagg-Idempotency-Window"] == ("86400" if kept else "0")
    assert client.get("/healthz").headers["Flowagg-Idempotency-Window"] == (
        "86400" if kept else "0"
    )


def _peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def test_a_gzip_bomb_is_413_with_bounded_memory(tmp_path):
    """1 GiB of zeros in about 1 MiB of gzip, against a real server with a 4 MiB limit: 413,
    and the server's peak RSS grows by a small multiple of the limit, not by the bomb."""
    limit = 4 * 1024 * 1024
    bomb_size = 1024**3
    squeezer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1024 * 1024)
    bomb = b"".join(squeezer.compress(zeros) for _ in range(bomb_size // len(zeros)))
    bomb += squeezer.flush()
    assert len(bomb) < limit
    server = ServerProcess(
        [*WAITRESS, "wsgi:app"],
        {"FLOWAGG_MAX_BODY_BYTES": str(limit), "FLOWAGG_DATA_DIR": str(tmp_path / "data")},
    ).wait_serving()
    try:
        warm = gzip.compress(json.dumps([flow()] * 20_000).encode())  # every path touched once
        status, body = server.request("POST", "/flows", warm, {"Content-Encoding": "gzip"})
        assert (status, body) == (200, {"accepted": 20_000})
        before = _peak_rss_kib(server.proc.pid)
        for _ in range(3):
            status, body = server.request("POST", "/flows", bomb, {"Content-Encoding": "gzip"})
            assert status == 413
            assert body == {"error": f"body exceeds the limit of {limit} bytes once decompressed"}
        grown_mib = (_peak_rss_kib(server.proc.pid) - before) / 1024
        assert grown_mib < 3 * limit / 2**20 + 16, grown_mib  # the bomb is 1024 MiB
        assert server.rows([1]) == [flow(tx=20_000, rx=40_000)]
    finally:
        assert server.stop(timeout=WAIT_TIMEOUT * 3) == 0
