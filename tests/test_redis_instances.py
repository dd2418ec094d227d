"""Two flowagg instances (real waitress-serve processes) over a real 3-primary Redis Cluster.

Instance A is seeded with the first node's address, B with the second's; either finds the whole
cluster. Writers and readers talk HTTP to both, as clients behind a load balancer would.
"""

from __future__ import annotations

import json
import random
import threading
import time

import pytest

from flowagg import create_app
from flowagg.config import for_log
from flowagg.store.redis import layout
from tests.conftest import WAIT_TIMEOUT, flow
from tests.serverproc import WAITRESS, ServerProcess
from tests.test_crash import Ledger, expected_rows, kill_under_load

HOURS = 12  # request_flows' hours


def start_instance(node_address: str, **env: str) -> ServerProcess:
    settings = {
        "FLOWAGG_REDIS_URL": f"redis://{node_address}",
        "FLOWAGG_PARTITIONS": "4",
        "FLOWAGG_REDIS_TIMEOUT_MS": "2000",
        "FLOWAGG_LOG_LEVEL": "warning",
        **env,
    }
    return ServerProcess([*WAITRESS, "--threads=8", "wsgi:app"], settings).wait_serving()


@pytest.fixture
def instances(cluster):
    started = []
    try:
        for node in cluster.nodes[:2]:
            started.append(start_instance(node.address))
        yield started
    finally:
        for server in started:
            server.kill()


def post(server, flows, key=None):
    headers = {"Idempotency-Key": key} if key else {}
    return server.request("POST", "/flows", json.dumps(flows), headers)


