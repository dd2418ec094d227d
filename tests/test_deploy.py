"""What an operator deploys with (deploy/): the systemd unit, the haproxy configuration for
several Redis-mode instances, and the Grafana dashboard, each checked against the real thing.

- The unit passes ``systemd-analyze verify`` without a warning and ``security`` with an exposure
  of at most 2.0 ("OK"), and its command line with its environment serves and shuts down cleanly.
- haproxy (Debian's) runs the shipped configuration, with only its addresses changed, in front of
  two instances over a real Redis; one is killed under keyed writers and requests keep being
  answered: every request ends acknowledged, and each is counted exactly once.
- Every metric the dashboard's queries use is exposed by a live ``/metrics`` of the store mode
  its row is for (the embedded store, Redis, or both).
(deploy/nginx.conf has tests/test_nginx.py.)
"""

from __future__ import annotations

import configparser
import contextlib
import http.client
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import WAIT_TIMEOUT
from tests.redis_cluster import free_port
from tests.serverproc import ROOT, WAITRESS, ServerProcess

DEPLOY = ROOT / "deploy"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
HAPROXY = shutil.which("haproxy", path="/usr/sbin:/usr/bin:/sbin")

# -- the systemd unit ------------------------------------------------------------------------

UNIT = DEPLOY / "flowagg.service"


def render_unit(tmp_path: Path) -> Path:
    """The unit with the install's paths moved to this checkout and ``tmp_path``."""
    text = UNIT.read_text()
    for old, new in [
        ("/opt/flowagg/.venv/bin/python", sys.executable),
        ("WorkingDirectory=/opt/flowagg", f"WorkingDirectory={ROOT}"),
        ("/var/lib/flowagg", str(tmp_path / "state")),
        ("/etc/flowagg/flowagg.env", str(tmp_path / "flowagg.env")),
        ("--port 8080", "--port 0"),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    unit = tmp_path / "flowagg.service"
    unit.write_text(text)
    return unit


def service_section(unit: Path) -> dict[str, list[str]]:
    """[Service] as key -> every value given (systemd keys may repeat)."""
    values: dict[str, list[str]] = {}
    parser = configparser.ConfigParser(strict=False, interpolation=None, dict_type=_MultiDict)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(unit.read_text())
    for key, value in parser["Service"].items():
        values[key] = value.split("\n")
    return values


class _MultiDict(dict):
    """Keeps every value of a repeated key, joined by newlines (configparser keeps the last)."""

    def __setitem__(self, key, value):
        if isinstance(value, list) and key in self:
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_the_unit_verifies_without_a_warning_and_is_hardened(tmp_path):
    unit = render_unit(tmp_path)
    verify = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=WAIT_TIMEOUT * 3,
    )
    assert verify.returncode == 0 and not verify.stdout + verify.stderr, verify
    security = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=WAIT_TIMEOUT * 3,
    )
    assert security.returncode == 0, security.stdout + security.stderr


def test_the_unit_asks_for_what_the_service_needs():
    service = service_section(UNIT)
    for key, value in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "flowagg"),
        ("ProtectSystem", "strict"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),  # python -m flowagg's refused start
        ("KillSignal", "SIGTERM"),
    ]:
        assert service[key] == [value], key
    # Enough open files for python -m flowagg's default connection limit (__main__.py).
    from flowagg.__main__ import CONNECTION_LIMIT, open_files_needed

    assert int(service["LimitNOFILE"][0]) >= open_files_needed(CONNECTION_LIMIT)
    # The data dir is the state directory.
    assert "FLOWAGG_DATA_DIR=/var/lib/flowagg" in service["Environment"]
    # systemd waits longer than the service's own shutdown timeout (30 s by default).
    assert int(service["TimeoutStopSec"][0]) > 30


def test_the_units_command_serves_with_its_environment_and_stops_cleanly(tmp_path):
    service = service_section(render_unit(tmp_path))
    (tmp_path / "state").mkdir()  # StateDirectory=: systemd makes it
    env = dict(line.split("=", 1) for line in service["Environment"])
    [command] = service["ExecStart"]
    server = ServerProcess(shlex.split(command), env).wait_serving()
    try:
        body = json.dumps([{"src_app": "a", "dest_app": "b", "vpc_id": "v", "bytes_tx": 1,
                            "bytes_rx": 2, "hour": 3}])  # fmt: skip
        assert server.request("POST", "/flows", body) == (200, {"accepted": 1})
        assert server.rows([3]) == [
            {"src_app": "a", "dest_app": "b", "vpc_id": "v", "bytes_tx": 1, "bytes_rx": 2,
             "hour": 3}
        ]  # fmt: skip
        assert any((tmp_path / "state").iterdir()), "nothing written to the state directory"
        assert json.loads(server.lines[-1])  # FLOWAGG_LOG_FORMAT=json: log lines are JSON
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.kill()


