"""Log output: one handler on the ``flowagg`` logger, as key=value text or JSON lines.

Structured fields travel in ``extra={"fields": {...}}``; both formats print them after the
message. The handler writes to whatever ``sys.stderr`` is at the time of each record.

Loggers are named by component, not by module path: ``flowagg`` (start-up), ``flowagg.access``
(request lines), ``flowagg.api``, ``flowagg.store``, ``flowagg.partition``, ``flowagg.durable``,
``flowagg.wal`` and ``flowagg.shutdown``. Log lines and filters on them stay the same when code
moves between modules.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER = "flowagg"


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler bound to the current ``sys.stderr``, not the one at creation."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


# The last whole second and its text, replaced as one tuple: one strftime per second.
_second: list[tuple[int, str]] = [(-1, "")]


def _timestamp(record: logging.LogRecord) -> str:
    whole = int(record.created)
    cached_whole, text = _second[0]
    if cached_whole != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second[0] = (whole, text)
    return f"{text}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname.lower(), record.name, record.getMessage()]
        parts += [f"{k}={_text(v)}" for k, v in getattr(record, "fields", {}).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value: Any) -> str:
    if type(value) in (int, float):  # the common case: no JSON round trip
        return str(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (not text or " " in text or '"' in text) else text


def configure(fmt: str, level: str) -> logging.Logger:
    """Install (or re-point) the one flowagg handler; records do not also go to the root logger,
    so a server that configured root logging does not print them twice."""
    logger = logging.getLogger(LOGGER)
    handler = next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        logger.addHandler(handler)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger
