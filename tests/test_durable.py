"""The durable store: replay equals memory, the snapshot cut, idempotency, lifecycle."""

import json
import random
import threading

import pytest

from flowagg import create_app
from flowagg.schema import Flow
from flowagg.store.base import KeyReused
from flowagg.store.durable import DataDirInUse, DurableStore
from flowagg.store.durable.framing import CorruptFile
from flowagg.store.durable.idempotency import IdempotencyKeys, KeyEntry
from flowagg.store.durable.snapshot import SnapshotWriter, load_snapshot, snapshot_path
from flowagg.store.durable.wal import log_path
from flowagg.store.memory import PartitionedStore
from tests.conftest import WAIT_TIMEOUT, flow

HOURS = 12


def F(src="a", dest="b", vpc="v", tx=1, rx=2, hour=1) -> Flow:
    return Flow(src, dest, vpc, tx, rx, hour)


def random_batches(seed: int, count: int, size: int = 50) -> list[list[Flow]]:
    rng = random.Random(seed)
    return [
        [
            F(f"s{rng.randrange(40)}", f"d{rng.randrange(5)}", "v", rng.randrange(10**6),
              rng.randrange(10**6), rng.randrange(HOURS))
            for _ in range(rng.randrange(1, size))
        ]
        for _ in range(count)
    ]  # fmt: skip


def state(store) -> dict:
    return {h: sorted(store.read_hour(h, WAIT_TIMEOUT)) for h in range(HOURS)}


def files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != "LOCK")


@pytest.fixture
def stores(tmp_path):
    """Open durable stores on tmp_path (closing any still open at teardown)."""
    opened: list[DurableStore] = []

    def open_store(directory=None, **kw) -> DurableStore:
        kw.setdefault("partitions", 4)
        store = DurableStore(directory or tmp_path / "data", **kw)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        assert store.close(WAIT_TIMEOUT)


def drain(store) -> None:
    for partition in store.partitions:
        partition.drain_once()


def snapshot_now(store) -> None:
    """Take a snapshot of a store whose partitions are stepped by hand."""
    cut = store.begin_snapshot()
    drain(store)
    store.write_snapshot(cut)


def test_snapshot_plus_log_replay_equals_the_in_memory_state(stores):
    """Random interleavings of ingest, drains, cuts and snapshots; replay must match memory."""
    rng = random.Random(7)
    memory = PartitionedStore(partitions=4)
    durable = stores(start=False)
    cut, snapshots = None, 0
    try:
        for batch in random_batches(1, 300):
            memory.ingest(batch)
            durable.ingest(batch)
            step = rng.random()
            if step < 0.3:
                rng.choice(durable.partitions).drain_once()
            elif step < 0.36 and cut is None:
                cut = durable.begin_snapshot()
            elif step < 0.42 and cut is not None:
                drain(durable)
                durable.write_snapshot(cut)
                cut, snapshots = None, snapshots + 1
        drain(durable)
        expected = state(memory)
        assert state(durable) == expected
    finally:
        assert memory.close(WAIT_TIMEOUT)
    assert snapshots >= 5
    assert durable.close(WAIT_TIMEOUT)
    assert state(stores()) == expected


def test_snapshots_taken_while_many_threads_ingest(stores):
    """The snapshot thread compacts a 4 KiB log over and over under concurrent ingestion."""
    writers = 6
    batches = random_batches(2, 40 * writers, size=30)
    store = stores(snapshot_bytes=4096)
    start = threading.Barrier(writers)
    errors = []

    def write(w):
        try:
            start.wait(WAIT_TIMEOUT)
            for batch in batches[w::writers]:
                store.ingest(batch)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    try:
        for t in threads:
            t.start()
    finally:
        for t in threads:
            t.join(WAIT_TIMEOUT * 3)
    assert errors == []
    memory = PartitionedStore(partitions=4)
    try:
        for batch in batches:
            memory.ingest(batch)
        expected = state(memory)
    finally:
        assert memory.close(WAIT_TIMEOUT)
    assert state(store) == expected
    assert store.close(WAIT_TIMEOUT)
    assert state(stores()) == expected


