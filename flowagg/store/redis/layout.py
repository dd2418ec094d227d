"""Where the Redis store keeps things: keys, buckets, the field encoding of a flow key, counters.

Every key carries the layout's version in its prefix, so a new layout never reads an old one::

    flowagg:v1:h:{T}:H:b               hash: bucket b of hour H, its counters (below)
    flowagg:v1:idem:{T}:H:b:<key>      string: the Idempotency-Key <key> is applied to bucket b
    flowagg:v1:key:<key>               string: "<fingerprint>:<flows>" of the request <key> names
    flowagg:v1:{meta}:hours            set: the hours that hold data (decimal strings)

The hash tag ``{T}`` puts a bucket and its idempotency markers in one slot, so one function
call updates both atomically. An hour is spread over ``buckets`` hashes by a stable hash of the
flow key (crc32, never Python's ``hash()``), and the buckets over the cluster: ``T`` is a short
string whose slot is the bucket's, and bucket b of hour H takes slot ``(crc32(H) + b * 16384 /
buckets) % 16384``, so an hour's buckets sit at even intervals of the slot space and each primary
(which ``redis-cli --cluster create`` gives an equal range of slots) holds its share of them, 5
or 6 of 16 over 3 primaries. A tag ``{H:b}`` would leave that to chance: hour 5's 16 buckets
fell 8, 4 and 4 on three primaries.

A flow key's three names are encoded unambiguously, never joined by a separator: each is
written as its length in characters, ``:``, then the name itself, so ``("a", "b:c")`` and
``("a:b", "c")`` are ``1:a3:b:c1:v`` and ``3:a:b1:c1:v``. A reader takes the length first and then
exactly that many characters, whatever they are. A hash field is one tag character then the key's
encoding; the tag names the counter part:

    t  bytes_tx, low part (0 .. 2**63-1)      T  bytes_tx, carry: how many 2**63 on top of it
    r  bytes_rx, low part                     R  bytes_rx, carry

A counter's value is ``carry * 2**63 + low``, exact at any size (the functions keep ``low`` in
range and move overflow into the carry; see functions.lua).
"""

from __future__ import annotations

import functools
import zlib
from binascii import crc_hqx
from collections.abc import Iterable

from flowagg.store.base import Row

VERSION = 1
PREFIX = f"flowagg:v{VERSION}:"
LIBRARY = f"flowagg_v{VERSION}"  # the Redis Functions library, loaded by this versioned name
COMMIT_FUNCTION = f"{LIBRARY}_commit"
HOURS_KEY = f"{PREFIX}{{meta}}:hours"

LOW = 2**63  # a counter's low part stays below this; the carry counts multiples of it
TAGS = {ord("t"): (0, 0), ord("T"): (0, 1), ord("r"): (1, 0), ord("R"): (1, 1)}  # (counter, carry)


SLOTS = 16384  # Redis Cluster's hash slots


@functools.cache
def slot_tags() -> list[str]:
    """For every slot, the first tag of one to four letters or digits (in this order) whose key
    slot it is: CRC16 of the tag modulo 16384, as Redis Cluster computes it. Computed once, on
    first use (about 0.1 s); the CRC of a tag's prefix is reused for all its extensions."""
    tags: list[str | None] = [None] * SLOTS
    missing = SLOTS
    prefixes = [("", 0)]
    chars = [(c, c.encode()) for c in _ALPHABET]
    for _length in range(4):
        extended = []
        for prefix, crc in prefixes:
            for char, code in chars:
                tag_crc = crc_hqx(code, crc)
                extended.append((prefix + char, tag_crc))
                slot = tag_crc % SLOTS
                if tags[slot] is None:
                    tags[slot] = prefix + char
                    missing -= 1
                    if not missing:
                        return tags  # type: ignore[return-value]
        prefixes = extended
    raise AssertionError("no tag of four characters for some slot")


_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def slot_of(hour: int, bucket: int, buckets: int) -> int:
    """The slot of bucket ``bucket`` of ``hour``: even intervals from an hour's own offset."""
    return (zlib.crc32(str(hour).encode()) + bucket * SLOTS // buckets) % SLOTS


def bucket_key(hour: int, bucket: int, buckets: int) -> str:
    return f"{PREFIX}h:{{{slot_tags()[slot_of(hour, bucket, buckets)]}}}:{hour}:{bucket}"


def marker_key(hour: int, bucket: int, buckets: int, idempotency_key: str) -> str:
    tag = slot_tags()[slot_of(hour, bucket, buckets)]
    return f"{PREFIX}idem:{{{tag}}}:{hour}:{bucket}:{idempotency_key}"


def request_key(idempotency_key: str) -> str:
    return f"{PREFIX}key:{idempotency_key}"


def encode_names(src: str, dest: str, vpc: str) -> str:
    """The unambiguous encoding of a flow key (lengths in characters, then the names)."""
    return f"{len(src)}:{src}{len(dest)}:{dest}{len(vpc)}:{vpc}"


def decode_names(encoded: str) -> tuple[str, str, str]:
    """The three names of ``encode_names``; ValueError if ``encoded`` is not such an encoding."""
    names = []
    at = 0
    for _ in range(3):
        colon = encoded.find(":", at)
        digits = encoded[at:colon]
        if colon < 0 or not (digits.isascii() and digits.isdigit()):
            raise ValueError(f"not a flow key encoding: {encoded!r}")
        end = colon + 1 + int(digits)
        if end > len(encoded):
            raise ValueError(f"not a flow key encoding: {encoded!r}")
        names.append(encoded[colon + 1 : end])
        at = end
    if at != len(encoded):
        raise ValueError(f"not a flow key encoding: {encoded!r}")
    return names[0], names[1], names[2]


def bucket_of(encoded: str, buckets: int) -> int:
    """The bucket of a flow key: crc32 of its encoding (UTF-8) modulo the number of buckets."""
    return zlib.crc32(encoded.encode()) % buckets


def split_counter(value: int) -> tuple[int, int]:
    """``value`` as (low, carry) with ``value == carry * 2**63 + low`` and ``0 <= low < 2**63``."""
    carry, low = divmod(value, LOW)
    return low, carry


def rows_of(hashes: Iterable[dict[bytes, bytes]]) -> list[Row]:
    """Sum the buckets' HGETALL replies (RESP3 maps of field to value) into rows, exactly.

    Rows are sorted by their names (code points, src_app then dest_app then vpc_id): a stable
    order that every instance answers alike, whatever order the flows arrived in.
    """
    sums: dict[str, list[int]] = {}
    for reply in hashes:
        for field, value in reply.items():
            counter, carry = TAGS[field[0]]
            encoded = field[1:].decode()
            entry = sums.get(encoded)
            if entry is None:
                entry = sums[encoded] = [0, 0]
            entry[counter] += int(value) * LOW if carry else int(value)
    rows = [(*decode_names(encoded), tx, rx) for encoded, (tx, rx) in sums.items()]
    rows.sort(key=_names)
    return rows


def _names(row: Row) -> tuple[str, str, str]:
    return row[0], row[1], row[2]
