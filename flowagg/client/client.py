"""``Client``: POST batches of flows to a flowagg service, compressed, over kept-alive
connections, retrying what may be retried.

Retried, with exponential backoff and full jitter (and never sooner than ``Retry-After``): a
connection that could not be made or broke before the answer (refused, reset, timed out), and
``502``, ``503``, ``504``. Every attempt of one ``post`` carries the same ``Idempotency-Key``
(a random one when none is given), so against a server that keeps keys (a data dir or Redis)
a retry of a request that was applied after all is not applied twice. Any other refusal raises
the ``ServerError`` of its status at once, with the server's message.
"""

from __future__ import annotations

import email.utils
import random
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import msgspec
import urllib3

from flowagg.client.errors import BY_STATUS, ConnectionFailed, ServerError, Unavailable

WINDOW_HEADER = "Flowagg-Idempotency-Window"  # seconds keys are kept; 0: not kept
RETRIED_STATUSES = frozenset({502, 503, 504})
GZIP_WBITS = 31  # zlib: a gzip header and trailer
USER_AGENT = "flowagg-client/1"

_encoder = msgspec.json.Encoder()
_answer = msgspec.json.Decoder()

# Called before each wait for a retry: (attempt number from 1, delay in seconds, the reason).
OnRetry = Callable[[int, float, str], None]


class Client:
    """A flowagg service at ``url`` (``http://host:port``, or https), with an optional bearer
    ``token`` (role write or admin).

    ``compress``: gzip bodies (level ``level``). ``retry_for``: seconds after the first attempt
    past which no retry starts (``None``: retry for ever). ``timeout``: seconds for an answer
    once the request is sent (a POST waits for the server's fsync). ``ca_certs``: a CA bundle
    for https. Not thread-safe: one per thread.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        compress: bool = True,
        level: int = 1,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        retry_for: float | None = 60.0,
        backoff: float = 0.1,
        max_backoff: float = 10.0,
        ca_certs: str | None = None,
        on_retry: OnRetry | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
        self.url = url.rstrip("/")
        self.compress = compress
        self.level = level
        self.retry_for = retry_for
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.on_retry = on_retry
        self.retries = 0  # retries made, over every call
        # Seconds the server keeps Idempotency-Keys (0: not kept), once an answer has said.
        self.idempotency_window: int | None = None
        self._headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._pool = urllib3.PoolManager(
            num_pools=1,
            maxsize=1,
            retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=timeout),
            ca_certs=ca_certs,
        )
        self._random = random.Random()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.clear()

    def post(self, flows: Sequence[Any], idempotency_key: str | None = None) -> int:
        """POST ``flows`` (dicts or structs with the six fields) as one request; returns the
        number accepted. Raises a ``ServerError`` subclass for a refusal, ``Unavailable`` or
        ``ConnectionFailed`` once retries ran out."""
        return self.post_body(_encoder.encode(flows), idempotency_key)

    def post_body(self, body: bytes, idempotency_key: str | None = None) -> int:
        """As ``post``, for a body already encoded as a JSON array."""
        headers = dict(self._headers)
        headers["Idempotency-Key"] = idempotency_key or uuid.uuid4().hex
        if self.compress:
            body = zlib.compress(body, self.level, GZIP_WBITS)
            headers["Content-Encoding"] = "gzip"
        response = self._send("POST", "/flows", body, headers)
        return _decode(response)["accepted"]

    def probe(self) -> int | None:
        """Ask the server (``GET /healthz``, which needs no token) how long it keeps
        Idempotency-Keys: seconds, 0 if it keeps none, None if it does not say."""
        self._send("GET", "/healthz", None, {"User-Agent": USER_AGENT})
        return self.idempotency_window

    def _send(self, method: str, path: str, body: bytes | None, headers: dict) -> Any:
        started = time.monotonic()
        attempt = 0
        while True:
            retry_after = None
            try:
                response = self._pool.request(
                    method, self.url + path, body=body, headers=headers, redirect=False
                )
            except urllib3.exceptions.SSLError as exc:  # a certificate will not fix itself
                raise ConnectionFailed(f"{method} {self.url}{path}: {exc}") from None
            except urllib3.exceptions.HTTPError as exc:
                reason = _reason(exc)
                failure: Exception = ConnectionFailed(f"{method} {self.url}{path}: {reason}")
            else:
                window = response.headers.get(WINDOW_HEADER)
                if window is not None and window.isdigit():
                    self.idempotency_window = int(window)
                if response.status < 300:
                    return response
                message = _message(response)
                retry_after = _retry_after(response.headers.get("Retry-After"))
                kind = BY_STATUS.get(response.status, ServerError)
                if response.status not in RETRIED_STATUSES:
                    raise kind(response.status, message, retry_after)
                reason = f"{response.status}: {message}"
                failure = Unavailable(response.status, message, retry_after)
            attempt += 1
            cap = min(self.max_backoff, self.backoff * 2 ** min(attempt - 1, 30))
            delay = (retry_after or 0.0) + self._random.uniform(0, cap)
            if self.retry_for is not None and time.monotonic() + delay - started > self.retry_for:
                raise failure
            self.retries += 1
            if self.on_retry is not None:
                self.on_retry(attempt, delay, reason)
            time.sleep(delay)


def _decode(response: Any) -> dict:
    try:
        value = _answer.decode(response.data)
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("accepted"), int):
        raise ServerError(response.status, f"unexpected answer: {response.data[:200]!r}")
    return value


def _message(response: Any) -> str:
    """The server's JSON ``error``, else the answer's text (a proxy's page, say), shortened."""
    try:
        value = _answer.decode(response.data)
        if isinstance(value, dict) and isinstance(value.get("error"), str):
            return value["error"]
    except msgspec.DecodeError:
        pass
    text = response.data.decode("utf-8", "replace").strip()
    return (text[:300] + "...") if len(text) > 300 else (text or response.reason or "")


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now: a number of seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _reason(exc: Exception) -> str:
    """The innermost cause of a urllib3 error, in a few words."""
    reason = getattr(exc, "reason", None) or exc
    while getattr(reason, "reason", None) is not None and reason is not reason.reason:
        reason = reason.reason
    return str(reason)
