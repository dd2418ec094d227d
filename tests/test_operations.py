"""Health, readiness, metrics and backpressure."""

import json
import threading

from prometheus_client.parser import text_string_to_metric_families

from flowagg import create_app
from tests.conftest import WAIT_TIMEOUT, Flows, Stall, flow, wait_until


def scrape(client) -> dict:
    """Every sample of /metrics as {(name, frozenset(labels)): value}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


# -- health and readiness ----------------------------------------------------------------------


def test_healthz(client):
    response = client.get("/healthz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})


def test_readyz_ready(client):
    response = client.get("/readyz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ready"})


def test_readyz_fails_when_a_drainer_is_not_running(make_app, monkeypatch):
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the death is the point
    app = make_app()
    partition = app.extensions["flowagg"].partitions[2]

    def dying_merge(sums):
        raise SystemExit  # ends the drainer thread (the loop only survives Exception)

    partition._merge = dying_merge
    Flows(app.test_client()).post([flow(hour=2)])
    wait_until(lambda: not partition.drainer_alive)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "unready",
        "failed": ["drainer: partition 2 drainer is not running"],
    }
    samples = scrape(app.test_client())
    assert value(samples, "flowagg_drainer_up", partition="2") == 0
    assert value(samples, "flowagg_drainer_up", partition="1") == 1
    partition._retry = []  # let teardown's close() finish without the dead thread's batch


def test_readyz_fails_while_a_buffer_is_above_the_watermark(make_app):
    app = make_app(FLOWAGG_BUFFER_CAPACITY=10, FLOWAGG_READY_BUFFER_PERCENT=50)
    client, flows = app.test_client(), Flows(app.test_client())
    stall = Stall(app.extensions["flowagg"].partitions[1])
    try:
        flows.post([flow(hour=1)])  # taken by the drainer, which now stalls
        assert stall.entered.wait(WAIT_TIMEOUT)
        flows.post([flow(hour=1)] * 5)  # 5 of 10: at the watermark, still ready
        assert client.get("/readyz").status_code == 200
        flows.post([flow(hour=5)])  # 6 of 10
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.get_json()["failed"] == [
            "buffer: partition 1 holds 6 of 10 flows (above 50%)"
        ]
    finally:
        stall.release.set()
    assert flows.get(1) == [flow(hour=1, tx=6, rx=12)]
    assert client.get("/readyz").status_code == 200


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_move_by_exact_amounts(make_app):
    app = make_app(FLOWAGG_MAX_BODY_BYTES=2000)
    client, flows = app.test_client(), Flows(app.test_client())
    before = scrape(client)
    assert value(before, "flowagg_requests_accepted_total") == 0
    assert value(before, "flowagg_buffer_capacity_flows", partition="3") == 1024

    flows.post([flow(src="a"), flow(src="b"), flow(src="a", hour=2)])
    flows.post([flow(src="c", hour=2), flow(src="a", hour=6)])
    flows.post([])
    assert client.post("/flows", data="[{}]").status_code == 400
    assert client.post("/flows", data="x" * 3000).status_code == 413
    for hour in (1, 2, 6):
        flows.get(hour)
    assert client.get("/flows?hour=x").status_code == 400

    after = scrape(client)
    assert value(after, "flowagg_requests_accepted_total") == 3
    assert value(after, "flowagg_flows_accepted_total") == 5
    assert value(after, "flowagg_requests_rejected_total", reason="invalid") == 1
    assert value(after, "flowagg_requests_rejected_total", reason="too_large") == 1
    assert value(after, "flowagg_requests_rejected_total", reason="overloaded") == 0
    assert value(after, "flowagg_read_duration_seconds_count") == 3
    assert value(after, "flowagg_drain_batch_flows_sum") == 5
    assert value(after, "flowagg_keys") == 5  # (1,a) (1,b) (2,a) (2,c) (6,a)
    assert value(after, "flowagg_hours") == 3
    assert value(after, "flowagg_drain_lag_flows", partition="2") == 0
    assert value(after, "flowagg_buffer_depth_flows", partition="2") == 0


def test_metric_labels_never_carry_flow_keys(make_app):
    app = make_app()
    Flows(app.test_client()).post([flow(src=f"app-{i}") for i in range(50)])
    Flows(app.test_client()).get(1)
    for _name, labels in scrape(app.test_client()):
        assert set(dict(labels)) <= {"partition", "reason", "query", "le"}  # query: top, series


def test_apps_have_separate_registries(make_app):
    first, second = make_app(), make_app()
    Flows(first.test_client()).post([flow()])
    assert value(scrape(first.test_client()), "flowagg_flows_accepted_total") == 1
    assert value(scrape(second.test_client()), "flowagg_flows_accepted_total") == 0


# -- backpressure ------------------------------------------------------------------------------


def test_full_buffer_answers_503_and_applies_nothing(make_app):
    app = make_app(FLOWAGG_BUFFER_CAPACITY=4, FLOWAGG_ENQUEUE_TIMEOUT_MS=50)
    client, flows = app.test_client(), Flows(app.test_client())
    stall = Stall(app.extensions["flowagg"].partitions[1])
    try:
        flows.post([flow(hour=1)])
        assert stall.entered.wait(WAIT_TIMEOUT)  # the drainer holds this batch
        flows.post([flow(hour=1)] * 4)  # partition 1's buffer is now full
        # Partition 0 has room and is reserved first; partition 1 has none: nothing may land.
        response = client.post("/flows", data=json.dumps([flow(hour=0), flow(hour=5)]))
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.get_json()["error"].startswith(
            "overloaded: partition 1 had no room for 1 flows within 0.05 s"
        )
        # Other partitions keep ingesting and answering.
        flows.post([flow(hour=2)])
        assert flows.get(2) == [flow(hour=2)]
    finally:
        stall.release.set()
    assert flows.get(0) == []
    assert flows.get(5) == []
    assert flows.get(1) == [flow(hour=1, tx=5, rx=10)]
    assert value(scrape(client), "flowagg_requests_rejected_total", reason="overloaded") == 1
    # Room is back: the same request now succeeds.
    flows.post([flow(hour=0), flow(hour=5)])
    assert flows.get(0) == [flow(hour=0)]


def test_a_waiting_post_succeeds_when_room_appears(make_app):
    app = make_app(FLOWAGG_BUFFER_CAPACITY=2, FLOWAGG_ENQUEUE_TIMEOUT_MS=int(WAIT_TIMEOUT * 1000))
    flows = Flows(app.test_client())
    stall = Stall(app.extensions["flowagg"].partitions[3])
    flows.post([flow(hour=3)])
    assert stall.entered.wait(WAIT_TIMEOUT)
    flows.post([flow(hour=3)] * 2)  # full
    started, done = threading.Event(), threading.Event()
    result = []

    def blocked_post():
        started.set()
        result.append(Flows(app.test_client()).post([flow(hour=7)]))
        done.set()

    t = threading.Thread(target=blocked_post)
    t.start()
    try:
        assert started.wait(WAIT_TIMEOUT)
        assert not done.is_set()  # cannot have been accepted: no room until the stall ends
    finally:
        stall.release.set()
        t.join(WAIT_TIMEOUT)
    assert result == [{"accepted": 1}]
    assert flows.get(7) == [flow(hour=7)]
    assert flows.get(3) == [flow(hour=3, tx=3, rx=6)]


# -- with a data directory ---------------------------------------------------------------------


def durable_app(directory, **config):
    return create_app(
        {"FLOWAGG_PARTITIONS": 4, "FLOWAGG_DATA_DIR": str(directory), "FLOWAGG_FSYNC": "always",
         **config}
    )  # fmt: skip


def test_an_overloaded_request_never_reaches_the_log(tmp_path):
    app = durable_app(tmp_path, FLOWAGG_BUFFER_CAPACITY=2, FLOWAGG_ENQUEUE_TIMEOUT_MS=50)
    client, flows = app.test_client(), Flows(app.test_client())
    stall = Stall(app.extensions["flowagg"].partitions[1])
    try:
        flows.post([flow(hour=1)])
        assert stall.entered.wait(WAIT_TIMEOUT)
        flows.post([flow(hour=1)] * 2)  # full
        response = client.post("/flows", data=json.dumps([flow(hour=0), flow(hour=1)]))
        assert response.status_code == 503
    finally:
        stall.release.set()
    assert app.extensions["flowagg"].close(WAIT_TIMEOUT)
    reopened = durable_app(tmp_path)
    try:
        flows = Flows(reopened.test_client())
        assert flows.get(0) == []
        assert flows.get(1) == [flow(hour=1, tx=3, rx=6)]
    finally:
        assert reopened.extensions["flowagg"].close(WAIT_TIMEOUT)


def test_readyz_and_post_report_a_failed_log(tmp_path):
    app = durable_app(tmp_path)
    client = app.test_client()
    wal = app.extensions["flowagg"]._wal
    with wal._mutex:
        wal._fail(OSError(5, "Input/output error"))  # as a failed fsync leaves it
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "unready",
        "failed": ["log: [Errno 5] Input/output error"],
    }
    response = client.post("/flows", data=json.dumps([flow()]))
    assert response.status_code == 503
    assert "cannot store the request" in response.get_json()["error"]
    samples = scrape(client)
    assert value(samples, "flowagg_requests_rejected_total", reason="unavailable") == 1
    assert Flows(client).get(1) == []
    app.extensions["flowagg"].close(WAIT_TIMEOUT)


def test_fsync_and_log_size_metrics(tmp_path):
    app = durable_app(tmp_path)
    client, flows = app.test_client(), Flows(app.test_client())
    try:
        before = scrape(client)
        for _ in range(3):
            flows.post([flow()])
        after = scrape(client)
        fsyncs = value(after, "flowagg_fsync_duration_seconds_count") - value(
            before, "flowagg_fsync_duration_seconds_count"
        )
        assert 1 <= fsyncs <= 3  # one per POST here; concurrent POSTs may share one
        assert value(after, "flowagg_log_bytes") > value(before, "flowagg_log_bytes")
    finally:
        assert app.extensions["flowagg"].close(WAIT_TIMEOUT)


def test_posts_refused_while_shutting_down_are_counted(make_app):
    app = make_app()
    client = app.test_client()
    assert app.extensions["flowagg"].close(WAIT_TIMEOUT)
    response = client.post("/flows", data=json.dumps([flow()]))
    assert (response.status_code, response.headers["Retry-After"]) == (503, "1")
    assert value(scrape(client), "flowagg_requests_rejected_total", reason="unavailable") == 1