def test_snapshot_cut_counts_flows_merged_after_it_exactly_once(stores, tmp_path):
    """Drainers do not stop at the cut, so a copy may hold flows of the new log. Force it.

    Partitions are stepped by hand: R1 and R2 are enqueued before the cut and R3 after it, and
    one drain then merges all three, so the snapshot holds R3 although R3 is in the new log.
    """
    store = stores(start=False)
    r1 = [F(hour=h, tx=1) for h in range(8)]
    r2 = [F(src="x", hour=3, tx=10), F(src="x", hour=5, tx=10)]
    r3 = [F(hour=h, tx=100) for h in (0, 1, 2, 3)] + [F(src="y", hour=9, tx=1000)]
    store.ingest(r1)
    store.ingest(r2)
    cut = store.begin_snapshot()
    store.ingest(r3)
    drain(store)
    store.write_snapshot(cut)
    data = tmp_path / "data"
    generation = f"{cut.generation:020d}"
    assert files(data) == [f"snapshot-{generation}.snap", f"wal-{generation}.log"]
    end = load_snapshot(snapshot_path(data, cut.generation), lambda *_: None, lambda *_: None)
    assert end.skip == [1, 2, 1, 1]  # r3 by hour % 4: hours 0; 1 and 9; 2; 3
    store.ingest([F(hour=0, tx=10_000)])
    drain(store)
    expected = state(store)
    assert expected[0] == [("a", "b", "v", 10_101, 6)]
    assert store.close(WAIT_TIMEOUT)
    reopened = stores()
    assert state(reopened) == expected
    assert reopened.close(WAIT_TIMEOUT)
    # Skips count per partition of the layout the snapshot was taken with; another replays too.
    assert state(stores(partitions=3)) == expected


def test_compaction_bounds_disk_use_by_distinct_rows(stores, tmp_path):
    store = stores(snapshot_bytes=4096, start=False)
    for _ in range(400):
        store.ingest([F(src=f"s{i % 10}", hour=i % 4) for i in range(40)])
        if store._compaction_requested:
            snapshot_now(store)
    size = sum(p.stat().st_size for p in (tmp_path / "data").iterdir())
    # 16,000 flows of 40 distinct rows: at most a 4 KiB log (plus a record) and a snapshot.
    assert size < 4096 + 4096
    assert len(files(tmp_path / "data")) == 2


def test_counters_beyond_2_to_the_64_survive_a_snapshot(stores):
    store = stores(start=False)
    big = 2**63 - 1
    store.ingest([F(tx=big, rx=big)] * 5)
    snapshot_now(store)
    expected = state(store)
    assert expected[1] == [("a", "b", "v", 5 * big, 5 * big)]
    assert store.close(WAIT_TIMEOUT)
    assert state(stores()) == expected


def test_empty_batch_without_a_key_writes_nothing(stores, tmp_path):
    store = stores()
    before = store._wal.size
    assert store.ingest([]) == 0
    assert store._wal.size == before


# -- idempotency -----------------------------------------------------------------------------


def test_same_key_twice_counts_once_also_after_restart(stores):
    store = stores()
    batch = [F(hour=1, tx=5), F(hour=2, tx=7)]
    assert store.ingest(batch, idempotency_key="k-1") == 2
    assert store.ingest(batch, idempotency_key="k-1") == 2
    assert store.ingest([F(hour=1)], idempotency_key="k-2") == 1
    expected = state(store)
    assert expected[1] == [("a", "b", "v", 6, 4)]
    assert store.close(WAIT_TIMEOUT)
    reopened = stores()
    assert reopened.ingest(batch, idempotency_key="k-1") == 2
    assert state(reopened) == expected
    assert reopened.close(WAIT_TIMEOUT)
    snapshotting = stores(start=False)
    snapshot_now(snapshotting)  # keys survive a snapshot too
    assert snapshotting.close(WAIT_TIMEOUT)
    again = stores()
    assert again.ingest(batch, idempotency_key="k-1") == 2
    assert state(again) == expected


