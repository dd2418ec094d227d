"""Bearer tokens: the tokens file, its roles, and new tokens for it.

``FLOWAGG_TOKENS_FILE`` holds one token per line, only its hash, never the token::

    # NAME   ROLE   HASH
    agent-7  write  sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
    grafana  read   sha256:...

Roles: ``write`` may POST /flows; ``read`` may GET data, the page and /metrics; ``admin`` may do
both. ``python -m flowagg token NAME ROLE`` prints a new random token and its line for the file.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

ROLES = {"read": {"read"}, "write": {"write"}, "admin": {"read", "write"}}
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HASH = re.compile(r"sha256:([0-9a-f]{64})")


class TokensFileError(ValueError):
    """The tokens file cannot be used; the message names the line."""


@dataclass(frozen=True)
class Token:
    name: str  # goes to the access log and scopes Idempotency-Keys; never the token itself
    role: str
    digest: bytes  # sha256 of the token

    def may(self, permission: str) -> bool:
        return permission in ROLES[self.role]


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Tokens:
    """The tokens of a file; ``find`` compares a presented token with every one in constant
    time, so the answer's timing tells nothing about how close a guess was."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens

    @classmethod
    def load(cls, path: str | Path) -> Tokens:
        tokens: list[Token] = []
        names: set[str] = set()
        for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            parts = text.split()
            where = f"{path}, line {number}"
            if len(parts) != 3:
                raise TokensFileError(f"{where}: expected 'NAME ROLE sha256:HEX'")
            name, role, hashed = parts
            if not NAME.fullmatch(name):
                raise TokensFileError(f"{where}: a name is 1 to 64 of A-Z a-z 0-9 . _ -")
            if name in names:
                raise TokensFileError(f"{where}: the name {name!r} is given twice")
            if role not in ROLES:
                raise TokensFileError(f"{where}: role must be one of {', '.join(ROLES)}")
            found = _HASH.fullmatch(hashed)
            if found is None:
                raise TokensFileError(f"{where}: the hash is 'sha256:' and 64 hex digits")
            names.add(name)
            tokens.append(Token(name, role, bytes.fromhex(found.group(1))))
        if not tokens:
            raise TokensFileError(f"{path}: holds no token")
        return cls(tokens)

    def find(self, token: str) -> Token | None:
        presented = digest(token)
        found = None
        for candidate in self.tokens:  # every one, whatever matched
            if hmac.compare_digest(presented, candidate.digest):
                found = candidate
        return found


def new_token(name: str, role: str) -> tuple[str, str]:
    """A new random token and its line for the tokens file."""
    if not NAME.fullmatch(name):
        raise ValueError("a name is 1 to 64 of A-Z a-z 0-9 . _ -")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    token = secrets.token_urlsafe(32)
    return token, f"{name} {role} sha256:{digest(token).hex()}"
