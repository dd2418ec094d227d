"""Idempotency-Keys in Redis: a request's key bound to its flows, only once they were accepted.

A keyed POST first looks its key up (``GET``), binding nothing: a key bound to the same flows is
a retry, answered as the original (even if its hour has left the window since: what it applied is
there, or expired with the hour), and a key bound to other flows is ``422``. Only a request that
passed every check of its content (the window, name lengths) and got room in the buffers binds
its key, with ``SET NX EX <ttl> GET``: so a request refused for its content (``400``) leaves its
key free for the corrected request, as in the durable store. Two requests with one key at once
both see the binding of whichever came first: the same flows go on (their deltas are applied once,
by the markers of commit.py), other flows are ``422``.

The fingerprint is BLAKE2b-128 of the flows' canonical encoding (msgpack of the records in request
order; msgspec writes every integer in its shortest form, so equal flows give equal bytes), with
the number of flows, the original answer.
"""

from __future__ import annotations

import hashlib

import msgspec

from flowagg.schema import Flow
from flowagg.store.base import KeyReused, Unreachable
from flowagg.store.redis import layout
from flowagg.store.redis.client import Call, RedisClient

NOTHING = "nothing"

_encoder = msgspec.msgpack.Encoder()


def fingerprint(flows: list[Flow]) -> str:
    digest = hashlib.blake2b(_encoder.encode(flows), digest_size=16).hexdigest()
    return f"{digest}:{len(flows)}"


class RequestKeys:
    def __init__(self, client: RedisClient, ttl_s: int) -> None:
        self.client, self.ttl_s = client, ttl_s

    def lookup(self, key: str, print_: str, deadline: float) -> bool:
        """True if ``key`` is bound to these flows (a retry), False if it is free; ``KeyReused``
        if it is bound to other flows. Binds nothing."""
        name = layout.request_key(key)
        call = Call(name, ("GET", name))
        return self._run(call, key, print_, deadline)

    def bind(self, key: str, print_: str, deadline: float) -> bool:
        """Bind ``key`` to these flows; True if it was already bound to them, ``KeyReused`` if
        to other flows."""
        name = layout.request_key(key)
        call = Call(name, ("SET", name, print_, "NX", "EX", self.ttl_s, "GET"), write=True)
        return self._run(call, key, print_, deadline)

    def _run(self, call: Call, key: str, print_: str, deadline: float) -> bool:
        self.client.execute([call], deadline, resend_unknown=True)  # both are idempotent
        if call.state != "done":
            raise Unreachable(f"cannot check the Idempotency-Key: {call.error}", NOTHING)
        if call.reply is None:
            return False
        if call.reply.decode() != print_:
            raise KeyReused(
                f"Idempotency-Key {key!r} was already used for a request with other flows"
            )
        return True
