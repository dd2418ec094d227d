"""The benchmark's scenarios as locust users: ``loadtest.bench`` uses them where wrk is missing.

One user class per scenario, configured by ``FLOWAGG_BENCH_*`` variables (the same options as the
Lua scripts in ``loadtest/wrk/``); at the end of the run the figures are written as JSON to
``FLOWAGG_BENCH_RESULT`` in the shape the harness reads from wrk. Requests are built once per
user in ``on_start`` so that the load generator spends its time sending, not encoding.

    FLOWAGG_BENCH_FLOWS=1000 FLOWAGG_BENCH_RESULT=out.json PYTHONPATH=. .venv/bin/locust \
        -f loadtest/bench_locust.py --headless -u 8 -r 8 -t 10s \
        --host http://127.0.0.1:8080 PostFlows
"""

from __future__ import annotations

import itertools
import json
import os
import time

from locust import FastHttpUser, constant, events, task

from loadtest.drivers import flow_json

JSON = {"Content-Type": "application/json"}
_user_ids = itertools.count()
_figures = {"posts_ok": 0, "flows_ok": 0, "gets": 0, "violations": 0, "unknown": 0}
_get_latencies: list[float] = []
_window: dict[str, float] = {}


def param(name: str, default):
    return type(default)(os.environ.get(f"FLOWAGG_BENCH_{name.upper()}", default))


class PostFlows(FastHttpUser):
    """POST pre-built bodies of FLOWS records each spread over SPREAD hours from HOUR0, at most
    KEYS keys per hour (as loadtest/wrk/post.lua builds them)."""

    wait_time = constant(0)

    def on_start(self) -> None:
        uid = next(_user_ids)
        flows, keys, spread = param("flows", 1), param("keys", 5_000), param("spread", 1)
        hour0, count = param("hour0", 100), param("bodies", 64)
        self.bodies = []
        for b in range(count):
            first = (uid * count + b) * flows
            records = [
                flow_json(g // spread % keys, hour0 + g % spread, 1 + g % 1000, 1 + g % 777)
                for g in range(first, first + flows)
            ]
            self.bodies.append(b"[" + b",".join(records) + b"]")
        self.sent = 0

    @task
    def post(self) -> None:
        self.client.post("/flows", data=self.bodies[self.sent % len(self.bodies)], headers=JSON)
        self.sent += 1


class GetHour(FastHttpUser):
    """GET /flows?hour=HOUR over and over."""

    wait_time = constant(0)

    @task
    def get(self) -> None:
        self.client.get(f"/flows?hour={param('hour', 0)}", name="GET /flows")


class Mixed(FastHttpUser):
    """95 % POSTs, 5 % GETs checking this user's own writes (see loadtest/wrk/mixed.lua)."""

    wait_time = constant(0)

    def on_start(self) -> None:
        uid = next(_user_ids)
        self.hour, batch, keys = param("hour", 2_000_000), param("batch", 100), param("keys", 1000)
        self.batch, self.get_every = batch, param("get_every", 20)
        self.src = f"rw-{param('run', '0')}-{uid}"
        own = {"src_app": self.src, "dest_app": "check", "vpc_id": "vpc-check"}
        own_json = json.dumps({**own, "bytes_tx": 1, "bytes_rx": 1, "hour": self.hour})
        self.bodies = []
        for b in range(16):
            first = (uid * 16 + b) * batch
            filler = (
                flow_json(g % keys, self.hour, 1 + g % 1000, 1 + g % 777)
                for g in range(first + 1, first + batch)
            )
            self.bodies.append(b"[" + b",".join([own_json.encode(), *filler]) + b"]")
        self.n = self.acked = self.unknown = 0

    @task
    def step(self) -> None:
        self.n += 1
        if self.n % self.get_every:
            self.post()
        else:
            self.check()

    def post(self) -> None:
        body = self.bodies[self.n % len(self.bodies)]
        with self.client.post("/flows", data=body, headers=JSON, catch_response=True) as resp:
            if resp.status_code == 200:
                self.acked += 1
                _figures["posts_ok"] += 1
                _figures["flows_ok"] += self.batch
            else:  # applied or not: unknown
                self.unknown += 1
                _figures["unknown"] += 1
                resp.failure(f"status {resp.status_code}")

    def check(self) -> None:
        started = time.perf_counter()
        with self.client.get(
            f"/flows?hour={self.hour}", name="GET /flows", catch_response=True
        ) as resp:
            _get_latencies.append((time.perf_counter() - started) * 1000)
            _figures["gets"] += 1
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                return
            total = next((r["bytes_tx"] for r in resp.json() if r["src_app"] == self.src), 0)
            if not self.acked <= total <= self.acked + self.unknown:
                _figures["violations"] += 1
                _figures.setdefault("first_violation", f"{self.src}: expected {self.acked}")
                resp.failure(f"read-your-writes: expected {self.acked}, got {total}")


@events.test_start.add_listener
def on_test_start(**_kwargs) -> None:
    _window["start"] = time.monotonic()


@events.test_stop.add_listener
def on_test_stop(**_kwargs) -> None:
    _window["stop"] = time.monotonic()


@events.quitting.add_listener
def write_result(environment, **_kwargs) -> None:
    path = os.environ.get("FLOWAGG_BENCH_RESULT")
    if not path:
        return
    total = environment.stats.total
    lats = sorted(_get_latencies)
    result = {
        "duration_s": _window.get("stop", time.monotonic()) - _window.get("start", 0.0),
        "requests": total.num_requests,
        "errors": total.num_failures,
        "p50_ms": total.get_response_time_percentile(0.5),
        "p99_ms": total.get_response_time_percentile(0.99),
        "extra": _figures if _figures["posts_ok"] or _figures["gets"] else {},
    }
    if lats:
        result["get_p50_ms"] = lats[len(lats) // 2]
        result["get_p99_ms"] = lats[min(len(lats) - 1, int(len(lats) * 0.99))]
    with open(path, "w") as out:
        json.dump(result, out)
