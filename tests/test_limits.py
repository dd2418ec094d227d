"""What the store refuses: hours outside the window of its clock, long names, key-hours past the
limit; and that one client's refused request changes nothing of anyone's data."""

import gc
import json
import re
import threading
import tracemalloc

import pytest

from flowagg import create_app
from flowagg.schema import Flow
from flowagg.store.base import KeyLimit, MemoryLimit
from flowagg.store.memory import PartitionedStore
from tests.conftest import WAIT_TIMEOUT, FakeClock, Flows, Stall, flow
from tests.test_operations import scrape, value

NOW = 490_000  # an hour since the Unix epoch (in 2025)


# -- the hours window, from the server's clock ---------------------------------------------------


def test_the_window_follows_the_clock_and_is_checked_at_both_ends(make_app):
    clock = FakeClock(NOW)
    app = make_app(clock=clock, FLOWAGG_RETENTION_HOURS=2)
    client, flows = app.test_client(), Flows(app.test_client())
    flows.post([flow(hour=NOW), flow(hour=NOW - 2), flow(hour=NOW + 1)])  # [NOW-2, NOW+1]
    response = client.post("/flows", data=json.dumps([flow(hour=NOW - 1), flow(hour=NOW - 3)]))
    assert response.status_code == 400
    assert response.get_json() == {
        "error": f"$[1].hour: hour {NOW - 3} is outside the window [{NOW - 2}, {NOW + 1}] of"
        " hours since the Unix epoch the server accepts now (FLOWAGG_RETENTION_HOURS=2,"
        " FLOWAGG_MAX_FUTURE_HOURS=1)"
    }
    response = client.post("/flows", data=json.dumps([flow(hour=NOW), flow(hour=NOW + 2)]))
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(f"$[1].hour: hour {NOW + 2} is outside")
    assert flows.get(NOW - 1) == [] and flows.get(NOW) == [flow(hour=NOW)]  # nothing applied

    app.extensions["flowagg"].flush(WAIT_TIMEOUT)  # every hour in its table, none in flight
    clock.advance(1)  # window [NOW-1, NOW+2]: hour NOW-2 drops, without any POST
    assert flows.get(NOW - 2) == []
    assert flows.get(NOW + 1) == [flow(hour=NOW + 1)]
    samples = scrape(client)
    assert value(samples, "flowagg_hours_dropped_total") == 1
    assert value(samples, "flowagg_hours") == 2
    assert value(samples, "flowagg_requests_rejected_total", reason="expired") == 2
    flows.post([flow(hour=NOW + 2)])


def test_a_post_far_in_the_future_is_refused_and_changes_nothing_of_anyone(make_app):
    """The attack that erased every other client's hours: one record at hour 2**63 - 1."""
    clock = FakeClock(NOW)
    app = make_app(clock=clock, FLOWAGG_RETENTION_HOURS=24)
    client, flows = app.test_client(), Flows(app.test_client())
    victims = [flow(src=f"victim-{h}", hour=NOW - h) for h in range(0, 25, 3)]
    flows.post(victims)
    before = {h: flows.get(NOW - h) for h in range(25)}
    for attack in ([flow(src="attacker", hour=2**63 - 1)], [flow(hour=NOW), flow(hour=NOW + 50)]):
        response = client.post("/flows", data=json.dumps(attack))
        assert response.status_code == 400
        assert "outside the window" in response.get_json()["error"]
    assert {h: flows.get(NOW - h) for h in range(25)} == before
    flows.post([flow(src="later", hour=NOW - 20)])  # the window did not move
    assert app.extensions["flowagg"].stats().hours_dropped == 0


def test_without_retention_hours_are_any_number_unless_a_future_bound_is_set(make_app):
    clock = FakeClock(NOW)
    open_app = make_app(clock=clock)
    Flows(open_app.test_client()).post([flow(hour=1), flow(hour=2**63 - 1)])
    bounded = make_app(clock=clock, FLOWAGG_MAX_FUTURE_HOURS=0)
    flows = Flows(bounded.test_client())
    flows.post([flow(hour=1), flow(hour=NOW)])
    response = bounded.test_client().post("/flows", data=json.dumps([flow(hour=NOW + 1)]))
    assert response.status_code == 400
    assert f"the window [-, {NOW}]" in response.get_json()["error"]


def test_retention_zero_keeps_only_the_clocks_hour(make_app):
    clock = FakeClock(NOW)
    app = make_app(clock=clock, FLOWAGG_RETENTION_HOURS=0)
    flows = Flows(app.test_client())
    flows.post([flow(hour=NOW)])
    clock.advance(1)
    assert flows.get(NOW) == []
    flows.post([flow(hour=NOW)], status=400)
    flows.post([flow(hour=NOW + 1)])


