"""The Redis store's layout (flowagg/store/redis/layout.py), without a server: keys, buckets,
expiry, slots. The packed rows themselves are tested in tests/test_packed.py."""

import zlib

import pytest
from redis.crc import key_slot

from flowagg.store.redis import layout


def test_a_key_is_encoded_with_byte_lengths_so_no_name_can_pass_for_another():
    assert layout.encode_key("a", "b:c", "v") == b"\x01a\x03b:c\x01v"
    assert layout.encode_key("a", "b:c", "v") != layout.encode_key("a:b", "c", "v")
    assert layout.encode_key("é", "x" * 200, "") == b"\x02\xc3\xa9\xc8\x01" + b"x" * 200 + b"\x00"


def test_the_bucket_is_crc32_of_the_encoding_so_every_instance_agrees():
    encoded = layout.encode_key("src", "dest", "vpc")
    assert layout.bucket_of("src", "dest", "vpc", 16) == zlib.crc32(encoded) % 16


def test_expiry_comes_from_the_hour_alone():
    hour = 480_000
    assert layout.expire_at(hour, None) == 0
    assert layout.expire_at(hour, 48) == (hour + 49) * 3600 + layout.EXPIRY_MARGIN_S
    assert layout.layout_record(16, 48) == "version=2 buckets=16 retention=48"
    assert layout.layout_record(8, None) == "version=2 buckets=8 retention=none"


def test_every_slot_has_a_tag_that_redis_cluster_maps_to_it():
    tags = layout.slot_tags()
    assert len(tags) == layout.SLOTS
    assert all(key_slot(f"x{{{tag}}}y".encode()) == slot for slot, tag in enumerate(tags))


def test_a_bucket_and_its_markers_share_a_slot_and_carry_the_version():
    key = layout.bucket_key(7, 3, 16)
    marker = layout.marker_key(7, 3, 16, 2, "req-{1}")
    assert key.startswith("flowagg:v2:h:{") and key.endswith("}:7:3")
    assert marker.startswith("flowagg:v2:idem:{") and marker.endswith(":7:3:2:req-{1}")
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
