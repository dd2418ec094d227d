"""The mapping file: which application an address belongs to, by longest-prefix match.

    # CIDR            NAME
    10.0.0.0/8        corp
    10.1.0.0/16       web        # 10.1.2.3 is web, 10.2.0.1 corp
    10.1.5.7          db         # one address: /32 (IPv6: /128)
    2600:1f18::/36    web

An address takes the name of the longest prefix that holds it, else the unmapped name. Lookups
are memoized per address as it appears in the log (bytes): a log names few addresses many times,
so the prefix search (one dict probe per prefix length the map uses) runs once per address.
"""

from __future__ import annotations

import ipaddress
import socket

MEMO_LIMIT = 1_000_000  # addresses remembered; past that the memo starts over


class MapError(ValueError):
    """The mapping file cannot be used; the message names the line."""


class Networks:
    """``name(address)`` for addresses as bytes (``b"10.1.2.3"``, ``b"2600:1f18::1"``).
    ``None`` for something that is not an IP address."""

    def __init__(self, prefixes: dict[str, str] | None = None, unmapped: str = "external"):
        self.unmapped = unmapped
        # Per family: prefix length -> {network as an int shifted right to its prefix: name},
        # lengths longest first.
        self._v4: dict[int, dict[int, str]] = {}
        self._v6: dict[int, dict[int, str]] = {}
        for cidr, name in (prefixes or {}).items():
            self.add(ipaddress.ip_network(cidr), name)
        self.memo: dict[bytes, str | None] = {}

    def add(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network, name: str) -> None:
        table = self._v4 if network.version == 4 else self._v6
        bits = network.max_prefixlen
        shift = bits - network.prefixlen
        table.setdefault(network.prefixlen, {})[int(network.network_address) >> shift] = name
        ordered = dict(sorted(table.items(), reverse=True))
        table.clear()
        table.update(ordered)

    def name(self, address: bytes) -> str | None:
        found = self.memo.get(address, self)
        if found is not self:
            return found  # type: ignore[return-value]
        found = self._lookup(address)
        if len(self.memo) >= MEMO_LIMIT:
            self.memo.clear()
        self.memo[address] = found
        return found

    def _lookup(self, address: bytes) -> str | None:
        try:
            text = address.decode("ascii")
            if ":" in text:
                value, table, bits = socket.inet_pton(socket.AF_INET6, text), self._v6, 128
            else:
                value, table, bits = socket.inet_pton(socket.AF_INET, text), self._v4, 32
        except (UnicodeDecodeError, OSError, ValueError):
            return None
        number = int.from_bytes(value, "big")
        for length, networks in table.items():
            found = networks.get(number >> (bits - length))
            if found is not None:
                return found
        return self.unmapped


def load(path: str, unmapped: str = "external") -> Networks:
    """Read a mapping file: ``CIDR NAME`` per line, ``#`` comments, blank lines ignored."""
    networks = Networks(unmapped=unmapped)
    seen: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, tuple[str, int]] = {}
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MapError(f"{path}: {exc}") from None
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        where = f"{path}, line {number}"
        parts = text.split()
        if len(parts) != 2:
            raise MapError(f"{where}: expected 'CIDR NAME', got {line.strip()!r}")
        cidr, name = parts
        try:
            network = ipaddress.ip_network(cidr)
        except ValueError as exc:
            raise MapError(f"{where}: {exc}") from None
        if network in seen and seen[network][0] != name:
            other, at = seen[network]
            raise MapError(f"{where}: {network} is {other!r} on line {at} already")
        seen[network] = (name, number)
        networks.add(network, name)
    return networks