def test_concurrent_duplicates_count_once(stores):
    store = stores()
    clients = 8
    start = threading.Barrier(clients)
    answers, errors = [], []

    def post():
        try:
            start.wait(WAIT_TIMEOUT)
            answers.append(store.ingest([F(tx=1), F(hour=2, tx=1)], idempotency_key="same"))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=post) for _ in range(clients)]
    try:
        for t in threads:
            t.start()
    finally:
        for t in threads:
            t.join(WAIT_TIMEOUT)
    assert errors == [] and answers == [2] * clients
    assert state(store)[1] == [("a", "b", "v", 1, 2)]


def test_a_key_reused_for_other_flows_is_refused(stores):
    store = stores()
    store.ingest([F(tx=1)], idempotency_key="k")
    with pytest.raises(KeyReused, match="'k' was already used"):
        store.ingest([F(tx=2)], idempotency_key="k")
    assert state(store)[1] == [("a", "b", "v", 1, 2)]


def test_keys_expire_after_the_window_also_across_restart(stores):
    now = [1_000_000.0]
    store = stores(idempotency_ttl_s=60, clock=lambda: now[0])
    store.ingest([F()], idempotency_key="k")
    now[0] += 59
    store.ingest([F()], idempotency_key="k")  # within the window: not applied
    assert store.close(WAIT_TIMEOUT)
    store = stores(idempotency_ttl_s=60, clock=lambda: now[0])
    store.ingest([F()], idempotency_key="k")  # still within: not applied
    now[0] += 2
    store.ingest([F()], idempotency_key="k")  # past the window: a new request
    assert state(store)[1] == [("a", "b", "v", 2, 4)]
    assert len(store._keys) == 1


# -- lifecycle -------------------------------------------------------------------------------


def test_a_data_dir_serves_one_store_at_a_time(stores):
    first = stores()
    with pytest.raises(DataDirInUse, match="FLOWAGG_DATA_DIR=.* is in use"):
        stores()
    assert first.close(WAIT_TIMEOUT)
    stores()


def test_close_drains_and_refuses_new_requests(stores):
    store = stores()
    store.ingest([F()])
    assert store.close(WAIT_TIMEOUT)
    with pytest.raises(Exception, match="closed"):
        store.ingest([F()])
    assert store.close(WAIT_TIMEOUT)  # again: nothing to do
    assert state(stores())[1] == [("a", "b", "v", 1, 2)]


def test_threads_are_named_and_stop_at_close(stores):
    store = stores(fsync="interval")
    names = {t.name for t in threading.enumerate()}
    assert {"flowagg-snapshot", "flowagg-fsync", "flowagg-drain-0"} <= names
    assert store.close(WAIT_TIMEOUT)
    alive = [t for t in (store._snapshot_thread, store._wal._thread) if t.is_alive()]
    assert alive == []


def test_damaged_snapshot_refuses_to_start(stores, tmp_path):
    store = stores(start=False)
    store.ingest([F()])
    snapshot_now(store)
    assert store.close(WAIT_TIMEOUT)
    [path] = (tmp_path / "data").glob("snapshot-*.snap")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFile, match=f"{path} is corrupt at byte offset"):
        stores()


def test_missing_log_refuses_to_start(stores, tmp_path):
    store = stores(start=False)
    store.ingest([F()])
    store.begin_snapshot()
    store.ingest([F(hour=2)])
    assert store.close(WAIT_TIMEOUT)
    log_path(tmp_path / "data", 1).unlink()
    assert not snapshot_path(tmp_path / "data", 2).exists()
    with pytest.raises(CorruptFile, match="wal-00000000000000000001.log: missing; later logs"):
        stores()


def test_unpublished_snapshot_is_ignored(stores, tmp_path):
    store = stores()
    store.ingest([F()])
    assert store.close(WAIT_TIMEOUT)
    (tmp_path / "data" / "snapshot-00000000000000000009.snap.tmp").write_bytes(b"half")
    assert state(stores())[1] == [("a", "b", "v", 1, 2)]
    assert not list((tmp_path / "data").glob("*.tmp"))


# -- through HTTP ----------------------------------------------------------------------------


