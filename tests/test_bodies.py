"""Large bodies are decoded a few at a time (web/bodies.py): what they hold at once is bounded."""

from __future__ import annotations

import gzip
import json
import threading

import pytest

from flowagg.store.base import Overloaded
from flowagg.web import bodies
from tests.conftest import WAIT_TIMEOUT, flow

MIB = 2**20


def hold_in_thread(gate, size, inside: list, name: str, release: threading.Event):
    """A thread that holds ``size`` in ``gate`` until ``release``; notes ``name`` once inside."""
    entered = threading.Event()
    outcome: list = []

    def run() -> None:
        try:
            with gate.hold(size):
                inside.append(name)
                entered.set()
                assert release.wait(WAIT_TIMEOUT)
            outcome.append("done")
        except Overloaded as exc:
            outcome.append(exc)
            entered.set()

    thread = threading.Thread(target=run, name=f"body-{name}")
    thread.start()
    return thread, entered, outcome


def test_large_bodies_wait_for_room_and_small_ones_pass():
    gate, inside, release = bodies.BodyGate(3 * MIB), [], threading.Event()
    first, first_in, _ = hold_in_thread(gate, 2 * MIB, inside, "first", release)
    threads = [first]
    try:
        assert first_in.wait(WAIT_TIMEOUT)
        second, second_in, second_outcome = hold_in_thread(gate, 2 * MIB, inside, "second", release)
        threads.append(second)  # 4 MiB together: waits
        small, small_in, _ = hold_in_thread(gate, MIB - 1, inside, "small", release)
        threads.append(small)  # below SMALL_BODY: passes
        assert small_in.wait(WAIT_TIMEOUT)
        assert inside == ["first", "small"] and not second_in.is_set()
        release.set()  # first is done; second gets its turn
        assert second_in.wait(WAIT_TIMEOUT)
        assert inside == ["first", "small", "second"]
    finally:
        release.set()
        for t in threads:
            t.join(WAIT_TIMEOUT)
    assert second_outcome == ["done"] and gate._taken == 0


def test_a_large_body_that_finds_no_room_in_time_is_overloaded(monkeypatch):
    monkeypatch.setattr(bodies, "BODY_WAIT_S", 0.2)
    gate, inside, release = bodies.BodyGate(3 * MIB), [], threading.Event()
    first, first_in, _ = hold_in_thread(gate, 3 * MIB, inside, "first", release)
    try:
        assert first_in.wait(WAIT_TIMEOUT)
        with pytest.raises(Overloaded) as refused, gate.hold(2 * MIB):
            pass
        assert str(refused.value) == (
            "a body of 2097152 bytes found no room among the large bodies being decoded within 0 s"
        )
    finally:
        release.set()
        first.join(WAIT_TIMEOUT)
    assert gate._taken == 0


def test_a_body_of_unknown_length_counts_as_the_largest():
    gate = bodies.BodyGate(3 * MIB)
    with gate.hold(None):
        assert gate._taken == 3 * MIB
    assert gate._taken == 0


def big_hour(hour: int, flows: int) -> list[dict]:
    return [flow(src=f"s{i:07d}", tx=i, rx=1, hour=hour) for i in range(flows)]


@pytest.mark.parametrize("store_config", ["memory"], indirect=True)
def test_a_gzip_body_is_held_for_its_decompressed_size(app, monkeypatch):
    # A gzip body of well under SMALL_BODY that decompresses to more: while another body holds
    # the whole limit, it waits (and here finds no room in time), as the plain body would.
    monkeypatch.setattr(bodies, "BODY_WAIT_S", 0.2)
    records = big_hour(3, 20_000)
    plain = json.dumps(records).encode()
    packed = gzip.compress(plain)
    assert len(packed) < bodies.SMALL_BODY <= len(plain)
    gate = app.extensions["flowagg.bodies"]
    client = app.test_client()
    with gate.hold(None):  # every byte of the limit taken
        refused = client.post("/flows", data=packed, headers={"Content-Encoding": "gzip"})
        small = client.post("/flows", json=[flow(hour=4)])
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert "found no room among the large bodies" in refused.json["error"]
    assert small.json == {"accepted": 1}
    accepted = client.post("/flows", data=packed, headers={"Content-Encoding": "gzip"})
    assert accepted.json == {"accepted": 20_000}
    assert len(client.get("/flows?hour=3").json) == 20_000
