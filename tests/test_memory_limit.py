"""FLOWAGG_MAX_MEMORY_BYTES against a real waitress-serve, for each shape of data that once made
memory grow past any bound: one key per hour, 1,024-byte names, copies of one key, and one
64 MiB body of tiny flows after a long one.

Each test starts ``waitress-serve`` on 127.0.0.1 with FLOWAGG_MAX_MEMORY_BYTES=256MiB, posts
from 8 connections at once, and checks: the process's peak RSS (VmHWM) grows by at most 1.3x
the budget plus 200 MiB over the idle process; every refusal is a 429 naming the limit, its
value and what is held; a POST to a key-hour already held is still a 200 afterwards; and every
accepted request's flows, and none of a refused one's, are in the GETs, exactly.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import WAIT_TIMEOUT
from tests.conftest import flow as record
from tests.serverproc import WAITRESS, ServerProcess

MIB = 2**20
BUDGET = 256 * MIB
LONG = 1024
CONNECTIONS = 8
REFUSAL = re.compile(
    r"the tables hold (\d+) bytes, requests accepted and not yet applied may add (\d+), and"
    r" this request would add (\d+), past"
    r" FLOWAGG_MAX_MEMORY_BYTES=268435456; flows for key-hours already held are still accepted"
)


def flow(src: str, dest: str, vpc: str, hour: int, tx: int = 1, rx: int = 2) -> str:
    """One record's JSON, for bodies written by hand."""
    return json.dumps(record(src, dest, vpc, tx, rx, hour))


def body(flows: Iterator[str]) -> bytes:
    return ("[" + ",".join(flows) + "]").encode()


@pytest.fixture
def server():
    env = {
        "FLOWAGG_MAX_MEMORY_BYTES": "256MiB",
        "FLOWAGG_LOG_LEVEL": "warning",
        "FLOWAGG_MAX_QUERY_HOURS": "2000000",
        "FLOWAGG_MAX_QUERY_ROWS": "100000000",
    }
    proc = ServerProcess([*WAITRESS, "--threads=8", "wsgi:app"], env).wait_serving()
    try:
        yield proc
    finally:
        proc.stop()


def status_of(proc: ServerProcess, field: str) -> int:
    with open(f"/proc/{proc.proc.pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def idle_rss(proc: ServerProcess) -> int:
    assert proc.request("POST", "/flows", b"[]")[0] == 200
    assert proc.request("GET", "/flows?hour=0")[0] == 200
    with open(f"/proc/{proc.proc.pid}/clear_refs", "w") as refs:
        refs.write("5")  # VmHWM from here
    return status_of(proc, "VmRSS")


def post_all(proc: ServerProcess, bodies: list[bytes]) -> list[tuple[int, dict]]:
    """POST every body from CONNECTIONS connections at once; (status, answer) per body."""
    answers: list[tuple[int, dict] | None] = [None] * len(bodies)
    lock = threading.Lock()
    pending = iter(range(len(bodies)))

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=WAIT_TIMEOUT * 12)
        try:
            while True:
                with lock:
                    index = next(pending, None)
                if index is None:
                    return
                conn.request("POST", "/flows", body=bodies[index])
                response = conn.getresponse()
                answers[index] = (response.status, json.loads(response.read()))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_TIMEOUT * 60)
    assert all(a is not None for a in answers), "a POST got no answer"
    return answers  # type: ignore[return-value]


def check_answers(answers: list[tuple[int, dict]], refusals_expected: bool) -> list[int]:
    """Every answer a 200 or a 429 naming the limit; returns the indexes accepted."""
    accepted = []
    for index, (status, answer) in enumerate(answers):
        if status == 200:
            accepted.append(index)
            continue
        assert status == 429, (status, answer)
        match = REFUSAL.fullmatch(answer["error"])
        assert match, answer
        held, pending, new = map(int, match.groups())
        assert held <= BUDGET and held + pending + new > BUDGET
    if refusals_expected:
        assert len(accepted) < len(answers), "the budget was never reached"
        assert accepted, "everything was refused"
    else:
        assert len(accepted) == len(answers)
    return accepted


def check_memory(proc: ServerProcess, idle: int) -> None:
    peak = status_of(proc, "VmHWM") - idle
    assert peak <= 1.3 * BUDGET + 200 * MIB, f"RSS grew by {peak / MIB:.0f} MiB"
    conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=WAIT_TIMEOUT)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    held = float(re.search(r"^flowagg_memory_bytes (\S+)$", text, re.M).group(1))
    limit = float(re.search(r"^flowagg_memory_limit_bytes (\S+)$", text, re.M).group(1))
    assert limit == BUDGET and 0 < held <= BUDGET


