"""Addresses and interface names a spec can never use: one table, checked by validate.

Each entry is something the kernel refuses (so apply would stop part-way) or
accepts but never makes work (so apply would not converge, or would reach the
wrong thing). speccheck.py checks every subnet, address and interface name of
a spec against these tables and reports the entry's reason with file:line:col.

Sources: the special-purpose address registries (RFC 6890; IPv4 link-local
RFC 3927, IPv6 addressing RFC 4291 section 2.4 and 2.5), ip(7) and ipv6(7),
and the kernel: dev_valid_name() and the sysctl directories `all`/`default`
(net/core/dev.c, net/ipv4/devinet.c, net/ipv6/addrconf.c), the loopback
check of macvlan and ipvlan ports (drivers/net/macvlan.c, ipvlan_main.c).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from reconciler import model

LOOPBACK_IFNAME = "lo"


@dataclass(frozen=True)
class AddressClass:
    """A range of addresses no network of a spec may use or overlap."""

    network: model.IPNetwork
    name: str  # "multicast"
    why: str  # what the kernel does with it, for the error message
    # Whether a machine of `hosts` can have such an address as its VXLAN
    # endpoint (169.254.x.y on a point-to-point link can; a multicast one cannot).
    endpoint: bool = False


ADDRESS_CLASSES: tuple[AddressClass, ...] = (
    AddressClass(ipaddress.IPv4Network("0.0.0.0/8"), "unspecified ('this network')",
                 "the kernel reads 0.0.0.0 as 'any address', and a route to 0.0.0.0/0 is the "
                 "default route"),
    AddressClass(ipaddress.IPv4Network("127.0.0.0/8"), "loopback",
                 "every namespace delivers these to its own lo, so no other end is reached"),
    AddressClass(ipaddress.IPv4Network("169.254.0.0/16"), "link-local",
                 "the host routes link-local traffic on its own links (169.254.169.254 is the "
                 "cloud metadata service)", endpoint=True),
    AddressClass(ipaddress.IPv4Network("224.0.0.0/4"), "multicast",
                 "the kernel routes no unicast traffic to multicast addresses (ENETUNREACH)"),
    AddressClass(ipaddress.IPv4Network("255.255.255.255/32"), "the limited broadcast address",
                 "the kernel sends it to every host of a link, never to one"),
    AddressClass(ipaddress.IPv6Network("::/128"), "unspecified",
                 "the kernel reads :: as 'any address'"),
    AddressClass(ipaddress.IPv6Network("::1/128"), "loopback",
                 "the kernel refuses it on any device but lo (EADDRNOTAVAIL)"),
    AddressClass(ipaddress.IPv6Network("::ffff:0:0/96"), "IPv4-mapped",
                 "sockets read these as IPv4 addresses"),
    AddressClass(ipaddress.IPv6Network("fe80::/10"), "link-local",
                 "the kernel gives every interface its own fe80:: address and route, so "
                 "the network would never converge"),
    AddressClass(ipaddress.IPv6Network("ff00::/8"), "multicast",
                 "the kernel refuses multicast addresses on interfaces (EADDRNOTAVAIL)"),
)

# Names the kernel refuses for any new interface (EINVAL): they are the
# directories of /proc/sys/net/ipv{4,6}/conf that hold every interface's and
# new interfaces' settings.
RESERVED_IFNAMES = {
    "all": "/proc/sys/net/ipv4/conf/all holds the settings of every interface",
    "default": "/proc/sys/net/ipv4/conf/default holds the settings of new interfaces",
}


def address_class(value: model.IPNetwork | model.IPAddress) -> AddressClass | None:
    """The first class of ADDRESS_CLASSES that a network overlaps (or an address
    is in), None when it is in none."""
    network = ipaddress.ip_network(value)
    for entry in ADDRESS_CLASSES:
        if entry.network.version == network.version and entry.network.overlaps(network):
            return entry
    return None


def subnet_problem(subnet: model.IPNetwork) -> str | None:
    """Why a network's subnet can never work, as the end of a sentence starting
    with the subnet ("is multicast (224.0.0.0/4): ..."), or None when it can."""
    entry = address_class(subnet)
    if entry is None:
        return None
    if subnet.prefixlen >= entry.network.prefixlen:  # overlapping, so inside it
        where = f"is {entry.name} ({entry.network})"
    else:
        where = f"includes {entry.network}, which is {entry.name}"
    return f"{where}: {entry.why}"


def endpoint_problem(address: model.IPAddress) -> str | None:
    """Why address cannot be a machine's underlay (VXLAN endpoint) address,
    as the end of a sentence starting with it, or None when it can."""
    entry = address_class(address)
    if entry is None or entry.endpoint:
        return None
    return f"is {entry.name} ({entry.network}): other machines cannot send VXLAN packets to it"


def zone_problem(text: str) -> str | None:
    """Why an address written with a zone index ("fd00::10%eth0") is refused,
    or None when it has none. A spec's addresses are given to interfaces and
    routes, which carry no zone; Python's ipaddress keeps the zone in the value,
    so the same address would differ from what the kernel reports."""
    _, sep, zone = text.partition("%")
    if not sep:
        return None
    return (f"has a zone index ('%{zone.split('/')[0]}'); write the address without it "
            "(an interface's addresses carry no zone)")


def ifname_problem(name: str) -> str | None:
    """Why the kernel refuses name for a new interface, as the end of a
    sentence starting with the name ("is reserved: ..."), or None when it takes
    it. The kernel's dev_valid_name() refuses an empty name, one over 15 bytes,
    '.' and '..', and names containing '/', ':' or whitespace (EINVAL); the
    names of RESERVED_IFNAMES are refused when the interface registers."""
    if not name or len(name.encode()) > model.IFNAMSIZ:
        return f"is not 1 to {model.IFNAMSIZ} bytes long, which the kernel requires"
    if name in (".", ".."):
        return "is a path name, which the kernel refuses"
    if any(c in "/:" or c.isspace() for c in name):
        return "contains '/', ':' or whitespace, which the kernel refuses"
    if name in RESERVED_IFNAMES:
        return f"is reserved: the kernel refuses it ({RESERVED_IFNAMES[name]})"
    return None
