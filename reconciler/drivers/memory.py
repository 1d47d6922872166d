"""An in-memory kernel with the real kernel's rules, behind the Kernel interface.

The same executor and observer code runs on it as on the real kernel, so
property-based tests can explore thousands of states quickly. A differential
test (tests/test_memory_kernel.py) replays generated call sequences on both and
asserts they agree, call by call and state by state; the rules below are the
ones that test pins down:

- interface names are unique per namespace and at most 15 characters (ERANGE);
- a link, address or route needs its namespace and link (ENODEV, ENOENT);
- a veth pair dies together; deleting a namespace deletes what is in it;
- a port's master must be a bridge (EOPNOTSUPP, after leaving its old one),
  a port cannot be a bridge
  (ELOOP) or the loopback (EINVAL); deleting a bridge frees its ports; a
  bridge whose MTU was never set follows its ports' smallest MTU;
- a route needs its link up and its gateway inside a subnet of an address on
  that link (IPv4 ENETUNREACH, IPv6 EHOSTUNREACH);
- removing an IPv4 address removes the IPv4 routes whose gateway it covered,
  and removing a subnet's primary address removes its secondaries;
- setting a link down removes its IPv4 routes and all its IPv6 addresses and
  routes; loopback up adds 127.0.0.1/8 and ::1/128;
- MTU must be 68..65535 (EINVAL; the loopback's MTU is not modelled); below
  1280 a link has no IPv6 (its address generation mode cannot be set:
  EAFNOSUPPORT) and when it is back its mode is the default (EUI-64) again;
- a link's IPv6 address generation mode is set on its own; link-local
  addresses the kernel makes are not modelled (only those added by hand);
  a multicast MAC is EADDRNOTAVAIL; the loopback cannot be deleted;
- a macvlan/ipvlan link needs its driver (EOPNOTSUPP), a parent of the host
  namespace (ENODEV) that is no bridge port (EBUSY), an MTU no larger than the
  parent's (EINVAL); ipvlan links carry the parent's MAC;
- a VXLAN device needs a vni below 2^24 (ERANGE) not yet used with its UDP
  port (EEXIST); its own static forwarding entries stay while it lives, the
  bridge's entries for it go when it leaves the bridge; neighbour entries
  on a link go when it goes down or is given a MAC;
- nftables: whole transactions or nothing; a table lists back exactly what was
  written, which the differential test checks for every rule form netapply
  writes (up to one-element lists, which nft versions print differently).
Not modelled, because the spec rules them out: macvlan and ipvlan on one
parent, passthru beside other links, port options of bonds.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import random
from dataclasses import dataclass, field
from typing import Any

from reconciler.drivers.kernel import (
    ETC_NETNS_DIR,
    NETNS_DIR,
    NUD_NOARP,
    NUD_PERMANENT,
    AddrInfo,
    FdbInfo,
    FileType,
    LinkInfo,
    NeighInfo,
    NsFile,
    RouteInfo,
    VxlanInfo,
)
from reconciler.errors import KernelError
from reconciler.model import IFNAMSIZ, IPAddress
from reconciler.resources import RTPROT_NETAPPLY, ZERO_MAC

MIN_MTU, MAX_MTU = 68, 65535
IPV6_MIN_MTU = 1280  # below it a link has no IPv6 (addrconf_notify, NETDEV_CHANGEMTU)
KINDS = frozenset({"bridge", "veth", "macvlan", "ipvlan", "vxlan"})
VXLAN_N_VID = 1 << 24
# Per-link settings modelled, with the values the kernel takes.
LINK_SYSCTLS = {"route_localnet": ("0", "1"), "rp_filter": ("0", "1", "2")}
DEFAULT_MTU = 1500
RTPROT_KERNEL = 2


@dataclass
class _Link:
    index: int
    ifname: str
    kind: str | None
    mtu: int
    mac: str
    up: bool = False
    alias: str | None = None
    master: int | None = None
    peer: tuple[_Namespace, int] | None = None
    random_mac: bool = False  # chosen by the kernel, not by the caller
    mtu_set: bool = False  # a bridge's MTU set explicitly stops following its ports
    isolated: bool = False  # bridge port flags; a new port starts without them
    hairpin: bool = False
    parent: int | None = None  # macvlan/ipvlan: the parent's index in the host namespace
    mode: str | None = None
    route_localnet: str = "0"  # the link's net/ipv4/conf/<ifname>/route_localnet
    rp_filter: str = "0"  # the link's net/ipv4/conf/<ifname>/rp_filter
    vxlan: VxlanInfo | None = None
    addr_gen: bool = True  # IPv6 address generation mode other than none

    @property
    def ipv6_ll(self) -> bool:
        return self.addr_gen and self.mtu >= IPV6_MIN_MTU

    def set_mtu(self, mtu: int) -> None:
        if self.mtu < IPV6_MIN_MTU <= mtu:
            self.addr_gen = True  # IPv6 comes back with the default mode
        self.mtu = mtu


@dataclass
class _Route:
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    via: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    oif: int
    proto: int


@dataclass(eq=False)
class _Namespace:
    name: str
    links: dict[int, _Link] = field(default_factory=dict)
    addresses: list[tuple[int, ipaddress.IPv4Interface | ipaddress.IPv6Interface]] = field(
        default_factory=list
    )
    routes: list[_Route] = field(default_factory=list)
    # Static forwarding entries: a VXLAN device's own, (device, MAC) -> remote
    # machines in the order added; a bridge's, (bridge, MAC) -> port.
    fdb_self: dict[tuple[int, str], list[str]] = field(default_factory=dict)
    fdb_master: dict[tuple[int, str], int] = field(default_factory=dict)
    neigh: dict[tuple[int, str], str] = field(default_factory=dict)  # (link, ip) -> MAC

    def by_name(self, ifname: str) -> _Link | None:
        return next((link for link in self.links.values() if link.ifname == ifname), None)


# Paths that name the namespace of the process itself: the host's, here.
OWN_NS_PATHS = ("/proc/self/ns/net", "/proc/thread-self/ns/net")


class MemoryKernel:
    """Kernel interface on plain Python objects (see drivers/kernel.py)."""

    def __init__(self, seed: int = 0, kinds: frozenset[str] = KINDS) -> None:
        self.writes = 0
        self.kinds = kinds  # link kinds this kernel has drivers for
        self.sysctls = {"net/ipv4/ip_forward": "0"}
        self.nft = _Ruleset()
        self._random = random.Random(seed)
        self._index = itertools.count(1)
        self._host = self._new_namespace("")
        lo = self._host.by_name("lo")
        assert lo is not None
        lo.up = True  # as on any running machine
        self._loopback_changed(self._host, lo)
        self._named: dict[str, _Namespace] = {}
        self.files: dict[str, str] = {}
        self.symlinks: dict[str, str] = {}
        self.listening: list[tuple[str, IPAddress, int]] = []  # the host's sockets
        self.announced: list[tuple[str, str]] = []  # (ns, ifname) of each announce
        self.forgotten: list[tuple[str, int]] = []  # (protocol, port) of each forget_flows

    # ---- namespaces ---------------------------------------------------------------

    def _new_namespace(self, name: str) -> _Namespace:
        ns = _Namespace(name)
        lo = _Link(next(self._index), "lo", None, 65536, "00:00:00:00:00:00")
        ns.links[lo.index] = lo
        return ns

    def _ns(self, ns: str, what: str) -> _Namespace:
        if not ns:
            return self._host
        if ns in OWN_NS_PATHS:
            return self._host
        if ns.startswith("/"):  # a netns_path: only /run/netns/<name> exists here
            found = None
            if os.path.dirname(ns) == NETNS_DIR:
                found = self._named.get(os.path.basename(ns))
        else:
            found = self._named.get(ns)
        if found is None:
            raise KernelError(what, errno.ENOENT)
        return found

    def random_mac_links(self) -> set[tuple[str, str]]:
        """(ns, ifname) of links whose MAC the kernel chose at random."""
        spaces = [self._host, *self._named.values()]
        return {(s.name, link.ifname) for s in spaces for link in s.links.values()
                if link.random_mac}

    def netns_names(self) -> list[str]:
        return sorted(self._named)

    def ns_exists(self, ns: str) -> bool:
        try:
            self._ns(ns, "")
        except KernelError:
            return False
        return True

    def ns_file(self, ns: str) -> NsFile:
        try:
            space = self._ns(ns, "")
        except KernelError:
            return NsFile(problem="does not exist")
        return NsFile(identity=(0, id(space)))  # unique while the namespace lives

    def netns_add(self, name: str, lo_alias: str) -> None:
        self.writes += 1
        if name in self._named:
            raise KernelError(f"create netns {name}", errno.EEXIST)
        space = self._new_namespace(name)
        lo = space.by_name("lo")
        assert lo is not None
        lo.alias, lo.up = lo_alias, True
        self._loopback_changed(space, lo)
        self._named[name] = space

    def netns_del(self, name: str) -> None:
        self.writes += 1
        ns = self._named.pop(name, None)
        if ns is None:
            return
        for link in list(ns.links.values()):
            if link.index in ns.links:
                self._remove_link(ns, link)

    # ---- reads ----------------------------------------------------------------------

    def links(self, ns: str) -> list[LinkInfo]:
        space = self._ns(ns, f"list links in {ns}")
        return [
            LinkInfo(link.index, link.ifname, link.kind, link.mtu, link.mac, link.up,
                     link.alias, link.master, link.isolated, link.hairpin, link.parent,
                     link.mode, link.vxlan, link.ipv6_ll)
            for link in space.links.values()
        ]

    def link(self, ns: str, ref: int | str) -> LinkInfo | None:
        return next((link for link in self.links(ns) if ref in (link.index, link.ifname)), None)

    def addresses(self, ns: str) -> list[AddrInfo]:
        space = self._ns(ns, f"list addresses in {ns}")
        return [AddrInfo(index, str(iface)) for index, iface in space.addresses]

    def routes(self, ns: str) -> list[RouteInfo]:
        space = self._ns(ns, f"list routes in {ns}")
        return [
            RouteInfo(str(r.dst), str(r.via) if r.via else None, r.oif, r.proto)
            for r in space.routes
        ]

    def read_file(self, path: str) -> str | None:
        target = self.symlinks.get(path)
        if target is not None:
            if path.startswith((ETC_NETNS_DIR + "/", NETNS_DIR + "/")):
                return None  # links are not followed there
            path = os.path.normpath(os.path.join(os.path.dirname(path), target))
        return self.files.get(path)

    def read_link(self, path: str) -> str | None:
        return self.symlinks.get(path)

    def sockets(self) -> list[tuple[str, IPAddress, int]]:
        return list(self.listening)

    def forget_flows(self, protocol: str, port: int) -> None:
        self.forgotten.append((protocol, port))  # no flows here

    def announce(self, ns: str, ifname: str) -> None:
        self.announced.append((ns, ifname))  # no neighbours here to tell

    def policy_routes(self) -> list[tuple[RouteInfo, int, int]]:
        return []  # one routing table here, as on a machine without policy rules

    def list_dir(self, path: str) -> list[str]:
        return sorted(self.dir_entries(path))

    def file_type(self, path: str) -> FileType | None:
        """Directories exist here only as the parents of files and links."""
        if path in self.symlinks:
            return FileType.LINK
        if path in self.files:
            return FileType.FILE if self.files[path] else FileType.EMPTY
        if os.path.dirname(path) == NETNS_DIR and os.path.basename(path) in self._named:
            return FileType.NAMESPACE
        if path == NETNS_DIR and self._named:
            return FileType.DIRECTORY
        prefix = path.rstrip("/") + "/"
        if any(p.startswith(prefix) for p in (*self.files, *self.symlinks)):
            return FileType.DIRECTORY
        return None

    def dir_entries(self, path: str) -> dict[str, FileType]:
        prefix = path.rstrip("/") + "/"
        names = {p[len(prefix):].split("/")[0] for p in (*self.files, *self.symlinks)
                 if p.startswith(prefix)}
        if path == NETNS_DIR:
            names |= set(self._named)
        found = {name: self.file_type(prefix + name) for name in names}
        return {name: kind for name, kind in found.items() if kind is not None}

    def sysctl_get(self, name: str) -> str | None:
        link, key = self._link_sysctl(name)
        if link is not None:
            return str(getattr(link, key))
        return self.sysctls.get(name)

    def _link_sysctl(self, name: str) -> tuple[_Link | None, str]:
        """A link's own setting (net/ipv4/conf/<ifname>/<key>): the link and the key."""
        parts = name.split("/")
        if len(parts) == 5 and parts[:3] == ["net", "ipv4", "conf"] and parts[4] in LINK_SYSCTLS:
            return self._host.by_name(parts[3]), parts[4]
        return None, ""

    def nft_ruleset(self) -> list[dict[str, Any]]:
        return self.nft.listing()

    def nft_tables(self) -> list[tuple[str, str]]:
        return list(self.nft.tables)

    def link_kind_supported(self, kind: str) -> bool:
        return kind in self.kinds

    def fdb(self) -> list[FdbInfo]:
        space = self._host
        found = [FdbInfo(index, mac, dst, False, NUD_PERMANENT)
                 for (index, mac), dsts in space.fdb_self.items() for dst in dsts]
        found += [FdbInfo(port, mac, None, True, NUD_NOARP)
                  for (_bridge, mac), port in space.fdb_master.items()]
        return found

    def neighbours(self) -> list[NeighInfo]:
        return [NeighInfo(index, ip, mac, NUD_PERMANENT)
                for (index, ip), mac in self._host.neigh.items()]

    # ---- machine-wide settings ---------------------------------------------------------

    def sysctl_set(self, name: str, value: str) -> None:
        self.writes += 1
        what = f"set {name}"
        link, key = self._link_sysctl(name)
        if link is None and name not in self.sysctls:
            raise KernelError(what, errno.ENOENT)
        if value not in LINK_SYSCTLS.get(key, ("0", "1")):
            raise KernelError(what, errno.EINVAL)
        if link is not None:
            setattr(link, key, value)
        else:
            self.sysctls[name] = value

    def nft_apply(self, commands: list[dict[str, Any]], what: str) -> None:
        self.writes += 1
        self.nft = self.nft.applied(commands, what)

    # ---- links ------------------------------------------------------------------------

    def _link(self, space: _Namespace, ifname: str, what: str) -> _Link:
        link = space.by_name(ifname)
        if link is None:
            raise KernelError(what, errno.ENODEV)
        return link

    def _check_new_name(self, space: _Namespace, ifname: str, what: str) -> None:
        _check_name_length(ifname, what)
        if space.by_name(ifname) is not None:
            raise KernelError(what, errno.EEXIST)

    def _random_mac(self) -> str:
        octets = [self._random.randrange(256) for _ in range(6)]
        octets[0] = (octets[0] & 0xFE) | 0x02
        return ":".join(f"{o:02x}" for o in octets)

    def bridge_add(self, ifname: str, mac: str) -> None:
        self.writes += 1
        what = f"create bridge {ifname}"
        # The kernel's order: attribute policy (name length), the driver's own
        # validation (MAC), then the name lookup.
        _check_name_length(ifname, what)
        _check_mac(mac, what)
        self._check_new_name(self._host, ifname, what)
        link = _Link(next(self._index), ifname, "bridge", DEFAULT_MTU, mac)
        self._host.links[link.index] = link

    def veth_add(
        self, host_ifname: str, host_mtu: int, peer_ns: str, peer_ifname: str, peer_mac: str,
        peer_mtu: int,
    ) -> None:
        self.writes += 1
        what = f"create veth {host_ifname} <-> {peer_ifname}"
        inner = self._ns(peer_ns, what)
        _check_name_length(host_ifname, what)
        _check_name_length(peer_ifname, what)
        # veth validates MTU and MAC before the kernel looks names up.
        _check_mtu(host_mtu, what)
        _check_mtu(peer_mtu, what)
        _check_mac(peer_mac, what)
        self._check_new_name(self._host, host_ifname, what)
        self._check_new_name(inner, peer_ifname, what)
        outer = _Link(
            next(self._index), host_ifname, "veth", host_mtu, self._random_mac(), random_mac=True
        )
        peer = _Link(next(self._index), peer_ifname, "veth", peer_mtu, peer_mac)
        outer.peer, peer.peer = (inner, peer.index), (self._host, outer.index)
        self._host.links[outer.index] = outer
        inner.links[peer.index] = peer

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
    ) -> None:
        what = f"set {ifname} in {ns or 'host namespace'}"
        space = self._ns(ns, what)
        link = self._link(space, ifname, what)
        master_link = self._link(space, master, what) if master is not None else None
        if not any((new_name, mtu, mac, up is not None, master, nomaster, alias is not None,
                    isolated is not None, hairpin is not None)):
            return
        self.writes += 1
        if (isolated is not None or hairpin is not None) and link.master is None:
            # Port options go to the current master, before a new one is set.
            raise KernelError(what, errno.EOPNOTSUPP)
        # Validate everything first: the kernel applies one message or nothing.
        if new_name is not None and new_name != link.ifname:
            self._check_new_name(space, new_name, what)
        if mtu is not None:
            _check_mtu(mtu, what)
        if mac is not None:
            _check_mac(mac, what)
        if master_link is not None and master_link.index != link.master:
            if master_link.kind != "bridge":
                # The one partial change: the kernel releases the port from its
                # bridge before it finds that the new master takes no ports.
                old = link.master
                link.master = None
                self._new_port(space, link)
                self._follow_ports(space, old)
                raise KernelError(what, errno.EOPNOTSUPP)
            if link.kind is None:
                raise KernelError(what, errno.EINVAL)  # the loopback is no port
            if link.kind == "bridge":
                raise KernelError(what, errno.ELOOP)  # nor is a bridge
        old_master = link.master
        if isolated is not None:
            link.isolated = isolated
        if hairpin is not None:
            link.hairpin = hairpin
        if new_name is not None:
            link.ifname = new_name
        if mtu is not None and mtu != link.mtu:  # the same value does not pin it
            link.set_mtu(mtu)
            link.mtu_set = True
        if mac is not None:
            link.mac = mac
            link.random_mac = False
            # The kernel announces a new address even when it is the old one, and
            # neighbour entries on the link go, permanent ones too.
            space.neigh = {k: m for k, m in space.neigh.items() if k[0] != link.index}
        if alias is not None:
            link.alias = alias or None
        if master_link is not None:
            link.master = master_link.index
        elif nomaster:
            link.master = None
        if link.master != old_master:
            self._new_port(space, link)
        for bridge_index in {old_master, link.master, link.index}:
            self._follow_ports(space, bridge_index)
        if up is not None and up != link.up:
            link.up = up
            if link.ifname == "lo" and link.kind is None:
                self._loopback_changed(space, link)
            if not up:
                self._went_down(space, link)

    @staticmethod
    def _new_port(space: _Namespace, link: _Link) -> None:
        """A link that left its bridge (for another or none): its port options
        are back to defaults and the old bridge's entries for it are gone."""
        link.isolated = link.hairpin = False
        space.fdb_master = {k: p for k, p in space.fdb_master.items() if p != link.index}

    def _follow_ports(self, space: _Namespace, index: int | None) -> None:
        """A bridge whose MTU nobody set follows the smallest MTU of its ports
        (1500 without ports) as ports come, go or change."""
        bridge = space.links.get(index) if index is not None else None
        if bridge is None or bridge.kind != "bridge" or bridge.mtu_set:
            return
        ports = [link.mtu for link in space.links.values() if link.master == bridge.index]
        bridge.set_mtu(min(ports) if ports else DEFAULT_MTU)

    def _loopback_changed(self, space: _Namespace, lo: _Link) -> None:
        if lo.up:
            for cidr in ("127.0.0.1/8", "::1/128"):
                iface = ipaddress.ip_interface(cidr)
                if (lo.index, iface) not in space.addresses:
                    space.addresses.append((lo.index, iface))

    def _went_down(self, space: _Namespace, link: _Link) -> None:
        space.addresses = [
            (i, a) for i, a in space.addresses if not (i == link.index and a.version == 6)
        ]
        space.routes = [r for r in space.routes if r.oif != link.index]
        # Neighbour entries go, permanent ones too; static forwarding entries stay.
        space.neigh = {k: mac for k, mac in space.neigh.items() if k[0] != link.index}

    def sublink_add(
        self, kind: str, parent: str, mode: str, ns: str, ifname: str, mac: str | None,
        mtu: int,
    ) -> None:
        self.writes += 1
        what = f"create {kind} {ifname} on {parent}"
        lower = self._link(self._host, parent, what)
        space = self._ns(ns, what)
        # The kernel's order: attribute policy, the driver's validation (MAC) if
        # the driver exists, the name in the target namespace, a missing driver,
        # then the driver's own checks (MTU, parent).
        _check_name_length(ifname, what)
        if mac is not None and kind in self.kinds:
            _check_mac(mac, what)
        self._check_new_name(space, ifname, what)
        if kind not in self.kinds:
            raise KernelError(what, errno.EOPNOTSUPP)
        _check_mtu(mtu, what)
        if mtu > lower.mtu:
            raise KernelError(what, errno.EINVAL)  # no larger than the parent's
        if lower.master is not None:
            raise KernelError(what, errno.EBUSY)  # a bridge port passes frames to its bridge
        if kind == "ipvlan":
            mac = lower.mac  # ipvlan links share the parent's address
        link = _Link(next(self._index), ifname, kind, mtu, mac or self._random_mac(),
                     random_mac=mac is None, parent=lower.index, mode=mode)
        space.links[link.index] = link

    def vxlan_add(self, ifname: str, vni: int, local: str, port: int, mtu: int) -> None:
        self.writes += 1
        what = f"create vxlan {ifname}"
        space = self._host
        # The kernel's order: attribute policy, the driver's validation (MTU, vni),
        # the name, then the device's configuration (a vni taken on the port).
        _check_name_length(ifname, what)
        if "vxlan" in self.kinds:
            _check_mtu(mtu, what)
            if not 0 <= vni < VXLAN_N_VID:
                raise KernelError(what, errno.ERANGE)
        self._check_new_name(space, ifname, what)
        if "vxlan" not in self.kinds:
            raise KernelError(what, errno.EOPNOTSUPP)
        if any(link.vxlan is not None and (link.vxlan.vni, link.vxlan.port) == (vni, port)
               for link in space.links.values()):
            raise KernelError(what, errno.EEXIST)
        link = _Link(next(self._index), ifname, "vxlan", mtu, self._random_mac(),
                     random_mac=True, vxlan=VxlanInfo(vni, local, port, False, True))
        space.links[link.index] = link

    @staticmethod
    def _bridge_of(space: _Namespace, link: _Link, what: str) -> _Link:
        """The bridge a port's entries belong to; EOPNOTSUPP for a link that is
        no bridge port (the request has nowhere to go)."""
        bridge = space.links.get(link.master) if link.master is not None else None
        if bridge is None or bridge.kind != "bridge":
            raise KernelError(what, errno.EOPNOTSUPP)
        return bridge

    def fdb_add(self, ifname: str, mac: str, dst: str | None) -> None:
        self.writes += 1
        what = f"add forwarding entry {mac} on {ifname}"
        space = self._host
        link = self._link(space, ifname, what)
        if dst is None:
            bridge = self._bridge_of(space, link, what)
            if mac == ZERO_MAC:
                raise KernelError(what, errno.EINVAL)
            space.fdb_master[(bridge.index, mac)] = link.index  # replaces a learned one
            return
        if link.vxlan is None:
            raise KernelError(what, errno.EOPNOTSUPP)  # not modelled: only VXLAN devices
        dsts = space.fdb_self.setdefault((link.index, mac), [])
        if mac == ZERO_MAC:
            if dst not in dsts:
                dsts.append(dst)  # appended: one entry per machine
        else:
            dsts[:] = [dst]  # replaced

    def fdb_del(self, ifname: str, mac: str, dst: str | None) -> None:
        self.writes += 1
        what = f"delete forwarding entry {mac} on {ifname}"
        space = self._host
        link = self._link(space, ifname, what)
        if dst is None:
            key = (self._bridge_of(space, link, what).index, mac)
            if space.fdb_master.get(key) != link.index:
                raise KernelError(what, errno.ENOENT)
            del space.fdb_master[key]
            return
        dsts = space.fdb_self.get((link.index, mac))
        if dsts is None:
            raise KernelError(what, errno.ENOENT)
        if dst not in dsts:
            return  # the kernel finds the MAC, not this remote, and calls that done
        dsts.remove(dst)
        if not dsts:
            del space.fdb_self[(link.index, mac)]

    def neigh_add(self, ifname: str, ip: str, mac: str, replace: bool = False) -> None:
        self.writes += 1
        what = f"add neighbour {ip} on {ifname}"
        space = self._host
        link = self._link(space, ifname, what)
        key = (link.index, str(ipaddress.ip_address(ip)))
        if key in space.neigh and not replace:
            raise KernelError(what, errno.EEXIST)
        space.neigh[key] = mac

    def neigh_del(self, ifname: str, ip: str) -> None:
        self.writes += 1
        what = f"delete neighbour {ip} on {ifname}"
        space = self._host
        link = self._link(space, ifname, what)
        if space.neigh.pop((link.index, str(ipaddress.ip_address(ip))), None) is None:
            raise KernelError(what, errno.ENOENT)

    def link_addr_gen(self, ns: str, ifname: str, enabled: bool,
                      drop_link_local: bool = False) -> None:
        what = f"set IPv6 address generation of {ifname} in {ns or 'host namespace'}"
        space = self._ns(ns, what)
        link = self._link(space, ifname, what)
        self.writes += 1
        if link.mtu < IPV6_MIN_MTU:
            raise KernelError(what, errno.EAFNOSUPPORT)
        link.addr_gen = enabled
        if not enabled and drop_link_local:
            space.addresses = [(i, a) for i, a in space.addresses
                               if not (i == link.index and a.version == 6
                                       and a.ip.is_link_local)]

    def link_del(self, ns: str, ifname: str) -> None:
        self.writes += 1
        what = f"delete {ifname} in {ns or 'host namespace'}"
        space = self._ns(ns, what)
        link = self._link(space, ifname, what)
        if link.kind is None:
            raise KernelError(what, errno.EOPNOTSUPP)  # the loopback device stays
        self._remove_link(space, link)

    def _remove_link(self, space: _Namespace, link: _Link) -> None:
        del space.links[link.index]
        space.addresses = [(i, a) for i, a in space.addresses if i != link.index]
        space.routes = [r for r in space.routes if r.oif != link.index]
        space.neigh = {k: mac for k, mac in space.neigh.items() if k[0] != link.index}
        space.fdb_self = {k: d for k, d in space.fdb_self.items() if k[0] != link.index}
        space.fdb_master = {k: p for k, p in space.fdb_master.items()
                            if link.index not in (k[0], p)}
        for other in space.links.values():
            if other.master == link.index:
                other.master = None
        self._follow_ports(space, link.master)
        if link.peer is not None:
            peer_space, peer_index = link.peer
            peer = peer_space.links.get(peer_index)
            if peer is not None:
                peer.peer = None
                self._remove_link(peer_space, peer)

    # ---- addresses and routes -------------------------------------------------------------

    def addr_add(self, ns: str, ifname: str, cidr: str) -> None:
        self.writes += 1
        what = f"add address {cidr} to {ifname}"
        space = self._ns(ns, what)
        link = self._link(space, ifname, what)
        iface = ipaddress.ip_interface(cidr)
        if any(i == link.index and a.ip == iface.ip for i, a in space.addresses):
            raise KernelError(what, errno.EEXIST)
        space.addresses.append((link.index, iface))

    def addr_del(self, ns: str, ifname: str, cidr: str) -> None:
        self.writes += 1
        what = f"delete address {cidr} from {ifname}"
        space = self._ns(ns, what)
        link = self._link(space, ifname, what)
        iface = ipaddress.ip_interface(cidr)
        if (link.index, iface) not in space.addresses:
            raise KernelError(what, errno.EADDRNOTAVAIL)
        gone = [(link.index, iface)]
        if iface.version == 4 and self._primary(space, link, iface) == iface:
            # Without promote_secondaries (off by default) the kernel removes the
            # secondary addresses of a subnet with its primary.
            gone += [(i, a) for i, a in space.addresses if i == link.index and a != iface
                     and a.version == 4 and a.network == iface.network]
        space.addresses = [entry for entry in space.addresses if entry not in gone]
        if iface.version == 4:
            space.routes = [
                r for r in space.routes
                if not (r.oif == link.index and r.via is not None and r.via.version == 4
                        and not self._reachable(space, link, r.via))
            ]

    @staticmethod
    def _primary(
        space: _Namespace, link: _Link, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    ) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
        """The first address of iface's subnet (same prefix) on the link: the primary."""
        return next((a for i, a in space.addresses
                     if i == link.index and a.version == 4 and a.network == iface.network), None)

    def _reachable(
        self, space: _Namespace, link: _Link,
        via: ipaddress.IPv4Address | ipaddress.IPv6Address,
    ) -> bool:
        return any(
            i == link.index and a.version == via.version and via in a.network
            for i, a in space.addresses
        )

    def route_add(self, ns: str, dst: str, via: str, ifname: str, replace: bool = False) -> None:
        self.writes += 1
        what = f"{'replace' if replace else 'add'} route {dst} via {via}"
        space = self._ns(ns, what)
        link = self._link(space, ifname, what)
        net = ipaddress.ip_network(dst)
        gateway = ipaddress.ip_address(via)
        unreachable = errno.ENETUNREACH if net.version == 4 else errno.EHOSTUNREACH
        if not link.up or not self._reachable(space, link, gateway):
            raise KernelError(what, unreachable)
        existing = [r for r in space.routes if r.dst == net]
        if existing and not replace:
            raise KernelError(what, errno.EEXIST)
        for old in existing:
            space.routes.remove(old)
        space.routes.append(_Route(net, gateway, link.index, RTPROT_NETAPPLY))

    def route_del(self, ns: str, dst: str) -> None:
        self.writes += 1
        what = f"delete route {dst}"
        space = self._ns(ns, what)
        net = ipaddress.ip_network(dst)
        for route in space.routes:
            if route.dst == net and route.proto == RTPROT_NETAPPLY:
                space.routes.remove(route)
                return
        raise KernelError(what, errno.ESRCH)

    # ---- files ------------------------------------------------------------------------------

    def write_file(self, path: str, content: str) -> None:
        self.writes += 1
        self.symlinks.pop(path, None)
        self.files[path] = content

    def rewrite_file(self, path: str, content: str) -> None:
        self.writes += 1
        if path in self.symlinks:
            raise KernelError(f"rewrite {path}", errno.ELOOP)
        if path not in self.files:
            raise KernelError(f"rewrite {path}", errno.ENOENT)
        self.files[path] = content

    def write_link(self, path: str, target: str) -> None:
        self.writes += 1
        self.files.pop(path, None)
        self.symlinks[path] = target

    def remove_file(self, path: str) -> None:
        self.writes += 1
        self.files.pop(path, None)
        self.symlinks.pop(path, None)

    def remove_dir(self, path: str) -> None:
        self.writes += 1  # a directory without entries does not exist here

    def close(self) -> None:
        pass