def test_one_key_per_hour(server):
    idle = idle_rss(server)
    per_body = 50_000
    bodies = [
        body(
            flow("src-1", "dest-1", "vpc-0", h, tx=h + 1)
            for h in range(b * per_body, (b + 1) * per_body)
        )
        for b in range(40)
    ]
    accepted = check_answers(post_all(server, bodies), refusals_expected=True)
    refused = sorted(set(range(len(bodies))) - set(accepted))
    # A key-hour already held still takes flows.
    first = accepted[0] * per_body
    assert (
        server.request("POST", "/flows", body(iter([flow("src-1", "dest-1", "vpc-0", first)])))[0]
        == 200
    )
    # Every accepted flow is there, exactly, and nothing of a refused body.
    hours = [h for b in accepted for h in range(b * per_body, (b + 1) * per_body)]
    status, held = server.request("GET", "/flows/hours")
    assert status == 200 and held["count"] == len(hours)
    status, top = server.request(
        "GET", f"/flows/top?start=0&end={len(bodies) * per_body - 1}&by=src_app"
    )
    assert status == 200, top
    assert top["total"] == {
        "groups": 1,
        "bytes_tx": sum(h + 1 for h in hours) + first + 1,
        "bytes_rx": 2 * len(hours) + 2,
    }
    for b in (accepted[0], accepted[-1], *refused[:2]):
        for h in (b * per_body, (b + 1) * per_body - 1):
            rows = server.rows([h])
            expected = b in accepted
            assert rows == (
                [
                    {
                        "src_app": "src-1",
                        "dest_app": "dest-1",
                        "vpc_id": "vpc-0",
                        "bytes_tx": h + 1 + (h == first),
                        "bytes_rx": 2 + 2 * (h == first),
                        "hour": h,
                    }
                ]
                if expected
                else []
            )
    check_memory(server, idle)


def long_key(k: int) -> tuple[str, str, str]:
    return (
        f"{k:08d}" + "s" * (LONG - 8),
        f"{k:08d}" + "d" * (LONG - 8),
        f"{k % 7}" + "v" * (LONG - 1),
    )


def test_long_names(server):
    idle = idle_rss(server)
    per_body = 20_000  # three 1 KiB names a flow: about 62 MiB a body
    bodies = [
        body(flow(*long_key(k), hour=b) for k in range(b * per_body, (b + 1) * per_body))
        for b in range(10)
    ]
    accepted = check_answers(post_all(server, bodies), refusals_expected=True)
    held_key = long_key(accepted[0] * per_body)
    assert (
        server.request("POST", "/flows", body(iter([flow(*held_key, hour=accepted[0], tx=5)])))[0]
        == 200
    )
    for b in range(len(bodies)):
        rows = server.rows([b])
        if b not in accepted:
            assert rows == []
            continue
        assert len(rows) == per_body
        expected = {long_key(k)[0]: 1 for k in range(b * per_body, (b + 1) * per_body)}
        if b == accepted[0]:
            expected[held_key[0]] += 5
        assert {r["src_app"]: r["bytes_tx"] for r in rows} == expected
    check_memory(server, idle)


def test_copies_of_one_key(server):
    idle = idle_rss(server)
    copies = 20_000
    bodies = [body(flow(*long_key(b), hour=3) for _ in range(copies)) for b in range(16)]
    check_answers(post_all(server, bodies), refusals_expected=False)
    rows = server.rows([3])
    assert {r["src_app"]: (r["bytes_tx"], r["bytes_rx"]) for r in rows} == {
        long_key(b)[0]: (copies, 2 * copies) for b in range(16)
    }
    check_memory(server, idle)


def test_one_64_mib_body_of_tiny_flows_after_a_long_one(server):
    idle = idle_rss(server)
    first = flow("a" * LONG, "b" * LONG, "c" * LONG, 9)
    tiny = flow("a", "b", "c", 9)
    count = (64 * MIB - len(first) - 2) // (len(tiny) + 1)
    payload = ("[" + first + ("," + tiny) * count + "]").encode()
    assert len(payload) <= 64 * MIB
    [(status, answer)] = post_all(server, [payload])
    assert (status, answer) == (200, {"accepted": count + 1})
    rows = server.rows([9])
    assert rows == [
        {
            "src_app": "a" * LONG,
            "dest_app": "b" * LONG,
            "vpc_id": "c" * LONG,
            "bytes_tx": 1,
            "bytes_rx": 2,
            "hour": 9,
        },
        {
            "src_app": "a",
            "dest_app": "b",
            "vpc_id": "c",
            "bytes_tx": count,
            "bytes_rx": 2 * count,
            "hour": 9,
        },
    ]
    check_memory(server, idle)
    assert status_of(server, "VmHWM") - idle <= 3 * len(payload)
