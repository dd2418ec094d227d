import logging

import pytest

from flowagg.schema import Flow
from flowagg.store import partition as partition_module
from flowagg.store.base import ReadTimeout
from flowagg.store.memory import PartitionedStore
from flowagg.store.partition import Partition
from flowagg.store.ringbuffer import Closed
from tests.conftest import WAIT_TIMEOUT, Stall


def F(src="a", dest="b", vpc="v", tx=1, rx=2, hour=1) -> Flow:
    return Flow(src, dest, vpc, tx, rx, hour)


def test_drain_once_applies_pending_flows_synchronously():
    p = Partition(0, buffer_capacity=8)
    p.enqueue([F(tx=1, rx=10), F(tx=2, rx=20), F(src="c", hour=2)])
    assert p.drain_once() == 3
    assert p.drain_once() == 0
    assert p.read(1, timeout=0) == [("a", "b", "v", 3, 30)]
    assert p.read(2, timeout=0) == [("c", "b", "v", 1, 2)]
    assert p.read(3, timeout=0) == []


def test_read_waits_for_flows_enqueued_before_it():
    p = Partition(0, buffer_capacity=8)
    p.enqueue([F()])
    with pytest.raises(ReadTimeout):
        p.read(1, timeout=0)  # enqueued but not applied: the read must not answer without it
    p.drain_once()
    assert p.read(1, timeout=0) == [("a", "b", "v", 1, 2)]


def test_read_between_take_and_merge_does_not_answer():
    """The C++ original's bug: the buffer is empty while the batch is still being aggregated."""
    p = Partition(0, buffer_capacity=8)
    p.enqueue([F()])
    seen = []
    original = p._merge

    def merge_with_a_read_in_between(sums):
        assert len(p.buffer) == 0  # the batch has left the buffer...
        with pytest.raises(ReadTimeout):
            p.read(1, timeout=0)  # ...but a read must still wait for it
        seen.append(True)
        original(sums)

    p._merge = merge_with_a_read_in_between
    p.drain_once()
    assert seen == [True]
    assert p.read(1, timeout=0) == [("a", "b", "v", 1, 2)]


def test_keys_are_tuples_not_joined_strings():
    p = Partition(0, buffer_capacity=8)
    p.enqueue([F(src="a", dest="b:c"), F(src="a:b", dest="c"), F(src="A", dest="b:c")])
    p.drain_once()
    assert p.read(1, timeout=0) == [
        ("a", "b:c", "v", 1, 2),
        ("a:b", "c", "v", 1, 2),
        ("A", "b:c", "v", 1, 2),
    ]


def test_merge_adds_to_existing_rows_in_first_appearance_order():
    p = Partition(0, buffer_capacity=8)
    p.enqueue([F(src="x"), F(src="y")])
    p.drain_once()
    p.enqueue([F(src="z"), F(src="x", tx=5, rx=5)])
    p.drain_once()
    assert p.read(1, timeout=0) == [
        ("x", "b", "v", 6, 7),
        ("y", "b", "v", 1, 2),
        ("z", "b", "v", 1, 2),
    ]


def test_sums_are_exact_beyond_64_bits():
    big = 2**63 - 1
    p = Partition(0, buffer_capacity=8)
    for _ in range(3):
        p.enqueue([F(tx=big, rx=big)] * 4)
        p.drain_once()
    assert p.read(1, timeout=0) == [("a", "b", "v", 12 * big, 12 * big)]


def test_part_larger_than_buffer_is_enqueued_whole():
    p = Partition(0, buffer_capacity=4)
    p.start()
    try:
        p.enqueue([F()] * 10, timeout=WAIT_TIMEOUT)
        assert p.read(1, timeout=WAIT_TIMEOUT) == [("a", "b", "v", 10, 20)]
    finally:
        assert p.close(WAIT_TIMEOUT)


def test_failed_merge_is_logged_and_retried_without_loss(caplog):
    p = Partition(0, buffer_capacity=8)
    original, calls = p._merge, []

    def flaky_merge(sums):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected fault")
        original(sums)

    p._merge = flaky_merge
    p.start()
    try:
        with caplog.at_level(logging.ERROR, logger="flowagg.partition"):
            p.enqueue([F(tx=1)])
            p.enqueue([F(tx=2)])
            assert p.read(1, timeout=WAIT_TIMEOUT) == [("a", "b", "v", 3, 4)]
        assert p.drainer_alive
        assert "injected fault" in caplog.text
        assert len(calls) >= 2
    finally:
        assert p.close(WAIT_TIMEOUT)