def test_flows_queued_for_an_hour_that_expires_are_not_resurrected(make_app):
    clock = FakeClock(NOW)
    app = make_app(clock=clock, FLOWAGG_RETENTION_HOURS=1, FLOWAGG_PARTITIONS=2)
    store = app.extensions["flowagg"]
    flows = Flows(app.test_client())
    stall = Stall(store.partitions[NOW % 2])
    try:
        flows.post([flow(hour=NOW)])
        assert stall.entered.wait(WAIT_TIMEOUT)
        flows.post([flow(hour=NOW, tx=5)])  # queued behind the stalled batch
        clock.advance(2)  # hour NOW leaves the window while its flows are still queued
        flows.post([flow(hour=NOW + 2)])
    finally:
        stall.release.set()
    store.flush(WAIT_TIMEOUT)
    assert flows.get(NOW) == []
    assert store.stats().hours == 1


def test_memory_stays_flat_while_hours_advance(make_app):
    # Request lines off: the test harness keeps every log record it captures.
    clock = FakeClock(NOW)
    app = make_app(clock=clock, FLOWAGG_RETENTION_HOURS=3, FLOWAGG_LOG_LEVEL="warning")
    store = app.extensions["flowagg"]
    flows = Flows(app.test_client())
    batch = [flow(src=f"app-{k}") for k in range(20)]

    def advance(hours: int) -> None:
        for _ in range(hours):
            clock.advance(1)
            for record in batch:
                record["hour"] = clock.hour
            flows.post(batch)
        store.flush(WAIT_TIMEOUT)
        gc.collect()  # request objects in reference cycles are garbage, not growth

    advance(300)  # warm up caches and allocator pools
    tracemalloc.start()
    try:
        advance(300)
        early, _ = tracemalloc.get_traced_memory()
        advance(1200)
        late, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stats = store.stats()
    assert stats.hours == 4 and stats.keys == 4 * 20
    # 1,200 more hours of data; what stays allocated must not grow with them.
    assert late - early < 64 * 1024, f"grew by {late - early} bytes"


def durable_app(directory, clock, **config):
    settings = {"FLOWAGG_PARTITIONS": 4, "FLOWAGG_DATA_DIR": str(directory), **config}
    return create_app(settings, clock=clock)


def test_retention_holds_across_a_restart(tmp_path):
    clock = FakeClock(NOW)
    app = durable_app(tmp_path, clock, FLOWAGG_RETENTION_HOURS=2)
    flows = Flows(app.test_client())
    flows.post([flow(hour=h) for h in (NOW - 2, NOW - 1, NOW)])
    assert app.extensions["flowagg"].close(WAIT_TIMEOUT)
    clock.advance(2)  # while it was down: hours NOW-2 and NOW-1 left the window
    reopened = durable_app(tmp_path, clock, FLOWAGG_RETENTION_HOURS=2)
    try:
        flows = Flows(reopened.test_client())
        assert flows.get(NOW - 2) == [] and flows.get(NOW - 1) == []  # replay did not revive
        assert flows.get(NOW) == [flow(hour=NOW)]
        assert reopened.extensions["flowagg"].stats().hours == 1
        flows.post([flow(hour=NOW - 1)], status=400)
    finally:
        assert reopened.extensions["flowagg"].close(WAIT_TIMEOUT)


def test_a_retry_of_an_applied_request_is_answered_even_when_it_could_not_be_taken_now(tmp_path):
    clock = FakeClock(NOW)
    app = durable_app(
        tmp_path,
        clock,
        FLOWAGG_RETENTION_HOURS=3,
        FLOWAGG_BUFFER_CAPACITY=2,
        FLOWAGG_ENQUEUE_TIMEOUT_MS=50,
    )
    client, flows = app.test_client(), Flows(app.test_client())
    body, key = json.dumps([flow(hour=NOW)]), {"Idempotency-Key": "k1"}
    store = app.extensions["flowagg"]
    stall = None
    try:
        assert client.post("/flows", data=body, headers=key).get_json() == {"accepted": 1}
        clock.advance(10)  # hour NOW leaves the window
        response = client.post("/flows", data=body, headers=key)
        assert (response.status_code, response.get_json()) == (200, {"accepted": 1})
        store.flush(WAIT_TIMEOUT)  # nothing of the above still queued
        later = clock.hour
        stall = Stall(store.partitions[later % 4])
        flows.post([flow(hour=later)])
        assert stall.entered.wait(WAIT_TIMEOUT)
        flows.post([flow(hour=later)] * 2)  # that partition is full now
        again = client.post(
            "/flows", data=json.dumps([flow(hour=later)]), headers={"Idempotency-Key": "k2"}
        )
        assert again.status_code == 503  # a new request gets no room...
        flows.post([flow(hour=later - 1)], status=200)  # ...(other partitions still take flows)
        response = client.post("/flows", data=body, headers=key)
        assert (response.status_code, response.get_json()) == (200, {"accepted": 1})  # a retry does
    finally:
        if stall is not None:
            stall.release.set()
        assert store.close(WAIT_TIMEOUT)


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, status",
    [("a" * 16, 200), ("é" * 8, 200), ("a" * 17, 400), ("é" * 9, 400)],
    ids=["16-ascii", "16-bytes-of-utf8", "17-ascii", "18-bytes-of-utf8"],
)
def test_names_longer_than_the_limit_in_bytes_are_refused(make_app, name, status):
    app = make_app(FLOWAGG_MAX_NAME_BYTES=16)
    client = app.test_client()
    response = client.post("/flows", data=json.dumps([flow(), flow(dest=name)]))
    assert response.status_code == status
    if status == 400:
        assert response.get_json() == {
            "error": "$[1].dest_app: longer than FLOWAGG_MAX_NAME_BYTES=16 bytes of UTF-8"
        }
        assert Flows(client).get(1) == []


