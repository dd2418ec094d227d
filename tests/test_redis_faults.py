"""Faults injected for real between two instances (waitress-serve processes) and a Redis Cluster:
a fault proxy in front of each primary (tests/faultproxy.py) blackholes it, drops its replies (it
runs calls whose answers never come) or resets every connection and refuses new ones.

Under keyed writers through both instances, whatever the faults did: every acknowledged request
is there exactly once once they heal, every request answered "nothing was applied" is absent,
and every "maybe" retried with its key counts once. While a primary is blackholed, ``/healthz``
answers within a second and every other request within FLOWAGG_REDIS_TIMEOUT_MS and a second.
"""

from __future__ import annotations

import http.client
import itertools
import json
import random
import threading
import time

import pytest

from flowagg.store.redis import layout
from tests.conftest import WAIT_TIMEOUT, flow
from tests.test_crash import expected_rows, request_flows
from tests.test_redis_instances import rows_by_request, start_instance

TIMEOUT_MS = 500


@pytest.fixture
def instances(faulty):
    started = []
    try:
        for proxy in faulty.proxies[:2]:  # seeded with different nodes, through their proxies
            started.append(start_instance(proxy.address, FLOWAGG_REDIS_TIMEOUT_MS=str(TIMEOUT_MS)))
        yield started
    finally:
        for server in started:
            server.kill()


