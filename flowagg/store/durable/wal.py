"""The write-ahead log: checksummed records in numbered files, made durable by group commit.

    wal-<generation, 20 digits>.log     file header with magic "FLOWAGGL", then records

Records are framed, checksummed and checked for damage as framing.py describes.

Durability: ``append`` hands the record to the OS, so it survives the process being killed.
``commit`` then waits as the fsync mode promises. In ``always`` mode the first committer to find
records not yet on disk fsyncs everything appended so far while later committers wait for it, then
one of those syncs what arrived meanwhile: concurrent requests share fsyncs (group commit). In
``interval`` mode a thread (``flowagg-fsync``) syncs at most every interval; ``never`` leaves it to
the OS (and to ``close``, which always syncs).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from flowagg.store.durable.framing import FILE_HEADER_SIZE, file_header, frame
from flowagg.store.ringbuffer import deadline_after, remaining

log = logging.getLogger("flowagg.wal")

LOG_MAGIC = b"FLOWAGGL"

FSYNC_MODES = ("always", "interval", "never")

# How long close() waits for the fsync thread to notice, when the caller gives no timeout.
CLOSE_TIMEOUT_S = 30.0


class LogFailed(Exception):
    """A write or fsync failed; the log accepts nothing more until the service restarts."""


# -- files ---------------------------------------------------------------------------------


def log_path(directory: Path, generation: int) -> Path:
    return directory / f"wal-{generation:020d}.log"


def fsync_dir(directory: Path) -> None:
    """Make created, renamed and removed directory entries durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_log(directory: Path, generation: int) -> int:
    """A new, empty log file (header only); returns its descriptor."""
    fd = os.open(log_path(directory, generation), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, file_header(LOG_MAGIC), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


# -- the writer ----------------------------------------------------------------------------


class WriteAheadLog:
    """Appends records to ``wal-<generation>.log`` in ``directory``; see the module docstring.

    The caller serialises ``append`` and ``rotate`` (the durable store's gate does); ``commit``,
    ``sync`` and ``close`` may be called from any thread.
    """

    def __init__(
        self,
        directory: Path,
        generation: int,
        mode: str = "always",
        interval_s: float = 1.0,
        on_fsync: Callable[[float], None] | None = None,
    ) -> None:
        if mode not in FSYNC_MODES:
            raise ValueError(f"fsync mode must be one of {FSYNC_MODES}, got {mode!r}")
        self.directory = Path(directory)
        self.mode = mode
        self.interval_s = interval_s
        self._on_fsync = on_fsync  # told how long each group fsync took
        # One mutex guards every field below.
        self._mutex = threading.Lock()
        # Notified when a sync finishes or fails, and by close(): committers wait on it.
        self.synced = threading.Condition(self._mutex)
        # Notified by close(): the fsync thread waits on it between syncs.
        self.closing = threading.Condition(self._mutex)
        self._generation = generation
        self._fd = _create_log(self.directory, generation)
        self._size = FILE_HEADER_SIZE  # bytes in the current file
        self._retired: list[int] = []  # earlier files' descriptors, closed by the next sync
        self._dir_dirty = True  # the current file's directory entry is not yet durable
        self._appended = 0  # number of the last record appended (records count from 1)
        self._synced = 0  # every record up to this number is on disk
        self._syncing = False  # a thread is fsyncing with the mutex released
        self._failed: BaseException | None = None
        self._write_error: str | None = None  # the last append's error, if it failed
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the ``flowagg-fsync`` thread if the mode needs one (``interval``)."""
        if self.mode == "interval" and self._thread is None:
            self._thread = threading.Thread(
                target=self._run_interval, name="flowagg-fsync", daemon=True
            )
            self._thread.start()

    # -- writing ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes in the current file, header included."""
        with self._mutex:
            return self._size

    @property
    def failure(self) -> str | None:
        """Why the log refuses writes, or None while it is usable."""
        with self._mutex:
            return None if self._failed is None else str(self._failed)

    @property
    def appended(self) -> int:
        with self._mutex:
            return self._appended

    def append(self, payload: bytes) -> int:
        """Write one record (to the OS, not yet to disk); returns its number for ``commit``.

        On a failed write the file is cut back to where the record began and ``LogFailed`` is
        raised: the record is not in the log, and no later record can land after half of it.
        """
        record = frame(payload)
        with self._mutex:
            self._check_usable()
            try:
                _write_all(self._fd, record, self._size)
            except OSError as exc:
                self._undo_write(exc)
                self._write_error = f"cannot write the log: {exc}"
                raise LogFailed(self._write_error) from exc
            self._write_error = None
            self._size += len(record)
            self._appended += 1
            return self._appended

    @property
    def write_error(self) -> str | None:
        """Why the last append failed (a full disk, say), until one succeeds; the log stays
        usable, unlike after ``failure``."""
        with self._mutex:
            return self._write_error

    def _undo_write(self, exc: OSError) -> None:
        # Caller holds the mutex. A log with half a record followed by whole ones would refuse
        # to start, so if cutting the half record off fails too, stop taking writes at all.
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as truncate_exc:
            self._fail(truncate_exc)
            log.critical("log write failed (%s) and could not be undone (%s)", exc, truncate_exc)

    def rotate(self) -> int:
        """Continue in a new file; returns its generation.

        Call only when every record of the current file is synced (``sync`` under the same
        serialisation as ``append``): then no crash can leave a torn record before the new file.
        """
        with self._mutex:
            self._check_usable()
            fd = _create_log(self.directory, self._generation + 1)
            self._retired.append(self._fd)
            self._fd = fd
            self._generation += 1
            self._size = FILE_HEADER_SIZE
            self._dir_dirty = True
            return self._generation

    # -- durability ------------------------------------------------------------------------

    def commit(self, record: int) -> None:
        """Return once record number ``record`` is as durable as the fsync mode promises."""
        if self.mode == "always":
            self.sync(record)

    def sync(self, upto: int | None = None, timeout: float | None = None) -> None:
        """fsync until record ``upto`` (default: everything appended so far) is on disk.

        Group commit: if another thread is already fsyncing, wait for it and then check again;
        otherwise fsync everything appended so far on behalf of every waiter. Raises
        ``LogFailed`` if an fsync failed, ``TimeoutError`` if ``timeout`` passed first.
        """
        deadline = deadline_after(timeout)
        with self._mutex:
            goal = self._appended if upto is None else upto
            while True:
                if self._failed is not None:
                    raise LogFailed(f"the log failed earlier: {self._failed}")
                if self._synced >= goal and not (upto is None and self._dir_dirty):
                    return
                if not self._syncing:
                    break
                left = remaining(deadline)
                if left == 0.0:
                    raise TimeoutError(f"log not synced within {timeout} s")
                self.synced.wait(left)
            if self._closed and self._fd < 0:
                raise RuntimeError("log is closed")
            # This thread syncs for everyone: everything appended so far, every earlier file.
            self._syncing = True
            target, retired, sync_dir = self._appended, list(self._retired), self._dir_dirty
            self._dir_dirty = False
            fds = [*retired, self._fd]
        error: OSError | None = None
        started = time.perf_counter()
        try:
            for fd in fds:
                os.fsync(fd)
            if sync_dir:
                fsync_dir(self.directory)
        except OSError as exc:
            error = exc
        finally:
            with self._mutex:
                self._syncing = False
                if error is not None:
                    self._fail(error)
                else:
                    self._synced = max(self._synced, target)
                    for fd in retired:
                        self._retired.remove(fd)
                        os.close(fd)
                self.synced.notify_all()
        if error is None and self._on_fsync is not None:
            self._on_fsync(time.perf_counter() - started)
        if error is not None:
            log.critical("fsync of the log failed; refusing further writes: %s", error)
            raise LogFailed(f"cannot fsync the log: {error}") from error

    def _run_interval(self) -> None:
        """The ``flowagg-fsync`` thread: ``sync`` every interval until closed."""
        while True:
            with self.closing:
                deadline = time.monotonic() + self.interval_s
                while not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.closing.wait(left)
                if self._closed:
                    return
            try:
                self.sync()
            except LogFailed:
                return  # logged by sync; appends now fail and say so
            except Exception:
                log.exception("periodic log fsync failed unexpectedly")

    # -- lifecycle -------------------------------------------------------------------------

    def _check_usable(self) -> None:
        # Caller holds the mutex.
        if self._failed is not None:
            raise LogFailed(f"the log failed earlier: {self._failed}")
        if self._closed:
            raise RuntimeError("log is closed")

    def _fail(self, exc: BaseException) -> None:
        # Caller holds the mutex.
        if self._failed is None:
            self._failed = exc
        self.synced.notify_all()

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new records, stop the fsync thread, sync everything, close the files.

        Returns False if something could not be synced or the thread did not stop in time.
        """
        deadline = deadline_after(CLOSE_TIMEOUT_S if timeout is None else timeout)
        with self._mutex:
            if self._closed:
                return self._fd < 0 and self._failed is None
            self._closed = True
            self.closing.notify_all()
        ok = True
        if self._thread is not None:
            self._thread.join(remaining(deadline))
            if self._thread.is_alive():
                log.warning("flowagg-fsync still running at close")
                ok = False
        try:
            self.sync(timeout=remaining(deadline))
        except (LogFailed, TimeoutError) as exc:
            log.error("log not fully synced at close: %s", exc)
            ok = False
        with self._mutex:
            while self._syncing:  # only after a timeout above; the fds must outlive the fsync
                left = remaining(deadline)
                if left == 0.0:
                    log.warning("an fsync is still running at close; leaving the files open")
                    return False
                self.synced.wait(left)
            for fd in [*self._retired, self._fd]:
                os.close(fd)
            self._retired, self._fd = [], -1
        return ok