# -- haproxy in front of Redis-mode instances ------------------------------------------------

HAPROXY_CONF = DEPLOY / "haproxy.cfg"


def test_haproxy_is_installed():
    # make test installs it with apt-get (as root); without it the test below fails too.
    assert HAPROXY is not None, "haproxy is needed (Debian's package)"


def render_haproxy(port: int, instances: list[int]) -> str:
    text = HAPROXY_CONF.read_text()
    for old, new in [
        ("bind 127.0.0.1:8080", f"bind 127.0.0.1:{port}"),
        ("server a 127.0.0.1:8081", f"server a 127.0.0.1:{instances[0]}"),
        ("server b 127.0.0.1:8082", f"server b 127.0.0.1:{instances[1]}"),
    ]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def start_instance(redis_url: str) -> ServerProcess:
    env = {
        "FLOWAGG_REDIS_URL": redis_url,
        "FLOWAGG_PARTITIONS": "4",
        "FLOWAGG_LOG_LEVEL": "warning",
    }
    return ServerProcess([*WAITRESS, "--threads=8", "wsgi:app"], env).wait_serving()


def wait_answering(port: int, path: str) -> None:
    """Wait until ``path`` answers 200 on ``port`` (haproxy listening, its servers up)."""
    deadline = time.monotonic() + WAIT_TIMEOUT * 3
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_TIMEOUT)
        try:
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        assert time.monotonic() < deadline, f"{path} on {port} does not answer 200"
        time.sleep(0.05)


@contextlib.contextmanager
def haproxy(conf: Path):
    check = subprocess.run(
        [HAPROXY, "-c", "-f", str(conf)], capture_output=True, text=True, timeout=WAIT_TIMEOUT
    )
    assert check.returncode == 0 and "ALERT" not in check.stderr, check.stderr
    with open(conf.with_suffix(".log"), "wb") as log:  # its warnings: servers down and up
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(conf)], stdout=log, stderr=log)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(WAIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(WAIT_TIMEOUT)


WRITERS = 4
REQUESTS_BEFORE_KILL = 40
REQUESTS_AFTER_KILL = 80  # acknowledged after the kill, before the writers stop
HOURS = 6


def test_haproxy_keeps_answering_when_an_instance_is_killed(tmp_path, redis_node):
    redis_node.client().flushall()
    instances = [start_instance(f"redis://{redis_node.address}") for _ in range(2)]
    port = free_port()
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(render_haproxy(port, [s.port for s in instances]))  # type: ignore[misc]
    mutex = threading.Lock()
    # Notified after every acknowledgement; the test waits on it before and after the kill.
    acknowledged = threading.Condition(mutex)
    sent: dict[str, list[dict]] = {}
    acked: list[str] = []
    resent: list[str] = []  # requests answered other than 200 (in flight at the kill), resent
    failures: list[str] = []
    stop = threading.Event()
    start = threading.Barrier(WRITERS + 1)

    def post(conn_box: list, body: str, key: str) -> int:
        try:
            conn = conn_box[0]
            conn.request("POST", "/flows", body, {"Idempotency-Key": key})
            response = conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            conn_box[0].close()
            conn_box[0] = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_TIMEOUT)
            return 0

    def writer(w: int) -> None:
        box = [http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_TIMEOUT)]
        try:
            start.wait(WAIT_TIMEOUT)
            for i in range(10**6):
                if stop.is_set():
                    return
                key = f"w{w}-{i}"
                flows = [
                    {"src_app": key, "dest_app": f"d{j}", "vpc_id": "v", "bytes_tx": i + 1,
                     "bytes_rx": j + 1, "hour": (i + j) % HOURS}
                    for j in range(3)
                ]  # fmt: skip
                with mutex:
                    sent[key] = flows
                deadline = time.monotonic() + WAIT_TIMEOUT
                while (status := post(box, json.dumps(flows), key)) != 200:
                    with mutex:
                        resent.append(f"{key}: {status}")
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{key} not acknowledged in time: last {status}")
                    time.sleep(0.05)  # back off, as a client does
                with acknowledged:
                    acked.append(key)
                    acknowledged.notify_all()
        except Exception as exc:  # reported by the test; an assert here would only end the thread
            with acknowledged:
                failures.append(f"writer {w}: {exc!r}")
                acknowledged.notify_all()
        finally:
            box[0].close()

    def wait_acked(count: int) -> None:
        deadline = time.monotonic() + WAIT_TIMEOUT * 3
        with acknowledged:
            while len(acked) < count and not failures:
                left = deadline - time.monotonic()
                assert left > 0, f"only {len(acked)} of {count} requests acknowledged"
                acknowledged.wait(left)

    threads = [
        threading.Thread(target=writer, args=(w,), name=f"writer-{w}") for w in range(WRITERS)
    ]
    try:
        with haproxy(conf):
            wait_answering(port, "/readyz")
            for thread in threads:
                thread.start()
            start.wait(WAIT_TIMEOUT)
            wait_acked(REQUESTS_BEFORE_KILL)
            instances[0].stop(signal.SIGKILL)
            with mutex:
                at_kill = len(acked)
            wait_acked(at_kill + REQUESTS_AFTER_KILL)
            stop.set()
            for thread in threads:
                thread.join(WAIT_TIMEOUT * 3)
            assert not failures, failures
            # Only a request in flight at the kill may have needed resending: one per writer.
            assert len(resent) <= WRITERS, resent
            assert sorted(acked) == sorted(sent), "a request was never acknowledged"
            # Every acknowledged request exactly once, read through haproxy.
            expected: dict = {}
            for flows in sent.values():
                for f in flows:
                    expected[(f["hour"], f["src_app"], f["dest_app"])] = (
                        f["bytes_tx"],
                        f["bytes_rx"],
                    )
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_TIMEOUT)
            found = {}
            for hour in range(HOURS):
                conn.request("GET", f"/flows?hour={hour}")
                response = conn.getresponse()
                assert response.status == 200
                for row in json.loads(response.read()):
                    key = (hour, row["src_app"], row["dest_app"])
                    assert key not in found, f"duplicate row {row}"
                    found[key] = (row["bytes_tx"], row["bytes_rx"])
            conn.close()
            assert found == expected
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT_TIMEOUT)
        for server in instances:
            server.kill()