@pytest.fixture
def durable_app(tmp_path):
    app = create_app({"FLOWAGG_DATA_DIR": str(tmp_path / "data"), "FLOWAGG_PARTITIONS": 4})
    yield app
    assert app.extensions["flowagg"].close(WAIT_TIMEOUT)


def post(client, records, key=None):
    headers = {} if key is None else {"Idempotency-Key": key}
    response = client.post("/flows", data=json.dumps(records), headers=headers)
    return response.status_code, response.get_json()


def test_http_retry_with_a_key_answers_the_original_result(durable_app):
    client = durable_app.test_client()
    assert post(client, [flow(), flow(hour=2)], key="abc") == (200, {"accepted": 2})
    assert post(client, [flow(), flow(hour=2)], key="abc") == (200, {"accepted": 2})
    assert client.get("/flows?hour=1").get_json() == [flow()]
    assert post(client, [flow(tx=9)], key="abc") == (
        422,
        {"error": "Idempotency-Key 'abc' was already used for a request with other flows"},
    )


@pytest.mark.parametrize(
    "key",
    ["", "has space", "x" * 256, "tab\there", "ü"],
    ids=["empty", "space", "too-long", "control", "non-ascii"],
)
def test_http_bad_idempotency_key_is_400(durable_app, key):
    client = durable_app.test_client()
    status, body = post(client, [flow()], key=key)
    assert (status, body) == (
        400,
        {"error": "header Idempotency-Key must be 1 to 255 visible ASCII characters"},
    )
    assert client.get("/flows?hour=1").get_json() == []


def test_a_snapshot_forgets_expired_keys_even_without_new_keyed_requests(stores):
    now = [1_000_000.0]
    store = stores(idempotency_ttl_s=60, clock=lambda: now[0], start=False)
    store.ingest([F()], idempotency_key="old")
    now[0] += 61
    store.ingest([F()])
    snapshot_now(store)
    assert len(store._keys) == 0


def test_requests_and_retries_go_on_while_a_snapshot_writes_its_keys(stores, monkeypatch):
    store = stores(start=False)
    for i in range(5):
        store.ingest([F(tx=i + 1)], idempotency_key=f"k{i}")
    writing, release = threading.Event(), threading.Event()
    add_keys = SnapshotWriter.add_keys

    def paused_add_keys(writer, entries):
        writing.set()
        assert release.wait(WAIT_TIMEOUT)
        add_keys(writer, entries)

    monkeypatch.setattr(SnapshotWriter, "add_keys", paused_add_keys)
    cut = store.begin_snapshot()
    drain(store)
    snapshot = threading.Thread(target=store.write_snapshot, args=(cut,))
    snapshot.start()
    try:
        assert writing.wait(WAIT_TIMEOUT)
        # Mid-snapshot: a new key is applied, a retry of an old one is recognised.
        assert store.ingest([F(tx=100)], idempotency_key="new") == 1
        assert store.ingest([F(tx=1)], idempotency_key="k0") == 1
    finally:
        release.set()
        snapshot.join(WAIT_TIMEOUT)
    drain(store)
    expected = state(store)
    assert expected[1] == [("a", "b", "v", 115, 12)]
    assert store.close(WAIT_TIMEOUT)
    reopened = stores()
    for key in ("k0", "k4", "new"):
        reopened.ingest(
            [F(tx=1)] if key == "k0" else [F(tx=5 if key == "k4" else 100)], idempotency_key=key
        )
    assert state(reopened) == expected


def test_keys_survive_a_snapshot_that_failed_before_writing_them():
    keys = IdempotencyKeys(ttl_s=60)
    keys.add("before-first-cut", KeyEntry(100.0, 1, 0), now=100.0)
    keys.seal()  # a snapshot starts, then fails before fold()
    keys.add("between-cuts", KeyEntry(101.0, 1, 0), now=101.0)
    keys.seal()  # the retry's cut
    keys.fold(now=102.0)
    assert [k for k, _ in keys.snapshot_items()] == ["before-first-cut", "between-cuts"]
    assert keys.get("before-first-cut", now=102.0) is not None
    keys.fold(now=160.5)  # the first key's window has passed, not the second's
    assert [k for k, _ in keys.snapshot_items()] == ["between-cuts"]
