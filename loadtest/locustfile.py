"""Load test: agents POST batches of flows, readers poll hours, and both check what they read.

Run headless against any deployment, bounded in users and time:

    .venv/bin/locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8080 \
        -u 20 -r 10 -t 30s --csv loadtest/results/run

The run fails (exit code 1) if any request failed, if a read missed the reader's own
acknowledged POST, or if p95 latency exceeded FLOWAGG_LOAD_P95_MS (default 500).
"""

from __future__ import annotations

import itertools
import os
import random

from locust import FastHttpUser, between, events, task

HOURS = 4  # a few recent hours receive traffic
APPS = [f"app-{i}" for i in range(200)]
VPCS = [f"vpc-{i}" for i in range(8)]
MAX_BATCH = 1000
P95_LIMIT_MS = float(os.environ.get("FLOWAGG_LOAD_P95_MS", "500"))

_agent_ids = itertools.count()


def random_flow(rng: random.Random, hour: int) -> dict:
    return {
        "src_app": rng.choice(APPS),
        "dest_app": rng.choice(APPS),
        "vpc_id": rng.choice(VPCS),
        "bytes_tx": rng.randrange(1, 1_000_000),
        "bytes_rx": rng.randrange(1, 1_000_000),
        "hour": hour,
    }


class Agent(FastHttpUser):
    """A host agent: posts batches of 1 to 1,000 flows; sometimes checks its own writes."""

    weight = 10
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.id = next(_agent_ids)
        self.rng = random.Random(self.id)
        self.key = (f"agent-{self.id}", "self-check", "vpc-check")
        self.totals = [0] * HOURS  # this agent's own key, summed per hour

    @task
    def post_batch(self) -> None:
        hour = self.rng.randrange(HOURS)
        size = self.rng.randint(1, MAX_BATCH)
        batch = [random_flow(self.rng, hour) for _ in range(size - 1)]
        src, dest, vpc = self.key
        own = {"src_app": src, "dest_app": dest, "vpc_id": vpc, "bytes_tx": 1, "bytes_rx": 1}
        batch.append({**own, "hour": hour})
        with self.rest("POST", "/flows", json=batch, name="POST /flows") as response:
            if response.js != {"accepted": size}:
                response.failure(f"expected {{'accepted': {size}}}, got {response.text[:200]}")
                return
        self.totals[hour] += 1
        if self.rng.random() < 0.05:
            self.check_own_writes(hour)

    def check_own_writes(self, hour: int) -> None:
        """Read-your-writes: the GET is sent after the POST was answered, so it must count it."""
        with self.rest("GET", f"/flows?hour={hour}", name="GET /flows (own writes)") as response:
            rows = response.js or []
            mine = [r for r in rows if (r["src_app"], r["dest_app"], r["vpc_id"]) == self.key]
            if len(mine) != 1 or mine[0]["bytes_tx"] != self.totals[hour]:
                response.failure(
                    f"read-your-writes violated: expected {self.totals[hour]}, got {mine}"
                )


class Reader(FastHttpUser):
    """A dashboard polling recent hours."""

    weight = 1
    wait_time = between(0.1, 0.5)

    @task
    def read_hour(self) -> None:
        hour = random.randrange(HOURS)
        with self.rest("GET", f"/flows?hour={hour}", name="GET /flows") as response:
            if not isinstance(response.js, list):
                response.failure(f"expected a JSON array, got {response.text[:200]}")


@events.quitting.add_listener
def check_pass_fail(environment, **_kwargs) -> None:
    total = environment.stats.total
    problems = []
    if total.num_requests == 0:
        problems.append("no requests were made")
    if total.num_failures:
        problems.append(f"{total.num_failures} of {total.num_requests} requests failed")
    p95 = total.get_response_time_percentile(0.95)
    if p95 and p95 > P95_LIMIT_MS:
        problems.append(f"p95 {p95:.0f} ms exceeds {P95_LIMIT_MS:.0f} ms")
    for problem in problems:
        print(f"FAIL: {problem}")
    if problems:
        environment.process_exit_code = 1