# -- key-hours ---------------------------------------------------------------------------------


def test_new_keys_past_the_limit_are_refused_whole_and_increments_still_accepted(make_app):
    app = make_app(FLOWAGG_MAX_KEYS=10)
    client, flows = app.test_client(), Flows(app.test_client())
    flows.post([flow(src=f"s{k}", hour=k % 2) for k in range(8)])  # 8 key-hours
    response = client.post(
        "/flows",
        data=json.dumps([flow(src="s0", hour=0)] + [flow(src=f"new{k}", hour=5) for k in range(3)]),
    )
    assert response.status_code == 429
    assert "Retry-After" not in response.headers
    assert response.get_json() == {
        "error": "the store holds 8 key-hours and this request would add 3, past"
        " FLOWAGG_MAX_KEYS=10; flows for key-hours already held are still accepted"
    }
    assert flows.get(5) == [] and flows.get(0)[0]["bytes_tx"] == 1  # nothing applied
    flows.post([flow(src=f"s{k}", hour=k % 2) for k in range(8)] * 3)  # increments: fine
    flows.post([flow(src="n1", hour=7), flow(src="n1", hour=7), flow(src="n2", hour=7)])  # 10
    flows.post([flow(src="n3", hour=7)], status=429)
    app.extensions["flowagg"].flush(WAIT_TIMEOUT)
    samples = scrape(client)
    assert value(samples, "flowagg_keys") == 10
    assert value(samples, "flowagg_keys_limit") == 10
    assert value(samples, "flowagg_requests_rejected_total", reason="key_limit") == 2
    ready = client.get("/readyz")
    assert (ready.status_code, ready.get_json()) == (200, {"status": "ready"})


def race_writers(store, rounds: int, batch, writers: int = 6) -> tuple[list[int], list[int]]:
    """``writers`` threads, released together, each ingest ``batch(writer, round)`` for
    ``rounds`` rounds; returns the sizes of the batches admitted and of those refused by a
    limit, once every admitted one is applied."""
    start = threading.Barrier(writers, timeout=WAIT_TIMEOUT)
    admitted: list[int] = []
    refused: list[int] = []

    def write(w: int) -> None:
        start.wait()
        for r in range(rounds):
            flows = batch(w, r)
            try:
                store.ingest(flows, timeout=WAIT_TIMEOUT)
                admitted.append(len(flows))
            except (KeyLimit, MemoryLimit):
                refused.append(len(flows))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    try:
        for t in threads:
            t.start()
    finally:
        for t in threads:
            t.join(WAIT_TIMEOUT * 3)
    assert not any(t.is_alive() for t in threads), "a writer did not finish"
    store.flush(WAIT_TIMEOUT)
    return admitted, refused


def test_concurrent_requests_never_pass_the_key_limit_together():
    """Writers each post batches of new keys at once; whatever the interleaving, the keys
    held never exceed the limit, and every admitted batch was applied whole."""
    limit = 500
    store = PartitionedStore(partitions=4, max_keys=limit)
    admitted, refused = race_writers(
        store, 20, lambda w, r: [Flow(f"w{w}-r{r}-k{k}", "d", "v", 1, 1, k % 7) for k in range(10)]
    )
    held = store.stats().keys
    assert held <= limit
    assert held == sum(admitted)  # every admitted batch whole, nothing of a refused one
    assert held >= limit - 10  # and not refused far below the limit
    assert refused  # the limit was reached
    assert store.close(WAIT_TIMEOUT)


