"""VPC Flow Log files for the shipper's tests, and the aggregate they should give, computed
here from the files' text alone (plain ``ipaddress`` and a scan of every prefix), with none of
the shipper's code."""

from __future__ import annotations

import gzip
import ipaddress
import random
from pathlib import Path

BASE_TIME = 1_733_200_000  # 2024-12-03: hours around 481,444

MAP = """\
# nested prefixes: the longest that holds an address names it
10.0.0.0/8        corp
10.1.0.0/16       web
10.1.2.0/24       api
10.1.2.3          db      # one address
2600:1f18::/32    v6net
2600:1f18:1::/48  v6web
"""

V4 = ["10.9.0.1", "10.1.7.7", "10.1.2.9", "10.1.2.3", "10.200.3.4"]
V6 = ["2600:1f18::5", "2600:1f18:1::9", "2600:1f18:1:2::1"]
EXTERNAL = ["52.94.1.10", "8.8.8.8", "2a00:1450::1"]
_V2 = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes"
DEFAULT = f"{_V2} start end action log-status".split(" ")
_V5 = "version vpc-id srcaddr dstaddr srcport dstport protocol bytes start end action log-status"
CUSTOM = _V5.split(" ")


def record(rng: random.Random, i: int, fields: list[str], hours: int = 3) -> str:
    """One line; now and then a NODATA/SKIPDATA, a REJECT, a '-' or a malformed one."""
    roll = rng.random()
    start = BASE_TIME + (i * 7) % (hours * 3600)
    ports = [443, 80, 22, 5432, rng.randrange(1024, 65536), rng.randrange(32768, 61000)]
    values = {
        "version": "5" if "vpc-id" in fields else "2",
        "account-id": "123456789012",
        "interface-id": "eni-0abc",
        "vpc-id": rng.choice(["vpc-1", "vpc-2", "-"]),
        "srcaddr": rng.choice(V4 + V6 + EXTERNAL),
        "dstaddr": rng.choice(V4 + V6 + EXTERNAL),
        "srcport": str(rng.choice(ports)),
        "dstport": str(rng.choice(ports)),
        "protocol": "6",
        "packets": str(rng.randrange(1, 100)),
        "bytes": str(rng.randrange(40, 10**6)),
        "start": str(start),
        "end": str(start + 60),
        "action": "REJECT" if roll < 0.08 else "ACCEPT",
        "log-status": "OK",
    }
    if roll > 0.97:
        values.update({k: "-" for k in ("srcaddr", "dstaddr", "srcport", "dstport", "bytes")})
        values.update({"action": "-", "log-status": rng.choice(["NODATA", "SKIPDATA"])})
    elif roll > 0.96:
        values["srcport"] = "-"
    elif roll > 0.955:
        return " ".join(values[f] for f in fields[:-2])  # too few fields
    elif roll > 0.95:
        values["bytes"] = "lots"
    elif roll < 0.01:
        values["srcport"] = values["dstport"] = "0"  # ICMP: equal ports
    return " ".join(values[f] for f in fields)


def write(path: Path, lines: list[str], header: list[str] | None = None, mode: str = "w"):
    text = "".join(f"{line}\n" for line in ([" ".join(header)] if header else []) + lines)
    if path.suffix == ".gz":
        with gzip.open(path, mode + "t") as file:
            file.write(text)
    else:
        with open(path, mode) as file:
            file.write(text)


def make_lines(seed: int, count: int, fields: list[str], first: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [record(rng, first + i, fields) for i in range(count)]


class Model:
    """The aggregate a set of files should give: (src, dest, vpc, hour) -> [tx, rx]."""

    def __init__(self, mapping: str = MAP, unmapped: str = "external", vpc_id: str = "unknown"):
        self.prefixes = []
        for line in mapping.splitlines():
            text = line.split("#")[0].split()
            if text:
                self.prefixes.append((ipaddress.ip_network(text[0]), text[1]))
        self.unmapped = unmapped
        self.vpc_id = vpc_id
        self.rows: dict[tuple, list[int]] = {}

    def app(self, address: str) -> str:
        ip = ipaddress.ip_address(address)
        best = None
        for network, name in self.prefixes:
            inside = ip.version == network.version and ip in network
            if inside and (best is None or network.prefixlen > best[0].prefixlen):
                best = (network, name)
        return self.unmapped if best is None else best[1]

    def add_text(self, text: str, include_rejected: bool = False) -> None:
        lines = text.splitlines()
        fields = DEFAULT
        if lines and not lines[0].split()[0].isdigit():
            fields, lines = lines[0].split(), lines[1:]
        for line in lines:
            values = line.split(" ")
            if len(values) != len(fields):
                continue
            r = dict(zip(fields, values, strict=True))
            if r.get("log-status", "OK") != "OK":
                continue
            if r.get("action") == "REJECT" and not include_rejected:
                continue
            needed = [r[k] for k in ("srcaddr", "dstaddr", "srcport", "dstport", "bytes", "start")]
            if "-" in needed or not all(v.isdigit() for v in needed[2:]):
                continue
            sport, dport, size = int(r["srcport"]), int(r["dstport"]), int(r["bytes"])
            vpc = r.get("vpc-id", "-")
            vpc = self.vpc_id if vpc == "-" else vpc
            hour = int(r["start"]) // 3600
            if dport <= sport:
                key, counters = (self.app(r["srcaddr"]), self.app(r["dstaddr"])), (size, 0)
            else:
                key, counters = (self.app(r["dstaddr"]), self.app(r["srcaddr"])), (0, size)
            row = self.rows.setdefault((*key, vpc, hour), [0, 0])
            row[0] += counters[0]
            row[1] += counters[1]

    def add_file(self, path: Path, **kwargs) -> None:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as file:
            self.add_text(file.read(), **kwargs)

    def hours(self) -> set[int]:
        return {key[3] for key in self.rows}

    def expected(self) -> dict[tuple, tuple[int, int]]:
        return {key: tuple(v) for key, v in self.rows.items()}


def served(server, hours) -> dict[tuple, tuple[int, int]]:
    """What the server holds for ``hours``, as the model has it."""
    return {
        (r["src_app"], r["dest_app"], r["vpc_id"], r["hour"]): (r["bytes_tx"], r["bytes_rx"])
        for r in server.rows(sorted(hours))
    }
