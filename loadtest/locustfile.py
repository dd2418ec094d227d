"""Load test: agents POST batches of flows, readers poll hours, and both check what they read.

Run headless against any deployment, bounded in users and time:

    .venv/bin/locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8080 \
        -u 20 -r 10 -t 30s --csv loadtest/results/run

The run fails (exit code 1) if more than --max-fail-ratio of the requests failed (default 0: none
may; a read that misses the reader's own acknowledged POST is a failure), if the p95 latency of
POSTs or GETs exceeded --max-p95-post-ms / --max-p95-get-ms (defaults 500 and 1000), or if no
request was made at all. The bounds can also be set as LOCUST_MAX_FAIL_RATIO,
LOCUST_MAX_P95_POST_MS and LOCUST_MAX_P95_GET_MS.

Request bodies are built once per process when the file is loaded (agents splice their own
record into a pre-encoded batch), so the load generator spends its time sending, not encoding.
"""

from __future__ import annotations

import itertools
import json
import random

from locust import FastHttpUser, between, events, task

HOURS = 4  # a few recent hours receive traffic
APPS = [f"app-{i}" for i in range(200)]
VPCS = [f"vpc-{i}" for i in range(8)]
MAX_BATCH = 1000
BATCHES_PER_HOUR = 32
JSON = {"Content-Type": "application/json"}

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


def prebuilt_batches(seed: int = 0) -> list[list[tuple[int, bytes]]]:
    """Per hour: (size, body without its closing bracket) with size - 1 random flows."""
    rng = random.Random(seed)
    per_hour = []
    for hour in range(HOURS):
        batches = []
        for _ in range(BATCHES_PER_HOUR):
            size = rng.randint(1, MAX_BATCH)
            records = [json.dumps(random_flow(rng, hour)) for _ in range(size - 1)]
            batches.append((size, ("[" + "".join(r + "," for r in records)).encode()))
        per_hour.append(batches)
    return per_hour


BATCHES = prebuilt_batches()


@events.init_command_line_parser.add_listener
def add_pass_fail_options(parser) -> None:
    parser.add_argument(
        "--max-fail-ratio",
        type=float,
        default=0.0,
        env_var="LOCUST_MAX_FAIL_RATIO",
        help="fail the run if more than this share of requests failed (default 0)",
    )
    parser.add_argument(
        "--max-p95-post-ms",
        type=float,
        default=500.0,
        env_var="LOCUST_MAX_P95_POST_MS",
        help="fail the run if the p95 latency of POST /flows exceeded this (default 500)",
    )
    parser.add_argument(
        "--max-p95-get-ms",
        type=float,
        default=1000.0,
        env_var="LOCUST_MAX_P95_GET_MS",
        help="fail the run if the p95 latency of any GET exceeded this (default 1000)",
    )


class Agent(FastHttpUser):
    """A host agent: posts batches of 1 to 1,000 flows; sometimes checks its own writes."""

    weight = 10
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.id = next(_agent_ids)
        self.rng = random.Random(self.id)
        self.key = (f"agent-{self.id}", "self-check", "vpc-check")
        self.totals = [0] * HOURS  # this agent's own key, summed per hour
        self.unknown = [0] * HOURS  # POSTs that failed: maybe applied, maybe not
        src, dest, vpc = self.key
        own = {"src_app": src, "dest_app": dest, "vpc_id": vpc, "bytes_tx": 1, "bytes_rx": 1}
        self.own = [json.dumps({**own, "hour": hour}).encode() + b"]" for hour in range(HOURS)]

    @task
    def post_batch(self) -> None:
        hour = self.rng.randrange(HOURS)
        size, head = self.rng.choice(BATCHES[hour])
        with self.rest(
            "POST", "/flows", data=head + self.own[hour], headers=JSON, name="POST /flows"
        ) as response:
            if response.js != {"accepted": size}:
                self.unknown[hour] += 1
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
            low, high = self.totals[hour], self.totals[hour] + self.unknown[hour]
            if len(mine) != 1 or not low <= mine[0]["bytes_tx"] <= high:
                response.failure(f"read-your-writes violated: expected {low}, got {mine}")


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


def problems(environment) -> list[str]:
    """Why the run fails, by the pass/fail options; empty when it passes."""
    options = environment.parsed_options
    total = environment.stats.total
    found = []
    if total.num_requests == 0:
        found.append("no requests were made")
    elif total.fail_ratio > options.max_fail_ratio:
        found.append(
            f"{total.num_failures} of {total.num_requests} requests failed"
            f" (allowed ratio {options.max_fail_ratio})"
        )
    for entry in environment.stats.entries.values():
        limit = options.max_p95_post_ms if entry.method == "POST" else options.max_p95_get_ms
        p95 = entry.get_response_time_percentile(0.95)
        if entry.num_requests and p95 > limit:
            found.append(f"{entry.name}: p95 {p95:.0f} ms exceeds {limit:.0f} ms")
    return found


@events.quitting.add_listener
def check_pass_fail(environment, **_kwargs) -> None:
    found = problems(environment)
    for problem in found:
        print(f"FAIL: {problem}")
    if found:
        environment.process_exit_code = 1
    else:
        print(f"PASS: {environment.stats.total.num_requests} requests, none failed")
