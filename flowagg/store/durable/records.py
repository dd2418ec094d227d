"""The log record of one accepted request: its flows, its idempotency key, when, a fingerprint.

A record's payload is msgpack ``[flows, key, accepted_at, fingerprint]``, each flow
``[src_app, dest_app, vpc_id, bytes_tx, bytes_rx, hour]``; wal.py frames and checksums it.
"""

from __future__ import annotations

import operator
import zlib
from collections.abc import Sequence

import msgspec

from flowagg.schema import Flow


class LoggedFlow(msgspec.Struct, array_like=True, gc=False):
    """A flow as stored in the log: ``schema.Flow``'s fields in order, as an array.

    Partitions read only these attributes, so replay hands them over as they are.
    """

    src_app: str
    dest_app: str
    vpc_id: str
    bytes_tx: int
    bytes_rx: int
    hour: int


class LogRecord(msgspec.Struct, array_like=True, gc=False):
    """One accepted request: ``[flows, key, accepted_at, fingerprint]`` in msgpack."""

    flows: list[LoggedFlow]
    key: str | None
    accepted_at: float  # unix time, for the idempotency window
    fingerprint: int  # crc32 of the encoded flows when keyed, else 0


_flow_fields = operator.attrgetter(*Flow.__struct_fields__)
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(LogRecord)


def encode_record(flows: Sequence[Flow], key: str | None, now: float) -> tuple[bytes, int]:
    """The log record of a request, and the fingerprint of its flows (0 without a key)."""
    encoded = _encoder.encode(list(map(_flow_fields, flows)))
    fingerprint = zlib.crc32(encoded) if key is not None else 0
    return _encoder.encode((msgspec.Raw(encoded), key, now, fingerprint)), fingerprint


def decode_record(payload: memoryview | bytes) -> LogRecord:
    return _decoder.decode(payload)
