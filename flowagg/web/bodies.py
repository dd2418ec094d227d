"""Large request bodies are decoded a few at a time, so that the memory requests take is bounded.

A WSGI middleware in front of the Flask app. Decoding and packing a body takes up to about three
times its size (schema.py decodes a large one a slice at a time, the store keeps a packed copy),
and waitress reads each whole body before the app runs (spooling large ones to a temporary file,
so a waiting body costs no RSS). So a POST /flows whose body is ``SMALL_BODY`` bytes or more
waits until the bodies being decoded leave room for it within ``FLOWAGG_MAX_BODY_BYTES`` in all:
eight clients posting 64 MiB at once take about 180 MiB of the process's memory, one after
another, instead of 1.5 GiB at once. Smaller bodies pass straight through. A body that found no
room within ``BODY_WAIT_S`` is answered ``503`` with ``Retry-After``, nothing applied.
``read_body`` reads a body into memory once, not twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from flowagg.schema import encode

SMALL_BODY = 1024 * 1024  # bodies below this are not held back: 8 threads of them are ~25 MiB
BODY_WAIT_S = 30.0  # how long a large body waits for its turn before a 503


class BodyGate:
    def __init__(self, app: Callable, limit: int, on_refused: Callable[[str], None]) -> None:
        self.app = app
        self.limit = limit  # bytes of large bodies decoded at once (FLOWAGG_MAX_BODY_BYTES)
        self.on_refused = on_refused
        # Guards _taken; `room` is notified when a body is done and gives its bytes back.
        self._mutex = threading.Lock()
        self.room = threading.Condition(self._mutex)
        self._taken = 0

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") != "/flows":
            return self.app(environ, start_response)
        given = environ.get("CONTENT_LENGTH") or ""
        size = min(int(given), self.limit) if given.isdigit() else self.limit  # chunked: any
        if size < SMALL_BODY:
            return self.app(environ, start_response)
        if not self._take(size):
            self.on_refused("overloaded")
            return _unavailable(start_response, size)
        try:
            return list(self.app(environ, start_response))  # the answer is small: made now
        finally:
            with self.room:
                self._taken -= size
                self.room.notify_all()

    def _take(self, size: int) -> bool:
        deadline = time.monotonic() + BODY_WAIT_S
        with self.room:
            while self._taken and self._taken + size > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.room.wait(left)
            self._taken += size
            return True


def _unavailable(start_response: Callable, size: int) -> list[bytes]:
    body = encode(
        {
            "error": f"overloaded: a body of {size} bytes found no room among the large bodies"
            f" being decoded within {BODY_WAIT_S:.0f} s; nothing was applied, retry later"
        }
    )
    start_response(
        "503 SERVICE UNAVAILABLE",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Retry-After", "1"),
        ],
    )
    return [body]


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
