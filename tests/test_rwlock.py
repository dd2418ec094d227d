import threading

import pytest

from flowagg.store.rwlock import RWLock
from tests.conftest import WAIT_TIMEOUT, wait_until


def run(*targets):
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    return threads


def join(threads):
    for t in threads:
        t.join(WAIT_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"


def test_readers_share_the_lock():
    lock = RWLock()
    readers = 4
    # Every reader must be inside at once for the barrier to open.
    all_inside = threading.Barrier(readers)

    def reader():
        with lock.read_lock():
            all_inside.wait(WAIT_TIMEOUT)

    join(run(*[reader] * readers))


def test_writer_excludes_readers_and_writers():
    lock = RWLock()
    lock.acquire_write()
    with pytest.raises(RuntimeError):
        lock.acquire_read(timeout=0)  # the writer itself may not also read
    results = []
    t = run(lambda: results.append((lock.acquire_read(timeout=0), lock.acquire_write(timeout=0))))
    join(t)
    assert results == [(False, False)]
    lock.release_write()
    assert lock.acquire_read(timeout=0) is True
    lock.release_read()


def test_reader_excludes_writer():
    lock = RWLock()
    with lock.read_lock():
        results = []
        join(run(lambda: results.append(lock.acquire_write(timeout=0.01))))
        assert results == [False]
    assert lock.acquire_write(timeout=0) is True
    lock.release_write()


def test_waiting_writer_is_not_starved_by_new_readers():
    lock = RWLock()
    first_reader_in, writer_done = threading.Event(), threading.Event()
    order = []
    lock.acquire_read()  # a reader is inside; the writer must queue

    def writer():
        with lock.write_lock():
            order.append("writer")
        writer_done.set()

    w = run(writer)[0]
    try:
        wait_until(lambda: lock._writers_waiting == 1)
        # New readers arriving now must queue behind the waiting writer.
        late = []
        assert lock.acquire_read(timeout=0) is True  # re-entry by the holder is allowed
        lock.release_read()
        r = run(lambda: late.append(lock.acquire_read(timeout=0)))
        join(r)
        assert late == [False], "a new reader overtook the waiting writer"

        def reader():
            first_reader_in.set()
            with lock.read_lock():
                order.append("reader")

        r = run(reader)
        assert first_reader_in.wait(WAIT_TIMEOUT)
    finally:
        lock.release_read()
    assert writer_done.wait(WAIT_TIMEOUT)
    join([w, *r])
    assert order == ["writer", "reader"]


def test_no_reader_overlaps_a_writer_under_contention():
    lock = RWLock()
    state = {"readers": 0, "writers": 0, "violations": 0, "writes": 0}
    state_lock = threading.Lock()
    start = threading.Barrier(6)

    def enter(kind):
        with state_lock:
            state[kind] += 1
            if state["writers"] > 1 or (state["writers"] and state["readers"]):
                state["violations"] += 1

    def leave(kind):
        with state_lock:
            state[kind] -= 1

    def reader():
        start.wait(WAIT_TIMEOUT)
        for _ in range(300):
            with lock.read_lock():
                enter("readers")
                leave("readers")

    def writer():
        start.wait(WAIT_TIMEOUT)
        for _ in range(300):
            with lock.write_lock():
                enter("writers")
                state["writes"] += 1
                leave("writers")

    join(run(*[reader] * 4, *[writer] * 2))
    assert state["violations"] == 0
    assert state["writes"] == 600


def test_upgrade_is_refused():
    lock = RWLock()
    with lock.read_lock(), pytest.raises(RuntimeError, match="upgrade"):
        lock.acquire_write()
    # and the lock is still usable afterwards
    assert lock.acquire_write(timeout=0) is True
    lock.release_write()


def test_release_without_holding_is_an_error():
    lock = RWLock()
    with pytest.raises(RuntimeError):
        lock.release_read()
    with pytest.raises(RuntimeError):
        lock.release_write()


def test_writer_that_times_out_lets_queued_readers_in():
    lock = RWLock()
    lock.acquire_read()
    reader_in = threading.Event()
    outcome = []

    def writer():
        outcome.append(lock.acquire_write(timeout=2.0))

    def late_reader():
        with lock.read_lock():
            reader_in.set()

    w = run(writer)[0]
    wait_until(lambda: lock._writers_waiting == 1)  # so the late reader queues behind it
    r = run(late_reader)[0]
    wait_until(lambda: len(lock._readers_ok._waiters) == 1 or not w.is_alive())
    assert w.is_alive(), "the writer gave up before the late reader queued; rerun"
    join([w])
    assert outcome == [False]
    assert reader_in.wait(WAIT_TIMEOUT), "reader stayed blocked after the writer gave up"
    join([r])
    lock.release_read()
