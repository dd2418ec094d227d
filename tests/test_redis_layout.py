"""The Redis store's layout (flowagg/store/redis/layout.py), without a server: names, buckets,
counters, slots."""

import zlib

import pytest
from redis.crc import key_slot

from flowagg.store.redis import layout

SEPARATORS = [":", "|", ",", "\x00", "\n", " ", "{", "}", "{}", "1:", "3:a:b", "é", "\U0001f600"]


@pytest.mark.parametrize(
    "names",
    [
        ("a", "b:c", "v"),
        ("a:b", "c", "v"),
        ("1:a", "1:b", "1:c"),
        ("", "", ""),  # the schema refuses empty names; the encoding does not need to
        *[(f"x{s}", f"{s}y", s) for s in SEPARATORS],
        ("a" * 300, "b" * 10, "c"),
    ],
    ids=lambda names: repr(names)[:40],
)
def test_names_round_trip_whatever_they_contain(names):
    encoded = layout.encode_names(*names)
    assert layout.decode_names(encoded) == names


def test_keys_that_a_separator_would_join_alike_stay_apart():
    pairs = [(("a", "b:c", "v"), ("a:b", "c", "v")), (("a", "b", "c|d"), ("a", "b|c", "d"))]
    for first, second in pairs:
        assert layout.encode_names(*first) != layout.encode_names(*second)


@pytest.mark.parametrize(
    "encoded",
    ["", "1:a", "1:a1:b", "1:a1:b1:cd", "x:a1:b1:c", "-1:a1:b1:c", "2:a", "\u0661:a1:b1:c"],
    ids=["empty", "one", "two", "trailing", "no-length", "negative", "short", "arabic-digit"],
)
def test_what_is_not_an_encoding_is_refused(encoded):
    with pytest.raises(ValueError, match="not a flow key encoding"):
        layout.decode_names(encoded)


def test_the_bucket_is_crc32_of_the_encoding_so_every_instance_agrees():
    encoded = layout.encode_names("src", "dest", "vpc")
    assert encoded == "3:src4:dest3:vpc"
    assert layout.bucket_of(encoded, 16) == zlib.crc32(b"3:src4:dest3:vpc") % 16 == 6


@pytest.mark.parametrize("value", [0, 1, 2**63 - 1, 2**63, 2**64 + 5, 3 * 2**63 + 7, 2**127])
def test_a_counter_splits_into_low_part_and_carry(value):
    low, carry = layout.split_counter(value)
    assert 0 <= low < 2**63 and carry * 2**63 + low == value


def test_rows_sum_buckets_exactly_with_carries_and_sort_by_names():
    a, b = layout.encode_names("b", "x", "v"), layout.encode_names("a", "y:z", "v")
    replies = [
        {b"t" + a.encode(): b"5", b"T" + a.encode(): b"2", b"r" + a.encode(): b"1"},
        {b"t" + b.encode(): b"9223372036854775807", b"r" + b.encode(): b"0"},
        {b"R" + a.encode(): b"1"},
    ]
    assert layout.rows_of(replies) == [
        ("a", "y:z", "v", 2**63 - 1, 0),
        ("b", "x", "v", 2 * 2**63 + 5, 2**63 + 1),
    ]


def test_every_slot_has_a_tag_that_redis_cluster_maps_to_it():
    tags = layout.slot_tags()
    assert len(tags) == layout.SLOTS
    assert all(key_slot(f"x{{{tag}}}y".encode()) == slot for slot, tag in enumerate(tags))


def test_a_bucket_and_its_markers_share_a_slot_and_carry_the_version():
    key = layout.bucket_key(7, 3, 16)
    marker = layout.marker_key(7, 3, 16, "req-{1}")
    assert key.startswith("flowagg:v1:h:{") and key.endswith("}:7:3")
    assert marker.startswith("flowagg:v1:idem:{") and marker.endswith(":7:3:req-{1}")
    assert key_slot(key.encode()) == key_slot(marker.encode()) == layout.slot_of(7, 3, 16)
    assert len({layout.bucket_key(7, b, 16) for b in range(16)}) == 16


@pytest.mark.parametrize("buckets", [3, 16, 64])
def test_an_hours_buckets_spread_evenly_over_three_equal_slot_ranges(buckets):
    """``redis-cli --cluster create`` gives three primaries 5461, 5461 and 5462 slots."""
    edges = (5461, 10923)
    for hour in range(500):
        counts = [0, 0, 0]
        for bucket in range(buckets):
            slot = layout.slot_of(hour, bucket, buckets)
            counts[(slot >= edges[0]) + (slot >= edges[1])] += 1
        assert max(counts) - min(counts) <= 1, (hour, counts)
