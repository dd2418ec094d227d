"""Log lines: their formats, and the buffer that keeps every write off the request threads."""

import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from flowagg import logs
from tests.conftest import WAIT_TIMEOUT, flow, wait_until
from tests.serverproc import ROOT, WAITRESS, ServerProcess


@pytest.fixture
def stderr(capsys):
    """Read what was written to stderr since the last read, once every pending line is out."""
    logs.flush()
    capsys.readouterr()

    def read() -> str:
        assert logs.flush(WAIT_TIMEOUT)
        return capsys.readouterr().err

    return read


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# -- request lines -----------------------------------------------------------------------------


def test_one_json_log_line_per_request_with_request_id(make_app, stderr):
    app = make_app(FLOWAGG_LOG_FORMAT="json")
    client = app.test_client()
    stderr()
    response = client.post(
        "/flows", data=json.dumps([flow(), flow()]), headers={"X-Request-ID": "agent-7.batch-42"}
    )
    assert response.headers["X-Request-ID"] == "agent-7.batch-42"
    [line] = [entry for entry in json_lines(stderr()) if entry["logger"] == "flowagg.access"]
    assert line["level"] == "info"
    assert {k: line[k] for k in ("method", "path", "status", "accepted", "request_id")} == {
        "method": "POST",
        "path": "/flows",
        "status": 200,
        "accepted": 2,
        "request_id": "agent-7.batch-42",
    }
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0


@pytest.mark.parametrize("given", [None, "", "has spaces", "x" * 129, 'quote"s'])
def test_missing_or_unusable_request_id_is_generated(make_app, stderr, given):
    app = make_app(FLOWAGG_LOG_FORMAT="json")
    headers = {} if given is None else {"X-Request-ID": given}
    stderr()
    response = app.test_client().get("/flows?hour=1", headers=headers)
    rid = response.headers["X-Request-ID"]
    assert len(rid) == 32 and int(rid, 16) >= 0
    [line] = [e for e in json_lines(stderr()) if e["logger"] == "flowagg.access"]
    assert (line["request_id"], line["status"]) == (rid, 200)
    assert "accepted" not in line


def test_error_responses_are_logged_too(make_app, stderr):
    app = make_app(FLOWAGG_LOG_FORMAT="json")
    stderr()
    app.test_client().get("/flows?hour=-1")
    [line] = [e for e in json_lines(stderr()) if e["logger"] == "flowagg.access"]
    assert (line["path"], line["status"]) == ("/flows", 400)


def test_text_log_line(make_app, stderr):
    app = make_app(FLOWAGG_LOG_FORMAT="text")
    stderr()
    app.test_client().post("/flows", data="[]", headers={"X-Request-ID": "r1"})
    [line] = [x for x in stderr().splitlines() if " flowagg.access " in x]
    assert " info flowagg.access request method=POST path=/flows status=200 " in line
    assert line.endswith(" request_id=r1 accepted=0")


def test_startup_logs_the_effective_configuration_once(stderr, make_app):
    make_app(FLOWAGG_LOG_FORMAT="json", FLOWAGG_RETENTION_HOURS=48)
    lines = [e for e in json_lines(stderr()) if e["msg"] == "starting"]
    assert len(lines) == 1
    assert lines[0]["FLOWAGG_RETENTION_HOURS"] == 48
    assert lines[0]["FLOWAGG_PARTITIONS"] == 4


def test_no_request_line_below_info(make_app, stderr):
    app = make_app(FLOWAGG_LOG_LEVEL="warning")
    stderr()
    app.test_client().post("/flows", data="[]")
    assert " flowagg.access " not in stderr()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_control_characters_in_a_path_are_escaped(make_app, stderr, fmt):
    """%0a, %09 and %1b decode to a newline, a tab and ESC: none of them reaches the log raw,
    so a client can neither start a forged line nor drive the reader's terminal."""
    app = make_app(FLOWAGG_LOG_FORMAT=fmt)
    stderr()
    app.test_client().get("/x%0a2026-01-01T00:00:00.000Z%09info%1b[31m")
    out = stderr()
    [line] = [x for x in out.splitlines() if "flowagg.access" in x]
    for raw in ("\n2026", "\t", "\x1b"):
        assert raw not in out
    if fmt == "json":
        assert json.loads(line)["path"] == "/x\\x0a2026-01-01T00:00:00.000Z\\x09info\\x1b[31m"
    else:
        assert "path=/x\\x0a2026-01-01T00:00:00.000Z\\x09info\\x1b[31m " in line


