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
from concurrent.futures import ThreadPoolExecutor

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


class Closer:
    """Closes packet sockets off the caller's path, several at once. Closing
    an AF_PACKET socket waits for an RCU grace period (packet_release calls
    synchronize_net(), net/packet/af_packet.c): about 13 ms each, most of a
    cold apply's time per container when done in line. Closes waiting
    together share grace periods. wait() returns once every close is done."""

    WORKERS = 16

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def close(self, sock: socket.socket) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.WORKERS, thread_name_prefix="announce-close")
        self._pool.submit(sock.close)

    def wait(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def send(ifname: str, index: int, mac: str, ip: IPAddress,
         closer: Closer | None = None) -> None:
    """Announce ip at mac from the interface (in the calling thread's
    namespace); the packet socket is closed by `closer` when given. Raises
    OSError."""
    if isinstance(ip, ipaddress.IPv4Address):
        # Protocol 0 and no bind: the socket receives nothing, so no
        # protocol hook is registered (binding one to a device would wait for
        # a grace period too); the frame names its own ethertype.
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            s.sendto(arp_frame(mac, ip), (ifname, ETH_P_ARP))
        finally:
            if closer is None:
                s.close()
            else:
                closer.close(s)
        return
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        s.bind((str(ip), 0, 0, index))
        s.sendto(na_message(mac, ip), (ALL_NODES, 0, 0, index))
