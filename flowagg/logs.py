"""Log output: text (key=value) or JSON lines on stderr, written by one thread, never by a request.

A request thread that writes its own log line makes a blocking system call under the GIL, and
every other thread then queues behind it. So every line -- request lines and the ``flowagg``
logger's records alike -- is appended to one in-memory buffer, and one thread (``flowagg-log``)
writes the buffer to stderr in chunks, as nginx's ``access_log ... buffer=64k flush=1s`` does:
whenever 64 KiB is pending, at least once a second while anything is, at once for a warning or
an error, and on shutdown. If the writer cannot keep up (stderr is a full pipe, a slow disk),
lines beyond ``LIMIT_BYTES`` pending are dropped and counted (``flowagg_log_lines_dropped_total``);
a request is never delayed.

Request lines are built directly from their fields (``access_line``), without a ``LogRecord``.
Both formats escape control characters in every value as ``\\xHH``, so a request path cannot
forge a line, a field or a terminal escape.

The buffer is process-wide, like stderr itself: ``configure`` installs it once as the one
handler of the ``flowagg`` logger and re-points its format and level.

Loggers are named by component, not by module path: ``flowagg`` (start-up), ``flowagg.access``
(request lines), ``flowagg.api``, ``flowagg.store``, ``flowagg.partition``, ``flowagg.durable``,
``flowagg.wal`` and ``flowagg.shutdown``. Log lines and filters on them stay the same when code
moves between modules.
"""

from __future__ import annotations

import atexit
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import msgspec

LOGGER = "flowagg"
ACCESS_LOGGER = "flowagg.access"

FLUSH_BYTES = 64 * 1024  # a chunk is written as soon as this much is pending
FLUSH_INTERVAL_S = 1.0  # and at least this often while anything is
LIMIT_BYTES = 8 * 1024 * 1024  # pending beyond this (the writer is stuck): lines are dropped
CLOSE_TIMEOUT_S = 5.0  # how long close() waits for the last chunk to be written


class LogBuffer:
    """Lines appended by any thread, written by the ``flowagg-log`` thread in chunks."""

    def __init__(
        self,
        stream: Callable[[], TextIO] = lambda: sys.stderr,
        flush_bytes: int = FLUSH_BYTES,
        interval_s: float = FLUSH_INTERVAL_S,
        limit_bytes: int = LIMIT_BYTES,
    ) -> None:
        self._stream = stream  # resolved at each write: tests and servers swap sys.stderr
        self.flush_bytes = flush_bytes
        self.interval_s = interval_s
        self.limit_bytes = limit_bytes
        # One mutex guards every field below.
        self._mutex = threading.Lock()
        # Notified by the first line after a write (the interval starts), when a chunk is due
        # (flush_bytes pending, an urgent line, flush()) and by close(); the writer waits on it.
        self.due = threading.Condition(self._mutex)
        # Notified by the writer after each chunk; flush() waits on it.
        self.written = threading.Condition(self._mutex)
        self._lines: list[str] = []
        self._bytes = 0  # characters pending, a close enough measure of bytes
        self._urgent = False  # a pending line must go out now
        self._appended = 0  # lines appended since start
        self._done = 0  # lines written (or given up on) since start
        self._dropped = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def dropped(self) -> int:
        """Lines dropped because too much was pending, since start."""
        with self._mutex:
            return self._dropped

    def append(self, line: str, urgent: bool = False) -> bool:
        """Queue one line (newline included); never waits for I/O. False if it was dropped.

        Before ``start`` and after ``close`` there is no writer: the line is written at once.
        """
        with self._mutex:
            if self._thread is None or self._closed:
                direct = True
            elif self._bytes + len(line) > self.limit_bytes:  # the writer is stuck
                self._dropped += 1
                return False
            else:
                direct = False
                first = not self._lines  # wakes the writer to start its interval
                self._lines.append(line)
                self._bytes += len(line)
                self._appended += 1
                if urgent:
                    self._urgent = True
                if first or urgent or self._bytes >= self._chunk_bytes():
                    self.due.notify()
        if direct:
            self._write([line])
        return True

    def _chunk_bytes(self) -> int:
        # Caller holds the mutex. A chunk is due at flush_bytes, or sooner under a small limit.
        return min(self.flush_bytes, self.limit_bytes // 2)

    def start(self) -> None:
        with self._mutex:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="flowagg-log", daemon=True)
            self._thread.start()

    def flush(self, timeout: float | None = CLOSE_TIMEOUT_S) -> bool:
        """Wait until every line appended so far is written; False if not within ``timeout``."""
        with self._mutex:
            goal = self._appended
            self._urgent = True
            self.due.notify()
            return self.written.wait_for(lambda: self._done >= goal or self._closed, timeout)

    def close(self, timeout: float | None = CLOSE_TIMEOUT_S) -> bool:
        """Write what is pending and stop the writer; later lines are written directly."""
        with self._mutex:
            thread, self._closed = self._thread, True
            self.due.notify()
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        while True:
            with self.due:
                deadline = time.monotonic() + self.interval_s
                while not self._closed and not self._urgent and self._bytes < self._chunk_bytes():
                    if not self._lines:  # nothing pending: no deadline to keep
                        self.due.wait()
                        deadline = time.monotonic() + self.interval_s
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.due.wait(left)
                lines, self._lines = self._lines, []
                self._bytes, self._urgent = 0, False
                closing = self._closed
            if lines:
                self._write(lines)
            with self._mutex:
                self._done += len(lines)
                self.written.notify_all()
            if closing:
                with self._mutex:
                    if not self._lines:
                        return

    def _write(self, lines: list[str]) -> None:
        try:
            stream = self._stream()
            stream.write("".join(lines))
            stream.flush()
        except Exception:  # a log that cannot be written must not take the service down
            with self._mutex:
                self._dropped += len(lines)


