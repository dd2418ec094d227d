import threading

import pytest

from flowagg.store.ringbuffer import Closed, Full, RingBuffer, put_all
from tests.conftest import WAIT_TIMEOUT, wait_until


def test_take_from_empty_returns_nothing_without_waiting():
    buf = RingBuffer(4)
    assert buf.take_all(timeout=0) == ([], 0)


def test_fifo_order_and_sequence_numbers():
    buf = RingBuffer(8)
    assert buf.put_many([1, 2, 3]) == 3
    assert buf.put_many([4]) == 4
    assert len(buf) == 4
    assert buf.take_all(timeout=0) == ([1, 2, 3, 4], 4)
    assert len(buf) == 0
    assert buf.take_all(timeout=0) == ([], 4)


def test_wrap_around_keeps_order():
    buf = RingBuffer(5)
    buf.put_many([1, 2, 3])
    assert buf.take_all(0)[0] == [1, 2, 3]
    # head is at slot 3: this batch wraps past the end of the slot list
    assert buf.put_many([4, 5, 6, 7]) == 7
    assert buf.take_all(0) == ([4, 5, 6, 7], 7)
    buf.put_many([8, 9, 10, 11, 12])  # exactly full, wrapping again
    assert buf.take_all(0) == ([8, 9, 10, 11, 12], 12)


def test_taken_slots_are_cleared():
    buf = RingBuffer(3)
    buf.put_many([object(), object()])
    buf.take_all(0)
    assert buf._slots == [None, None, None]


def test_full_buffer_put_times_out_and_puts_nothing():
    buf = RingBuffer(3)
    buf.put_many([1, 2])
    with pytest.raises(Full):
        buf.put_many([3, 4], timeout=0)
    with pytest.raises(Full):
        buf.put_many([3, 4], timeout=0.01)
    assert buf.take_all(0) == ([1, 2], 2)


def test_batch_larger_than_capacity_is_admitted_only_when_empty():
    buf = RingBuffer(2)
    assert buf.put_many([1, 2, 3], timeout=0) == 3  # empty: admitted whole
    with pytest.raises(Full):
        buf.put_many([4], timeout=0)  # nothing more until it is taken
    assert buf.take_all(0) == ([1, 2, 3], 3)
    buf.put_many([4])
    with pytest.raises(Full):
        buf.put_many([5, 6, 7], timeout=0)  # not empty: the oversized batch waits
    assert buf.take_all(0) == ([4], 4)
    assert buf.put_many([5, 6, 7], timeout=0) == 7


def test_reserved_room_is_held_until_put_or_cancel():
    buf = RingBuffer(4)
    buf.reserve(3, timeout=0)
    with pytest.raises(Full):
        buf.put_many([1, 2], timeout=0)  # only one slot's worth is free
    buf.put_many([1], timeout=0)
    assert buf.put_reserved(["a", "b", "c"]) == 4
    assert buf.take_all(0) == ([1, "a", "b", "c"], 4)
    buf.reserve(4, timeout=0)
    buf.cancel(4)
    assert buf.put_many([1, 2, 3, 4], timeout=0) == 8


def test_reservation_misuse_is_an_error():
    buf = RingBuffer(4)
    with pytest.raises(RuntimeError):
        buf.put_reserved([1])
    buf.reserve(1)
    with pytest.raises(RuntimeError):
        buf.cancel(2)


def test_reservation_times_out_and_holds_nothing():
    buf = RingBuffer(2)
    buf.put_many([1, 2])
    with pytest.raises(Full):
        buf.reserve(1, timeout=0.01)
    buf.take_all(0)
    buf.reserve(2, timeout=0)  # all the room is still there


def test_closed_buffer_accepts_reserved_puts_and_waits_for_them():
    buf = RingBuffer(4)
    buf.reserve(2)
    buf.close()
    assert not buf.finished  # room was promised before close
    with pytest.raises(Closed):
        buf.reserve(1)
    taken = []
    consumer = threading.Thread(target=lambda: taken.append(buf.take_all(timeout=WAIT_TIMEOUT)))
    consumer.start()
    try:
        assert buf.put_reserved(["x", "y"]) == 2
    finally:
        consumer.join(WAIT_TIMEOUT)
    assert taken == [(["x", "y"], 2)]
    assert buf.finished


def test_negative_timeout_is_an_error():
    buf = RingBuffer(2)
    with pytest.raises(ValueError):
        buf.put_many([1], timeout=-1)
    with pytest.raises(ValueError):
        buf.take_all(timeout=-1)


def test_blocking_put_waits_for_room():
    buf = RingBuffer(2)
    buf.put_many([1, 2])
    started, returned = threading.Event(), threading.Event()
    result = []

    def producer():
        started.set()
        result.append(buf.put_many([3, 4], timeout=WAIT_TIMEOUT))
        returned.set()

    t = threading.Thread(target=producer)
    t.start()
    try:
        assert started.wait(WAIT_TIMEOUT)
        # The put cannot have returned: there is no room until we take.
        assert not returned.is_set()
        assert buf.take_all(0)[0] == [1, 2]
        assert returned.wait(WAIT_TIMEOUT)
        assert result == [4]
        assert buf.take_all(0) == ([3, 4], 4)
    finally:
        t.join(WAIT_TIMEOUT)


def test_blocking_take_wakes_on_put():
    buf = RingBuffer(4)
    got = []
    t = threading.Thread(target=lambda: got.append(buf.take_all(timeout=WAIT_TIMEOUT)))
    t.start()
    try:
        buf.put_many(["x"])
    finally:
        t.join(WAIT_TIMEOUT)
    assert got == [(["x"], 1)]