# -- the Grafana dashboard -------------------------------------------------------------------

DASHBOARD = DEPLOY / "grafana-dashboard.json"
# Which store modes expose the metrics of each row of the dashboard.
ROW_MODES = {"Ingest": {"memory", "redis"}, "Drain": {"memory", "redis"}, "Limits": {"memory"},
             "Redis": {"redis"}}  # fmt: skip
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# PromQL words that are not metric names.
_PROMQL = {"sum", "by", "max", "min", "rate", "increase", "histogram_quantile", "le", "instance",
           "reason", "query", "kind", "without", "avg"}  # fmt: skip


def dashboard_rows() -> dict[str, list[dict]]:
    """The dashboard's panels under the title of the row each is in."""
    rows: dict[str, list[dict]] = {}
    current = None
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], [])
        else:
            assert current is not None, f"panel {panel['title']!r} is in no row"
            current.append(panel)
    return rows


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression (label matchers and strings removed)."""
    bare = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', " ", expr)
    bare = re.sub(r"\b(by|without)\s*\([^)]*\)", " ", bare)
    names = {n for n in _IDENTIFIER.findall(bare) if not re.fullmatch(r"[0-9.]+", n)}
    return {n for n in names if n not in _PROMQL}


def exposed(text: str) -> set[str]:
    """Every sample name and family name a /metrics answer holds."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
    return names


def test_the_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 39
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    assert set(dashboard_rows()) == set(ROW_MODES)
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}  # fmt: skip
        assert not cells & mine, f"{panel['title']!r} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= variables, (panel["title"], used)
            assert metric_names(target["expr"]), target["expr"]


def test_metric_names_are_read_from_queries():
    expr = (
        'histogram_quantile(0.99, sum by (le, query) (rate(flowagg_x_bucket{instance=~"$i"}'
        '[$__rate_interval]))) / max by (instance) (flowagg_y{a="b"})'
    )
    assert metric_names(expr) == {"flowagg_x_bucket", "flowagg_y"}


def scrape(server: ServerProcess) -> set[str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT_TIMEOUT)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        return exposed(response.read().decode())
    finally:
        conn.close()


def test_every_metric_of_the_dashboard_is_exposed_by_its_modes(redis_node):
    redis_node.client().flushall()
    servers = {
        "memory": ServerProcess([*WAITRESS, "wsgi:app"], {}),
        "redis": ServerProcess(
            [*WAITRESS, "wsgi:app"], {"FLOWAGG_REDIS_URL": f"redis://{redis_node.address}"}
        ),
    }
    try:
        names = {mode: scrape(server.wait_serving()) for mode, server in servers.items()}
    finally:
        for server in servers.values():
            server.kill()
    missing = []
    for row, panels in dashboard_rows().items():
        for panel in panels:
            for target in panel["targets"]:
                for metric in metric_names(target["expr"]):
                    missing += [
                        f"{row}/{panel['title']}: {metric} not in {mode} mode"
                        for mode in ROW_MODES[row]
                        if metric not in names[mode]
                    ]
    assert not missing, missing