def wait_ready(*servers) -> None:
    """Until every instance is ready again (its health checks reached every primary)."""
    deadline = time.monotonic() + WAIT_TIMEOUT
    for server in servers:
        while server.request("GET", "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "an instance did not become ready again"
            time.sleep(0.02)


def post(server, flows, key=None):
    headers = {"Idempotency-Key": key} if key else {}
    return server.request("POST", "/flows", json.dumps(flows), headers)


class Outcomes:
    """What each request was answered, shared by the writers."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.answered = threading.Condition(self.mutex)  # notified after every answer
        self.sent: dict[str, list[dict]] = {}
        self.acked: set[str] = set()
        self.nothing: set[str] = set()  # 503 "nothing was applied"
        self.maybe: set[str] = set()  # 503 part or maybe all applied: retried later
        self.errors: list[str] = []
        self.count = 0

    def wait(self, more: int, timeout: float) -> None:
        """Wait until ``more`` requests more were answered."""
        deadline = time.monotonic() + timeout
        with self.answered:
            target = self.count + more
            while self.count < target and not self.errors:
                left = deadline - time.monotonic()
                assert left > 0, f"{self.count} requests answered, waiting for {target}"
                self.answered.wait(left)


def writer(server, outcomes: Outcomes, seed: str, stop: threading.Event) -> None:
    rng = random.Random(seed)
    conn = server.connection()
    try:
        for i in itertools.count():
            if stop.is_set():
                return
            request_id = f"{seed}-{i}"
            flows = request_flows(rng, request_id)
            with outcomes.mutex:
                outcomes.sent[request_id] = flows
            conn.request("POST", "/flows", json.dumps(flows), {"Idempotency-Key": request_id})
            response = conn.getresponse()
            body = json.loads(response.read())
            with outcomes.answered:
                outcomes.count += 1
                if response.status == 200:
                    outcomes.acked.add(request_id)
                elif response.status == 503 and "nothing was applied" in body["error"]:
                    outcomes.nothing.add(request_id)
                elif response.status == 503 and "retry it with the same" in body["error"]:
                    outcomes.maybe.add(request_id)
                else:
                    outcomes.errors.append(f"{request_id}: {response.status} {body}")
                outcomes.answered.notify_all()
    except Exception as exc:  # reported by the test; an assert here would only end the thread
        with outcomes.answered:
            outcomes.errors.append(repr(exc))
            outcomes.answered.notify_all()
    finally:
        conn.close()


def test_keyed_writers_through_faults_count_every_acknowledged_request_once(faulty, instances):
    rng = random.Random()
    outcomes, stop = Outcomes(), threading.Event()
    threads = [
        threading.Thread(target=writer, args=(instances[w % 2], outcomes, f"w{w}", stop))
        for w in range(6)
    ]
    for t in threads:
        t.start()
    try:
        outcomes.wait(30, WAIT_TIMEOUT * 3)
        for mode in ["blackhole", "drop_replies", "reset"] * 2:
            proxy = rng.choice(faulty.proxies)
            proxy.set(mode)
            outcomes.wait(12, WAIT_TIMEOUT * 3)  # answered while the fault lasts
            faulty.heal()
            faulty.wait_ok()
            wait_ready(*instances)
            outcomes.wait(12, WAIT_TIMEOUT * 3)  # and once it has healed
    finally:
        faulty.heal()
        stop.set()
        for t in threads:
            t.join(WAIT_TIMEOUT * 3)
    assert not any(t.is_alive() for t in threads)
    assert outcomes.errors == []
    wait_ready(*instances)
    assert outcomes.nothing and outcomes.maybe, "the faults did not fail any request"
    check_outcomes(instances, outcomes)


def check_outcomes(instances, outcomes: Outcomes) -> None:
    """Every acknowledged request there once, every "nothing" absent; then every "maybe",
    retried with its key, there once too."""
    found = rows_by_request(instances[0])
    for request_id in outcomes.acked:
        assert found.get(request_id) == expected_rows(outcomes.sent[request_id]), request_id
    for request_id in outcomes.nothing:
        assert request_id not in found, f"{request_id} was answered 'nothing' but is there"
    for request_id in sorted(outcomes.maybe):
        flows = outcomes.sent[request_id]
        assert post(instances[1], flows, request_id) == (200, {"accepted": len(flows)})
    for server in instances:
        found = rows_by_request(server)
        assert set(found) == outcomes.acked | outcomes.maybe
        for request_id in outcomes.acked | outcomes.maybe:
            assert found[request_id] == expected_rows(outcomes.sent[request_id]), request_id


@pytest.mark.parametrize("which", ["the hours' primary", "another primary"])
def test_every_request_is_answered_in_time_while_a_primary_is_blackholed(faulty, instances, which):
    meta = faulty.primary_of(layout.HOURS_KEY)
    victim = meta if which == "the hours' primary" else next(n for n in faulty.nodes if n != meta)
    a, b = instances
    assert post(a, [flow(hour=h) for h in range(4)]) == (200, {"accepted": 4})
    faulty.proxy_of(victim).set("blackhole")
    limit = TIMEOUT_MS / 1000 + 1.0
    requests = [
        ("GET", "/flows?hour=1", None, None),
        ("POST", "/flows", [flow(src=f"s{i}", hour=i % 4) for i in range(40)], None),
        ("POST", "/flows", [flow(src=f"k{i}", hour=i % 4) for i in range(40)], "bh-key"),
        ("GET", "/readyz", None, None),
        ("GET", "/flows/hours", None, None),
        ("GET", "/flows/top?start=0&end=3", None, None),
        ("GET", "/metrics", None, None),
    ]
    timings: list[tuple[str, int, float]] = []
    lock = threading.Lock()

    def timed(server, method, path, body, key, rounds=3):
        for _ in range(rounds):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT_TIMEOUT)
            started = time.monotonic()
            headers = {"Idempotency-Key": key} if key else {}
            try:
                conn.request(method, path, json.dumps(body) if body else None, headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            finally:
                conn.close()
            with lock:
                timings.append((f"{method} {path}", status, time.monotonic() - started))

    threads = [
        threading.Thread(target=timed, args=(server, *r))
        for server in instances
        for r in requests
        for _ in range(2)
    ]
    health = threading.Thread(target=timed, args=(a, "GET", "/healthz", None, None, 10))
    try:
        for t in [*threads, health]:
            t.start()
        for t in [*threads, health]:
            t.join(WAIT_TIMEOUT * 3)
    finally:
        faulty.heal()
    assert not any(t.is_alive() for t in [*threads, health])
    slow = [t for t in timings if t[2] > (1.0 if t[0] == "GET /healthz" else limit)]
    assert slow == [], f"answered later than {limit} s: {slow}"
    assert {s for w, s, _ in timings if w == "GET /healthz"} == {200}
    assert {s for w, s, _ in timings if w == "GET /readyz"} == {503}
    assert any(s == 503 for w, s, _ in timings if w.startswith("POST"))
    assert len(timings) == len(threads) * 3 + 10


def test_replies_that_never_come_are_maybe_and_a_keyed_retry_counts_once(faulty, instances):
    a, b = instances
    meta = faulty.primary_of(layout.HOURS_KEY)
    victim = next(n for n in faulty.nodes if n is not meta)
    hour = 5
    flows = []
    for i in itertools.count():  # flows whose buckets are on the victim only
        key = layout.bucket_key(hour, layout.bucket_of(f"d{i}", "d", "v", 16), 16)
        if faulty.primary_of(key) is victim:
            flows.append(flow(src=f"d{i}", dest="d", vpc="v", tx=i + 1, hour=hour))
        if len(flows) == 10:
            break
    request_key = next(f"r{i}" for i in itertools.count()
                       if faulty.primary_of(layout.request_key(f"r{i}")) is not victim)  # fmt: skip
    assert post(a, [flow(src="warm", hour=hour)]) == (200, {"accepted": 1})  # hour listed
    faulty.proxy_of(victim).set("drop_replies")
    try:
        unkeyed, keyed = post(a, flows), post(b, flows, request_key)
    finally:
        faulty.heal()
    wait_ready(a, b)
    assert unkeyed[0] == keyed[0] == 503
    assert "some or all of the request may have been applied" in unkeyed[1]["error"]
    assert "retrying it may count flows twice" in unkeyed[1]["error"]
    assert "Idempotency-Key" not in unkeyed[1]["error"]
    assert "retry it with the same Idempotency-Key" in keyed[1]["error"]
    assert post(a, flows, request_key) == (200, {"accepted": 10})  # the retry
    assert post(b, flows, request_key) == (200, {"accepted": 10})
    status, rows = a.request("GET", f"/flows?hour={hour}")
    mine = {r["src_app"]: r["bytes_tx"] for r in rows}
    # Redis ran both calls whose replies it could not send: the unkeyed flows count once, and
    # the keyed ones once more, however often retried.
    assert mine == {"warm": 1, **{f["src_app"]: 2 * f["bytes_tx"] for f in flows}}