# -- bytes of table memory -------------------------------------------------------------------

MIB = 2**20


def fill_until_refused(flows: Flows, batch: int, hour: int = 3) -> tuple[list[list[dict]], dict]:
    """POST batches of new keys until one is refused; returns the accepted ones and the 429."""
    accepted = []
    for b in range(10_000):
        records = [flow(src=f"s{b}-{k}", dest="d" * 40, hour=hour) for k in range(batch)]
        response = flows.client.post("/flows", data=json.dumps(records))
        if response.status_code == 429:
            return accepted, response.get_json()
        assert response.status_code == 200, response.get_data(as_text=True)
        accepted.append(records)
    raise AssertionError("never refused")


def test_new_keys_past_the_memory_limit_are_refused_whole_and_increments_still_accepted(make_app):
    app = make_app(FLOWAGG_MAX_MEMORY_BYTES="1MiB")
    client, flows = app.test_client(), Flows(app.test_client())
    store = app.extensions["flowagg"]
    accepted, refusal = fill_until_refused(flows, batch=500)
    store.flush(WAIT_TIMEOUT)
    held = store.stats().memory_bytes
    assert held <= MIB
    assert held > MIB // 2  # refused near the limit, not at the fast path's bound
    match = re.fullmatch(
        r"the tables hold (\d+) bytes, requests accepted and not yet applied may add 0, and"
        r" this request would add (\d+), past FLOWAGG_MAX_MEMORY_BYTES=1048576; flows for"
        r" key-hours already held are still accepted",
        refusal["error"],
    )
    assert match, refusal
    assert int(match.group(1)) == held and int(match.group(1)) + int(match.group(2)) > MIB
    rows = flows.get(3)
    assert len(rows) == 500 * len(accepted)  # every accepted flow, nothing of the refused one
    flows.post(accepted[0] + accepted[-1])  # key-hours already held: still accepted
    flows.post([flow(src="s0-0", dest="d" * 40, hour=3)] * 2000)  # copies of one held key
    store.flush(WAIT_TIMEOUT)
    assert store.stats().memory_bytes == held  # increments allocate nothing
    # One new key at a time fits into the room the arrays have left, until it does not.
    singles = 0
    while client.post("/flows", data=json.dumps([flow(src=f"one{singles}")])).status_code == 200:
        singles += 1
        assert singles < 5000
    store.flush(WAIT_TIMEOUT)
    assert held <= store.stats().memory_bytes <= MIB
    totals = {r["src_app"]: r["bytes_tx"] for r in flows.get(3)}
    assert totals["s0-0"] == 1 + 1 + 2000 and totals[accepted[-1][0]["src_app"]] == 2
    assert len(flows.get(1)) == singles
    samples = scrape(client)
    assert value(samples, "flowagg_memory_bytes") == store.stats().memory_bytes
    assert value(samples, "flowagg_memory_limit_bytes") == MIB
    assert value(samples, "flowagg_requests_rejected_total", reason="memory_limit") == 2


def test_concurrent_requests_never_pass_the_memory_limit_together():
    """Writers post batches of new keys over several hours at once; the tables never hold more
    than the limit, every admitted batch is applied whole, and refusals come near it."""
    limit = 2 * MIB
    store = PartitionedStore(partitions=4, max_memory_bytes=limit)
    admitted, refused = race_writers(
        store,
        40,
        lambda w, r: [Flow(f"w{w}-r{r}-k{k}", "d" * 30, "v", 1, 1, k % 7) for k in range(200)],
    )
    stats = store.stats()
    assert stats.memory_bytes <= limit
    assert stats.keys == sum(admitted)  # every admitted batch whole, nothing of a refused one
    assert refused  # the limit was reached
    assert stats.memory_bytes > limit * 0.8  # and not refused far below it
    assert store.close(WAIT_TIMEOUT)


def test_retention_gives_the_memory_of_dropped_hours_back(make_app):
    clock = FakeClock(NOW)
    app = make_app(clock=clock, FLOWAGG_RETENTION_HOURS=1, FLOWAGG_MAX_MEMORY_BYTES="64MiB")
    store, flows = app.extensions["flowagg"], Flows(app.test_client())
    flows.post([flow(src=f"k{k}", hour=NOW) for k in range(2000)])
    store.flush(WAIT_TIMEOUT)
    full = store.stats().memory_bytes
    assert full > 2000 * 32
    clock.advance(2)
    flows.post([flow(hour=NOW + 2)])
    store.flush(WAIT_TIMEOUT)
    small = store.stats().memory_bytes
    assert small < 1024  # one hour of one key: a few hundred bytes, the hours' index shrunk
    clock.advance(2)
    assert store.stats().memory_bytes == 0  # stats() applies retention first
