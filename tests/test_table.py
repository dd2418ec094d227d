"""HourTable: the counters of one hour, whatever their memory layout."""

import tracemalloc

import pytest

from flowagg.table import HourTable

INT64_MAX = 2**63 - 1


def table_of(*batches: dict) -> HourTable:
    table = HourTable()
    for sums in batches:
        table.merge(sums)
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


def test_equal_names_are_stored_once():
    # Built at run time, so that they are different objects with equal values.
    first = ("".join(["sr", "c"]), "".join(["de", "st"]), "".join(["vp", "c"]))
    second = ("".join(["s", "rc"]), "".join(["d", "est"]), "".join(["v", "pc"]))
    other = (first[0], "".join(["oth", "er"]), second[2])
    assert first[0] is not second[0]
    a, b = table_of({first: (1, 1)}), table_of({second: (1, 1), other: (1, 1)})
    row_a, (row_b, row_other) = a.rows()[0], b.rows()
    assert all(x is y for x, y in zip(row_a[:3], row_b[:3], strict=True))
    assert row_other[0] is row_a[0] and row_other[2] is row_a[2]


def test_adding_to_existing_keys_allocates_nothing_that_stays():
    keys = [(f"src-{i}", f"dest-{i % 7}", "vpc") for i in range(2000)]
    table = table_of({key: (1000, 1000) for key in keys})
    again = [{key: (i, 5000 + i) for i, key in enumerate(keys)} for _ in range(3)]
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
