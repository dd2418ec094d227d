"""Packed rows (flowagg/store/native/packed.c), the Redis store's unit of storage, against a model.

``HourTables.pack_buckets`` must cut an hour into blobs whose rows a reader written here in Python
from the format drawn in packed.c finds in the right bucket (``layout.bucket_of``), within the
chunk limits, in order of first appearance; ``Sums`` must add any set of blobs up exactly (past
2**64, to 2**128) and answer rows and JSON sorted by names, byte for byte what msgspec writes for
those rows. Damaged blobs are refused with ValueError, never read out of bounds; ``make
check-native`` runs this module under AddressSanitizer and UBSan.
"""

from __future__ import annotations

import threading
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowagg.schema import Flow, encode
from flowagg.store.redis import layout
from flowagg.store.table import HourTables, Sums
from tests.test_table import COUNTS, HOURS, NAMES, Model, flows

MAGIC = 0xF2


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def decode(blob: bytes) -> list[tuple]:
    """The rows of a blob, read as the format says (the model of a reader)."""
    assert blob[0] == MAGIC
    rows, at = [], 1
    while at < len(blob):
        names = []
        for _ in range(3):
            n, at = read_varint(blob, at)
            names.append(blob[at : at + n].decode())
            at += n
        tx, at = read_varint(blob, at)
        rx, at = read_varint(blob, at)
        rows.append((*names, tx, rx))
    return rows


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def sorted_rows(rows) -> list[tuple]:
    return sorted(rows, key=lambda r: (r[0], r[1], r[2]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=flows(),
    buckets=st.integers(1, 20),
    max_rows=st.integers(1, 7),
    max_bytes=st.integers(1, 300),
)
def test_pack_buckets_puts_every_row_once_in_its_bucket_within_the_limits(
    batch, buckets, max_rows, max_bytes
):
    tables, model = HourTables(), Model()
    tables.merge(batch)
    model.merge(batch)
    for hour in model.hours:
        chunks = tables.pack_buckets(hour, buckets, max_rows, max_bytes)
        assert [c[0] for c in chunks] == sorted(c[0] for c in chunks)  # by bucket
        found = []
        for bucket, rows, blob in chunks:
            decoded = decode(blob)
            assert len(decoded) == rows and 1 <= rows <= max_rows
            assert rows == 1 or len(blob) <= max_bytes
            assert all(layout.bucket_of(*row[:3], buckets) == bucket for row in decoded)
            found += decoded
        expected = model.rows(hour)
        assert sorted_rows(found) == sorted_rows(expected)
        # Within a bucket, chunks keep the order of first appearance.
        for bucket in {c[0] for c in chunks}:
            mine = [r for c in chunks if c[0] == bucket for r in decode(c[2])]
            assert mine == [r for r in expected if layout.bucket_of(*r[:3], buckets) == bucket]
    assert tables.pack_buckets(99, buckets, max_rows, max_bytes) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(flows(), min_size=1, max_size=6), buckets=st.integers(1, 5))
def test_sums_of_any_blobs_are_the_model_sorted_by_names(batches, buckets):
    model, blobs = Model(), []
    for batch in batches:
        model.merge(batch)
        tables = HourTables()
        tables.merge(batch)
        blobs += [(hour, blob) for hour in tables.hours()
                  for _, _, blob in tables.pack_buckets(hour, buckets, 3, 200)]  # fmt: skip
    for hour in model.hours:
        sums = Sums(hour)
        sums.add([blob for h, blob in blobs if h == hour])
        expected = sorted_rows(model.rows(hour))
        assert len(sums) == len(expected) and sums.hour == hour
        assert sums.rows() == expected
        assert sums.json() == encode([Flow(*row, hour) for row in expected])
        packed = sums.pack(4, 100)  # compaction's output: the same sums again, sorted
        assert [r for blob in packed for r in decode(blob)] == expected
        again = Sums(hour)
        again.add(packed)
        assert again.rows() == expected


