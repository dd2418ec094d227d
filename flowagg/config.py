"""Settings: every default in one place, overridden by ``FLOWAGG_*`` environment variables.

Each setting is a Flask config key of the same name as its environment variable. Values from the
environment and from a test config pass through the same parser, so ``FLOWAGG_PARTITIONS=0`` or
``=abc`` stops start-up with one line naming the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flowagg.hostmemory import default_memory_limit

PREFIX = "FLOWAGG_"


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the variable."""


def _int_at_least(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        if isinstance(raw, bool):
            raise ValueError("expected an integer")
        if isinstance(raw, str):
            text = raw.strip()
            if not text.isascii() or not text.lstrip("-").isdigit():
                raise ValueError("expected an integer")
            raw = int(text)
        if not isinstance(raw, int):
            raise ValueError("expected an integer")
        if raw < minimum:
            raise ValueError(f"must be >= {minimum}")
        if maximum is not None and raw > maximum:
            raise ValueError(f"must be <= {maximum}")
        return raw

    return parse


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Unset (None) or empty means None; anything else goes through ``parse``."""

    def parse_optional(raw: Any) -> Any:
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        return parse(raw)

    return parse_optional


def _one_of(*choices: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return parse


def _directory(raw: Any) -> str | None:
    """A directory path (created on start-up if missing); None or '' leaves it unset."""
    if raw is None:
        return None
    if not isinstance(raw, str | os.PathLike):
        raise ValueError("expected a directory path")
    path = os.fspath(raw).strip()
    if path and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError("exists and is not a directory")
    return path or None


def _file(raw: Any) -> str:
    """A path to a file that exists (read at start-up)."""
    if not isinstance(raw, str | os.PathLike):
        raise ValueError("expected a file path")
    path = os.fspath(raw).strip()
    if not os.path.isfile(path):
        raise ValueError("no such file")
    return path


def _origins(raw: Any) -> tuple[str, ...]:
    """Comma-separated origins such as https://console.example.com (scheme, host, port)."""
    if isinstance(raw, tuple | list):
        raw = ",".join(raw)
    origins = tuple(o.strip().rstrip("/") for o in str(raw).split(",") if o.strip())
    for origin in origins:
        scheme, sep, rest = origin.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
            raise ValueError(f"{origin!r} is not an origin like https://host[:port]")
    return origins


def _redis_url(raw: Any) -> str | None:
    """redis://[user:password@]host[:port]; None or '' leaves it unset."""
    if raw is None:
        return None
    url = str(raw).strip()
    if not url:
        return None
    parsed = urlsplit(url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise ValueError("expected redis://host:port")
    try:
        parsed.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        raise ValueError("expected redis://host:port with a numeric port") from None
    return url


# Units of a size: decimal (kB, MB, GB, TB) and binary (KiB, MiB, GiB, TiB; K, M, G, T too).
_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_SIZE = re.compile(r"([0-9]+)\s*([a-z]*)")


def _size(minimum: int) -> Callable[[Any], int]:
    """A number of bytes, whole: ``268435456``, ``256MiB``, ``256M`` (binary), ``2GB``."""

    def parse(raw: Any) -> int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        else:
            match = _SIZE.fullmatch(str(raw).strip().lower())
            if match is None or match.group(2) not in _UNITS:
                raise ValueError("expected a size such as 268435456, 256MiB or 2GB")
            value = int(match.group(1)) * _UNITS[match.group(2)]
        if value < minimum:
            raise ValueError(f"must be >= {minimum} bytes")
        return value

    return parse


@dataclass(frozen=True)
class Setting:
    name: str  # environment variable and config key
    default: Any
    parse: Callable[[Any], Any]
    help: str  # one line for docs/configuration.md's table


SETTINGS = (
    Setting(
        "FLOWAGG_PARTITIONS",
        8,
        _int_at_least(1),
        "Number of partitions; flows of hour H go to partition H % N.",
    ),
    Setting(
        "FLOWAGG_BUFFER_CAPACITY",
        262_144,
        _int_at_least(1),
        "Flows each partition's ring buffer holds before POSTs wait for the drainer.",
    ),
    Setting(
        "FLOWAGG_MAX_BODY_BYTES",
        64 * 1024 * 1024,
        _int_at_least(1),
        "Largest accepted POST body in bytes; larger bodies get 413 unread.",
    ),
    Setting(
        "FLOWAGG_ENQUEUE_TIMEOUT_MS",
        2_000,
        _int_at_least(0),
        "How long a POST waits for room in a full buffer before answering 503 (nothing applied).",
    ),
    Setting(
        "FLOWAGG_RETENTION_HOURS",
        None,
        _optional(_int_at_least(0)),
        "Keep the hours since the Unix epoch from the clock's hour minus this; older hours are"
        " dropped, and POSTs for them get 400. Unset keeps everything.",
    ),
    Setting(
        "FLOWAGG_MAX_FUTURE_HOURS",
        None,
        _optional(_int_at_least(0)),
        "Accept hours up to the clock's hour plus this; later ones get 400. Unset: 1 with"
        " FLOWAGG_RETENTION_HOURS, no bound without.",
    ),
    Setting(
        "FLOWAGG_MAX_KEYS",
        20_000_000,
        # An hour's table holds at most 2**31 - 1 keys (TableFull beyond): within this budget,
        # which is exact near its limit, no merge of an accepted request can find its hour full.
        _int_at_least(1, 2**31 - 1),
        "Key-hours held in all; a POST that would add more is refused whole with 429.",
    ),
    Setting(
        "FLOWAGG_MAX_MEMORY_BYTES",
        None,
        _optional(_size(1024 * 1024)),
        "Bytes the native tables may allocate (a size: 268435456, 256MiB, 2GB); a POST that"
        " would take them past it is refused whole with 429. Unset: a quarter of the memory"
        " the process may use (its cgroup's limit, else physical memory).",
    ),
    Setting(
        "FLOWAGG_MAX_NAME_BYTES",
        1024,
        _int_at_least(1),
        "Longest src_app, dest_app or vpc_id in bytes of UTF-8; a longer one is 400.",
    ),
    Setting(
        "FLOWAGG_TOKENS_FILE",
        None,
        _optional(_file),
        "Bearer tokens, one 'NAME ROLE sha256:HEX' per line (roles read, write, admin); unset"
        " leaves the service open.",
    ),
    Setting(
        "FLOWAGG_ALLOWED_ORIGINS",
        None,
        _optional(_origins),
        "Web origins besides the service's own from which a POST is accepted (comma-separated).",
    ),
    Setting(
        "FLOWAGG_READY_BUFFER_PERCENT",
        90,
        _int_at_least(1, 100),
        "/readyz answers 503 while any partition's buffer is fuller than this percentage.",
    ),
    Setting(
        "FLOWAGG_LOG_FORMAT",
        "text",
        _one_of("text", "json"),
        "Log lines as key=value text or as JSON objects, one per line.",
    ),
    Setting(
        "FLOWAGG_LOG_LEVEL",
        "info",
        _one_of("debug", "info", "warning", "error"),
        "Least severe level logged; request lines are info.",
    ),
    Setting(
        "FLOWAGG_LOG_BUFFER_BYTES",
        8 * 1024 * 1024,
        _int_at_least(1024),
        "Log lines held for the log writer; beyond this (stderr stuck) lines are dropped and"
        " counted, never a request delayed.",
    ),
    Setting(
        "FLOWAGG_READ_TIMEOUT_MS",
        10_000,
        _int_at_least(1),
        "How long a GET waits for its partition to apply earlier POSTs before answering 503.",
    ),
    Setting(
        "FLOWAGG_MAX_QUERY_HOURS",
        744,
        _int_at_least(1),
        "Most hours one range query (GET /flows/top, /flows/series) may span (744: 31 days).",
    ),
    Setting(
        "FLOWAGG_MAX_QUERY_ROWS",
        50_000_000,
        _int_at_least(1),
        "Most key-hours one range query may scan; a larger one is refused (422) before any work.",
    ),
    # Durability (flowagg/store/durable/); all but the first matter only when a data dir is set.
    Setting(
        "FLOWAGG_DATA_DIR",
        None,
        _directory,
        "Directory for the write-ahead log and snapshots; unset keeps everything in memory.",
    ),
    Setting(
        "FLOWAGG_FSYNC",
        "always",
        _one_of("always", "interval", "never"),
        "When the log is fsynced: before each answer (group commit), every interval, or never.",
    ),
    Setting(
        "FLOWAGG_FSYNC_INTERVAL_MS",
        1000,
        _int_at_least(1),
        "With FLOWAGG_FSYNC=interval, the longest time between fsyncs (what a crash may lose).",
    ),
    Setting(
        "FLOWAGG_SNAPSHOT_BYTES",
        64 * 1024 * 1024,
        _int_at_least(1),
        "Log size that triggers a snapshot of all tables and a fresh log (bounds restart time).",
    ),
    Setting(
        "FLOWAGG_IDEMPOTENCY_TTL_S",
        24 * 60 * 60,
        _int_at_least(1),
        "How long an Idempotency-Key is remembered after its request was applied.",
    ),
    # Scale-out (flowagg/store/redis/): several instances over one Redis or Redis Cluster.
    Setting(
        "FLOWAGG_REDIS_URL",
        None,
        _redis_url,
        "redis://host:port of one Redis node or of any node of a cluster; selects the Redis"
        " store. Not together with FLOWAGG_DATA_DIR.",
    ),
    Setting(
        "FLOWAGG_REDIS_BUCKETS",
        16,
        _int_at_least(1, 16384),
        "Hashes each hour is spread over in Redis (so over the cluster's primaries).",
    ),
    Setting(
        "FLOWAGG_REDIS_TIMEOUT_MS",
        2_000,
        _int_at_least(1),
        "How long one Redis round trip, and a commit's resends after refusals, may take.",
    ),
    Setting(
        "FLOWAGG_REDIS_WAIT_REPLICAS",
        0,
        _int_at_least(0),
        "Replicas of each primary that must have a commit (Redis WAIT) before its POST is"
        " answered 200; 0 does not wait.",
    ),
    Setting(
        "FLOWAGG_REDIS_CACHE_BYTES",
        256 * 1024 * 1024,
        _int_at_least(0),
        "Bytes of recently read hours an instance keeps, checked against Redis on every read"
        " (0 keeps none).",
    ),
)

DEFAULTS = {s.name: s.default for s in SETTINGS}
# Variables of the client side (flowagg ship), which may be set where the server starts too.
CLIENT_ONLY = frozenset({"FLOWAGG_TOKEN"})


def resolve(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> dict:
    """Defaults, then ``FLOWAGG_*`` variables from ``environ``, then ``overrides``; all parsed."""
    values: dict[str, Any] = dict(DEFAULTS)
    for setting in SETTINGS:
        if setting.name in environ:
            values[setting.name] = _parse(setting, environ[setting.name])
    for name, raw in (overrides or {}).items():
        setting = next((s for s in SETTINGS if s.name == name), None)
        values[name] = raw if setting is None else _parse(setting, raw)
    if values.get("FLOWAGG_MAX_MEMORY_BYTES") is None:
        values["FLOWAGG_MAX_MEMORY_BYTES"] = default_memory_limit()
    unknown = sorted(
        k for k in environ if k.startswith(PREFIX) and k not in DEFAULTS and k not in CLIENT_ONLY
    )
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]} (known: {', '.join(DEFAULTS)})")
    if values.get("FLOWAGG_REDIS_URL") and values.get("FLOWAGG_DATA_DIR"):
        raise ConfigError(
            "FLOWAGG_REDIS_URL and FLOWAGG_DATA_DIR are both set: pick the Redis store or the"
            " durable single-node store, not both"
        )
    return values


def for_log(values: Mapping[str, Any]) -> dict:
    """The settings as start-up logs them: a password in FLOWAGG_REDIS_URL is masked."""
    shown = dict(values)
    url = shown.get("FLOWAGG_REDIS_URL")
    if url:
        parts = urlsplit(url)
        if parts.password is not None:
            user = parts.username or ""
            host = parts.netloc.rpartition("@")[2]
            shown["FLOWAGG_REDIS_URL"] = parts._replace(netloc=f"{user}:***@{host}").geturl()
    return shown


def _parse(setting: Setting, raw: Any) -> Any:
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{setting.name}={raw!r}: {exc}") from None
