"""The log format and writer: framing, damage detection, group commit, failures."""

import errno
import logging
import os
import threading

import pytest

from flowagg.schema import Flow
from flowagg.store.durable import DurableStore, framing
from flowagg.store.durable.framing import FILE_HEADER_SIZE, CorruptFile, TornTail, read_records
from flowagg.store.durable.records import decode_record, encode_record
from flowagg.store.durable.wal import LogFailed, WriteAheadLog, log_path
from tests.conftest import WAIT_TIMEOUT


def F(src="a", hour=1, tx=1, rx=2) -> Flow:
    return Flow(src, "b", "v", tx, rx, hour)


def write_log(directory, payloads, generation=1) -> list[int]:
    """A closed log holding ``payloads``; returns each record's offset."""
    log = WriteAheadLog(directory, generation, "never")
    offsets = []
    for payload in payloads:
        offsets.append(log.size)
        log.append(payload)
    assert log.close(WAIT_TIMEOUT)
    return offsets


def records_of(path) -> list[bytes]:
    data = path.read_bytes()
    return [bytes(p) for _, p in read_records(data, FILE_HEADER_SIZE, path)]


def open_store(directory, **kw) -> DurableStore:
    return DurableStore(directory, partitions=kw.pop("partitions", 4), **kw)


def totals(store: DurableStore, hours=range(8)) -> dict:
    return {h: sorted(store.read_hour(h, WAIT_TIMEOUT)) for h in hours}


# -- format --------------------------------------------------------------------------------


def test_record_round_trip(tmp_path):
    flows = [F(), F(src="ü-ñ", hour=7, tx=2**63 - 1, rx=0)]
    payload, fingerprint = encode_record(flows, "key-1", 1234.5)
    write_log(tmp_path, [payload, encode_record([F()], None, 1.0)[0]])
    first, second = [decode_record(p) for p in records_of(log_path(tmp_path, 1))]
    assert [tuple(getattr(f, n) for n in Flow.__struct_fields__) for f in first.flows] == [
        ("a", "b", "v", 1, 2, 1),
        ("ü-ñ", "b", "v", 2**63 - 1, 0, 7),
    ]
    assert (first.key, first.accepted_at, first.fingerprint) == ("key-1", 1234.5, fingerprint)
    assert fingerprint != 0
    assert (second.key, second.fingerprint) == (None, 0)


def test_file_starts_with_magic_and_version(tmp_path):
    write_log(tmp_path, [b"x"])
    data = log_path(tmp_path, 1).read_bytes()
    assert data[:8] == b"FLOWAGGL"
    assert int.from_bytes(data[8:12], "little") == framing.FORMAT_VERSION
    assert data[FILE_HEADER_SIZE : FILE_HEADER_SIZE + 4] == framing.SYNC


@pytest.mark.parametrize(
    "tail",
    [b"\x00garbage that is not a record", b"\x00" * 4096, framing.SYNC + b"\xff\xff"],
    ids=["garbage", "zeros", "torn-header"],
)
def test_garbage_after_the_last_record_is_a_torn_tail(tmp_path, tail):
    write_log(tmp_path, [b"one", b"two"])
    path = log_path(tmp_path, 1)
    size = path.stat().st_size
    data = path.read_bytes() + tail
    with pytest.raises(TornTail) as torn:
        list(read_records(data, FILE_HEADER_SIZE, path))
    assert torn.value.offset == size


