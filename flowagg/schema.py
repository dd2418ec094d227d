"""The flow record schema, and decoding a POST body into validated records in one pass.

msgspec decodes and validates the whole body in C: types are strict (``true``, ``1.5``, ``"100"``
and ``null`` are not integers), unknown fields are ignored, and the first error comes with its
JSON path. Only on that error path do we look at the body again, to say what value was found: a
skim of the whole body as raw elements (its syntax checked, no value built), then a look at the
one record named. So an invalid body costs no more than a valid one of the same size; building
the whole document to word one error once cost ten times the body in memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import msgspec
from msgspec import Meta

INT64_MAX = 2**63 - 1

Name = Annotated[str, Meta(min_length=1)]
Count = Annotated[int, Meta(ge=0, le=INT64_MAX)]


class Flow(msgspec.Struct, gc=False):
    """One flow record, as posted and as returned (then with summed counters)."""

    src_app: Name
    dest_app: Name
    vpc_id: Name
    bytes_tx: Count
    bytes_rx: Count
    hour: Count


FIELDS = tuple(Flow.__struct_fields__)
NAME_FIELDS = ("src_app", "dest_app", "vpc_id")

# What each field must be, in the words of an error message.
_EXPECTED = {
    **{name: "expected a non-empty string" for name in NAME_FIELDS},
    **{name: f"expected an integer >= 0 and <= {INT64_MAX}" for name in FIELDS[3:]},
}

_decoder = msgspec.json.Decoder(list[Flow])
_skim = msgspec.json.Decoder(list[msgspec.Raw])  # the top-level array's elements, unparsed
_record = msgspec.json.Decoder(dict[str, msgspec.Raw])  # one record's fields, unparsed
_raw = msgspec.json.Decoder(msgspec.Raw)  # checks a document's syntax, builds nothing
_untyped = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_PATH = re.compile(r"^(?P<what>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.S)
_MISSING = re.compile(r"Object missing required field `(?P<field>\w+)`")
_STEP = re.compile(r"\[(\d+)\]|\.(\w+)")


class InvalidBody(ValueError):
    """The body is not a valid batch; the message names the record and field."""


# Bodies from this size on are decoded a slice at a time (``Slices``: SLICE_FLOWS records, or
# fewer that hold SLICE_BYTES of JSON), so that a request never holds all of its records as
# Python objects at once: 850,000 tiny flows of a 64 MiB body take about 60 MiB as records,
# 20,000 flows of 1 KiB names as many, and the store keeps only their packed copy.
LARGE_BODY = 4 * 1024 * 1024
SLICE_FLOWS = 16_384
SLICE_BYTES = 1024 * 1024


class Slices:
    """The records of a large body, decoded and validated one slice at a time as they are
    iterated (``slices()``), each slice's records freed before the next is decoded. Nothing is
    decoded before: a body that is not valid raises ``InvalidBody``, worded as for any body,
    when the slice that shows it is reached, so a store must take nothing before the last.
    Iterating it, or ``list()``, decodes every record at once, for stores that need them all."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def slices(self, cut: Cut) -> Iterator[tuple[int, list[Flow]]]:
        """(index of its first record, the records) for each slice, in order, once (the body is
        let go at the end). ``cut`` finds
        where the body's array can be cut (the native ``array_slices``: offsets, not copies
        of the elements); where it cannot, the body is decoded whole."""
        found = cut(self.body, SLICE_BYTES, SLICE_FLOWS)
        if found is None:
            yield 0, _decode_whole(self.body)
            return
        done = 0
        for start, end, _items in found:
            try:
                flows = _decoder.decode(b"[" + self.body[start:end] + b"]")
            except (msgspec.ValidationError, *_UNREADABLE):
                _decode_whole(self.body)  # words the first problem of the body, as ever
                raise InvalidBody("body is not valid JSON") from None  # (not reached)
            yield done, flows
            done += len(flows)
        self.body = b""  # read once: let the bytes go before the store keeps the packs

    def __iter__(self) -> Iterator[Flow]:
        yield from _decode_whole(self.body)


# How a body's array is cut into slices: (start, end, records) for each, or None if it cannot.
Cut = Callable[[bytes, int, int], "list[tuple[int, int, int]] | None"]


def decode_flows(body: bytes) -> list[Flow] | Slices:
    """Decode and validate a POST body; raise ``InvalidBody`` naming the first problem.

    A body of ``LARGE_BODY`` bytes or more comes back as ``Slices``, decoded and validated as
    the store reads it.
    """
    if len(body) >= LARGE_BODY:
        return Slices(body)
    return _decode_whole(body)


def _decode_whole(body: bytes) -> list[Flow]:
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as exc:
        # The typed pass stops at the first wrong value, possibly before a syntax error further
        # on; skimming the whole body tells which of the two to report.
        try:
            try:
                elements = _skim.decode(body)
            except msgspec.ValidationError:  # not an array: is it well-formed at all?
                _raw.decode(body)
                elements = None
        except _UNREADABLE as syntax:
            raise InvalidBody(_malformed(body, syntax)) from None
        raise InvalidBody(_describe(body, elements, str(exc))) from None
    except _UNREADABLE as exc:
        raise InvalidBody(_malformed(body, exc)) from None


# What a body that is not JSON can raise: malformed syntax, bytes that are not UTF-8 inside a
# string, or nesting deeper than the decoder recurses.
_UNREADABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def _malformed(body: bytes, exc: Exception) -> str:
    if not body.strip():
        return "body is empty; expected a JSON array of flow records"
    if isinstance(exc, UnicodeDecodeError):
        return "body is not valid JSON: a string is not UTF-8"
    if isinstance(exc, RecursionError):
        return "body is not valid JSON: nested too deeply"
    return f"body is not valid JSON: {exc}"


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def _describe(body: bytes, elements: list[msgspec.Raw] | None, message: str) -> str:
    """Rewrite msgspec's message as ``$[3].bytes_tx: expected ..., got "lots"``."""
    match = _PATH.match(message)
    what, path = match.group("what"), match.group("path") or "$"
    missing = _MISSING.match(what)
    if missing:
        return f'{path}: missing required field "{missing.group("field")}"'
    steps = [int(i) if i else key for i, key in _STEP.findall(path)]
    if not steps:
        return f"{path}: expected a JSON array of flow records, got {_show(body)}"
    found = elements[steps[0]] if elements is not None else b"null"
    if len(steps) == 1:
        return f"{path}: expected a flow record object, got {_show(found)}"
    for step in steps[1:]:  # a field of the record: its fields, unparsed
        found = _record.decode(found)[step]
    return f"{path}: {_EXPECTED.get(steps[-1], what)}, got {_show(found)}"


def _show(raw: bytes | msgspec.Raw, limit: int = 60) -> str:
    """A JSON value for an error message: objects and arrays by kind, scalars as written."""
    view = bytes(raw).lstrip()
    if view.startswith(b"{"):
        return "an object"
    if view.startswith(b"["):
        return "an array"
    text = json.dumps(_untyped.decode(view), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."