def test_a_traceback_cannot_pass_for_a_log_line():
    written: list[str] = []
    buffer = logs.LogBuffer(stream=lambda: Sink(written))
    handler = logs.BufferedHandler(buffer)
    try:
        raise ValueError("bad\n2026-01-01T00:00:00.000Z info flowagg.access forged")
    except ValueError:
        import logging

        record = logging.LogRecord("flowagg.api", logging.ERROR, __file__, 1, "failed", (), None)
        record.exc_info = sys.exc_info()
    handler.emit(record)  # no writer thread started: written at once
    lines = "".join(written).splitlines()
    assert " error flowagg.api failed" in lines[0]
    assert all(line.startswith("    ") for line in lines[1:])


# -- the buffer --------------------------------------------------------------------------------


class Sink:
    """A stream that appends what is written to a list."""

    def __init__(self, into: list[str]) -> None:
        self.into = into

    def write(self, text: str) -> None:
        self.into.append(text)

    def flush(self) -> None:
        pass


class StuckStream(Sink):
    """A stream whose writes block until released: a full pipe, a hung disk."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(into)
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, text: str) -> None:
        self.entered.set()
        assert self.release.wait(WAIT_TIMEOUT)
        super().write(text)


def test_lines_go_out_in_chunks_from_one_thread():
    written: list[str] = []
    threads: set[str] = set()

    class Recording(Sink):
        def write(self, text: str) -> None:
            threads.add(threading.current_thread().name)
            super().write(text)

    buffer = logs.LogBuffer(stream=lambda: Recording(written), flush_bytes=1000, interval_s=60)
    buffer.start()
    try:
        for i in range(100):
            assert buffer.append(f"line {i:04d} {'x' * 40}\n")
        assert buffer.flush(WAIT_TIMEOUT)
    finally:
        buffer.close()
    assert "".join(written).splitlines() == [f"line {i:04d} {'x' * 40}" for i in range(100)]
    assert len(written) < 20  # about 5 KB in chunks of about 1,000 bytes, not 100 writes
    assert threads == {"flowagg-log"}


def test_a_line_goes_out_within_the_interval_without_a_flush():
    written: list[str] = []
    buffer = logs.LogBuffer(stream=lambda: Sink(written), interval_s=0.05)
    buffer.start()
    try:
        buffer.append("alone\n")
        wait_until(lambda: written == ["alone\n"])
    finally:
        buffer.close()


def test_a_warning_goes_out_at_once():
    written: list[str] = []
    buffer = logs.LogBuffer(stream=lambda: Sink(written), interval_s=3600)
    buffer.start()
    try:
        buffer.append("info line\n")
        buffer.append("warning line\n", urgent=True)
        wait_until(lambda: "".join(written) == "info line\nwarning line\n")
    finally:
        buffer.close()


def test_a_stuck_writer_never_blocks_a_caller_and_drops_are_counted():
    written: list[str] = []
    stream = StuckStream(written)
    buffer = logs.LogBuffer(stream=lambda: stream, flush_bytes=100, limit_bytes=1000)
    buffer.start()
    try:
        buffer.append("first\n", urgent=True)
        assert stream.entered.wait(WAIT_TIMEOUT)  # the writer is now stuck in write()
        done = threading.Event()
        results: list[bool] = []

        def log_a_lot() -> None:
            results.extend(buffer.append(f"{i:09d}\n") for i in range(1000))
            done.set()

        caller = threading.Thread(target=log_a_lot)
        caller.start()
        assert done.wait(WAIT_TIMEOUT), "a caller waited for the stuck writer"
        caller.join(WAIT_TIMEOUT)
        kept = results.count(True)
        assert kept == 100  # 1,000 bytes of 10-byte lines fit; the rest was dropped
        assert buffer.dropped == 900
        stream.release.set()
        assert buffer.flush(WAIT_TIMEOUT)
    finally:
        stream.release.set()
        buffer.close()
    lines = "".join(written).splitlines()
    assert lines == ["first"] + [f"{i:09d}" for i in range(100)]


def test_close_writes_what_is_pending_and_later_lines_directly():
    written: list[str] = []
    buffer = logs.LogBuffer(stream=lambda: Sink(written), interval_s=3600)
    buffer.start()
    buffer.append("pending\n")
    assert buffer.close(WAIT_TIMEOUT)
    assert written == ["pending\n"]
    buffer.append("after\n")
    assert written == ["pending\n", "after\n"]


def test_a_server_with_a_stuck_stderr_keeps_answering_and_counts_what_it_dropped(tmp_path):
    """waitress-serve with its stderr a pipe nobody reads: once the pipe (64 KiB) and the
    buffer are full, request lines are dropped and counted, and every request is still
    answered."""
    import http.client

    env = {**os.environ, "FLOWAGG_LOG_BUFFER_BYTES": "65536"}
    proc = subprocess.Popen(
        [*WAITRESS, "--threads=4", "wsgi:app"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        port = None
        deadline = time.monotonic() + WAIT_TIMEOUT * 3
        while port is None:  # read stderr until the address, then never again
            assert time.monotonic() < deadline, "server did not start"
            line = proc.stderr.readline().decode()
            assert line, "server exited"
            if "Serving on http://127.0.0.1:" in line:
                port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_TIMEOUT)
        body = json.dumps([flow()])
        statuses = []
        for _ in range(3000):  # about 170 bytes of log line each: 500 KB, beyond pipe and buffer
            conn.request("POST", "/flows", body=body, headers={"X-Request-ID": "r" * 60})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        assert statuses == [200] * 3000
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
        [dropped] = [
            float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith("flowagg_log_lines_dropped_total ")
        ]
        assert dropped > 0
        conn.request("GET", "/flows?hour=1")
        [row] = json.loads(conn.getresponse().read())
        assert row["bytes_tx"] == 3000
        conn.close()
    finally:
        proc.kill()
        proc.wait(WAIT_TIMEOUT)
        proc.stderr.close()


def test_waitress_queue_warnings_are_shown_once_per_interval():
    now = [0.0]
    once = logs.OncePer(10.0, clock=lambda: now[0])

    def record() -> logging.LogRecord:
        return logging.LogRecord("waitress.queue", logging.WARNING, "", 0, "depth %d", (3,), None)

    first = record()
    assert once.filter(first) and first.getMessage() == "depth 3"
    assert [once.filter(record()) for _ in range(99)] == [False] * 99
    now[0] = 9.9
    assert not once.filter(record())
    now[0] = 10.0
    shown = record()
    assert once.filter(shown)
    assert shown.getMessage() == "depth 3 (and 100 like it since the last one shown)"
    now[0] = 25.0
    alone = record()
    assert once.filter(alone) and alone.getMessage() == "depth 3"


def test_a_saturated_server_warns_of_its_queue_once_per_interval():
    """waitress-serve with one thread and 8 clients posting at once: every request finds the
    thread busy, and waitress's warning of its task queue goes out once per interval, not once
    per request."""
    import http.client

    server = ServerProcess([*WAITRESS, "--threads=1", "wsgi:app"], {}).wait_serving()
    try:
        start = threading.Barrier(8)
        statuses: list[int] = []

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT_TIMEOUT)
            start.wait(WAIT_TIMEOUT)
            for _ in range(100):
                conn.request("POST", "/flows", body=json.dumps([flow()]))
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
            conn.close()

        began = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_TIMEOUT * 3)
        elapsed = time.monotonic() - began
        assert statuses == [200] * 800
        assert server.rows([1]) == [{**flow(), "bytes_tx": 800, "bytes_rx": 1600}]
    finally:
        server.stop()
    warnings = [line for line in server.lines if "Task queue depth is" in line]
    assert 1 <= len(warnings) <= 1 + elapsed // logs.QUEUE_WARNING_EVERY_S, warnings
