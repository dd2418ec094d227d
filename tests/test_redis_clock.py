"""Instances whose clocks are wrong, for real (Debian's ``faketime``, which ``make test`` installs):
one 100 hours ahead, one five minutes behind, one right, all with FLOWAGG_RETENTION_HOURS=48 over
the same Redis Cluster. Each takes the window from Redis's clock, so all three accept and serve the
same hours, nothing that one acknowledged is lost by another's commits, and the wrong ones say so
in ``/readyz`` and their log. An instance whose layout settings differ from the data's refuses to
start, with one line naming both and exit status 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.conftest import flow
from tests.serverproc import MODULE, WAITRESS, ServerProcess

SETTINGS = {"FLOWAGG_RETENTION_HOURS": "48", "FLOWAGG_PARTITIONS": "4",
            "FLOWAGG_REDIS_TIMEOUT_MS": "2000"}  # fmt: skip


class Faked(ServerProcess):
    """A server started by ``faketime``, which runs it as its child: killed with its child."""

    def kill(self) -> None:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        children = path.read_text().split() if path.exists() else []
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)
        super().kill()


def launch(cluster, offset: str | None = None, argv=WAITRESS, **env) -> ServerProcess:
    """An instance; with ``offset``, under ``faketime -f <offset>`` (its wall clock moved, the
    monotonic clock left alone)."""
    prefix = []
    if offset is not None:
        faketime = shutil.which("faketime")
        assert faketime, "faketime is not installed (make test installs Debian's faketime)"
        prefix = [faketime, "-f", offset]
        env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
    command = [*prefix, *argv] + (["--threads=8", "wsgi:app"] if argv is WAITRESS else [])
    settings = {"FLOWAGG_REDIS_URL": cluster.url, **SETTINGS, **env}
    return (Faked if prefix else ServerProcess)(command, settings)


def redis_hour(cluster) -> int:
    seconds, _ = cluster.nodes[0].client().time()
    return seconds // 3600


def post(server, records):
    return server.request("POST", "/flows", json.dumps(records))


@pytest.fixture
def clocks(cluster):
    servers = {}
    try:
        for name, offset in (("right", None), ("ahead", "+100h"), ("behind", "-5m")):
            servers[name] = launch(cluster, offset).wait_serving()
        yield servers
    finally:
        for server in servers.values():
            server.kill()


def test_instances_with_wrong_clocks_keep_the_same_window_and_lose_nothing(cluster, clocks):
    now = redis_hour(cluster)
    right, ahead, behind = clocks["right"], clocks["ahead"], clocks["behind"]
    # Every instance accepts the hours Redis's clock gives, from the oldest to the newest ...
    for name, server in clocks.items():
        for hour in (now - 48, now, now + 1):
            assert post(server, [flow(src=name, hour=hour)]) == (200, {"accepted": 1}), name
    # ... and refuses the others, whatever its own clock says.
    for name, server in clocks.items():
        for hour in (now - 49, now + 2, now + 100):
            status, body = post(server, [flow(src=name, hour=hour)])
            assert status == 400 and f"hour {hour} is outside the window" in body["error"]
            assert f"[{now - 48}, {now + 1}]" in body["error"]
    # The instance 100 hours ahead committed last: nothing the others acknowledged is gone.
    for server in clocks.values():
        for hour in (now - 48, now, now + 1):
            status, rows = server.request("GET", f"/flows?hour={hour}")
            assert status == 200 and [r["src_app"] for r in rows] == ["ahead", "behind", "right"]
        assert server.request("GET", "/flows/hours")[1] == {
            "count": 3, "oldest": now - 48, "newest": now + 1
        }  # fmt: skip
    # The wrong clocks say so, in /readyz and in the log; the right one is ready.
    assert right.request("GET", "/readyz") == (200, {"status": "ready"})
    for server, said in ((ahead, "100.0 h ahead of"), (behind, "300 s behind")):
        status, body = server.request("GET", "/readyz")
        assert status == 503, body
        assert body["failed"] == [
            f"clock: this instance's clock is {said} Redis's (more than 60 s); fix its time sync"
        ]
        assert f"clock: this instance's clock is {said} Redis's; the hours window follows" in (
            server.stderr
        )


@pytest.mark.parametrize("argv", [MODULE, WAITRESS], ids=["python -m flowagg", "waitress-serve"])
def test_an_instance_with_another_layout_refuses_to_start_with_one_line(cluster, argv):
    first = launch(cluster).wait_serving()
    try:
        assert post(first, [flow(hour=redis_hour(cluster))])[0] == 200
        refused = launch(cluster, None, argv, FLOWAGG_REDIS_BUCKETS="32")
        assert refused.wait_exit() == 2
        lines = [line for line in refused.stderr.splitlines() if "layout" in line]
        assert lines == [
            "flowagg: refusing to start: the data in Redis has layout 'version=2 buckets=16"
            " retention=48' (flowagg:v2:{meta}:layout), this instance's settings give"
            " 'version=2 buckets=32 retention=48': FLOWAGG_REDIS_BUCKETS and"
            " FLOWAGG_RETENTION_HOURS must be the same on every instance"
        ]
        assert post(first, [flow(hour=redis_hour(cluster))])[0] == 200  # the first serves on
    finally:
        first.kill()
