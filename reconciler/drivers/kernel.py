"""The narrow kernel interface every engine part talks to.

Namespaces are addressed by a string: "" is the machine's own namespace, a
plain name is /run/netns/<name>, and an absolute path is any namespace file
(for example /proc/4242/ns/net). Implementations raise KernelError with the
kernel's errno; they never let library exceptions escape.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from reconciler.model import IPAddress

# Idempotency from an errno table, not from luck: these mean "already gone".
GONE = frozenset({errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL})

NETNS_DIR = "/run/netns"
ETC_NETNS_DIR = "/etc/netns"
# A file is written beside its place under this suffix, then renamed over it:
# an entry with it is what an interrupted write of netapply left.
TMP_SUFFIX = ".netapply-tmp"


class FileType(StrEnum):
    """What is at a path, seen without following a link (lstat(2)); the value
    says it in words."""

    DIRECTORY = "a directory"
    FILE = "a regular file"
    EMPTY = "an empty regular file"
    LINK = "a symbolic link"
    FIFO = "a FIFO"
    SOCKET = "a socket"
    DEVICE = "a device file"
    NAMESPACE = "a namespace file"  # a namespace bind-mounted there (nsfs)


@dataclass(frozen=True)
class NsFile:
    """What a namespace reference names: a network namespace, known by its
    identity, or the reason it is none. The identity is (st_dev, st_ino) of the
    namespace's inode in nsfs, the same for every path to one namespace
    (/proc/PID/ns/net, a bind mount under /run/netns): namespaces(7)."""

    identity: tuple[int, int] | None = None
    problem: str = ""  # when identity is None: "does not exist", "is a FIFO, not ..."


@dataclass(frozen=True)
class VxlanInfo:
    vni: int
    local: str | None
    port: int
    learning: bool
    proxy: bool


@dataclass(frozen=True)
class LinkInfo:
    index: int
    ifname: str
    kind: str | None
    mtu: int
    mac: str
    up: bool
    alias: str | None
    master: int | None
    isolated: bool = False  # bridge port flag: no traffic to other isolated ports
    hairpin: bool = False  # bridge port flag: frames may leave by the port they came in
    parent: int | None = None  # macvlan/ipvlan: index of the parent in the host namespace
    mode: str | None = None  # macvlan/ipvlan mode, named as in the spec
    vxlan: VxlanInfo | None = None
    # IPv6 address generation (IFLA_INET6_ADDR_GEN_MODE) is on: the link gets a
    # link-local address when it comes up. False: mode none, or no IPv6 on it.
    ipv6_ll: bool = True


# Neighbour states (NUD_*) of the entries netapply makes: a bridge's "static"
# forwarding entries, a device's own ones and neighbour entries "permanent".
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80


@dataclass(frozen=True)
class FdbInfo:
    """A forwarding database entry of the host namespace (`bridge fdb`)."""

    index: int  # the device it is on
    mac: str
    dst: str | None  # the remote machine, for an entry of a VXLAN device
    master: bool  # an entry of the bridge the device is a port of (else the device's own)
    state: int  # NUD_* bits: NUD_PERMANENT, or NUD_NOARP ("static", added by a user)


@dataclass(frozen=True)
class NeighInfo:
    index: int
    ip: str
    mac: str | None
    state: int


@dataclass(frozen=True)
class AddrInfo:
    index: int
    cidr: str  # "172.30.1.10/24", "fd00::10/64"


@dataclass(frozen=True)
class RouteInfo:
    dst: str  # CIDR, "0.0.0.0/0" for default
    via: str | None
    oif: int | None
    proto: int


class Kernel(Protocol):
    """Reads and writes used by state/ and drivers/ops.py. `writes` counts every
    call that changed (or tried to change) the kernel or a managed file."""

    writes: int

    # reads
    def netns_names(self) -> list[str]: ...
    def ns_exists(self, ns: str) -> bool: ...
    def ns_file(self, ns: str) -> NsFile:
        """What ns names ("" is the namespace netapply runs in), found without
        blocking: a file that is no namespace (a FIFO, a device) is never opened."""
    def links(self, ns: str) -> list[LinkInfo]: ...
    def link(self, ns: str, ref: int | str) -> LinkInfo | None:
        """One link of ns by index or name, as links() gives it; None when
        there is none."""
    def addresses(self, ns: str) -> list[AddrInfo]: ...
    def routes(self, ns: str) -> list[RouteInfo]: ...
    def read_file(self, path: str) -> str | None:
        """The text of the regular file at path; None when there is none (absent,
        a directory, a FIFO, which is never waited on). Under /run/netns and
        /etc/netns no link is followed, on the way or at the end."""
    def policy_routes(self) -> list[tuple[RouteInfo, int, int]]:
        """Routes of the host namespace in tables other than main and local that
        a policy rule looks up: (route, table, the first rule's preference)."""
        return []
    def sockets(self) -> list[tuple[str, IPAddress, int]]:
        """The host namespace's listening TCP and bound UDP sockets:
        (protocol, local address, port)."""
    def read_link(self, path: str) -> str | None:
        """The target of a symbolic link; None if path is no link."""
    def list_dir(self, path: str) -> list[str]: ...
    def file_type(self, path: str) -> FileType | None:
        """What is at path, no link followed on the way or at the end (lstat(2)
        one component at a time); None when absent or a component on the way
        is no directory."""
    def dir_entries(self, path: str) -> dict[str, FileType]:
        """The entries of the directory at path, each with its type, reached and
        seen without following a link and without opening any; {} when there is
        no such directory."""
    def sysctl_get(self, name: str) -> str | None:
        """A sysctl of the machine's namespace by its /proc/sys path
        ("net/ipv4/ip_forward"); None when it does not exist."""
    def nft_ruleset(self) -> list[dict[str, Any]]:
        """The machine's nftables ruleset as `nft -j list ruleset` lists it."""
    def nft_tables(self) -> list[tuple[str, str]]:
        """(family, name) of the machine's nftables tables, read without the
        nft command (what is known when nft_ruleset fails)."""
    def link_kind_supported(self, kind: str) -> bool:
        """Whether the kernel can make links of this kind, found out without
        making one."""
    def fdb(self) -> list[FdbInfo]:
        """The host namespace's forwarding entries (bridges' and devices' own)."""
    def neighbours(self) -> list[NeighInfo]:
        """The host namespace's IPv4 and IPv6 neighbour entries."""

    # writes
    def netns_add(self, name: str, lo_alias: str) -> None:
        """Create /run/netns/<name> with its loopback up and aliased lo_alias,
        all before the namespace becomes visible."""
    def netns_del(self, name: str) -> None: ...
    def bridge_add(self, ifname: str, mac: str) -> None: ...
    def veth_add(
        self, host_ifname: str, host_mtu: int, peer_ns: str, peer_ifname: str, peer_mac: str,
        peer_mtu: int,
    ) -> None: ...
    def link_set(
        self,
        ns: str,
        ifname: str,
        *,
        new_name: str | None = None,
        mtu: int | None = None,
        mac: str | None = None,
        up: bool | None = None,
        master: str | None = None,
        nomaster: bool = False,
        alias: str | None = None,
        isolated: bool | None = None,
        hairpin: bool | None = None,
    ) -> None: ...
    def sublink_add(
        self, kind: str, parent: str, mode: str, ns: str, ifname: str, mac: str | None,
        mtu: int,
    ) -> None:
        """A macvlan or ipvlan link on `parent` (host namespace), made directly in ns."""
    def vxlan_add(self, ifname: str, vni: int, local: str, port: int, mtu: int) -> None:
        """A VXLAN device in the host namespace, learning off, ARP/ND proxy on."""
    def fdb_add(self, ifname: str, mac: str, dst: str | None) -> None:
        """A static entry: of the device itself to remote dst, or (dst None) of
        the bridge the device is a port of. The all-zero MAC may have several
        dsts; another MAC one."""
    def fdb_del(self, ifname: str, mac: str, dst: str | None) -> None: ...
    def neigh_add(self, ifname: str, ip: str, mac: str, replace: bool = False) -> None:
        """A permanent neighbour entry in the host namespace."""
    def neigh_del(self, ifname: str, ip: str) -> None: ...
    def link_del(self, ns: str, ifname: str) -> None: ...
    def link_addr_gen(self, ns: str, ifname: str, enabled: bool,
                      drop_link_local: bool = False) -> None:
        """IPv6 address generation of the link on (EUI-64) or off (none: no
        link-local address, so no duplicate address detection, router
        solicitation or listener report flooded to the link's neighbours), in
        a change of its own, before the link goes up. drop_link_local: when
        switching off, also delete the link-local addresses the link already
        has (it was up). EAFNOSUPPORT when the link has no IPv6 (MTU below 1280)."""
    def addr_add(self, ns: str, ifname: str, cidr: str) -> None: ...
    def addr_del(self, ns: str, ifname: str, cidr: str) -> None: ...
    def route_add(
        self, ns: str, dst: str, via: str, ifname: str, replace: bool = False
    ) -> None: ...
    def route_del(self, ns: str, dst: str) -> None: ...
    def sysctl_set(self, name: str, value: str) -> None: ...
    def nft_apply(self, commands: list[dict[str, Any]], what: str) -> None:
        """Run nftables JSON commands as one transaction."""
    def write_file(self, path: str, content: str) -> None: ...
    def write_link(self, path: str, target: str) -> None: ...
    def rewrite_file(self, path: str, content: str) -> None:
        """Replace the content of an existing regular file in place (same inode:
        engines bind-mount their hosts files). ENOENT when it is gone; ELOOP when
        path is a symbolic link, which is never followed."""
    def forget_flows(self, protocol: str, port: int) -> None:
        """Delete the host's connection tracking entries to a port (protocol
        "tcp" or "udp"), so that flows in progress meet the current DNAT rules."""
    def announce(self, ns: str, ifname: str) -> None:
        """Announce every address of the interface at its MAC to the neighbours
        (gratuitous ARP, unsolicited neighbour advertisement). Changes no
        state; a failure to send is ignored."""
    def remove_file(self, path: str) -> None:
        """Remove the file or link at path (a link on the way is never
        followed: ELOOP); then its directory, when it is one of /etc/netns
        and is left empty."""
    def remove_dir(self, path: str) -> None:
        """Remove the directory at path if it is empty; one that is not (or is
        no directory) is left as it is."""
    def close(self) -> None: ...
