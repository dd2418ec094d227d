"""Start-up and shutdown of the service in its own process, with a data directory."""

import atexit
import json
import signal

import pytest

from flowagg.schema import Flow
from flowagg.shutdown import exit_on_sigterm
from flowagg.store.durable import DurableStore
from tests.conftest import flow
from tests.serverproc import MODULE, WAITRESS, ServerProcess

LAUNCHERS = {"waitress-serve": [*WAITRESS, "--threads=4", "wsgi:app"], "python -m": MODULE}


def settings(data, **more) -> dict:
    return {"FLOWAGG_DATA_DIR": str(data), "FLOWAGG_PARTITIONS": "4", **more}


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_sigterm_exits_0_and_keeps_every_acknowledged_request(tmp_path, launcher, fsync):
    env = settings(tmp_path, FLOWAGG_FSYNC=fsync, FLOWAGG_FSYNC_INTERVAL_MS="3600000")
    server = ServerProcess(LAUNCHERS[launcher], env).wait_serving()
    try:
        for hour in range(8):
            body = json.dumps([flow(hour=hour), flow(hour=hour, tx=5)])
            assert server.request("POST", "/flows", body) == (200, {"accepted": 2})
        idle = server.connection()  # an idle keep-alive connection must not hold shutdown up
        idle.connect()
        assert server.stop(signal.SIGTERM) == 0, server.stderr
        idle.close()
    finally:
        server.kill()
    assert "Traceback" not in server.stderr
    restarted = ServerProcess(LAUNCHERS[launcher], env).wait_serving()
    try:
        assert restarted.rows(range(8)) == [flow(hour=h, tx=6, rx=4) for h in range(8)]
    finally:
        assert restarted.stop(signal.SIGTERM) == 0, restarted.stderr


def test_python_m_flowagg_reports_its_shutdown(tmp_path):
    server = ServerProcess(MODULE, settings(tmp_path)).wait_serving()
    assert server.request("POST", "/flows", json.dumps([flow()])) == (200, {"accepted": 1})
    assert server.stop(signal.SIGINT) == 0
    for message in ("stopping: no new connections", "store closed", "stopped"):
        assert message in server.stderr


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_corrupt_log_refuses_to_start_naming_file_and_offset(tmp_path, launcher):
    server = ServerProcess(MODULE, settings(tmp_path)).wait_serving()
    for hour in range(3):
        assert server.request("POST", "/flows", json.dumps([flow(hour=hour)]))[0] == 200
    assert server.stop() == 0
    [path] = tmp_path.glob("wal-*.log")
    data = bytearray(path.read_bytes())
    data[40] ^= 0x02  # inside the first record, with two valid records after it
    path.write_bytes(bytes(data))
    refused = ServerProcess(LAUNCHERS[launcher], settings(tmp_path))
    status = refused.wait_exit()
    assert status != 0
    assert f"{path} is corrupt at byte offset 16: checksum mismatch" in refused.stderr
    if launcher == "python -m":
        assert status == 2 and "refusing to start" in refused.stderr


def test_second_server_on_the_same_data_dir_is_refused(tmp_path):
    first = ServerProcess(MODULE, settings(tmp_path)).wait_serving()
    try:
        second = ServerProcess(MODULE, settings(tmp_path))
        assert second.wait_exit() == 2
        assert "is in use by another flowagg process" in second.stderr
    finally:
        assert first.stop() == 0


def test_sigterm_handler_exits_0_and_the_store_closes_at_exit(tmp_path, monkeypatch):
    """What waitress-serve relies on, in process: SystemExit(0) now, the store closed at exit."""
    registered = []
    monkeypatch.setattr(atexit, "register", lambda *call: registered.append(call))
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    store = DurableStore(tmp_path, partitions=2)
    try:
        exit_on_sigterm(store)
        store.ingest([Flow("a", "b", "v", 1, 2, 1)])
        with pytest.raises(SystemExit) as exited:
            signal.raise_signal(signal.SIGTERM)
        assert exited.value.code == 0
        [(close_at_exit, *args)] = registered
        assert not store.closed
        close_at_exit(*args)
        assert store.closed
    finally:
        signal.signal(signal.SIGTERM, previous)
        store.close()
    reopened = DurableStore(tmp_path, partitions=2)
    try:
        assert reopened.read_hour(1) == [("a", "b", "v", 1, 2)]
    finally:
        assert reopened.close()
