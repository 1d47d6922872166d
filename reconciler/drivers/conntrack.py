"""Forgetting the kernel's connection tracking entries of a published port,
through its conntrack netlink interface, with pyroute2's client (the only
module that imports pyroute2).

A flow that began before a DNAT rule existed (or while it pointed elsewhere)
keeps its conntrack entry, and NAT is decided only for a flow's first
packet: a UDP client sending every 0.1 s would never reach a newly published,
moved or unpublished port. The CNI portmap plugin and Docker delete those
entries for the same reason.
"""

from __future__ import annotations

import socket

from reconciler.errors import KernelError

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


def forget(protocol: str, port: int) -> int:
    """Delete the entries whose original destination port is `port` (IPv4 and
    IPv6), in the calling thread's namespace; how many. Raises KernelError."""
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import (
        NFCTAttrTuple,
    )

    wanted = NFCTAttrTuple(proto=PROTOCOLS[protocol], dport=port)
    try:
        ct = Conntrack()
    except OSError as e:
        raise KernelError(f"open conntrack to forget flows to port {port}/{protocol}",
                          e.errno or 0) from None
    deleted = 0
    try:
        for entry in list(ct.dump_entries(tuple_orig=wanted)):
            if entry.tuple_orig.dport != port:
                continue
            try:
                ct.delete(entry)
                deleted += 1
            except OSError:
                pass  # gone meanwhile
    except OSError as e:
        raise KernelError(f"forget flows to port {port}/{protocol}", e.errno or 0) from None
    finally:
        ct.close()
    return deleted