# -- formats -------------------------------------------------------------------------------------

# Control characters (C0, DEL, C1): what could end a line, forge a field or drive a terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escape(match: re.Match) -> str:
    return f"\\x{ord(match.group()):02x}"


def escape(text: str) -> str:
    """``text`` with every control character written as ``\\xHH``."""
    return _CONTROL.sub(_escape, text) if _CONTROL.search(text) else text


def _clean(value: Any) -> Any:
    """A logged value with control characters escaped in every string inside it."""
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {escape(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


_json = msgspec.json.Encoder(enc_hook=str)

# The last whole second and its text, replaced as one tuple: one strftime per second.
_second: list[tuple[int, str]] = [(-1, "")]


def timestamp(now: float) -> str:
    whole = int(now)
    cached_whole, text = _second[0]
    if cached_whole != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second[0] = (whole, text)
    return f"{text}.{int((now - whole) * 1000):03d}Z"


def _text(value: Any) -> str:
    if type(value) in (int, float):  # the common case
        return str(value)
    text = value if isinstance(value, str) else _json.encode(_clean(value)).decode()
    text = escape(text)
    if not text or " " in text or '"' in text:
        return _json.encode(text).decode()
    return text


def text_line(
    now: float, level: str, logger: str, message: str, fields: dict, trace: str | None = None
) -> str:
    """``ts level logger message key=value ...``, then a traceback's lines, indented so that
    none of them can pass for a log line."""
    parts = [timestamp(now), level, logger, escape(message)]
    parts += [f"{escape(k)}={_text(v)}" for k, v in fields.items()]
    line = " ".join(parts) + "\n"
    if trace is not None:
        line += "".join(f"    {escape(part)}\n" for part in trace.splitlines())
    return line


def json_line(
    now: float, level: str, logger: str, message: str, fields: dict, trace: str | None = None
) -> str:
    """One JSON object: ts, level, logger, msg, the fields, and ``exc`` with a traceback."""
    line = {"ts": timestamp(now), "level": level, "logger": logger, "msg": escape(message)}
    line.update(_clean(fields))
    if trace is not None:
        line["exc"] = trace  # JSON escapes its newlines; it is ours, not a client's
    return _json.encode(line).decode() + "\n"


FORMATS = {"text": text_line, "json": json_line}
_formatter = logging.Formatter()


class BufferedHandler(logging.Handler):
    """The ``flowagg`` logger's one handler: records become lines in the buffer; warnings and
    errors are written at once by the writer thread."""

    def __init__(self, buffer: LogBuffer) -> None:
        super().__init__()
        self.buffer = buffer
        self.line = text_line

    def emit(self, record: logging.LogRecord) -> None:
        try:
            trace = _formatter.formatException(record.exc_info) if record.exc_info else None
            line = self.line(
                record.created,
                record.levelname.lower(),
                record.name,
                record.getMessage(),
                getattr(record, "fields", {}),
                trace,
            )
            self.buffer.append(line, urgent=record.levelno >= logging.WARNING)
        except Exception:
            self.handleError(record)


def _installed() -> BufferedHandler:
    logger = logging.getLogger(LOGGER)
    for handler in logger.handlers:
        if isinstance(handler, BufferedHandler):
            return handler
    buffer = LogBuffer()
    buffer.start()
    atexit.register(buffer.close)
    handler = BufferedHandler(buffer)
    logger.addHandler(handler)
    return handler


# waitress logs from its I/O thread ("Task queue depth is ..." under load): through the buffer
# too, or a full stderr would stop the thread that serves every connection.
SERVER_LOGGER = "waitress"
# waitress warns of its task queue at every request that finds no idle thread: under a steady
# load that is one urgent line per request, and building and writing them cost the service more
# than a tenth of its GIL. One such line every QUEUE_WARNING_EVERY_S says the same.
QUEUE_LOGGER = "waitress.queue"
QUEUE_WARNING_EVERY_S = 10.0


class OncePer(logging.Filter):
    """Lets one record through every ``interval_s``; that one says how many it stands for."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next = float("-inf")
        self._held = 0  # records filtered out since the last one let through

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        with self._lock:
            if now < self._next:
                self._held += 1
                return False
            self._next = now + self.interval_s
            held, self._held = self._held, 0
        if held:
            record.msg = f"{record.getMessage()} (and {held} like it since the last one shown)"
            record.args = None
        return True


def configure(fmt: str, level: str, limit_bytes: int = LIMIT_BYTES) -> LogBuffer:
    """Install (or re-point) the one flowagg handler and return its buffer. Records do not also
    go to the root logger, so a server that configured root logging does not print them twice."""
    handler = _installed()
    handler.line = FORMATS[fmt]
    handler.buffer.limit_bytes = limit_bytes
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level.upper())
    logger.propagate = False
    server = logging.getLogger(SERVER_LOGGER)
    if handler not in server.handlers:
        server.addHandler(handler)
        server.propagate = False
    queue = logging.getLogger(QUEUE_LOGGER)
    if not any(isinstance(f, OncePer) for f in queue.filters):
        queue.addFilter(OncePer(QUEUE_WARNING_EVERY_S))
    return handler.buffer


def flush(timeout: float | None = CLOSE_TIMEOUT_S) -> bool:
    """Write every line logged so far (tests read stderr; shutdown)."""
    return _installed().buffer.flush(timeout)


class AccessLog:
    """Request lines of one app: a line per request, built from its fields, into the buffer."""

    def __init__(self, buffer: LogBuffer, fmt: str) -> None:
        self.buffer = buffer
        self.json = fmt == "json"
        self._logger = logging.getLogger(ACCESS_LOGGER)

    @property
    def enabled(self) -> bool:
        return self._logger.isEnabledFor(logging.INFO)

    def write(
        self,
        method: str,
        path: str,
        status: int,
        duration_ms: float,
        request_id: str,
        accepted: int | None = None,
        token: str | None = None,
    ) -> None:
        """One request line. ``request_id`` and ``token`` (a token's name) must be plain (no
        spaces, quotes or controls: the request log and the tokens file make sure); the method
        and path are escaped like any logged value."""
        now, duration = time.time(), round(duration_ms, 3)
        if self.json:
            fields = {"method": method, "path": path, "status": status}
            fields.update(duration_ms=duration, request_id=request_id)
            if accepted is not None:
                fields["accepted"] = accepted
            if token is not None:
                fields["token"] = token
            line = json_line(now, "info", ACCESS_LOGGER, "request", fields)
        else:  # the text line without the generic field loop: this runs once per request
            line = (
                f"{timestamp(now)} info {ACCESS_LOGGER} request method={_text(method)}"
                f" path={_text(path)} status={status} duration_ms={duration}"
                f" request_id={request_id}"
                + ("" if accepted is None else f" accepted={accepted}")
                + ("\n" if token is None else f" token={token}\n")
            )
        self.buffer.append(line)
