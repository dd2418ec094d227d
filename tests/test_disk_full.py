"""A data directory on a disk that fills up: a real, small tmpfs, filled by a real file.

POSTs that cannot be logged answer 503 and /readyz says why until there is room again; a
snapshot that finds no room is put off rather than fill the disk, and one that fails midway
leaves no temporary file behind; a restart on a nearly full disk serves.
"""

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from flowagg import create_app
from flowagg.schema import Flow
from flowagg.store.durable import DurableStore
from flowagg.store.durable import snapshot as snapshot_module
from flowagg.store.durable.compaction import NoRoom
from tests.conftest import WAIT_TIMEOUT, Flows, flow

DISK_BYTES = 4 * 1024 * 1024


@pytest.fixture
def disk(tmp_path):
    """A 4 MiB tmpfs mounted for the test (the tests run as root, as make test does)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount)],
        check=True,
        capture_output=True,
        timeout=WAIT_TIMEOUT,
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=WAIT_TIMEOUT)


def fill(directory: Path, leave: int = 0) -> Path:
    """Write a file until the disk holds only ``leave`` bytes more (0: until it is full)."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                stat = os.statvfs(directory)
                room = stat.f_bavail * stat.f_frsize - leave
                if room <= 0:
                    break
                out.write(chunk[: min(len(chunk), room)])
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def durable(directory: Path, **config):
    settings = {"FLOWAGG_PARTITIONS": 2, "FLOWAGG_DATA_DIR": str(directory / "data"), **config}
    return create_app(settings)


def test_a_full_disk_makes_posts_503_and_readyz_say_why_until_there_is_room(disk):
    app = durable(disk)
    client, flows = app.test_client(), Flows(app.test_client())
    try:
        flows.post([flow(tx=1)])
        filler = fill(disk)
        body = json.dumps([flow(src=f"s{k}") for k in range(5000)])  # about 150 KB of log
        response = client.post("/flows", data=body)
        assert response.status_code == 503
        assert "No space left on device" in response.get_json()["error"]
        ready = client.get("/readyz")
        assert ready.status_code == 503
        [problem] = ready.get_json()["failed"]
        assert problem.startswith("log: cannot write the log: [Errno 28] No space left on device")
        assert flows.get(1) == [flow(tx=1)]  # nothing of the refused POST

        filler.unlink()  # room again: ready, and POSTs are taken
        assert client.get("/readyz").get_json() == {"status": "ready"}
        flows.post([flow(tx=2)])
        assert flows.get(1) == [flow(tx=3, rx=4)]
    finally:
        assert app.extensions["flowagg"].close(WAIT_TIMEOUT)
    reopened = durable(disk)
    try:
        assert Flows(reopened.test_client()).get(1) == [flow(tx=3, rx=4)]
    finally:
        assert reopened.extensions["flowagg"].close(WAIT_TIMEOUT)


class FullOnClose:
    """A snapshot file whose close() fails as on a full disk (the buffered tail cannot be
    written; the descriptor is gone all the same), however often it is called."""

    def __init__(self, file) -> None:
        self.file = file

    def __getattr__(self, name):
        return getattr(self.file, name)

    def close(self) -> None:
        self.file.close()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_snapshot_whose_close_fails_leaves_no_temporary_file(disk, monkeypatch):
    store = DurableStore(disk / "data", partitions=2, start=False)  # stepped by hand
    real_init = snapshot_module.SnapshotWriter.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self._file = FullOnClose(self._file)

    try:
        store.ingest([Flow(f"s{k}", "d", "v", 1, 1, k % 3) for k in range(500)])
        for partition in store.partitions:
            partition.drain_once()
        cut = store.begin_snapshot()
        monkeypatch.setattr(snapshot_module.SnapshotWriter, "__init__", init)
        with pytest.raises(OSError, match="No space left"):
            store.write_snapshot(cut)
        assert list((disk / "data").glob("*.tmp")) == []
        monkeypatch.undo()
        store.write_snapshot(cut)  # the snapshot thread tries the same cut again
        assert list((disk / "data").glob("*.tmp")) == []
        assert [p.name for p in (disk / "data").glob("snapshot-*.snap")] == [
            f"snapshot-{cut.generation:020d}.snap"
        ]
    finally:
        assert store.close(WAIT_TIMEOUT)


def test_a_restart_on_a_nearly_full_disk_serves_and_puts_the_snapshot_off(disk):
    app = durable(disk)
    Flows(app.test_client()).post([flow(src=f"s{k}") for k in range(2000)])
    assert app.extensions["flowagg"].close(WAIT_TIMEOUT)
    # Room for requests, not for a snapshot of 2,000 rows (about 400 KB by its estimate).
    filler = fill(disk, leave=256 * 1024)
    reopened = durable(disk)  # replays the log; a snapshot is then due
    store = reopened.extensions["flowagg"]
    flows = Flows(reopened.test_client())
    try:
        with pytest.raises(NoRoom, match="a snapshot of 2000 rows needs about"):
            store.compact_once(WAIT_TIMEOUT)
        flows.post([flow(src="after", tx=5)])
        rows = flows.get(1)
        assert len(rows) == 2001 and rows[-1] == flow(src="after", tx=5)
        assert list((disk / "data").glob("*.tmp")) == []
        assert reopened.test_client().get("/readyz").get_json() == {"status": "ready"}
    finally:
        assert store.close(WAIT_TIMEOUT)
        filler.unlink()
