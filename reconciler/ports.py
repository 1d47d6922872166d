"""Who already holds a port the spec publishes (pure): a listening socket of
this machine, another netapply project, or another manager's DNAT rule.

SPEC.md: a port that is already taken is an error at plan time naming the
holder, never a silent takeover (Docker refuses `-p` on a taken port with
"address already in use"). A holder that appears after the project published
the port is only noted: the project's rule already catches the traffic, and
refusing would stop every other repair (watch logs the note).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from reconciler.model import IPAddress

PROTOCOLS = ("tcp", "udp")
# /proc/net/tcp states (include/net/tcp_states.h): TCP_LISTEN. A UDP socket
# that is bound and not connected is TCP_CLOSE (7) there.
TCP_LISTEN, UDP_UNCONNECTED = 0x0A, 0x07


@dataclass(frozen=True)
class Held:
    """A port someone holds: protocol, address (None: every address of the
    machine) and number, and who, in words."""

    protocol: str
    address: IPAddress | None
    port: int
    holder: str

    def overlaps(self, protocol: str, address: IPAddress | None, port: int) -> bool:
        """Whether an IPv4 port published on `address` (None: every address)
        would take traffic this holder gets. A socket on one IPv6 address does
        not: netapply publishes IPv4 only."""
        if (protocol, port) != (self.protocol, self.port):
            return False
        if self.address is not None and self.address.version == 6 \
                and not self.address.is_unspecified:
            return False
        return _any(address) or _any(self.address) or address == self.address


def _any(address: IPAddress | None) -> bool:
    return address is None or address.is_unspecified


def proc_net_sockets(text: str, protocol: str) -> Iterator[tuple[IPAddress, int]]:
    """The listening TCP sockets, or bound unconnected UDP sockets, of one
    /proc/net/{tcp,tcp6,udp,udp6} table (proc(5)): (local address, port)."""
    wanted = TCP_LISTEN if protocol == "tcp" else UDP_UNCONNECTED
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or int(fields[3], 16) != wanted:
            continue
        hex_addr, hex_port = fields[1].split(":")
        port = int(hex_port, 16)
        if port == 0:
            continue
        raw = bytes.fromhex(hex_addr)
        # The kernel prints each 32-bit word in host (little-endian) order.
        packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
        address = ipaddress.ip_address(packed)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        yield address, port


def listeners(sockets: Iterable[tuple[str, IPAddress, int]]) -> list[Held]:
    """Held ports of this machine's sockets: (protocol, address, port)."""
    return [Held(protocol, None if address.is_unspecified else address, port,
                 f"a {protocol.upper()} socket of this machine listening on "
                 f"{_show(address)}:{port}")
            for protocol, address, port in sorted(set(sockets), key=str)]


def dnat_port(expr: Any) -> tuple[str, IPAddress | None, int] | None:
    """(protocol, destination address or None, port) that an nftables rule
    (its JSON expressions) translates with dnat or redirect, if it does."""
    if not isinstance(expr, list):
        return None
    if not any(isinstance(e, dict) and ("dnat" in e or "redirect" in e) for e in expr):
        return None
    protocol = port = None
    address: IPAddress | None = None
    for e in expr:
        match = e.get("match") if isinstance(e, dict) else None
        if not isinstance(match, dict) or match.get("op", "==") != "==":
            continue
        payload = (match.get("left") or {}).get("payload") if isinstance(
            match.get("left"), dict) else None
        if not isinstance(payload, dict):
            continue
        right = match.get("right")
        if payload.get("field") == "dport" and payload.get("protocol") in PROTOCOLS \
                and isinstance(right, int):
            protocol, port = payload["protocol"], right
        elif payload.get("field") == "daddr" and payload.get("protocol") in ("ip", "ip6") \
                and isinstance(right, str):
            try:
                address = ipaddress.ip_address(right)
            except ValueError:
                continue
    if protocol is None or port is None:
        return None
    return protocol, address, port


def published_by_rules(expressions: Iterable[str], holder: str) -> list[Held]:
    """Held ports of a table's rules (canonical JSON of each rule's expressions)."""
    held = []
    for text in expressions:
        found = dnat_port(json.loads(text))
        if found is not None:
            held.append(Held(found[0], found[1], found[2], holder))
    return held


def _show(address: IPAddress) -> str:
    return f"[{address}]" if address.version == 6 else str(address)