def test_flipped_bit_before_the_tail_is_corruption_naming_file_and_offset(tmp_path):
    offsets = write_log(tmp_path, [b"one", b"two", b"three"])
    path = log_path(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[offsets[1] + framing.RECORD_HEADER_SIZE] ^= 0x01  # first payload byte of the second record
    with pytest.raises(CorruptFile, match=f"{path} is corrupt at byte offset {offsets[1]}: "):
        list(read_records(bytes(data), FILE_HEADER_SIZE, path))


def test_flipped_bit_in_a_length_is_not_mistaken_for_a_torn_tail(tmp_path):
    """A larger length would make the record run past the end; records after it still count."""
    offsets = write_log(tmp_path, [b"one", b"two", b"three"])
    path = log_path(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[offsets[0] + 7] ^= 0x40  # high byte of the first record's length
    with pytest.raises(CorruptFile, match=f"offset {offsets[0]}: record of .* runs past the end"):
        list(read_records(bytes(data), FILE_HEADER_SIZE, path))


# -- recovery through the store -------------------------------------------------------------


def store_with_batches(directory, batches) -> dict:
    store = open_store(directory)
    for batch in batches:
        store.ingest(batch)
    expected = totals(store)
    assert store.close(WAIT_TIMEOUT)
    return expected


def newest_log(directory):
    return max(directory.glob("wal-*.log"))


def test_store_cuts_garbage_off_the_newest_log_with_a_warning(tmp_path, caplog):
    expected = store_with_batches(tmp_path, [[F(hour=h)] for h in range(6)])
    path = newest_log(tmp_path)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\x17 not a record at all")
    with caplog.at_level(logging.WARNING, logger="flowagg.durable"):
        store = open_store(tmp_path)
    try:
        assert totals(store) == expected
        assert f"torn tail at byte offset {size}" in caplog.text
        assert "cutting off 21 bytes" in caplog.text
        assert path.stat().st_size == size
    finally:
        assert store.close(WAIT_TIMEOUT)


def test_store_cuts_a_record_torn_in_the_middle(tmp_path, caplog):
    batches = [[F(hour=h, tx=h + 1)] for h in range(5)]
    store_with_batches(tmp_path, batches)
    path = newest_log(tmp_path)
    data = path.read_bytes()
    offsets = [offset for offset, _ in read_records(data, FILE_HEADER_SIZE, path)]
    path.write_bytes(data[: offsets[-1] + 15])  # the last record loses its end
    with caplog.at_level(logging.WARNING, logger="flowagg.durable"):
        store = open_store(tmp_path)
    try:
        expected_store = totals(store)
        assert expected_store[4] == []  # the torn request is absent...
        assert all(expected_store[h] == [("a", "b", "v", h + 1, 2)] for h in range(4))  # ...only
        assert "cutting off 15 bytes" in caplog.text
    finally:
        assert store.close(WAIT_TIMEOUT)


def test_store_refuses_to_start_on_a_flipped_bit_before_the_tail(tmp_path):
    store_with_batches(tmp_path, [[F(hour=h)] for h in range(4)])
    path = newest_log(tmp_path)
    data = bytearray(path.read_bytes())
    offsets = [offset for offset, _ in read_records(bytes(data), FILE_HEADER_SIZE, path)]
    data[offsets[1] + framing.RECORD_HEADER_SIZE + 2] ^= 0x08
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFile, match=rf"{path} is corrupt at byte offset {offsets[1]}"):
        open_store(tmp_path)
    assert path.read_bytes() == bytes(data)  # nothing was cut off
    # The refusal released the directory: a repaired directory opens.
    path.unlink()
    assert open_store(tmp_path).close(WAIT_TIMEOUT)


def test_torn_tail_in_a_log_that_is_not_the_newest_refuses(tmp_path):
    record = encode_record([F()], None, 1.0)[0]
    write_log(tmp_path, [record], generation=1)
    write_log(tmp_path, [record], generation=2)
    path = log_path(tmp_path, 1)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\x00\x01")
    with pytest.raises(CorruptFile, match=f"{path} is corrupt at byte offset {size}: .* newer"):
        open_store(tmp_path)


def test_other_format_version_refuses(tmp_path):
    write_log(tmp_path, [])
    path = log_path(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[8] = 9
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFile, match="format version 9; this build reads version 1"):
        open_store(tmp_path)


def test_torn_file_header_of_the_newest_log_is_rewritten(tmp_path, caplog):
    expected = store_with_batches(tmp_path, [[F()]])
    generation = int(newest_log(tmp_path).stem.split("-")[1]) + 1
    log_path(tmp_path, generation).write_bytes(b"FLOW")  # crash right after creating the file
    with caplog.at_level(logging.WARNING, logger="flowagg.durable"):
        store = open_store(tmp_path)
    try:
        assert totals(store) == expected
        assert "torn file header: rewriting its 4 bytes" in caplog.text
    finally:
        assert store.close(WAIT_TIMEOUT)


# -- writing -------------------------------------------------------------------------------


@pytest.fixture
def fsyncs(monkeypatch):
    """Record every os.fsync; set ``hold`` to make the first one wait for ``release``."""

    class Recorder:
        calls: list[int] = []
        hold = False
        entered = threading.Event()
        release = threading.Event()
        fail: OSError | None = None

    real = os.fsync

    def fsync(fd):
        Recorder.calls.append(fd)
        if Recorder.fail is not None:
            raise Recorder.fail
        if Recorder.hold and len(Recorder.calls) == 1:
            Recorder.entered.set()
            assert Recorder.release.wait(WAIT_TIMEOUT)
        real(fd)

    Recorder.calls = []
    monkeypatch.setattr(os, "fsync", fsync)
    return Recorder


def test_concurrent_commits_share_fsyncs(tmp_path, fsyncs):
    log = WriteAheadLog(tmp_path, 1, "always")
    log.sync()  # the new file's directory entry; from here one fsync per round
    fsyncs.calls.clear()
    fsyncs.hold = True
    followers = 8
    appended = threading.Barrier(followers + 1)
    committed = [threading.Event() for _ in range(followers)]
    errors = []

    def leader():
        log.commit(log.append(b"leader"))

    def follower(i):
        try:
            record = log.append(f"follower {i}".encode())
            appended.wait(WAIT_TIMEOUT)
            log.commit(record)
            committed[i].set()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=leader)]
    threads += [threading.Thread(target=follower, args=(i,)) for i in range(followers)]
    try:
        threads[0].start()
        assert fsyncs.entered.wait(WAIT_TIMEOUT)  # the leader is inside its fsync
        for t in threads[1:]:
            t.start()
        appended.wait(WAIT_TIMEOUT)
        # Every follower's record is written but none is on disk: none may return yet.
        assert not any(e.wait(0.2) for e in committed)
    finally:
        fsyncs.release.set()
        for t in threads:
            t.join(WAIT_TIMEOUT)
    assert errors == [] and all(e.is_set() for e in committed)
    # One fsync for the leader's record, one shared by all eight followers' records.
    assert len(fsyncs.calls) == 2
    assert log.close(WAIT_TIMEOUT)


