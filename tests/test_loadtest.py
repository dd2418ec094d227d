"""The load test itself works: a short, bounded locust run against a server started here.

locust runs in its own process (it monkey-patches the standard library with gevent), against
waitress-serve in another, started and stopped by the benchmark's own ``running``, whatever
happens.
"""

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.servers import running

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RUN_SECONDS = 6  # the locust run; users and spawn rate are bounded below too


@pytest.fixture
def server_url(tmp_path):
    """The service under waitress-serve on 127.0.0.1, a free port, as ``make bench`` starts it."""
    with running("service", threads=4, log_path=tmp_path / "server.log") as server:
        yield server.url


def run_locust(
    url: str, csv_prefix: Path, seconds: int = RUN_SECONDS
) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "locust"), "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless"]
    cmd += ["--host", url, "-u", "6", "-r", "6", "-t", f"{seconds}s", "--only-summary"]
    cmd += ["--csv", str(csv_prefix)]
    # Generous latency bounds: this proves the load test works, not how fast a CI machine is.
    env = {**os.environ, "LOCUST_MAX_P95_POST_MS": "10000", "LOCUST_MAX_P95_GET_MS": "10000"}
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 60
    )


def requests_made(csv_prefix: Path) -> dict[str, int]:
    with open(f"{csv_prefix}_stats.csv", newline="") as stats:
        return {row["Name"]: int(row["Request Count"]) for row in csv.DictReader(stats)}


def test_locust_smoke_run_passes_against_the_service(server_url, tmp_path):
    proc = run_locust(server_url, tmp_path / "run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS:" in proc.stdout
    counts = requests_made(tmp_path / "run")
    assert counts["POST /flows"] > 0
    assert counts["Aggregated"] > counts["POST /flows"]  # GETs were made too


def test_locust_run_fails_when_requests_fail(tmp_path):
    """The pass/fail rule sets the exit code: nothing listens on this port, so all requests fail."""
    with socket.socket() as s:  # a port that was free a moment ago and is closed now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_locust(f"http://127.0.0.1:{port}", tmp_path / "run", seconds=2)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL:" in proc.stdout
