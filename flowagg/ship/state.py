"""The state file: how far each log file was shipped, and the batch in flight.

One JSON document, replaced whole on every change (a temporary file, fsync, rename, fsync of
the directory), so that after a crash at any moment it is the old document or the new one::

    {"format": "flowagg-ship-state", "version": 1,
     "files": {"2049:131074": {                       # device:inode
        "path": "logs/flows.log",                     # where it was last seen (for messages)
        "head": "9f2c...", "head_len": 1024,          # sha256 of its first head_len bytes
        "generation": 0,                              # +1 each time it is found truncated
        "offset": 52000, "line": 501,                 # shipped: bytes (decompressed), next line
        "complete": false,                            # a .gz file read to its end
        "in_flight": {"start": 52000, "end": 61000, "first_line": 501, "last_line": 600,
                      "key": "flowagg-ship-3fa1...-52000-61000", "at": 1733200000.0},
        "seen": 1733200000.0}}}                       # wall clock of the last run that saw it

``in_flight`` is written (and fsynced) before its batch is sent, under the Idempotency-Key
derived from the file's identity and the byte range; a run that finds it resends exactly that
range with that key, so a server that keeps keys applies it once however often it is sent.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

FORMAT = "flowagg-ship-state"
VERSION = 1
HEAD_BYTES = 1024  # a file is known by device, inode and a hash of this many first bytes
FORGET_AFTER_S = 30 * 24 * 3600  # entries of files not given for this long are dropped


class StateError(Exception):
    """The state file cannot be used (damaged, newer format, or held by another shipper)."""


@dataclass(frozen=True)
class Identity:
    """A file as device, inode and the hash of its first ``head_len`` bytes."""

    dev: int
    ino: int
    head: str
    head_len: int

    @property
    def name(self) -> str:
        return f"{self.dev}:{self.ino}"


def identify(file, stat: os.stat_result, head_len: int = HEAD_BYTES) -> Identity | None:
    """The identity of the open binary ``file`` (its position is left at 0); None while it is
    empty. A file shorter than ``head_len`` is known by all it holds."""
    file.seek(0)
    head = file.read(head_len)
    file.seek(0)
    if not head:
        return None
    return Identity(stat.st_dev, stat.st_ino, hashlib.sha256(head).hexdigest(), len(head))


def batch_key(identity: Identity, generation: int, start: int, end: int) -> str:
    """The Idempotency-Key of the byte range [start, end) of a file: the same range of the
    same file always gets the same key, another file or range another key."""
    digest = hashlib.sha256(
        f"{identity.dev}:{identity.ino}:{identity.head_len}:{identity.head}:{generation}".encode()
    ).hexdigest()[:32]
    return f"flowagg-ship-{digest}-{start}-{end}"


class State:
    """The state file at ``path``, locked for this process while it is open."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.files: dict[str, dict[str, Any]] = {}
        self._lock = None  # the lock file, held while open
        # Guards ``files`` (and its entries) and ``dirty`` between the reading thread and the
        # sender; ``save`` takes it.
        self.lock = threading.RLock()
        self.dirty = False  # changed since the last save

    def open(self) -> State:
        lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock = open(lock_path, "a+b")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StateError(f"{self.path} is in use by another flowagg ship") from None
        try:
            self._load()
        except BaseException:
            self.close()
            raise
        return self

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateError(f"{self.path}: {exc}") from None
        try:
            document = msgspec.json.decode(raw)
            assert isinstance(document, dict) and document.get("format") == FORMAT
        except (msgspec.DecodeError, AssertionError):
            raise StateError(f"{self.path} is not a flowagg ship state file") from None
        if document.get("version") != VERSION:
            raise StateError(
                f"{self.path} has state format version {document.get('version')}; this"
                f" flowagg ship reads version {VERSION}"
            )
        self.files = document["files"]

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def matches(self, file, stat: os.stat_result) -> dict[str, Any] | None:
        """The entry whose file ``file`` is, hashing as many head bytes as the entry did."""
        entry = self.files.get(f"{stat.st_dev}:{stat.st_ino}")
        if entry is None:
            return None
        identity = identify(file, stat, entry["head_len"])
        if identity is None or identity.head_len != entry["head_len"]:
            return None  # shorter than when it was first seen: truncated, or another file
        return entry if identity.head == entry["head"] else None

    def new_entry(self, identity: Identity, path: str, generation: int = 0) -> dict[str, Any]:
        entry = {
            "path": path,
            "head": identity.head,
            "head_len": identity.head_len,
            "generation": generation,
            "offset": 0,
            "line": 1,
            "complete": False,
            "in_flight": None,
            "seen": time.time(),
        }
        self.files[identity.name] = entry
        self.dirty = True
        return entry

    def save(self) -> None:
        """Replace the file with the current state, durably (fsync of file and directory)."""
        with self.lock:
            self._save()

    def _save(self) -> None:
        now = time.time()
        self.files = {
            name: entry
            for name, entry in self.files.items()
            if now - entry["seen"] < FORGET_AFTER_S or entry["in_flight"] is not None
        }
        document = {"format": FORMAT, "version": VERSION, "files": self.files}
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "wb") as file:
            file.write(msgspec.json.encode(document))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self.dirty = False


@contextlib.contextmanager
def opened(path: str | Path):
    state = State(path).open()
    try:
        yield state
    finally:
        state.close()