def test_close_refuses_puts_keeps_pending_and_wakes_waiters():
    buf = RingBuffer(1)
    buf.put_many([1])
    errors = []

    def blocked_producer():
        try:
            buf.put_many([2], timeout=WAIT_TIMEOUT)
        except Closed as exc:
            errors.append(exc)

    t = threading.Thread(target=blocked_producer)
    t.start()
    buf.close()
    t.join(WAIT_TIMEOUT)
    assert not t.is_alive() and len(errors) == 1
    with pytest.raises(Closed):
        buf.put_many([3])
    assert buf.take_all(timeout=WAIT_TIMEOUT) == ([1], 1)
    assert buf.take_all(timeout=WAIT_TIMEOUT) == ([], 1)  # closed: returns at once


def test_many_producers_each_item_taken_exactly_once():
    buf = RingBuffer(16)
    producers, per_producer = 6, 500
    barrier = threading.Barrier(producers + 1)
    taken = []

    def produce(p):
        barrier.wait(WAIT_TIMEOUT)
        for i in range(0, per_producer, 5):
            buf.put_many([(p, i + k) for k in range(5)], timeout=WAIT_TIMEOUT)

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for t in threads:
        t.start()
    try:
        barrier.wait(WAIT_TIMEOUT)
        while len(taken) < producers * per_producer:
            items, _ = buf.take_all(timeout=WAIT_TIMEOUT)
            assert items, "producers stalled"
            taken.extend(items)
    finally:
        for t in threads:
            t.join(WAIT_TIMEOUT)
    assert sorted(taken) == sorted((p, i) for p in range(producers) for i in range(per_producer))
    for p in range(producers):  # each producer's items stay in its order
        assert [i for q, i in taken if q == p] == list(range(per_producer))


# -- lingering ---------------------------------------------------------------------------------

LONG = 60.0  # a linger no test may wait out


def take_in_thread(buf: RingBuffer, linger: float):
    """Start a consumer lingering up to ``linger``; returns (its result list, done Event)."""
    result: list = []
    done = threading.Event()

    def take() -> None:
        result.append(buf.take_all(timeout=WAIT_TIMEOUT, linger=linger))
        done.set()

    threading.Thread(target=take, daemon=True).start()
    return result, done


def wait_lingering(buf: RingBuffer) -> None:
    """Until the consumer lingers (items pending, waiting on `wanted`)."""
    from tests.conftest import wait_until

    wait_until(lambda: buf._lingering)


def test_a_lingering_take_gathers_later_puts_until_kicked():
    buf = RingBuffer(100)
    buf.put_many([1])
    result, done = take_in_thread(buf, LONG)
    wait_lingering(buf)
    buf.put_many([2, 3])  # puts do not end the linger...
    buf.put_many([4])
    assert not done.is_set()
    buf.kick()  # ...someone who wants the items does
    assert done.wait(WAIT_TIMEOUT)
    assert result == [([1, 2, 3, 4], 4)]
    assert not buf._kicked  # the kick was used up by that take


@pytest.mark.parametrize("how", ["room", "half-full", "close"])
def test_a_producer_waiting_for_room_a_half_full_buffer_or_close_end_the_linger(how):
    buf = RingBuffer(10)
    buf.put_many([1, 2])
    result, done = take_in_thread(buf, LONG)
    wait_lingering(buf)
    if how == "room":
        waiter = threading.Thread(target=buf.put_many, args=([0] * 9, WAIT_TIMEOUT))
        waiter.start()
        assert done.wait(WAIT_TIMEOUT)
        waiter.join(WAIT_TIMEOUT)
        assert result == [([1, 2], 2)]
        assert buf.take_all(0) == ([0] * 9, 11)
    elif how == "half-full":
        buf.put_many([3, 4, 5])  # 5 of 10
        assert done.wait(WAIT_TIMEOUT)
        assert result == [([1, 2, 3, 4, 5], 5)]
    else:
        buf.close()
        assert done.wait(WAIT_TIMEOUT)
        assert result == [([1, 2], 2)]


def test_without_linger_a_take_returns_at_once():
    buf = RingBuffer(10)
    buf.put_many([1])
    assert buf.take_all(timeout=0, linger=0.0) == ([1], 1)


def test_put_all_puts_every_part_at_once_or_nothing():
    buffers = [RingBuffer(4), RingBuffer(4), RingBuffer(4)]
    buffers[1].put_many([0, 0])
    assert put_all(buffers, {2: [1], 0: [2, 3], 1: [4]}) == {0: 2, 1: 3, 2: 1}
    assert put_all(buffers, {0: [5, 6], 1: [7, 8]}) is None  # buffer 1 holds 3 of 4: no room
    assert [buf.take_all(0) for buf in buffers] == [([2, 3], 2), ([0, 0, 4], 3), ([1], 1)]
    buffers[2].close()
    with pytest.raises(Closed):
        put_all(buffers, {0: [9], 2: [10]})
    assert buffers[0].take_all(0) == ([], 2)  # nothing was put anywhere


def test_put_all_leaves_room_to_producers_already_waiting():
    buffers = [RingBuffer(2), RingBuffer(2)]
    buffers[1].put_many([1, 2])
    waiting = threading.Event()
    result = []

    def producer():
        waiting.set()
        result.append(buffers[1].put_many([3], timeout=WAIT_TIMEOUT))

    thread = threading.Thread(target=producer)
    thread.start()
    assert waiting.wait(WAIT_TIMEOUT)
    wait_until(lambda: buffers[1]._room_waiters == 1)  # the producer is inside its wait
    assert put_all(buffers, {0: [9], 1: [4]}) is None  # full, and someone waits first
    assert buffers[1].take_all(0) == ([1, 2], 2)
    thread.join(WAIT_TIMEOUT)
    assert result == [3]
