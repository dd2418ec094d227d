"""What ``Client.post`` raises: the server's refusal with its status and message, or no answer."""

from __future__ import annotations


class FlowaggError(Exception):
    """Any failure of a request to the service."""


class ServerError(FlowaggError):
    """The server refused the request; ``message`` is its JSON ``error``, ``status`` the HTTP
    status. Nothing of the request was applied (the service applies a request whole or not at
    all), except for a 503 that says otherwise in its message."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


class BadRequest(ServerError):
    """400: the body or a record is invalid (the message names the record and field)."""


class Unauthorized(ServerError):
    """401: tokens are required and none valid was given."""


class Forbidden(ServerError):
    """403: the token's role lacks write, or the request came from another site."""


class TooLarge(ServerError):
    """413: the body is over FLOWAGG_MAX_BODY_BYTES (decompressed): send smaller batches."""


class UnsupportedEncoding(ServerError):
    """415: the server does not take this Content-Encoding (an older server: compress=False)."""


class KeyReused(ServerError):
    """422: the Idempotency-Key was already applied to other flows."""


class KeyLimit(ServerError):
    """429: the server holds as many key-hours as FLOWAGG_MAX_KEYS allows."""


class Unavailable(ServerError):
    """503 on every attempt until the retries ran out."""


class ConnectionFailed(FlowaggError):
    """No answer on every attempt until the retries ran out (refused, reset, timed out). The
    request may have been applied if it was sent: resend it with the same Idempotency-Key."""


BY_STATUS: dict[int, type[ServerError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    413: TooLarge,
    415: UnsupportedEncoding,
    422: KeyReused,
    429: KeyLimit,
    503: Unavailable,
}
