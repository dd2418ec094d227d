"""AWS VPC Flow Log records: the format of a file, and each record turned into one flow.

A file whose first line's first token is not a number starts with a header naming its fields
(as S3 objects and custom formats do); otherwise the default format applies. A record goes from
the side with the higher port (the client) to the side with the lower port (the server):

* ``dstport <= srcport``: ``src_app`` = app(srcaddr), ``dest_app`` = app(dstaddr), ``bytes_tx``
* ``srcport < dstport`` (a reply): ``src_app`` = app(dstaddr), ``dest_app`` = app(srcaddr),
  ``bytes_rx``

so both directions of a connection land on one key. The hour is ``start // 3600``.

``Parser.parse`` is the per-record loop: one ``split`` and a few dict probes per line, with the
address-to-application lookups memoized (``networks.py``) and no object built per record but
the key of its flow; flows of one batch with the same key are summed as they are read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from flowagg.ship.networks import Networks

_V2 = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes"
DEFAULT_FIELDS = tuple(f"{_V2} start end action log-status".split())
NEEDED = ("srcaddr", "dstaddr", "srcport", "dstport", "bytes", "start")
INT64_MAX = 2**63 - 1
SHOWN = 5  # malformed lines reported in full; the rest are counted

# Skip reasons, as the summary names them.
REJECTED = "action REJECT"
MISSING = "a needed field is '-'"
MALFORMED = "malformed"
STATUSES = ("NODATA", "SKIPDATA")  # other log-status values are counted as "log-status other"


class FormatError(ValueError):
    """A header that lacks a needed field."""


@dataclass(frozen=True)
class Format:
    fields: tuple[str, ...]
    header: bool  # the first line names the fields (it is not a record)

    def index(self, name: str) -> int | None:
        return self.fields.index(name) if name in self.fields else None


def detect(first_line: bytes, default: tuple[str, ...] = tuple(DEFAULT_FIELDS)) -> Format:
    """The format of a file from its first line (the header, or the first record)."""
    tokens = first_line.split()
    if not tokens or tokens[0].isdigit():
        return Format(default, header=False)
    names = tuple(t.decode("utf-8", "replace").lower().replace("_", "-") for t in tokens)
    missing = [name for name in NEEDED if name not in names]
    if missing:
        raise FormatError(
            f"the header names no {', '.join(missing)} (it names: {' '.join(names)[:200]})"
        )
    return Format(names, header=True)


@dataclass
class Counts:
    """What was read, over a whole run."""

    records: int = 0  # lines that are records (the header and blank lines are not)
    flows_in: int = 0  # records turned into flows
    skipped: Counter = field(default_factory=Counter)  # reason -> records
    examples: list[str] = field(default_factory=list)  # the first malformed lines, in full


class Parser:
    """Turns the lines of one file into flows summed by key, into ``agg``:
    ``(src_app, dest_app, vpc_id, hour) -> [bytes_tx, bytes_rx]``."""

    def __init__(
        self,
        fmt: Format,
        networks: Networks,
        counts: Counts,
        path: str,
        vpc_id: str = "unknown",
        include_rejected: bool = False,
    ) -> None:
        self.fmt = fmt
        self.networks = networks
        self.counts = counts
        self.path = path
        self.vpc_id = vpc_id
        self.include_rejected = include_rejected
        self.vpcs: dict[bytes, str] = {b"-": vpc_id}

    def parse(
        self,
        lines: list[bytes],
        lo: int,
        hi: int,
        want: int,
        line0: int,
        agg: dict,
        sep: bytes | None = b" ",
    ):
        """Read ``lines[lo:hi]`` (``lines[lo]`` is line number ``line0``) until ``want`` records
        became flows; returns (index after the last line read, flows taken). Fields are split
        at single spaces, or at any whitespace with ``sep=None`` (lines that end in CRLF)."""
        fmt = self.fmt
        nfields = len(fmt.fields)
        isrc, idst = fmt.index("srcaddr"), fmt.index("dstaddr")
        isport, idport = fmt.index("srcport"), fmt.index("dstport")
        ibytes, istart = fmt.index("bytes"), fmt.index("start")
        istatus, iaction, ivpc = fmt.index("log-status"), fmt.index("action"), fmt.index("vpc-id")
        if self.include_rejected:
            iaction = None
        memo = self.networks.memo
        lookup = self.networks.name
        vpcs = self.vpcs
        vpc = self.vpc_id
        skipped = self.counts.skipped
        taken = 0
        blank = 0
        i = lo
        while i < hi and taken < want:
            f = lines[i].split(sep)
            i += 1
            if len(f) != nfields:
                if not f or f == [b""]:
                    blank += 1
                else:
                    self._bad(i - 1 - lo + line0, lines[i - 1], f"{len(f)} fields, not {nfields}")
                continue
            if istatus is not None and f[istatus] != b"OK":
                status = f[istatus].decode("ascii", "replace")
                skipped[f"log-status {status if status in STATUSES else 'other'}"] += 1
                continue
            if iaction is not None and f[iaction] == b"REJECT":
                skipped[REJECTED] += 1
                continue
            sport, dport, size, start = f[isport], f[idport], f[ibytes], f[istart]
            if not (sport.isdigit() and dport.isdigit() and size.isdigit() and start.isdigit()):
                if b"-" in (sport, dport, size, start, f[isrc], f[idst]):
                    skipped[MISSING] += 1
                else:
                    self._bad(
                        i - 1 - lo + line0, lines[i - 1], "a port, bytes or start is not a number"
                    )
                continue
            source = memo.get(f[isrc]) or lookup(f[isrc])
            dest = memo.get(f[idst]) or lookup(f[idst])
            if source is None or dest is None:
                if f[isrc] == b"-" or f[idst] == b"-":
                    skipped[MISSING] += 1
                else:
                    self._bad(i - 1 - lo + line0, lines[i - 1], "an address is not an IP address")
                continue
            if ivpc is not None:
                vpc = vpcs.get(f[ivpc]) or self._vpc(f[ivpc])
            count = int(size)
            if count > INT64_MAX:
                self._bad(i - 1 - lo + line0, lines[i - 1], "bytes is over 2^63-1")
                continue
            if int(dport) <= int(sport):
                key = (source, dest, vpc, int(start) // 3600)
                acc = agg.get(key)
                if acc is None:
                    agg[key] = [count, 0]
                else:
                    acc[0] += count
            else:
                key = (dest, source, vpc, int(start) // 3600)
                acc = agg.get(key)
                if acc is None:
                    agg[key] = [0, count]
                else:
                    acc[1] += count
            taken += 1
        self.counts.records += i - lo - blank
        self.counts.flows_in += taken
        return i, taken

    def _vpc(self, raw: bytes) -> str:
        name = raw.decode("utf-8", "replace")
        if len(self.vpcs) < 100_000:
            self.vpcs[raw] = name
        return name

    def _bad(self, number: int, line: bytes, why: str) -> None:
        self.counts.skipped[MALFORMED] += 1
        if len(self.counts.examples) < SHOWN:
            text = line.decode("utf-8", "replace")
            text = text if len(text) <= 300 else text[:300] + "..."
            self.counts.examples.append(f"{self.path}, line {number}: {why}: {text}")
