"""The counters of one hour: ``(src_app, dest_app, vpc_id) -> (bytes_tx, bytes_rx)``.

Kept behind this small class so that its memory layout can change without touching the
partition's locking or the readers.
"""

from __future__ import annotations

Key = tuple[str, str, str]  # (src_app, dest_app, vpc_id): a tuple, never a joined string
Row = tuple[str, str, str, int, int]  # key + (bytes_tx, bytes_rx)
Sums = dict[Key, list[int]]  # a batch summed per key: key -> [bytes_tx, bytes_rx]


class HourTable:
    """Not thread-safe: the owning partition's lock guards it."""

    __slots__ = ("_counters",)

    def __init__(self) -> None:
        self._counters: Sums = {}  # insertion order is first appearance

    def __len__(self) -> int:
        return len(self._counters)

    def merge(self, sums: Sums) -> None:
        """Add a batch's sums; takes ownership of ``sums`` and its lists."""
        counters = self._counters
        if not counters:
            self._counters = sums
            return
        for key, delta in sums.items():
            current = counters.get(key)
            if current is None:
                counters[key] = delta
            else:
                current[0] += delta[0]
                current[1] += delta[1]

    def rows(self) -> list[Row]:
        """A copy of every row, in order of first appearance."""
        return [(*key, c[0], c[1]) for key, c in self._counters.items()]
