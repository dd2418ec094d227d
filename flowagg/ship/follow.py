"""``--follow``: files read as they grow, and by name across rotation, as ``tail -F`` does.

Each name is looked at every ``POLL_S`` (at most a quarter of the flush interval). When the
name points to another file (renamed away by logrotate, or deleted), the old file is still
read until it has not grown for ``rotate_wait`` seconds (a writer may not have reopened yet),
and the new one is read from its start. A file found shorter than what was read of it
(copytruncate) is a new generation of that file, read from its start. A batch is sent when it
is full, and at the latest ``flush_interval`` seconds after its first line was read.
"""

from __future__ import annotations

import os
import time

from flowagg.ship.progress import Progress
from flowagg.ship.shipper import Shipper, Tail

POLL_S = 0.2


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _same(tail: Tail, stat: os.stat_result) -> bool:
    return (tail.source.stat.st_dev, tail.source.stat.st_ino) == (stat.st_dev, stat.st_ino)


def follow(
    shipper: Shipper,
    paths: list[str],
    flush_interval: float,
    rotate_wait: float,
    progress: Progress,
) -> None:
    """Ship ``paths`` until interrupted (KeyboardInterrupt, which SIGTERM raises too)."""
    current: dict[str, Tail | None] = dict.fromkeys(paths)
    idle: dict[str, tuple] = {}  # path -> the stat of an empty or finished file, not reopened
    draining: list[list] = []  # [tail, disk position, monotonic time it last grew]
    poll = min(POLL_S, flush_interval / 4)
    try:
        while True:
            now = time.monotonic()
            for path in paths:
                tail, stat = current[path], _stat(path)
                if tail is not None and (stat is None or not _same(tail, stat)):
                    draining.append([tail, tail.source.disk_position(), now])
                    current[path] = tail = None
                elif tail is not None and tail.source.truncated():
                    shipper.send(tail)  # the lines read before it was cut
                    shipper.drain()  # its offset as shipped, before it is opened again
                    tail.source.close()
                    current[path] = tail = None
                if tail is None and stat is not None:
                    seen = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
                    if idle.get(path) != seen:
                        current[path] = tail = shipper.open(path)
                        idle[path] = seen if tail is None else None
                if tail is not None:
                    _step(shipper, tail, now, flush_interval)
            for drained in list(draining):
                tail = drained[0]
                _step(shipper, tail, now, flush_interval)
                position = tail.source.disk_position()
                if position != drained[1]:
                    drained[1], drained[2] = position, now
                elif now - drained[2] >= rotate_wait:
                    shipper.finish(tail)
                    draining.remove(drained)
            if shipper.state.dirty:
                shipper.state.save()
            tails = [t for t in current.values() if t is not None]
            done = sum(t.source.disk_position() for t in tails)
            total = sum(t.source.stat.st_size for t in tails)
            progress.update(done, shipper.totals, max(total, done))
            time.sleep(poll)
    finally:
        for tail in [*current.values(), *(d[0] for d in draining)]:
            if tail is not None:
                tail.source.close()


def _step(shipper: Shipper, tail: Tail, now: float, flush_interval: float) -> None:
    shipper.pump(tail)
    batch = tail.batch
    if batch.end > batch.start and now - batch.born >= flush_interval:
        shipper.send(tail)
    if tail.source.finished and not tail.entry["complete"] and tail.batch.end == batch.end:
        shipper.complete(tail)  # a .gz file: not read again
