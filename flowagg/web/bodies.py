"""Large request bodies are decoded a few at a time, so that the memory requests take is bounded.

Decoding and packing a body takes up to about three times its size (schema.py decodes a large
one a slice at a time, the store keeps a packed copy). So POST /flows holds a ``BodyGate`` for
its body's size while it reads, decodes and stores it: a body of ``SMALL_BODY`` bytes or more
waits until the bodies being decoded leave room for it within ``FLOWAGG_MAX_BODY_BYTES`` in all,
and eight clients posting 64 MiB at once take about 180 MiB of the process's memory, one after
another, instead of 1.5 GiB at once. Smaller bodies pass straight through. A body that found no
room within ``BODY_WAIT_S`` is answered ``503`` with ``Retry-After`` (``Overloaded``), nothing
applied.

A plain body is counted by its ``Content-Length`` before it is read (waitress spools a large
body to a temporary file, so a waiting one costs no RSS; one of unknown length counts as the
largest); a gzip body by its size once decompressed, which is what its decoding costs.
``read_body`` reads a body into memory once, not twice.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from flowagg.store.base import Overloaded

SMALL_BODY = 1024 * 1024  # bodies below this are not held back: 8 threads of them are ~25 MiB
BODY_WAIT_S = 30.0  # how long a large body waits for its turn before a 503


class BodyGate:
    def __init__(self, limit: int) -> None:
        self.limit = limit  # bytes of large bodies decoded at once (FLOWAGG_MAX_BODY_BYTES)
        # Guards _taken; `room` is notified when a body is done and gives its bytes back.
        self._mutex = threading.Lock()
        self.room = threading.Condition(self._mutex)
        self._taken = 0

    @contextlib.contextmanager
    def hold(self, size: int | None) -> Iterator[None]:
        """Hold room for a body of ``size`` bytes (None: unknown, the largest) while the block
        runs; ``Overloaded`` if there was none within ``BODY_WAIT_S``."""
        size = self.limit if size is None else min(size, self.limit)
        if size < SMALL_BODY:
            yield
            return
        self._take(size)
        try:
            yield
        finally:
            with self.room:
                self._taken -= size
                self.room.notify_all()

    def _take(self, size: int) -> None:
        deadline = time.monotonic() + BODY_WAIT_S
        with self.room:
            while self._taken and self._taken + size > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Overloaded(
                        f"a body of {size} bytes found no room among the large bodies being"
                        f" decoded within {BODY_WAIT_S:.0f} s"
                    )
                self.room.wait(left)
            self._taken += size


def read_body(request: Request) -> bytes:
    """The request's body as one bytes object, read straight from the server's input when its
    length is known: werkzeug's ``get_data()`` gathers it in a bytearray and copies that, which
    holds twice the body at once. A body over ``MAX_CONTENT_LENGTH`` is ``413`` unread."""
    length = request.content_length
    if length is None or request.environ.get("wsgi.input_terminated"):  # chunked
        return request.get_data(cache=False)
    limit = request.max_content_length
    if limit is not None and length > limit:
        raise RequestEntityTooLarge()
    return request.environ["wsgi.input"].read(length) if length else b""
