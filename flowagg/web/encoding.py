"""A POST body as sent, or gzip-decompressed, bounded by FLOWAGG_MAX_BODY_BYTES either way.

``Content-Encoding: gzip`` (or ``x-gzip``) bodies are decompressed while they are read, in
steps of at most ``STEP`` bytes of input, and the output is cut at the limit: a body that
decompresses to more than FLOWAGG_MAX_BODY_BYTES is refused (413) after at most that many
bytes plus one were produced, never holding the rest (a gzip bomb of gigabytes costs the limit).
A stream that is not gzip, is cut short or has bytes after its end is 400; concatenated gzip
members are one body (RFC 1952). ``identity`` (or no header) is the body as is; any other
coding is 415, answered with ``Accept-Encoding: gzip``.
"""

from __future__ import annotations

import zlib

STEP = 64 * 1024  # compressed bytes read and inflated at a time
GZIP = 16 + zlib.MAX_WBITS  # zlib's wbits for a gzip header and trailer
CODINGS = ("gzip", "x-gzip")  # x-gzip: the same coding by its old name (RFC 9110 8.4.1.3)


class UnsupportedEncoding(Exception):
    """A Content-Encoding other than gzip or identity: 415."""


class TooLarge(Exception):
    """The body decompresses to more than the limit: 413."""


class CorruptBody(ValueError):
    """The body is not the gzip stream its Content-Encoding says: 400."""


def coding(header: str | None) -> str | None:
    """``"gzip"`` or ``None`` (identity) for a Content-Encoding header; else UnsupportedEncoding."""
    if header is None:
        return None
    given = [c.strip().lower() for c in header.split(",")]
    codings = [c for c in given if c not in ("identity", "")]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in CODINGS:
        return "gzip"
    raise UnsupportedEncoding(
        f"Content-Encoding {header.strip()!r} is not supported; send gzip or identity"
    )


def gunzip_body(stream, limit: int) -> bytearray:
    """The gzip body of ``stream`` (a file-like object whose size the server already bounded),
    decompressed, at most ``limit`` bytes."""
    return gunzip(iter(lambda: stream.read(STEP), b""), limit)


def gunzip(chunks, limit: int) -> bytearray:
    """The decompressed concatenation of the gzip members in ``chunks``, at most ``limit``
    bytes: TooLarge as soon as one more byte comes out, CorruptBody for a broken stream."""
    out = bytearray()
    inflater = zlib.decompressobj(GZIP)
    for chunk in chunks:
        pending = chunk
        while pending:
            if inflater.eof:  # the next member, or bytes after the stream
                inflater = zlib.decompressobj(GZIP)
            try:  # never more than one byte past the limit (room is at least 1: 0 is no limit)
                out += inflater.decompress(pending, limit + 1 - len(out))
            except zlib.error as exc:
                raise CorruptBody(f"body is not a valid gzip stream: {exc}") from None
            if len(out) > limit:
                raise TooLarge(f"body exceeds the limit of {limit} bytes once decompressed")
            pending = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
    if not inflater.eof:
        raise CorruptBody("body is not a valid gzip stream: it ends before the stream does")
    return out