def test_interval_and_never_do_not_wait_for_fsync_but_close_syncs(tmp_path, fsyncs):
    for generation, mode in enumerate(["interval", "never"], start=1):
        log = WriteAheadLog(tmp_path, generation, mode, interval_s=3600)
        log.start()
        fsyncs.calls.clear()
        log.commit(log.append(b"record"))
        assert fsyncs.calls == []
        assert log.close(WAIT_TIMEOUT)
        assert fsyncs.calls  # the file (and its directory entry) at close
    names = [t.name for t in threading.enumerate()]
    assert "flowagg-fsync" not in names  # the interval thread stopped at close


def test_interval_mode_syncs_in_the_background(tmp_path):
    log = WriteAheadLog(tmp_path, 1, "interval", interval_s=0.01)
    log.start()
    try:
        record = log.append(b"record")
        assert [t for t in threading.enumerate() if t.name == "flowagg-fsync"]
        # The thread's sync makes the record durable without anyone asking.
        with log.synced:
            while log._synced < record:
                assert log.synced.wait(WAIT_TIMEOUT)
    finally:
        assert log.close(WAIT_TIMEOUT)


def test_failed_write_is_cut_back_and_the_log_stays_usable(tmp_path, monkeypatch):
    log = WriteAheadLog(tmp_path, 1, "always")
    log.commit(log.append(b"before"))
    real_pwrite = os.pwrite

    def half_then_enospc(fd, data, offset):
        real_pwrite(fd, bytes(data)[:5], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", half_then_enospc)
    with pytest.raises(LogFailed, match="No space left"):
        log.append(b"the failed record")
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    log.commit(log.append(b"after"))
    assert log.close(WAIT_TIMEOUT)
    assert records_of(log_path(tmp_path, 1)) == [b"before", b"after"]


def test_failed_fsync_stops_all_writes(tmp_path, fsyncs):
    store = open_store(tmp_path)
    try:
        store.ingest([F()])
        fsyncs.fail = OSError(errno.EIO, "Input/output error")
        with pytest.raises(Exception, match="cannot fsync the log") as failed:
            store.ingest([F()])
        assert type(failed.value).__name__ == "Unavailable"
        fsyncs.fail = None
        with pytest.raises(Exception, match="the log failed earlier"):
            store.ingest([F()])
    finally:
        assert not store.close(WAIT_TIMEOUT)  # the log could not be synced