def test_every_post_to_one_instance_is_in_the_next_get_from_the_other(instances):
    writers, rounds = 6, 25
    start = threading.Barrier(writers + 2)
    stop_noise = threading.Event()
    failures: list[str] = []
    noise_flows = [0, 0]

    def writer(w: int):
        here, there = (instances[w % 2], instances[1 - w % 2])
        post_conn, get_conn = here.connection(), there.connection()
        hour, key, total = w % 4, (f"writer-{w}", "sink", "v"), 0
        try:
            start.wait(WAIT_TIMEOUT)
            for i in range(1, rounds + 1):
                total += i
                post_conn.request("POST", "/flows", json.dumps([flow(*key, tx=i, rx=i, hour=hour)]))
                response = post_conn.getresponse()
                assert (response.status, json.loads(response.read())) == (200, {"accepted": 1})
                get_conn.request("GET", f"/flows?hour={hour}")
                rows = json.loads(get_conn.getresponse().read())
                mine = [r for r in rows if r["src_app"] == key[0]]
                if mine != [flow(*key, tx=total, rx=total, hour=hour)]:
                    failures.append(f"writer {w} round {i}: expected {total}, got {mine}")
                    return
        except Exception as exc:  # reported below; an assert here would only end the thread
            failures.append(f"writer {w}: {exc!r}")
        finally:
            post_conn.close()
            get_conn.close()

    def noise(n: int):
        rng, conn = random.Random(n), instances[n].connection()
        try:
            start.wait(WAIT_TIMEOUT)
            while not stop_noise.is_set():
                batch = [flow(f"noise-{rng.randrange(40)}", "sink", "n", 1, 1, rng.randrange(4))]
                batch *= rng.randrange(1, 100)
                conn.request("POST", "/flows", json.dumps(batch))
                response = conn.getresponse()
                assert response.status == 200, response.read()
                response.read()
                noise_flows[n] += len(batch)
        except Exception as exc:
            failures.append(f"noise {n}: {exc!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    noisers = [threading.Thread(target=noise, args=(n,)) for n in range(2)]
    try:
        for t in threads + noisers:
            t.start()
        for t in threads:
            t.join(WAIT_TIMEOUT * 6)
    finally:
        stop_noise.set()
        for t in threads + noisers:
            t.join(WAIT_TIMEOUT)
    assert not any(t.is_alive() for t in threads + noisers), "a client thread is stuck"
    assert failures == []
    for server in instances:
        rows = server.rows(range(4))
        noise_rows = [r for r in rows if r["src_app"].startswith("noise-")]
        assert sum(r["bytes_tx"] for r in noise_rows) == sum(noise_flows)
        for w in range(writers):
            [mine] = [r for r in rows if r["src_app"] == f"writer-{w}"]
            assert mine["bytes_tx"] == rounds * (rounds + 1) // 2


def test_totals_are_exact_after_concurrent_multi_hour_batches_to_both(instances):
    senders, batches = 6, 20
    expected: dict[tuple, list[int]] = {}
    lock = threading.Lock()
    failures: list[str] = []
    start = threading.Barrier(senders)

    def send(n: int):
        rng, conn = random.Random(100 + n), instances[n % 2].connection()
        try:
            start.wait(WAIT_TIMEOUT)
            for _ in range(batches):
                records = [
                    flow(f"s{rng.randrange(30)}", f"d{rng.randrange(3)}", "v",
                         rng.randrange(2**62), rng.randrange(2**40), rng.randrange(6))
                    for _ in range(rng.randrange(1, 300))
                ]  # fmt: skip
                conn.request("POST", "/flows", json.dumps(records))
                response = conn.getresponse()
                assert response.status == 200, response.read()
                response.read()
                with lock:
                    for r in records:
                        sums = expected.setdefault((r["hour"], r["src_app"], r["dest_app"]), [0, 0])
                        sums[0] += r["bytes_tx"]
                        sums[1] += r["bytes_rx"]
        except Exception as exc:
            failures.append(f"sender {n}: {exc!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_TIMEOUT * 6)
    assert not any(t.is_alive() for t in threads) and failures == []
    for server in instances:
        found = {(r["hour"], r["src_app"], r["dest_app"]): [r["bytes_tx"], r["bytes_rx"]]
                 for r in server.rows(range(6))}  # fmt: skip
        assert found == expected


def test_sigkill_under_load_keeps_every_acknowledged_request_and_retries_count_once(cluster):
    """Writers post keyed multi-hour requests to A; A is killed at a random moment. Through B,
    every acknowledged request is there exactly once; the ones in flight (absent, whole or in
    part) are retried through B with their key, and then every request counts exactly once."""
    b = start_instance(cluster.nodes[1].address)
    try:
        ledger = Ledger()
        for round_no in range(2):
            a = start_instance(cluster.nodes[0].address)
            try:
                kill_under_load(a, ledger, f"r{round_no}", 6, random.randrange(20, 120))
            finally:
                a.kill()
            ledger.acked_this_round = 0
            found = rows_by_request(b)
            for request_id in ledger.acked:
                assert found.get(request_id) == expected_rows(ledger.sent[request_id]), request_id
            for request_id in sorted(set(ledger.sent) - ledger.acked):
                flows = ledger.sent[request_id]
                assert post(b, flows, request_id) == (200, {"accepted": len(flows)})
                ledger.acked.add(request_id)
            found = rows_by_request(b)
            assert set(found) == set(ledger.sent)
            for request_id, flows in ledger.sent.items():
                assert found[request_id] == expected_rows(flows), request_id
        assert len(ledger.sent) > 40
    finally:
        b.kill()


def rows_by_request(server: ServerProcess) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for row in server.rows(range(HOURS)):
        rows = found.setdefault(row["src_app"], {})
        key = (row["hour"], row["dest_app"], row["vpc_id"])
        assert key not in rows, f"duplicate row {row}"
        rows[key] = (row["bytes_tx"], row["bytes_rx"])
    return found


def on_live_primary(cluster, victim, hour: int) -> dict:
    """A flow of ``hour`` whose bucket lives on a primary other than ``victim``."""
    for i in range(1000):
        record = flow(f"live-{i}", "d", "v", 1, 1, hour)
        key = layout.bucket_key(hour, layout.bucket_of(record["src_app"], "d", "v", 16), 16)
        if cluster.primary_of(key) is not victim:
            return record
    raise AssertionError("no such flow")


def test_a_stopped_primary_makes_what_touches_it_503_and_all_recovers(cluster, instances):
    a, b = instances
    victim = next(n for n in cluster.nodes if n is not cluster.primary_of(layout.HOURS_KEY))
    everywhere = [flow(f"s{i}", "d", "v", 1, 1, 3) for i in range(200)]  # every bucket
    live = on_live_primary(cluster, victim, 3)
    victim.kill()
    status, body = post(a, everywhere, "spread")
    assert status == 503 and "retry it with the same Idempotency-Key" in body["error"], body
    assert post(b, [live]) == (200, {"accepted": 1})  # touches only live primaries: committed
    assert b.request("GET", "/flows?hour=3")[0] == 503  # never 200 with a bucket missing
    conn = a.connection()
    try:
        conn.request("GET", "/flows?hour=3")
        response = conn.getresponse()
        assert response.status == 503 and response.getheader("Retry-After") == "1"
        assert "cannot read hour 3 from Redis" in json.loads(response.read())["error"]
    finally:
        conn.close()
    status, ready = a.request("GET", "/readyz")
    assert status == 503 and any(victim.address in f for f in ready["failed"]), ready
    victim.start()
    cluster.wait_ok()
    deadline = time.monotonic() + WAIT_TIMEOUT
    while a.request("GET", "/readyz")[0] != 200:  # each instance reconnects by itself
        assert time.monotonic() < deadline, "instance A did not become ready again"
        time.sleep(0.05)
    assert post(b, everywhere, "spread") == (200, {"accepted": 200})  # completes the rest
    expected = sorted([*everywhere, live], key=lambda r: r["src_app"])
    assert a.request("GET", "/flows?hour=3") == (200, expected)


def test_metrics_show_commits_and_redis_errors(instances):
    a = instances[0]
    assert post(a, [flow(hour=h) for h in range(3)]) == (200, {"accepted": 3})
    conn = a.connection()
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    assert float(samples["flowagg_redis_commit_flows_sum"]) == 3
    assert float(samples["flowagg_redis_commit_duration_seconds_count"]) >= 1
    assert float(samples["flowagg_redis_commits_failed_total"]) == 0


def test_redis_url_with_a_data_dir_stops_start_up_with_one_line(tmp_path):
    with pytest.raises(SystemExit) as exc:
        create_app({"FLOWAGG_REDIS_URL": "redis://127.0.0.1:1", "FLOWAGG_DATA_DIR": str(tmp_path)})
    assert exc.value.code == (
        "flowagg: invalid configuration: FLOWAGG_REDIS_URL and FLOWAGG_DATA_DIR are both set:"
        " pick the Redis store or the durable single-node store, not both"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379", "expected redis://host:port"),
        ("redis://", "expected redis://host:port"),
        ("redis://127.0.0.1:port", "with a numeric port"),
    ],
    ids=["scheme", "no-host", "port"],
)
def test_a_bad_redis_url_is_refused_naming_the_variable(url, message):
    with pytest.raises(SystemExit) as exc:
        create_app({"FLOWAGG_REDIS_URL": url})
    assert exc.value.code.startswith(f"flowagg: invalid configuration: FLOWAGG_REDIS_URL={url!r}")
    assert message in exc.value.code


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@10.0.0.7:6379", "redis://:***@10.0.0.7:6379"),
        ("redis://flowagg:secret@10.0.0.7:6379", "redis://flowagg:***@10.0.0.7:6379"),
        ("redis://10.0.0.7:6379", "redis://10.0.0.7:6379"),
    ],
    ids=["password", "user-and-password", "none"],
)
def test_start_up_logs_the_redis_url_without_its_password(url, shown):
    assert for_log({"FLOWAGG_REDIS_URL": url, "FLOWAGG_PARTITIONS": 8}) == {
        "FLOWAGG_REDIS_URL": shown,
        "FLOWAGG_PARTITIONS": 8,
    }
