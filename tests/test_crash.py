"""SIGKILL at a random moment loses no acknowledged request and splits none.

Writers POST batches that span several hours (so several partitions) to a real waitress-serve
process while its log is compacted every few dozen requests; the test kills the process with
SIGKILL at a random moment, restarts it on the same directory and checks every request: each is
either wholly present exactly once or absent, and each acknowledged one is present. Requests that
were in flight at the kill are then retried with their Idempotency-Key, which must count them
exactly once whether or not the killed server had applied them.
"""

import http.client
import itertools
import json
import os
import random
import signal
import threading
import time

from tests.conftest import WAIT_TIMEOUT
from tests.serverproc import WAITRESS, ServerProcess

ROUNDS = 6
WRITERS = 6
HOURS = 12
MODES = ["always", "interval", "never"]  # SIGKILL is process death: every mode must hold
# Bound on the whole test: rounds stop early rather than let the test run long.
TEST_BUDGET_S = 45.0


def request_flows(rng: random.Random, request_id: str) -> list[dict]:
    """2 to 6 flows over 2 to 4 hours, all under this request's own src_app."""
    hours = rng.sample(range(HOURS), rng.randrange(2, 5))
    return [
        {
            "src_app": request_id,
            "dest_app": f"d{i % 2}",
            "vpc_id": "v",
            "bytes_tx": rng.randrange(1, 10**9),
            "bytes_rx": rng.randrange(1, 10**9),
            "hour": hours[i % len(hours)],
        }
        for i in range(rng.randrange(2, 7))
    ]


def expected_rows(flows: list[dict]) -> dict:
    rows: dict = {}
    for f in flows:
        key = (f["hour"], f["dest_app"], f["vpc_id"])
        tx, rx = rows.get(key, (0, 0))
        rows[key] = (tx + f["bytes_tx"], rx + f["bytes_rx"])
    return rows


class Ledger:
    """What was sent and what was acknowledged, shared by the writer threads."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        # Notified by writers after each acknowledgement; the killer waits on it.
        self.acknowledged = threading.Condition(self.mutex)
        self.sent: dict[str, list[dict]] = {}
        self.acked: set[str] = set()
        self.acked_this_round = 0
        self.errors: list[str] = []  # a writer that failed other than by the kill

    def wait_acked(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.acknowledged:
            while self.acked_this_round < count and not self.errors:
                left = deadline - time.monotonic()
                assert left > 0, f"only {self.acked_this_round} of {count} requests acknowledged"
                self.acknowledged.wait(left)


def check(server: ServerProcess, ledger: Ledger) -> None:
    found: dict[str, dict] = {}
    for row in server.rows(range(HOURS)):
        rows = found.setdefault(row["src_app"], {})
        key = (row["hour"], row["dest_app"], row["vpc_id"])
        assert key not in rows, f"duplicate row {row}"
        rows[key] = (row["bytes_tx"], row["bytes_rx"])
    unknown = set(found) - set(ledger.sent)
    assert not unknown, f"rows of requests never sent: {sorted(unknown)[:5]}"
    for request_id, flows in ledger.sent.items():
        rows = found.get(request_id)
        if rows is None:
            assert request_id not in ledger.acked, f"acknowledged request {request_id} lost"
        else:  # whole, and counted once (twice would double every sum)
            assert rows == expected_rows(flows), f"request {request_id} partial or repeated"


def write(server: ServerProcess, ledger: Ledger, seed: str, stop: threading.Event) -> None:
    rng = random.Random(seed)
    conn = server.connection()
    try:
        for i in itertools.count():
            if stop.is_set():
                return
            request_id = f"{seed}-{i}"
            flows = request_flows(rng, request_id)
            with ledger.mutex:
                ledger.sent[request_id] = flows
            conn.request(
                "POST", "/flows", json.dumps(flows), headers={"Idempotency-Key": request_id}
            )
            response = conn.getresponse()
            body = response.read()
            with ledger.acknowledged:
                if response.status != 200:
                    ledger.errors.append(f"{request_id}: {response.status} {body!r}")
                    ledger.acknowledged.notify_all()
                    return
                ledger.acked.add(request_id)
                ledger.acked_this_round += 1
                ledger.acknowledged.notify_all()
    except (OSError, http.client.HTTPException):
        return  # the server was killed: this request is in flight, or was never sent
    except Exception as exc:  # reported by the test; an assert here would only end the thread
        with ledger.acknowledged:
            ledger.errors.append(repr(exc))
            ledger.acknowledged.notify_all()
    finally:
        conn.close()


def start(directory, mode: str) -> ServerProcess:
    env = {
        "FLOWAGG_DATA_DIR": str(directory),
        "FLOWAGG_PARTITIONS": "4",
        "FLOWAGG_FSYNC": mode,
        "FLOWAGG_FSYNC_INTERVAL_MS": "50",
        "FLOWAGG_SNAPSHOT_BYTES": "4096",  # a snapshot every few dozen requests
    }
    return ServerProcess([*WAITRESS, "--threads=8", "wsgi:app"], env).wait_serving()


def test_sigkill_loses_no_acknowledged_request_and_splits_none(tmp_path):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    print(f"crash test seed {seed}")  # shown on failure, to reproduce the kill points
    ledger = Ledger()
    started = time.monotonic()
    for round_no in range(ROUNDS):
        if time.monotonic() - started > TEST_BUDGET_S:
            break
        server = start(tmp_path, MODES[round_no % len(MODES)])
        try:
            check(server, ledger)
            retry_in_flight(server, ledger)
            check(server, ledger)
            ledger.acked_this_round = 0
            kill_under_load(server, ledger, f"r{round_no}", WRITERS, rng.randrange(30, 400))
        finally:
            server.kill()
    server = start(tmp_path, "always")
    try:
        check(server, ledger)
        retry_in_flight(server, ledger)
        check(server, ledger)
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.stderr
    assert ledger.acked == set(ledger.sent)
    assert len(ledger.sent) > 100


def kill_under_load(
    server: ServerProcess, ledger: Ledger, name: str, writers: int, acked: int
) -> None:
    """Run ``writers`` writers against ``server`` until ``acked`` more requests are acknowledged,
    then SIGKILL it and stop the writers; fail if any writer failed other than by the kill."""
    stop = threading.Event()
    threads = [
        threading.Thread(target=write, args=(server, ledger, f"{name}w{w}", stop))
        for w in range(writers)
    ]
    for t in threads:
        t.start()
    try:
        ledger.wait_acked(acked, WAIT_TIMEOUT * 3)
        server.proc.send_signal(signal.SIGKILL)
        assert server.proc.wait(WAIT_TIMEOUT) == -signal.SIGKILL
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT_TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    assert ledger.errors == []


def retry_in_flight(server: ServerProcess, ledger: Ledger) -> None:
    """Retry requests never acknowledged, with their key: each must now count exactly once."""
    for request_id in sorted(set(ledger.sent) - ledger.acked):
        body = json.dumps(ledger.sent[request_id])
        status, reply = server.request(
            "POST", "/flows", body, headers={"Idempotency-Key": request_id}
        )
        assert (status, reply) == (200, {"accepted": len(ledger.sent[request_id])})
        ledger.acked.add(request_id)