def test_close_applies_everything_pending_and_refuses_more():
    p = Partition(0, buffer_capacity=64)
    p.enqueue([F()] * 5)
    assert p.close(WAIT_TIMEOUT)  # never started: drained synchronously
    assert p.read(1, timeout=0) == [("a", "b", "v", 5, 10)]
    with pytest.raises(Closed):
        p.enqueue([F()])


def test_threaded_close_drains_and_joins():
    p = Partition(3, buffer_capacity=64)
    p.start()
    assert p._thread.name == "flowagg-drain-3"
    p.enqueue([F()] * 50)
    assert p.close(WAIT_TIMEOUT)
    assert not p.drainer_alive
    assert p.read(1, timeout=0) == [("a", "b", "v", 50, 100)]


def test_routing_by_hour_modulo_partitions():
    store = PartitionedStore(partitions=3, buffer_capacity=16, start=False)
    batch = [F(hour=h) for h in (0, 1, 2, 3, 4, 5, 7)]
    parts = store.split(batch)
    assert {i: [r[5] for r in part.records()] for i, part in parts.items()} == {
        0: [0, 3],
        1: [1, 4, 7],
        2: [2, 5],
    }
    assert store.ingest(batch) == 7
    assert [len(p.buffer) for p in store.partitions] == [2, 3, 2]
    assert store.partition_for(7) is store.partitions[1]
    assert store.close(WAIT_TIMEOUT)
    assert store.read_hour(7, timeout=0) == [("a", "b", "v", 1, 2)]


def test_read_of_one_partition_answers_while_another_drainer_is_stuck():
    store = PartitionedStore(partitions=2, buffer_capacity=16)
    stall = Stall(store.partitions[1])
    try:
        store.ingest([F(hour=1)])  # partition 1
        assert stall.entered.wait(WAIT_TIMEOUT)
        store.ingest([F(hour=0), F(hour=2)])  # partition 0 keeps ingesting
        assert store.read_hour(0, timeout=WAIT_TIMEOUT) == [("a", "b", "v", 1, 2)]
        assert store.read_hour(2, timeout=WAIT_TIMEOUT) == [("a", "b", "v", 1, 2)]
        with pytest.raises(ReadTimeout):
            store.read_hour(3, timeout=0)  # hour 3 shares the stuck partition
    finally:
        stall.release.set()
    assert store.read_hour(1, timeout=WAIT_TIMEOUT) == [("a", "b", "v", 1, 2)]
    assert store.close(WAIT_TIMEOUT)


def test_rooms_are_reserved_in_ascending_partition_order():
    """Two requests touching the same partitions in opposite orders must not each hold room the
    other waits for."""
    store = PartitionedStore(partitions=3, buffer_capacity=16, start=False)
    order = []
    for p in store.partitions:
        original = p.buffer.reserve
        p.buffer.reserve = lambda n, timeout=None, i=p.index, f=original: (
            order.append(i),
            f(n, timeout),
        )
    parts = store.split([F(hour=2), F(hour=1), F(hour=0), F(hour=5)])
    store.reserve(parts, timeout=0)  # the path of the durable store, and of a full buffer
    assert order == [0, 1, 2]
    store.cancel(parts)
    assert store.close(WAIT_TIMEOUT)


def test_a_failing_drain_observer_does_not_hold_up_readers(caplog):
    def observer(flows, seconds):
        raise RuntimeError("observer fault")

    p = Partition(0, buffer_capacity=8, on_drain=observer)
    p.enqueue([F()])
    assert p.drain_once() == 1
    assert p.read(1, timeout=0) == [("a", "b", "v", 1, 2)]
    assert "observer fault" in caplog.text


def test_a_reader_never_waits_for_the_drainer_to_linger(monkeypatch):
    """The drainer lets flows gather before taking them; a read that needs them cuts that
    short. With a linger far longer than the read's timeout, the read still answers."""
    monkeypatch.setattr(partition_module, "LINGER_S", 60.0)
    p = Partition(0, buffer_capacity=64)
    p.start()
    try:
        for i in range(3):
            p.enqueue([Flow("a", "b", "v", 1, 1, i)])
            assert p.read(i, timeout=WAIT_TIMEOUT) == [("a", "b", "v", 1, 1)]
        p.enqueue([Flow("a", "b", "v", 1, 1, 9)])
        p.flush(WAIT_TIMEOUT)  # a flush wants them too
        assert p.stats().lag == 0
    finally:
        assert p.close(WAIT_TIMEOUT)
