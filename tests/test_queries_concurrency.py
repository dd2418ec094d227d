"""Range queries are strongly consistent under concurrent writes, over a real waitress server.

Writers post batches spread over every partition, each under its own src_app. After each answer
a writer asks /flows/top for its own group over the whole range: it must count every one of its
acknowledged POSTs (read-your-writes), whatever hours they touched. Readers note every writer's
acknowledged total *before* sending a query and check that the answer counts at least that much
(no acknowledged POST is missed by a later query) and never more than was sent. At the end every
sum is exact, in /flows/top, /flows/series and GET /flows alike.
"""

from __future__ import annotations

import json
import random
import threading

from tests.conftest import WAIT_TIMEOUT, flow

WRITERS = 4
READERS = 2
ROUNDS = 25  # POSTs per writer
HOURS = range(100, 116)  # 16 hours over 8 partitions: each batch touches several
RANGE = f"start={HOURS.start}&end={HOURS.stop - 1}"


def writer_name(i: int) -> str:
    return f"writer-{i}"


def test_queries_count_every_acknowledged_post(live_server):
    acked = [0] * WRITERS  # bytes_tx acknowledged per writer; guarded by `lock`
    sent = [0] * WRITERS  # bytes_tx sent (acknowledged or in flight) per writer
    lock = threading.Lock()
    start = threading.Barrier(WRITERS + READERS, timeout=WAIT_TIMEOUT)
    writers_done = threading.Event()
    errors: list[str] = []

    def tops(params: str) -> dict[str, int]:
        status, body = live_server.request(
            "GET", f"/flows/top?{RANGE}&by=src_app&limit=1000{params}"
        )
        assert status == 200, body
        return {row["src_app"]: row["bytes_tx"] for row in body["rows"]}

    def write(i: int) -> None:
        rng = random.Random(i)
        name = writer_name(i)
        try:
            start.wait()
            for _ in range(ROUNDS):
                batch = [
                    flow(name, f"d{rng.randrange(3)}", "v", rng.randrange(1, 100), 1, hour)
                    for hour in rng.sample(HOURS, 5)
                ]
                total = sum(f["bytes_tx"] for f in batch)
                with lock:
                    sent[i] += total
                status, body = live_server.request("POST", "/flows", json.dumps(batch))
                assert (status, body) == (200, {"accepted": 5}), body
                with lock:
                    acked[i] += total
                    mine = acked[i]
                seen = tops(f"&src_app={name}")
                if seen != {name: mine}:
                    errors.append(f"{name} acknowledged {mine} but its query saw {seen}")
        except Exception as exc:
            errors.append(f"{name}: {exc!r}")

    def read(i: int) -> None:
        try:
            start.wait()
            while not writers_done.is_set():
                with lock:
                    floor = list(acked)  # acknowledged before the query is sent
                seen = tops("")
                with lock:
                    ceiling = list(sent)  # sent before the answer came
                for w in range(WRITERS):
                    got = seen.get(writer_name(w), 0)
                    if not floor[w] <= got <= ceiling[w]:
                        errors.append(
                            f"reader {i}: {writer_name(w)} saw {got}, outside"
                            f" [{floor[w]}, {ceiling[w]}]"
                        )
        except Exception as exc:
            errors.append(f"reader {i}: {exc!r}")

    threads = [
        threading.Thread(target=write, args=(i,), name=f"test-writer-{i}") for i in range(WRITERS)
    ] + [threading.Thread(target=read, args=(i,), name=f"test-reader-{i}") for i in range(READERS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads[:WRITERS]:
            thread.join(WAIT_TIMEOUT * 3)
    finally:
        writers_done.set()
        for thread in threads:
            thread.join(WAIT_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a client did not finish"
    assert errors == []

    # Every sum exact: the range's top, the series hour by hour, and each hour's rows.
    expected = {writer_name(i): acked[i] for i in range(WRITERS)}
    assert acked == sent
    assert tops("") == expected
    status, series = live_server.request("GET", f"/flows/series?{RANGE}&by=src_app&limit=1000")
    assert status == 200
    per_hour = {}
    for i, group in enumerate(series["groups"]):
        per_hour[group["src_app"]] = sum(h["values"][i][0] for h in series["hours"])
    assert per_hour == expected
    by_get = {}
    for hour in HOURS:
        status, rows = live_server.request("GET", f"/flows?hour={hour}")
        for row in rows:
            by_get[row["src_app"]] = by_get.get(row["src_app"], 0) + row["bytes_tx"]
    assert by_get == expected
