"""Large bodies are decoded a few at a time (web/bodies.py): what they hold at once is bounded."""

from __future__ import annotations

import threading

import pytest

from flowagg.web import bodies
from tests.conftest import WAIT_TIMEOUT

MIB = 2**20


class Held:
    """A WSGI app that answers once released, noting who is inside."""

    def __init__(self) -> None:
        self.inside: list[str] = []
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def __call__(self, environ, start_response):
        self.inside.append(environ["name"])
        self.entered.release()
        assert self.release.wait(WAIT_TIMEOUT)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]


def post(gate, name: str, size: int, answers: dict) -> threading.Thread:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/flows",
        "CONTENT_LENGTH": str(size),
        "name": name,
    }

    def run() -> None:
        statuses = []
        body = b"".join(gate(environ, lambda status, headers: statuses.append((status, headers))))
        answers[name] = (statuses[0], body)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_large_bodies_wait_for_room_and_small_ones_pass(monkeypatch):
    app, refused = Held(), []
    gate = bodies.BodyGate(app, 3 * MIB, refused.append)
    answers: dict = {}
    threads = [post(gate, "first", 2 * MIB, answers)]
    try:
        assert app.entered.acquire(timeout=WAIT_TIMEOUT)
        threads.append(post(gate, "second", 2 * MIB, answers))  # 4 MiB together: waits
        threads.append(post(gate, "small", MIB - 1, answers))  # below SMALL_BODY: passes
        assert app.entered.acquire(timeout=WAIT_TIMEOUT)
        assert app.inside == ["first", "small"]
        app.release.set()  # first answers; second gets its turn
        assert app.entered.acquire(timeout=WAIT_TIMEOUT)
        assert app.inside == ["first", "small", "second"]
    finally:
        app.release.set()
        for t in threads:
            t.join(WAIT_TIMEOUT)
    assert {name: status for name, ((status, _), _) in answers.items()} == {
        "first": "200 OK",
        "second": "200 OK",
        "small": "200 OK",
    }
    assert refused == []


def test_a_large_body_that_finds_no_room_in_time_is_503_with_retry_after(monkeypatch):
    monkeypatch.setattr(bodies, "BODY_WAIT_S", 0.2)
    app, refused = Held(), []
    gate = bodies.BodyGate(app, 3 * MIB, refused.append)
    answers: dict = {}
    first = post(gate, "first", 3 * MIB, answers)
    try:
        assert app.entered.acquire(timeout=WAIT_TIMEOUT)
        late = post(gate, "late", 2 * MIB, answers)
        late.join(WAIT_TIMEOUT)
        (status, headers), body = answers["late"]
        assert status == "503 SERVICE UNAVAILABLE" and ("Retry-After", "1") in headers
        assert body == (
            b'{"error":"overloaded: a body of 2097152 bytes found no room among the large bodies'
            b' being decoded within 0 s; nothing was applied, retry later"}'
        )
        assert refused == ["overloaded"]
    finally:
        app.release.set()
        first.join(WAIT_TIMEOUT)
    assert answers["first"][0][0] == "200 OK"


@pytest.mark.parametrize("length", [None, "", "abc"])
def test_a_body_of_unknown_length_counts_as_the_largest(length):
    app, refused = Held(), []
    app.release.set()
    gate = bodies.BodyGate(app, 3 * MIB, refused.append)
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/flows", "name": "chunked"}
    if length is not None:
        environ["CONTENT_LENGTH"] = length
    statuses = []
    assert gate(environ, lambda status, headers: statuses.append(status)) == [b"{}"]
    assert statuses == ["200 OK"] and gate._taken == 0
