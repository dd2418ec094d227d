"""The data directory: its lock, and the numbered logs and snapshots in it.

    $FLOWAGG_DATA_DIR/
      LOCK                                  flock held by the running store
      snapshot-00000000000000000042.snap    every table and key as of the start of log 42
      wal-00000000000000000042.log          requests since (newest log last)

Generations count up from 1; a snapshot of generation G makes every file numbered below G
obsolete (``remove_before``).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from flowagg.store.durable.snapshot import snapshot_path
from flowagg.store.durable.wal import log_path

LOCK_FILE = "LOCK"


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still write on the directory's file system."""
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


class DataDirInUse(RuntimeError):
    """Another process holds the data directory's lock."""


def lock_directory(directory: Path) -> int:
    """Hold an exclusive lock on ``directory``/LOCK for the store's lifetime."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirInUse(
            f"FLOWAGG_DATA_DIR={str(directory)!r} is in use by another flowagg process"
        ) from None
    return fd


def generations(directory: Path, prefix: str, suffix: str) -> list[int]:
    found = []
    for path in directory.glob(f"{prefix}*{suffix}"):
        number = path.name[len(prefix) : -len(suffix)]
        if number.isdigit():
            found.append(int(number))
    return sorted(found)


def remove_before(directory: Path, generation: int) -> int:
    """Delete the logs and snapshots that a snapshot of ``generation`` made obsolete."""
    removed = 0
    kinds = (("wal-", ".log", log_path), ("snapshot-", ".snap", snapshot_path))
    for prefix, suffix, path_of in kinds:
        for older in generations(directory, prefix, suffix):
            if older < generation:
                path_of(directory, older).unlink(missing_ok=True)
                removed += 1
    return removed