class _Ruleset:
    """nftables tables, chains and rules, changed only by whole transactions."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        self.handles = itertools.count(1)  # the kernel numbers rules, never reusing a number

    def listing(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for (family, name), (chains, rules) in self.tables.items():
            out.append({"table": {"family": family, "name": name}})
            out.extend({"chain": dict(chain)} for chain in chains)
            for chain in chains:  # `nft list` groups rules by chain
                out.extend({"rule": dict(rule)} for rule in rules if rule["chain"] == chain["name"])
        return out

    def applied(self, commands: list[dict[str, Any]], what: str) -> _Ruleset:
        """A copy with the commands applied, or KernelError and no change."""
        new = _Ruleset()
        new.tables = {key: (list(c), list(r)) for key, (c, r) in self.tables.items()}
        new.handles = self.handles
        for command in commands:
            ((verb, body),) = command.items()
            ((kind, obj),) = body.items()
            family, name = obj["family"], obj.get("table", obj.get("name"))
            table = new.tables.get((family, name))
            if verb == "add" and kind == "table":
                new.tables.setdefault((family, name), ([], []))
            elif verb == "delete" and kind == "table" and table is not None:
                del new.tables[(family, name)]
            elif verb == "add" and kind == "chain" and table is not None:
                if all(chain["name"] != obj["name"] for chain in table[0]):
                    table[0].append(dict(obj))
            elif verb in ("add", "insert") and kind == "rule" and table is not None and any(
                chain["name"] == obj["chain"] for chain in table[0]
            ):
                rule = {**obj, "handle": next(new.handles)}
                first = next((i for i, r in enumerate(table[1]) if r["chain"] == obj["chain"]),
                             len(table[1]))
                table[1].insert(first if verb == "insert" else len(table[1]), rule)
            elif verb == "delete" and kind == "rule" and table is not None and any(
                r["handle"] == obj["handle"] and r["chain"] == obj["chain"] for r in table[1]
            ):
                table[1][:] = [r for r in table[1] if r["handle"] != obj["handle"]]
            else:
                raise KernelError(what, 0, f"Could not process rule: No such file or directory: "
                                           f"{verb} {kind}")
        return new


def _check_name_length(ifname: str, what: str) -> None:
    if len(ifname) > IFNAMSIZ:
        raise KernelError(what, errno.ERANGE)


def _check_mtu(mtu: int, what: str) -> None:
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise KernelError(what, errno.EINVAL)


def _check_mac(mac: str, what: str) -> None:
    if int(mac.split(":")[0], 16) & 1:
        raise KernelError(what, errno.EADDRNOTAVAIL)


__all__ = ["ETC_NETNS_DIR", "MemoryKernel"]
