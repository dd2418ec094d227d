"""What a run shows: a progress bar on a terminal (tqdm), a line every 10 s otherwise, messages
between them, and the summary at the end."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from flowagg.ship.shipper import Totals

LINE_INTERVAL_S = 10.0
BAR_INTERVAL_S = 0.5


class Progress:
    """Bytes read of ``total`` (compressed bytes for .gz files), records per second, ETA."""

    def __init__(self, total: int, stream: TextIO | None = None, tty: bool | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.total = total
        self.started = time.monotonic()
        self._last = self.started
        self.bar = None
        if self.tty:
            from tqdm import tqdm  # only on a terminal

            self.bar = tqdm(
                total=total or None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self.stream,
                dynamic_ncols=True,
                desc="flowagg ship",
                mininterval=BAR_INTERVAL_S,
            )

    def log(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def update(self, done: int, totals: Totals, total: int | None = None) -> None:
        now = time.monotonic()
        if total is not None:
            self.total = total
        interval = BAR_INTERVAL_S if self.bar is not None else LINE_INTERVAL_S
        if now - self._last < interval:
            return
        self._last = now
        rate = totals.counts.records / max(now - self.started, 1e-9)
        if self.bar is not None:
            if self.total and self.bar.total != self.total:
                self.bar.total = self.total
            self.bar.n = min(done, self.bar.total or done)
            self.bar.set_postfix_str(f"{rate:,.0f} records/s", refresh=False)
            self.bar.refresh()
        else:
            share = f" of {self.total:,} ({100 * done / self.total:.0f}%)" if self.total else ""
            self.log(
                f"flowagg ship: {done:,} bytes read{share}, {totals.counts.records:,} records,"
                f" {totals.posts:,} POSTs, {rate:,.0f} records/s"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def summary(totals: Totals, retries: int, seconds: float) -> str:
    counts = totals.counts
    skipped = sum(counts.skipped.values())
    reasons = ", ".join(f"{n:,} {why}" for why, n in sorted(counts.skipped.items()))
    lines = [
        f"files: {totals.files:,}",
        f"records read: {counts.records:,}",
        f"skipped: {skipped:,}" + (f" ({reasons})" if reasons else ""),
        f"flows sent: {totals.flows:,} (from {counts.flows_in:,} records) in {totals.posts:,}"
        " POSTs",
        f"retries: {retries:,}",
        f"seconds: {seconds:.1f}",
    ]
    shown = "".join(f"\n  {example}" for example in counts.examples)
    if counts.examples:
        lines.append(f"malformed lines (the first {len(counts.examples)}):{shown}")
    return "\n".join(lines)