def test_counters_are_exact_to_2_to_the_128():
    tables = HourTables()
    tables.merge([Flow("a", "b", "v", 2**63 - 1, 1, 1)] * 5)
    [(_, _, blob)] = tables.pack_buckets(1, 1, 10, 1000)
    sums = Sums(1)
    sums.add([blob] * 1000)
    assert sums.rows() == [("a", "b", "v", 5000 * (2**63 - 1), 5000)]
    big = bytes([MAGIC]) + varint(1) + b"a" + varint(1) + b"b" + varint(1) + b"v"
    sums.add([big + varint(2**128 - 1 - 5000 * (2**63 - 1)) + varint(0)])
    assert sums.rows() == [("a", "b", "v", 2**128 - 1, 5000)]
    assert (
        sums.json()
        == b'[{"src_app":"a","dest_app":"b","vpc_id":"v","bytes_tx":%d,' % (2**128 - 1)
        + b'"bytes_rx":5000,"hour":1}]'
    )
    with pytest.raises(OverflowError, match="would pass 2\\*\\*128"):
        sums.add([big + varint(1) + varint(0)])


ROW = varint(1) + b"a" + varint(1) + b"b" + varint(1) + b"v" + varint(7) + varint(9)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x00" + ROW,
        bytes([MAGIC]) + ROW[:-1],  # the last counter cut
        bytes([MAGIC]) + varint(50) + b"abc",  # a name longer than the blob
        bytes([MAGIC]) + ROW[:9] + b"\xff" * 20,  # a counter past 2**128
        bytes([MAGIC]) + varint(2**40) + b"x",
    ],
    ids=["empty", "magic", "cut", "long-name", "huge-counter", "huge-length"],
)
def test_a_damaged_blob_is_refused(blob):
    sums = Sums(3)
    with pytest.raises(ValueError, match="not packed rows"):
        sums.add([bytes([MAGIC]) + ROW, blob])


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError):
        Sums(1).add([b"\xf2", "text"])
    with pytest.raises(TypeError):
        Sums(1).add((b"\xf2",))
    with pytest.raises(ValueError, match="hour must not be negative"):
        Sums(-1)
    tables = HourTables()
    tables.merge([Flow("a", "b", "v", 1, 1, 1)])
    with pytest.raises(ValueError):
        tables.pack_buckets(1, 0, 10, 10)
    with pytest.raises(ValueError):
        tables.pack_buckets(1, 4, 0, 10)


def test_a_large_sum_releases_the_gil_and_refuses_a_concurrent_use():
    tables = HourTables()
    tables.merge([Flow(f"s{i}", "d", "v", i, 1, 2) for i in range(60_000)])
    blobs = [blob for _, _, blob in tables.pack_buckets(2, 4, 100_000, 10**9)]
    sums = Sums(2)
    entered, errors = threading.Event(), []

    def other():
        entered.wait(10)
        try:
            while True:
                len(sums)  # always allowed
                sums.rows()
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    entered.set()
    for _ in range(20):
        sums.add(blobs)
        if errors:
            break
    thread.join(10)
    assert errors and "in use by another thread" in str(errors[0])
    assert sums.rows()[0][:3] == ("s0", "d", "v")


@settings(max_examples=30, deadline=None)
@given(name=NAMES, tx=COUNTS, rx=COUNTS, hour=HOURS)
def test_the_python_bucket_is_the_native_one(name, tx, rx, hour):
    tables = HourTables()
    tables.merge([Flow(name, name + "x", "v", tx, rx, hour)])
    [(bucket, _, _)] = tables.pack_buckets(hour, 7, 10, 10_000)
    assert bucket == layout.bucket_of(name, name + "x", "v", 7)


def test_nothing_is_kept_after_use():
    tables = HourTables()
    tables.merge([Flow(f"s{i}", "d", "v", i, 1, 2) for i in range(2_000)])
    blobs = [blob for _, _, blob in tables.pack_buckets(2, 3, 500, 10_000)]

    def cycle():
        sums = Sums(2)
        sums.add(blobs)
        sums.json()
        sums.rows()
        sums.pack(100, 1000)
        tables.pack_buckets(2, 3, 500, 10_000)

    cycle()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            cycle()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 64 * 1024
