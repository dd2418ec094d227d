"""A Python client for flowagg: ``Client(url, token).post(flows, idempotency_key=None)``.

It encodes a batch (msgspec), compresses it (gzip), keeps connections alive (urllib3) and
retries what may be retried; refusals raise typed errors carrying the server's message. It
imports nothing of the server (``flowagg.web``, ``flowagg.store``, Flask)::

    from flowagg.client import Client, BadRequest

    with Client("http://127.0.0.1:8080", token="...") as client:
        client.post([{"src_app": "web", "dest_app": "db", "vpc_id": "vpc-1",
                      "bytes_tx": 100, "bytes_rx": 300, "hour": 490000}])
"""

from flowagg.client.client import Client
from flowagg.client.errors import (
    BadRequest,
    ConnectionFailed,
    FlowaggError,
    Forbidden,
    KeyLimit,
    KeyReused,
    ServerError,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedEncoding,
)

__all__ = [
    "BadRequest",
    "Client",
    "ConnectionFailed",
    "FlowaggError",
    "Forbidden",
    "KeyLimit",
    "KeyReused",
    "ServerError",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnsupportedEncoding",
]
