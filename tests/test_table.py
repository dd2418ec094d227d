"""HourTable: the counters of one hour, whatever their memory layout; and the paths filling it."""

import random
import tracemalloc

import msgspec
import pytest

from flowagg.schema import Flow
from flowagg.store.memory import PartitionedStore
from flowagg.store.partition import Partition
from flowagg.store.table import HourTable

INT64_MAX = 2**63 - 1


def C(tx: int, rx: int) -> Flow:
    """A batch's sum for one key, as the drainer hands it to merge: a record (hour unused)."""
    return Flow("-", "-", "-", tx, rx, 0)


def table_of(*batches: dict) -> HourTable:
    table = HourTable()
    for sums in batches:
        table.merge({key: C(*counters) for key, counters in sums.items()})
    return table


def test_an_empty_table_has_no_rows():
    table = HourTable()
    assert len(table) == 0
    assert table.rows() == []


def test_rows_come_in_order_of_first_appearance_with_sums():
    table = table_of(
        {("x", "b", "v"): (1, 2), ("y", "b", "v"): (3, 4)},
        {("z", "b", "v"): (5, 6), ("x", "b", "v"): (10, 20)},
    )
    assert len(table) == 3
    assert table.rows() == [("x", "b", "v", 11, 22), ("y", "b", "v", 3, 4), ("z", "b", "v", 5, 6)]


def test_keys_are_tuples_not_joined_strings():
    table = table_of({("a", "b:c", "v"): (1, 1), ("a:b", "c", "v"): (2, 2)})
    assert table.rows() == [("a", "b:c", "v", 1, 1), ("a:b", "c", "v", 2, 2)]


@pytest.mark.parametrize(
    "batches, expected",
    [
        ([(INT64_MAX, 0), (1, 0)], (INT64_MAX + 1, 0)),
        ([(0, INT64_MAX), (0, INT64_MAX), (0, INT64_MAX)], (0, 3 * INT64_MAX)),
        ([(2**64, 2**70)], (2**64, 2**70)),  # a batch's own sum beyond int64, for a new key
        ([(INT64_MAX, 1)] * 5 + [(1, 1)], (5 * INT64_MAX + 1, 6)),
    ],
    ids=["tx-just-over", "rx-three-times-max", "new-key-beyond-int64", "many-overflows"],
)
def test_sums_are_exact_beyond_64_bits(batches, expected):
    key = ("a", "b", "v")
    table = table_of({("other", "b", "v"): (1, 1)}, *({key: counters} for counters in batches))
    assert table.rows() == [("other", "b", "v", 1, 1), (*key, *expected)]


def test_rows_are_a_copy():
    table = table_of({("a", "b", "v"): (1, 2)})
    rows = table.rows()
    rows.append(("junk", "b", "v", 0, 0))
    rows[0] = ("changed", "b", "v", 0, 0)
    assert table.rows() == [("a", "b", "v", 1, 2)]


def test_equal_names_are_stored_once_per_table():
    # Built at run time, so that they are different objects with equal values.
    first = ("".join(["sr", "c"]), "".join(["de", "st"]), "".join(["vp", "c"]))
    second = ("".join(["s", "rc"]), "".join(["oth", "er"]), "".join(["v", "pc"]))
    assert first[0] is not second[0] and first[2] is not second[2]
    table = table_of({first: (1, 1), second: (1, 1)})
    row_a, row_b = table.rows()
    assert row_a[0] is row_b[0] and row_a[2] is row_b[2]
    assert row_a[1] == "dest" and row_b[1] == "other"


def test_adding_to_existing_keys_allocates_nothing_that_stays():
    keys = [(f"src-{i}", f"dest-{i % 7}", "vpc") for i in range(2000)]
    table = table_of({key: (1000, 1000) for key in keys})
    again = [{key: C(i, 5000 + i) for i, key in enumerate(keys)} for _ in range(3)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for sums in again:
            table.merge(sums)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 1024  # no bytes per key or per flow, whatever the sums
    assert len(table) == len(keys)
    assert table.rows()[3] == ("src-3", "dest-3", "vpc", 1009, 1000 + 3 * 5003)


# -- the paths that fill a table: a partition summing batches, the store splitting them -------


def reference_rows(flows: list[Flow], hour: int) -> list[tuple]:
    """Rows of ``hour`` summed the obvious way, in order of first appearance."""
    sums: dict[tuple, list[int]] = {}
    for f in flows:
        if f.hour == hour:
            counters = sums.setdefault((f.src_app, f.dest_app, f.vpc_id), [0, 0])
            counters[0] += f.bytes_tx
            counters[1] += f.bytes_rx
    return [(*key, tx, rx) for key, (tx, rx) in sums.items()]


@pytest.mark.parametrize(
    "hours, keys",
    [((5,), 1000), ((5,), 3), ((5, 13), 1000), ((5, 13, 21), 4)],
    ids=["one-hour-distinct-keys", "one-hour-repeated-keys", "two-hours", "three-hours-repeated"],
)
def test_a_drained_batch_sums_like_the_obvious_loop(hours, keys):
    rng = random.Random(7)
    batches = [
        [
            Flow(f"s{rng.randrange(keys)}", "d", "v", rng.randrange(2**62), rng.randrange(9), h)
            for h in rng.choices(hours, k=rng.randint(1, 300))
        ]
        for _ in range(5)
    ]
    as_posted = [[msgspec.structs.astuple(f) for f in batch] for batch in batches]
    p = Partition(0, buffer_capacity=1024)
    for batch in batches:
        p.enqueue(batch)
        p.drain_once()
    everything = [f for batch in batches for f in batch]
    for hour in hours:
        assert p.read(hour, timeout=0) == reference_rows(everything, hour)
    # Summing never writes into the posted records: a retried batch must sum the same again.
    assert [[msgspec.structs.astuple(f) for f in batch] for batch in batches] == as_posted


@pytest.mark.parametrize(
    "hours, expected",
    [
        ([3, 3, 3], {3: [3, 3, 3]}),
        ([3, 11, 3], {3: [3, 11, 3]}),  # two hours, one partition
        ([3, 4, 11, 12], {3: [3, 11], 4: [4, 12]}),
    ],
    ids=["one-hour", "one-partition", "two-partitions"],
)
def test_split_groups_by_partition_in_request_order(hours, expected):
    store = PartitionedStore(partitions=8, buffer_capacity=16, start=False)
    batch = [Flow("s", "d", "v", i, i, h) for i, h in enumerate(hours)]
    parts = store.split(batch)
    assert {i: [f.hour for f in part] for i, part in parts.items()} == expected
    assert sorted(f.bytes_tx for part in parts.values() for f in part) == list(range(len(hours)))
    for part in parts.values():
        assert [f.bytes_tx for f in part] == sorted(f.bytes_tx for f in part)
