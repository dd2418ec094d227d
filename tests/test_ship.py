"""``python -m flowagg ship`` against ``waitress-serve`` with a data dir, as processes: every
hour's rows equal the model computed from the files (tests/vpclogs.py), through kills of the
shipper, appends, rotation and a restarted server."""

from __future__ import annotations

import gzip
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import WAIT_TIMEOUT
from tests.serverproc import ROOT, WAITRESS, ServerProcess
from tests.vpclogs import BASE_TIME, CUSTOM, DEFAULT, MAP, Model, make_lines, served, write

SHIP = [sys.executable, "-m", "flowagg", "ship"]


def start_server(data: Path, port: int = 0, **env: str) -> ServerProcess:
    argv = [*WAITRESS[:-1], f"--port={port}", "wsgi:app"]
    return ServerProcess(argv, {"FLOWAGG_DATA_DIR": str(data), **env}).wait_serving()


@pytest.fixture
def server(tmp_path):
    server = start_server(tmp_path / "data")
    yield server
    server.stop()


def ship(cwd: Path, port: int, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SHIP, "--url", f"http://127.0.0.1:{port}", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def start_ship(cwd: Path, port: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*SHIP, "--url", f"http://127.0.0.1:{port}", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture
def logs(tmp_path) -> tuple[Path, Model]:
    """A plain file in the default format and a .gz file in a custom format with a header."""
    (tmp_path / "map.txt").write_text(MAP)
    write(tmp_path / "a.log", make_lines(1, 3000, DEFAULT))
    write(tmp_path / "b.log.gz", make_lines(2, 3000, CUSTOM, first=5), header=CUSTOM)
    model = Model()
    model.add_file(tmp_path / "a.log")
    model.add_file(tmp_path / "b.log.gz")
    return tmp_path, model


def test_both_formats_give_the_model_and_a_second_run_sends_nothing(server, logs):
    cwd, model = logs
    done = ship(cwd, server.port, "--map", "map.txt", "--batch", "500", "a.log", "b.log.gz")
    assert done.returncode == 0, done.stderr
    assert "keeps Idempotency-Keys for 86400 s: delivery is exactly once" in done.stderr
    assert served(server, model.hours()) == model.expected()
    assert {k[0] for k in model.rows} >= {"corp", "web", "api", "db", "v6net", "v6web", "external"}
    assert {k[2] for k in model.rows} == {"unknown", "vpc-1", "vpc-2"}
    summary = done.stderr
    assert "files: 2\n" in summary and "records read: 6,000\n" in summary
    for reason in ("action REJECT", "log-status NODATA", "log-status SKIPDATA", "malformed"):
        assert reason in summary, summary
    assert "a.log, line " in summary  # malformed lines are named with file and line
    again = ship(cwd, server.port, "--map", "map.txt", "a.log", "b.log.gz")
    assert again.returncode == 0, again.stderr
    assert "in 0 POSTs" in again.stderr and "records read: 0\n" in again.stderr
    assert served(server, model.hours()) == model.expected()


def test_sigkill_at_random_moments_ships_each_record_once(server, logs):
    cwd, model = logs
    seed = int(os.environ.get("SHIP_TEST_SEED", random.randrange(2**32)))
    print(f"seed {seed} (SHIP_TEST_SEED={seed} reproduces the kill times)")
    rng = random.Random(seed)
    args = ["--map", "map.txt", "--batch", "5", "a.log", "b.log.gz"]
    state = cwd / "flowagg-ship.state"
    midway = 0
    for _ in range(6):
        proc = start_ship(cwd, server.port, *args)
        time.sleep(rng.uniform(0.2, 2.0))
        proc.kill()
        proc.wait(WAIT_TIMEOUT)
        proc.stderr.close()
        if state.exists() and '"in_flight":{' in state.read_text():
            midway += 1
    assert midway, f"seed {seed}: no kill landed while a batch was in flight"
    done = ship(cwd, server.port, *args)
    assert done.returncode == 0, done.stderr
    assert served(server, model.hours()) == model.expected(), f"seed {seed}"


def test_lines_appended_between_runs_are_shipped_once(server, tmp_path):
    (tmp_path / "map.txt").write_text(MAP)
    log = tmp_path / "grow.log"
    first, second = make_lines(3, 1000, DEFAULT), make_lines(4, 700, DEFAULT, first=1000)
    write(log, first)
    with open(log, "a") as file:  # a writer in the middle of a line
        file.write(second[0][:20])
    done = ship(tmp_path, server.port, "--map", "map.txt", "grow.log")
    assert done.returncode == 0, done.stderr
    assert "grow.log: line 1001 has no newline yet" in done.stderr
    model = Model()
    model.add_text("\n".join(first))
    assert served(server, model.hours()) == model.expected()
    with open(log, "a") as file:
        file.write(second[0][20:] + "\n" + "".join(f"{line}\n" for line in second[1:]))
    done = ship(tmp_path, server.port, "--map", "map.txt", "grow.log")
    assert done.returncode == 0, done.stderr
    assert "records read: 700\n" in done.stderr
    model.add_text("\n".join(second))
    assert served(server, model.hours()) == model.expected()


def test_a_rotated_file_is_a_new_file(server, tmp_path):
    (tmp_path / "map.txt").write_text(MAP)
    log = tmp_path / "flows.log"
    first, late, fresh = (
        make_lines(s, n, DEFAULT, first=s * 1000) for s, n in ((5, 800), (6, 50), (7, 600))
    )
    write(log, first)
    assert ship(tmp_path, server.port, "--map", "map.txt", "flows.log").returncode == 0
    log.rename(tmp_path / "flows.log.1")  # logrotate; the writer adds a few lines before reopening
    write(tmp_path / "flows.log.1", late, mode="a")
    write(log, fresh)
    done = ship(tmp_path, server.port, "--map", "map.txt", "flows.log", "flows.log.1")
    assert done.returncode == 0, done.stderr
    assert "records read: 650\n" in done.stderr
    model = Model()
    for lines in (first, late, fresh):
        model.add_text("\n".join(lines))
    assert served(server, model.hours()) == model.expected()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


class Lines:
    """stderr of a process, read by a thread, so that tests can wait for a line."""

    def __init__(self, proc: subprocess.Popen) -> None:
        import threading

        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc) -> None:
        for line in proc.stderr:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)


