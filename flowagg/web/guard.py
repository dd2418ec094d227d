"""Who may do what: bearer tokens with roles, and no writes from other sites' pages.

A WSGI middleware in front of the Flask app, so that a refused request costs no routing:

* With ``FLOWAGG_TOKENS_FILE`` set, every request but ``/healthz`` and ``/readyz`` needs
  ``Authorization: Bearer <token>``: without a valid one ``401`` with ``WWW-Authenticate:
  Bearer``; with a token whose role lacks the permission ``403``. A POST needs ``write``, any
  other request ``read`` (``admin`` has both). The token's name goes to the access line and
  scopes Idempotency-Keys (``TOKEN`` in the environ); the token itself is never logged.
* Always (open mode too), a POST whose ``Origin`` header is neither the service's own origin
  nor one of ``FLOWAGG_ALLOWED_ORIGINS`` is ``403``: a page elsewhere, in a browser inside the
  network, cannot write (a ``text/plain`` POST needs no CORS preflight, so CORS alone would not
  stop it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence

from flowagg.schema import encode
from flowagg.tokens import Tokens

TOKEN = "flowagg.token"  # environ key: the name of the request's token
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": "80", "https": "443"}

Refusal = Callable[[str], None]  # counts a refused POST /flows by reason


def _origin(scheme: str, host: str) -> str:
    """scheme://host[:port], lower case, without the scheme's default port."""
    host = host.strip().lower()
    name, sep, port = host.rpartition(":")
    if sep and port == DEFAULT_PORTS.get(scheme) and "]" not in port:
        host = name
    return f"{scheme}://{host}"


class Guard:
    def __init__(
        self,
        app: Callable,
        tokens: Tokens | None,
        allowed_origins: Iterable[str],
        on_refused: Refusal,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.allowed = {
            _origin(o.partition("://")[0].lower(), o.partition("://")[2]) for o in allowed_origins
        }
        self.on_refused = on_refused

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        origin = environ.get("HTTP_ORIGIN")
        if method not in SAFE_METHODS and origin is not None and not self._same_site(environ):
            self._refused(method, path, "forbidden")
            return _refuse(
                start_response,
                403,
                f"a {method} from the web origin {origin!r} is refused: only the service's own"
                " origin and FLOWAGG_ALLOWED_ORIGINS may write",
            )
        if self.tokens is not None and path not in OPEN_PATHS:
            scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else ""
            found = self.tokens.find(given) if given else None
            if found is None:
                self._refused(method, path, "unauthorized")
                challenge = 'Bearer realm="flowagg"' + (', error="invalid_token"' if given else "")
                return _refuse(
                    start_response,
                    401,
                    "a valid bearer token is required (Authorization: Bearer <token>)",
                    [("WWW-Authenticate", challenge)],
                )
            needed = "read" if method in SAFE_METHODS else "write"
            if not found.may(needed):
                self._refused(method, path, "forbidden")
                return _refuse(
                    start_response,
                    403,
                    f"the token {found.name!r} has the role {found.role!r}; {method} {path}"
                    f" needs {needed}",
                )
            environ[TOKEN] = found.name
        return self.app(environ, start_response)

    def _refused(self, method: str, path: str, reason: str) -> None:
        if method == "POST" and path == "/flows":
            self.on_refused(reason)

    def _same_site(self, environ: dict) -> bool:
        origin = environ["HTTP_ORIGIN"]
        scheme, sep, host = origin.partition("://")
        if not sep:
            return False  # "null" (a sandboxed page, a file) or garbage
        given = _origin(scheme.lower(), host)
        own_host = environ.get("HTTP_HOST") or (
            f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
        )
        own = _origin(environ.get("wsgi.url_scheme", "http"), own_host)
        return given == own or given in self.allowed


def _refuse(
    start_response: Callable, status: int, message: str, headers: list | None = None
) -> list[bytes]:
    body = encode({"error": message})
    reason = {401: "UNAUTHORIZED", 403: "FORBIDDEN"}[status]
    start_response(
        f"{status} {reason}",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *(headers or []),
        ],
    )
    return [body]


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def waitress_hosts(argv: Sequence[str]) -> list[str]:
    """The hosts ``waitress-serve`` listens on, from its command line (0.0.0.0 by default)."""
    hosts: list[str] = []
    unix = False
    args = list(argv)
    for i, arg in enumerate(args):
        for option in ("--host", "--listen"):
            value = None
            if arg.startswith(option + "="):
                value = arg[len(option) + 1 :]
            elif arg == option and i + 1 < len(args):
                value = args[i + 1]
            if value is not None:
                hosts.append(value.rpartition(":")[0] if option == "--listen" else value)
        unix |= arg.startswith("--unix-socket")
    return hosts or ([] if unix else ["0.0.0.0"])
