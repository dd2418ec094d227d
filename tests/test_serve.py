"""The service as users start it: waitress-serve in its own process."""

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import WAIT_TIMEOUT, flow

ROOT = Path(__file__).resolve().parent.parent
WAITRESS = Path(sys.executable).with_name("waitress-serve")


def serving_address(proc: subprocess.Popen) -> str:
    """Read the server's log until waitress says where it listens; returns the base URL."""
    lines = []
    for line in proc.stderr:  # bounded: the caller stops the process in its finally
        lines.append(line)
        match = re.search(r"Serving on (http://127\.0\.0\.1:\d+)", line)
        if match:
            return match.group(1)
        assert len(lines) < 50, "".join(lines)
    raise AssertionError("server exited before serving:\n" + "".join(lines))


@pytest.mark.parametrize(
    "target", [["wsgi:app"], ["--call", "flowagg:create_app"]], ids=["wsgi", "factory"]
)
def test_waitress_serve_runs_the_service(target):
    env = {**os.environ, "FLOWAGG_PARTITIONS": "2"}
    proc = subprocess.Popen(
        [str(WAITRESS), "--host=127.0.0.1", "--port=0", "--threads=4", *target],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = serving_address(proc)
        body = json.dumps([flow(hour=3), flow(hour=3, tx=5)]).encode()
        with urllib.request.urlopen(
            urllib.request.Request(base + "/flows", data=body), timeout=WAIT_TIMEOUT
        ) as r:
            assert json.loads(r.read()) == {"accepted": 2}
        with urllib.request.urlopen(base + "/flows?hour=3", timeout=WAIT_TIMEOUT) as r:
            assert r.headers["Content-Type"] == "application/json"
            assert json.loads(r.read()) == [flow(hour=3, tx=6, rx=4)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(WAIT_TIMEOUT)
        proc.stderr.close()


@pytest.mark.parametrize(
    "target", [["wsgi:app"], ["--call", "flowagg:create_app"]], ids=["wsgi", "factory"]
)
def test_bad_configuration_stops_start_up_with_one_line(target):
    env = {**os.environ, "FLOWAGG_PARTITIONS": "abc"}
    proc = subprocess.run(
        [str(WAITRESS), "--host=127.0.0.1", "--port=0", *target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_TIMEOUT * 3,
    )
    assert proc.returncode == 1
    assert (
        proc.stderr
        == "flowagg: invalid configuration: FLOWAGG_PARTITIONS='abc': expected an integer\n"
    )