def stop(proc: subprocess.Popen, err: Lines) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(WAIT_TIMEOUT)
    err.thread.join(WAIT_TIMEOUT)
    proc.stderr.close()


def test_a_server_restarted_while_the_shipper_retries(tmp_path, logs):
    cwd, model = logs
    data = tmp_path / "data"
    server = start_server(data)
    port = server.port
    proc = start_ship(cwd, port, "--map", "map.txt", "--batch", "40", "a.log", "b.log.gz")
    err = Lines(proc)
    try:
        state = cwd / "flowagg-ship.state"
        wait_for(
            lambda: state.exists() and '"offset":' in state.read_text(), WAIT_TIMEOUT, "a batch"
        )
        server.stop(signal.SIGKILL)  # an answer or two may be lost: the batch is sent again
        wait_for(lambda: "retry 2 in" in err.text(), WAIT_TIMEOUT, "retries")
        server = start_server(data, port)
        assert proc.wait(60) == 0, err.text()
        err.thread.join(WAIT_TIMEOUT)
        assert "Connection refused" in err.text()
        assert served(server, model.hours()) == model.expected()
    finally:
        stop(proc, err)
        server.stop()


def test_follow_ships_appended_and_rotated_lines_within_the_flush_interval(server, tmp_path):
    (tmp_path / "map.txt").write_text(MAP)
    log = tmp_path / "live.log"
    batches = [make_lines(10 + i, 120, DEFAULT, first=1000 * i) for i in range(4)]
    write(log, batches[0])
    model = Model()
    model.add_text("\n".join(batches[0]))
    flush = 0.5
    proc = start_ship(
        tmp_path, server.port, "--follow", "--flush-interval", str(flush), "--rotate-wait", "1",
        "--map", "map.txt", "live.log",
    )  # fmt: skip
    err = Lines(proc)
    try:
        deadline = WAIT_TIMEOUT  # start-up, then each step within the flush interval and a poll
        wait_for(lambda: served(server, model.hours()) == model.expected(), deadline, "first")
        write(log, batches[1], mode="a")
        model.add_text("\n".join(batches[1]))
        started = time.monotonic()
        wait_for(lambda: served(server, model.hours()) == model.expected(), 5 * flush, "appended")
        assert time.monotonic() - started < 5 * flush
        log.rename(tmp_path / "live.log.1")
        write(tmp_path / "live.log.1", batches[2], mode="a")  # the writer has not reopened yet
        write(log, batches[3])
        for lines in batches[2:]:
            model.add_text("\n".join(lines))
        wait_for(lambda: served(server, model.hours()) == model.expected(), 10 * flush, "rotated")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT_TIMEOUT) == 0, err.text()
        err.thread.join(WAIT_TIMEOUT)
        assert "records read: 480\n" in err.text()
    finally:
        stop(proc, err)


