"""Telling neighbours that an address now answers at a (new) MAC: a
gratuitous ARP request (RFC 5227, section 3: an ARP announcement) for IPv4
and an unsolicited neighbour advertisement with the override flag (RFC 4861,
section 7.2.6) for IPv6, sent from the container's interface. Without them
the host and peers keep a stale neighbour entry for tens of seconds after a
MAC change or an address moving to another container (Docker sends the same
announcements when it connects a container)."""

from __future__ import annotations

import ipaddress
import socket
import struct

from reconciler.model import IPAddress

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
ICMPV6_NA = 136
NA_OVERRIDE = 0x20000000
ND_OPT_TARGET_LLADDR = 2
ALL_NODES = "ff02::1"


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def arp_frame(mac: str, ip: ipaddress.IPv4Address) -> bytes:
    """An Ethernet frame with an ARP announcement: a request whose sender and
    target address are both `ip`, sent to everyone."""
    own = _mac(mac)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, own, ip.packed, b"\0" * 6, ip.packed)
    return BROADCAST + own + struct.pack("!H", ETH_P_ARP) + arp


def na_message(mac: str, ip: ipaddress.IPv6Address) -> bytes:
    """An unsolicited neighbour advertisement for `ip` at `mac` (the kernel fills
    in the ICMPv6 checksum of a raw socket)."""
    option = struct.pack("!BB6s", ND_OPT_TARGET_LLADDR, 1, _mac(mac))
    return struct.pack("!BBHI16s", ICMPV6_NA, 0, 0, NA_OVERRIDE, ip.packed) + option


def send(ifname: str, index: int, mac: str, ip: IPAddress) -> None:
    """Announce ip at mac from the interface (in the calling thread's
    namespace). Raises OSError."""
    if isinstance(ip, ipaddress.IPv4Address):
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
            s.bind((ifname, ETH_P_ARP))
            s.send(arp_frame(mac, ip))
        return
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        s.bind((str(ip), 0, 0, index))
        s.sendto(na_message(mac, ip), (ALL_NODES, 0, 0, index))
