"""Where the Redis store keeps things: keys, buckets, packed rows, expiry (versioned).

Every key carries the layout's version in its prefix, so a new layout never reads an old one::

    flowagg:v2:h:{T}:H:b                  list: bucket b of hour H (below)
    flowagg:v2:idem:{T}:H:b:c:<key>       string: chunk c of request <key> is in bucket b of H
    flowagg:v2:key:<key>                  string: "<BLAKE2b-128 of the flows>:<N>" of request <key>
    flowagg:v2:{meta}:hours               sorted set: the hours that may hold data, scored by expiry
    flowagg:v2:{meta}:layout              string: version, buckets and retention of the data

The hash tag ``{T}`` puts a bucket and its idempotency markers in one slot, so one function
call updates both atomically. An hour is spread over ``buckets`` lists by the crc32 of the flow
key (the same in every instance, never Python's ``hash()``), and the buckets over the cluster: ``T``
is a short string whose slot is the bucket's, and bucket b of hour H takes slot ``(crc32(D) + b *
16384 / buckets) % 16384`` where D is the hour's day (H // 24), so an hour's buckets sit at even
intervals of the slot space and each primary (which ``redis-cli --cluster create`` gives an equal
range of slots) holds its share of them, 5 or 6 of 16 over 3 primaries. A tag ``{H:b}`` would
leave that to chance: hour 5's 16 buckets fell 8, 4 and 4 on three primaries. Bucket b of every
hour of a day shares one slot, so a commit of flows spread over a day writes bucket b of all its
hours in one call; days move the offset, so data spreads over the slot space as days pass.

A bucket is a Redis list of packed blobs (the native ``table`` module writes and sums them; see
``flowagg/store/native/packed.c`` for the bytes)::

    [header, base chunk 1 .. base chunk k, delta 1, delta 2, ...]      header: "<token>:<k>"

Each group commit appends one delta per bucket it touches (its sums of the bucket's keys), so Redis
does a few commands per bucket and commit, whatever the number of keys: it never reads a counter.
A reader sums every element but the header. A compaction (compaction.py) sums the elements it
read into new base chunks and swaps them in, atomically and at most once (functions.lua). Packed
counters are exact to 2**128, beyond anything a service can sum.

Expiry. With ``FLOWAGG_RETENTION_HOURS`` = R, every write to a bucket of hour H sets its
``EXPIREAT`` to the end of hour H + R plus a margin (``expire_at``): from the hour alone, so no
instance's clock decides when data goes, and Redis deletes it. The margin covers clocks of the
primaries that differ a little; instances answer ``[]`` for an hour below the window anyway.
"""

from __future__ import annotations

import functools
import os
import zlib
from binascii import crc_hqx

VERSION = 2
PREFIX = f"flowagg:v{VERSION}:"
LIBRARY = f"flowagg_v{VERSION}"  # the Redis Functions library, loaded by this versioned name
COMMIT_FUNCTION = f"{LIBRARY}_commit"
COMPACT_FUNCTION = f"{LIBRARY}_compact"
READ_FUNCTION = f"{LIBRARY}_read"
HOURS_FUNCTION = f"{LIBRARY}_hours"
HOURS_KEY = f"{PREFIX}{{meta}}:hours"
LAYOUT_KEY = f"{PREFIX}{{meta}}:layout"

# Packed blobs: at most this many rows, and bytes (but for a single row), in one chunk. Part of
# the layout: a keyed request's retry must cut its rows into the same chunks.
CHUNK_ROWS = 2_000
CHUNK_BYTES = 256 * 1024
SECONDS_PER_HOUR = 3600
EXPIRY_MARGIN_S = 600  # how long a bucket outlives its hour's window


SLOTS = 16384  # Redis Cluster's hash slots
HOURS_PER_SLOT = 24  # hours whose bucket b shares a slot


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
    """The slot of bucket ``bucket`` of ``hour``: even intervals from an offset of the hour's
    day, so that bucket b of every hour of a day shares one slot (one call writes them all)."""
    return (zlib.crc32(str(hour // HOURS_PER_SLOT).encode()) + bucket * SLOTS // buckets) % SLOTS


@functools.lru_cache(maxsize=16384)
def bucket_key(hour: int, bucket: int, buckets: int) -> str:
    return f"{PREFIX}h:{{{slot_tags()[slot_of(hour, bucket, buckets)]}}}:{hour}:{bucket}"


def marker_key(hour: int, bucket: int, buckets: int, chunk: int, idempotency_key: str) -> str:
    tag = slot_tags()[slot_of(hour, bucket, buckets)]
    return f"{PREFIX}idem:{{{tag}}}:{hour}:{bucket}:{chunk}:{idempotency_key}"


def request_key(idempotency_key: str) -> str:
    return f"{PREFIX}key:{idempotency_key}"


def new_header(base_chunks: int = 0) -> str:
    """A bucket list's header: a token no other header has, and how many base chunks follow."""
    return f"{os.urandom(8).hex()}:{base_chunks}"


def base_chunks(header: bytes) -> int:
    """How many base chunks follow a header."""
    return int(header.rpartition(b":")[2])


def layout_record(buckets: int, retention_hours: int | None) -> str:
    """What the data's layout is, as recorded in Redis and compared by every instance."""
    retention = "none" if retention_hours is None else str(retention_hours)
    return f"version={VERSION} buckets={buckets} retention={retention}"


def expire_at(hour: int, retention_hours: int | None) -> int:
    """When bucket keys of ``hour`` expire (unix seconds), 0 for never: the end of the last hour
    whose window still holds ``hour``, plus the margin."""
    if retention_hours is None:
        return 0
    return (hour + retention_hours + 1) * SECONDS_PER_HOUR + EXPIRY_MARGIN_S


def encode_key(src: str, dest: str, vpc: str) -> bytes:
    """A flow key as packed rows write it: each name's byte length (a varint), then its UTF-8."""
    out = bytearray()
    for name in (src, dest, vpc):
        data = name.encode()
        n = len(data)
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        out.append(n)
        out += data
    return bytes(out)


def bucket_of(src: str, dest: str, vpc: str, buckets: int) -> int:
    """The bucket of a flow key: crc32 of its encoding modulo the number of buckets (as
    ``HourTables.pack_buckets`` computes it)."""
    return zlib.crc32(encode_key(src, dest, vpc)) % buckets