def test_a_400_stops_the_shipper_naming_the_file_and_lines(tmp_path):
    server = start_server(tmp_path / "data", FLOWAGG_MAX_NAME_BYTES="8")
    try:
        (tmp_path / "map.txt").write_text("10.1.0.0/16 web\n10.2.0.0/16 a-very-long-name\n")
        lines = [
            f"2 1 eni 10.1.0.{i % 200} 52.1.1.1 40000 443 6 1 {i + 1} {BASE_TIME + i} 1 ACCEPT OK"
            for i in range(550)
        ]
        lines += [f"2 1 eni 10.2.0.1 52.1.1.1 40000 443 6 1 7 {BASE_TIME} 1 ACCEPT OK"] * 50
        write(tmp_path / "flows.log", lines)
        done = ship(tmp_path, server.port, "--map", "map.txt", "--batch", "100", "flows.log")
        assert done.returncode == 1, done.stderr
        assert "flows.log, lines 501-600: refused by the server (400): $[" in done.stderr
        assert "longer than FLOWAGG_MAX_NAME_BYTES=8" in done.stderr
        model = Model("10.1.0.0/16 web\n")
        model.add_text("\n".join(lines[:500]))
        assert served(server, model.hours()) == model.expected()
        assert "flows sent: " in done.stderr and " in 5 POSTs" in done.stderr
    finally:
        server.stop()


def test_against_the_in_memory_store_delivery_is_at_least_once(tmp_path):
    server = ServerProcess([*WAITRESS, "wsgi:app"], {}).wait_serving()
    try:
        write(tmp_path / "x.log", make_lines(20, 100, DEFAULT))
        done = ship(tmp_path, server.port, "x.log")
        assert done.returncode == 0, done.stderr
        assert (
            "keeps no Idempotency-Keys (in-memory store): delivery is at least once" in done.stderr
        )
    finally:
        server.stop()


def test_bad_usage_is_exit_2(tmp_path):
    (tmp_path / "bad.map").write_text("10.0.0.0/8 corp\n10.0.0.5/24 web\n")
    write(tmp_path / "x.log", ["2 1 eni 10.0.0.1 10.0.0.2 1 2 6 1 1 1 1 ACCEPT OK"])
    for args, message in [
        (["--map", "bad.map", "x.log"], "bad.map, line 2: 10.0.0.5/24 has host bits set"),
        (["missing.log"], "missing.log: no such file"),
        (["--batch", "0", "x.log"], "--batch must be >= 1"),
    ]:
        done = ship(tmp_path, 9, *args)  # nothing is sent: usage is checked first
        assert done.returncode == 2, done.stderr
        assert message in done.stderr


def test_shipping_imports_nothing_of_the_server(tmp_path):
    write(tmp_path / "x.log", [])
    code = (
        "import sys, runpy; sys.argv = ['flowagg', 'ship', '--help']\n"
        "try:\n    runpy.run_module('flowagg', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "import flowagg.ship.cli, flowagg.client\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug',"
        " 'waitress') or m.startswith(('flowagg.web', 'flowagg.store'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stderr


def test_gzip_is_what_the_shipper_sends_unless_told(server, tmp_path):
    write(tmp_path / "x.log.gz", make_lines(21, 300, DEFAULT))
    model = Model(mapping="")
    with gzip.open(tmp_path / "x.log.gz", "rt") as file:
        model.add_text(file.read())
    done = ship(tmp_path, server.port, "--no-compress", "x.log.gz")
    assert done.returncode == 0, done.stderr
    assert served(server, model.hours()) == model.expected()


@pytest.mark.parametrize("store", ["data dir", "redis", "memory"])
def test_a_run_that_lost_its_state_resends_under_the_same_keys(tmp_path, logs, redis_node, store):
    """Keys come from the file and the byte range alone: a run from scratch (state file lost)
    cuts the same batches and sends them under the same keys, which a server that keeps keys
    applies once; the in-memory store counts them twice, as the shipper warned."""
    cwd, model = logs
    env = {}
    if store == "redis":
        redis_node.client().flushall()
        env = {"FLOWAGG_REDIS_URL": f"redis://{redis_node.address}"}
    elif store == "data dir":
        env = {"FLOWAGG_DATA_DIR": str(tmp_path / "data")}
    server = ServerProcess([*WAITRESS, "wsgi:app"], env).wait_serving()
    try:
        for _ in range(2):
            done = ship(cwd, server.port, "--map", "map.txt", "--batch", "700", "a.log", "b.log.gz")
            assert done.returncode == 0, done.stderr
            (cwd / "flowagg-ship.state").unlink()
        kept = store != "memory"
        assert ("delivery is exactly once" in done.stderr) == kept
        expected = model.expected()
        if not kept:
            expected = {key: (2 * tx, 2 * rx) for key, (tx, rx) in expected.items()}
        assert served(server, model.hours()) == expected
    finally:
        server.stop()
