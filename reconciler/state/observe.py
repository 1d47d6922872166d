"""Observe what the project owns, from the kernel alone.

Ownership is read from marks in the kernel itself: the ifalias of links and of
each owned namespace's loopback, the protocol number of routes, and a header
line in managed hosts files. Everything else that is seen is recorded only by
name, as foreign, so that a desired name that collides with it is an error.

Files under /run/netns and /etc/netns are looked at by type before anything is
read (drivers/files.py): no link is followed and nothing but a regular file is
opened, so a FIFO, a directory or a link anywhere there blocks only a name the
spec wants. A namespace that cannot be read is an error, never "foreign": an
unreadable mark must not turn an owned object into a foreign one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from reconciler import firewall, model, ports
from reconciler.drivers.kernel import (
    ETC_NETNS_DIR,
    GONE,
    NETNS_DIR,
    NUD_NOARP,
    NUD_PERMANENT,
    TMP_SUFFIX,
    AddrInfo,
    FileType,
    Kernel,
    LinkInfo,
    RouteInfo,
)
from reconciler.drivers.ops import (
    LOOPBACK,
    RP_LOOSE,
    hosts_path,
    localnet_sysctl,
    rp_filter_sysctl,
)
from reconciler.errors import KernelError
from reconciler.lock import LOCK_DIR
from reconciler.resources import (
    DOCKER_USER_CHAIN,
    DOCKER_USER_TABLE,
    HOST_NS,
    HOSTS_HEADER,
    RTPROT_NETAPPLY,
    Address,
    Bridge,
    DockerUser,
    Fdb,
    Firewall,
    HostsBlock,
    HostsFile,
    HostsTable,
    Key,
    Kind,
    Leftover,
    LeftoverFile,
    Neigh,
    Netns,
    Resource,
    Route,
    Rule,
    Sublink,
    Sysctl,
    Veth,
    Vxlan,
    canonical,
    docker_user_comment,
    hosts_block_of,
    is_staging_name,
    owner_alias,
    tables_dir,
)

RTPROT_KERNEL = 2
UNSEEN_NS = "?"


@dataclass(frozen=True)
class NftChain:
    family: str
    table: str
    name: str
    hook: str | None
    policy: str | None


@dataclass(frozen=True)
class Foreign:
    """Names taken by objects the project does not own."""

    links: frozenset[tuple[str, str]] = frozenset()  # (ns, ifname)
    netns: frozenset[str] = frozenset()
    hosts: frozenset[str] = frozenset()  # netns names with an unmanaged hosts file
    routes: frozenset[tuple[str, str]] = frozenset()  # (ns, dst)
    # Networks the machine already reaches (a LAN, a VPN): (network, what it is),
    # from routes and addresses of the host namespace that are not the project's.
    host_nets: tuple[tuple[model.IPNetwork, str], ...] = ()
    nft_tables: tuple[tuple[str, str], ...] = ()  # (family, name), the project's excepted
    nft_chains: tuple[NftChain, ...] = ()
    nft_error: str | None = None  # why the ruleset could not be read (no nft command)
    # Links of the host namespace that are not the project's, by name: their MTU
    # and whether they are a port of a bridge or bond (possible macvlan parents).
    host_links: tuple[tuple[str, int, bool], ...] = ()
    # Addresses of the host namespace that are not on the project's links, and
    # the interface each is on (where an overlay's VXLAN packets leave from).
    host_addresses: tuple[tuple[model.IPAddress, str], ...] = ()
    vxlans: tuple[tuple[str, int, int], ...] = ()  # other VXLAN devices: name, vni, port
    # Ports others hold: the host's listening sockets, other tables' DNAT rules.
    held_ports: tuple[ports.Held, ...] = ()
    # Paths under /run/netns, /etc/netns (and those directories and /run/netapply
    # themselves) taken by something netapply did not make, with what it is
    # ("a symbolic link to /tmp", "a FIFO").
    files: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ObservedState:
    resources: dict[Key, Resource]
    foreign: Foreign = field(default_factory=Foreign)
    # netns_path namespaces that are no namespace netapply can attach to, with
    # why ("does not exist", "is a FIFO, not a network namespace"); not read.
    missing_paths: Mapping[str, str] = field(default_factory=dict)
    # The identity (kernel.NsFile) of the namespace netapply runs in (HOST_NS),
    # of each netns_path namespace and, when there are such paths, of each
    # named namespace the project owns: which references name one namespace.
    ns_ids: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    missing_kinds: frozenset[str] = frozenset()  # link kinds this kernel cannot make
    # Parts of the kernel that could not be read and may hold the project's
    # objects, each named with why: nothing may be claimed about them.
    unread: tuple[str, ...] = ()
    # What each part of the kernel held when it was read (the host namespace,
    # each namespace, nftables, each /etc/netns entry), so that a later
    # observation reads again only what may have changed (see Reread).
    parts: Mapping[str, _Scan] = field(default_factory=dict, compare=False, repr=False)
    # Each veth as paired from its two ends (_pair_veths): ends kept unchanged
    # from an earlier observation pair into the very same Veth.
    paired: Mapping[tuple[str, str], _Pair] = field(default_factory=dict, compare=False,
                                                    repr=False)


@dataclass(frozen=True)
class Reread:
    """Which parts of the kernel an observation reads again; the others it
    takes from an earlier observation (`previous`), as they were then.

    The caller answers for that: after an apply, the namespaces the plan
    wrote to (engine.verify); in watch mode, the parts a kernel notification
    named since (state/cache.py). `namespaces` and `files` name namespaces
    (a name in /run/netns or a netns_path); a part the earlier observation
    does not have is always read."""

    host: bool = True  # the host namespace's links, addresses, routes, entries
    # Without `host`: the host namespace read again but for its links, of which
    # only these (by index or name) are read again, one by one; the others are
    # taken as they were (None: the host namespace is not read again at all).
    host_links: frozenset[int | str] | None = None
    nft: bool = True
    netns_dir: bool = True  # which namespaces /run/netns holds
    namespaces: frozenset[str] = frozenset()
    files: frozenset[str] = frozenset()  # /etc/netns/<name> entries
    tables: bool = True  # the project's hosts tables (/etc/netns/.netapply-<project>)


HOST_PART, NFT_PART, NETNS_LIST, TABLES_PART = "", "\0nft", "\0netns", "\0tables"
ETC_LIST = "\0etc"  # the entries of /etc/netns
FILES_PART = "\0files:"  # + the name under /etc/netns


@dataclass(eq=False)
class _End:
    ns: str
    link: LinkInfo
    master: str | None = None  # network of an owned bridge, "?name" for another device
    master_ifname: str | None = None
    allocated: str = ""  # the allocation record of a host end's mark


_Pair = tuple["_End | None", "_End | None", Veth]  # host end, inner end, the Veth of both


@dataclass
class _Scan:
    project: str
    kernel: Kernel
    resources: dict[Key, Resource] = field(default_factory=dict)
    host_ends: dict[tuple[str, str], _End] = field(default_factory=dict)
    inner_ends: dict[tuple[str, str], _End] = field(default_factory=dict)
    foreign_links: set[tuple[str, str]] = field(default_factory=set)
    foreign_netns: set[str] = field(default_factory=set)
    foreign_files: dict[str, str] = field(default_factory=dict)
    foreign_routes: set[tuple[str, str]] = field(default_factory=set)
    unread: list[str] = field(default_factory=list)
    host_nets: list[tuple[model.IPNetwork, str]] = field(default_factory=list)
    host_names: dict[int, str] = field(default_factory=dict)
    host_links: list[tuple[str, int, bool]] = field(default_factory=list)
    host_addresses: list[tuple[model.IPAddress, str]] = field(default_factory=list)
    vxlans: list[tuple[str, int, int]] = field(default_factory=list)
    nft: _Nft | None = None
    foreign_hosts: set[str] = field(default_factory=set)
    names: list[str] = field(default_factory=list)  # NETNS_LIST: the namespaces in /run/netns
    links: list[LinkInfo] = field(default_factory=list)  # HOST_PART: the host's links
    # NETNS_LIST: every entry of /run/netns, ETC_LIST: of /etc/netns, with its type.
    entries: dict[str, FileType] = field(default_factory=dict)
    sublinks: bool = False  # has macvlan/ipvlan links, whose parents are named from the host
    path_identity: tuple[int, int] | None = None  # of a netns_path namespace, when read
    wanted: bool = False  # an /etc/netns entry: the spec named it when it was read
    # The host's index -> name of the observation a part is read for: a
    # macvlan/ipvlan link in a container names its parent by the host's index.
    # Looked up, never merged (a kept part's would be an earlier one's).
    parent_names: dict[int, str] | None = None

    def part(self) -> _Scan:
        """An empty scan of the same project, to read one part into (after the
        host's part: it names macvlan/ipvlan parents)."""
        return _Scan(self.project, self.kernel, parent_names=self.host_names)

    def merge(self, part: _Scan) -> None:
        """Add what a part held (read now, or kept from an earlier observation).
        A namespace's part has resources and inner ends, maybe foreign links
        and routes; the rest is the host's (tested first: a thousand parts)."""
        self.resources.update(part.resources)
        self.inner_ends.update(part.inner_ends)
        if part.foreign_links:
            self.foreign_links |= part.foreign_links
        if part.foreign_routes:
            self.foreign_routes |= part.foreign_routes
        if part.unread:
            self.unread += part.unread
        if not (part.host_ends or part.foreign_netns or part.foreign_files
                or part.foreign_hosts or part.host_names or part.host_nets
                or part.host_links or part.host_addresses or part.vxlans):
            return
        self.host_ends.update(part.host_ends)
        self.foreign_netns |= part.foreign_netns
        self.foreign_files.update(part.foreign_files)
        self.foreign_hosts |= part.foreign_hosts
        self.host_nets += part.host_nets
        self.host_names.update(part.host_names)
        self.host_links += part.host_links
        self.host_addresses += part.host_addresses
        self.vxlans += part.vxlans

    def alias_parts(self, link: LinkInfo) -> list[str] | None:
        prefix = owner_alias(self.project) + "/"
        if link.alias and link.alias.startswith(prefix):
            return link.alias[len(prefix):].split("/")
        return None

    def in_the_way(self, path: str, kind: FileType) -> None:
        """Record what is at path as foreign, said as `ls -l` would."""
        text = f"{path} is {kind.value}"
        if kind == FileType.LINK:
            target = self.kernel.read_link(path)
            if target is not None:
                text += f" to {target}"
        self.foreign_files[path] = text

    def leftover_file(self, path: str, directory: bool = False) -> None:
        res = LeftoverFile(path, directory)
        self.resources[res.key] = res

    def leftover(self, ns: str, link: LinkInfo, owned_ns: bool) -> bool:
        """Record an unmarked link under the project's staging prefix."""
        if link.alias or not is_staging_name(self.project, link.ifname):
            return False
        res = Leftover(ns, link.ifname, owned_ns=owned_ns)
        self.resources[res.key] = res
        return True


SYSCTLS = (firewall.IP_FORWARD,)


def observe(
    kernel: Kernel, project: str, paths: Iterable[str] = (), kinds: Iterable[str] = (),
    blocks: Mapping[str, tuple[str, str]] | None = None, names: Iterable[str] = (),
    previous: ObservedState | None = None, reread: Reread | None = None,
) -> ObservedState:
    """Read the project's objects. `paths` are netns_path namespaces from the spec,
    which cannot be discovered from the kernel alone (their veths can: the host
    end is in the host namespace, and deleting it removes the pair). `kinds` are
    link kinds the spec needs, checked for support without making a link.
    `blocks`: container name -> (hosts file of its engine, its namespace), the
    files of running runtime containers, which may hold the project's block.
    `names`: the spec's named namespaces; what an interrupted run leaves under
    those names (an empty file in /run/netns, an empty directory in /etc/netns)
    is the project's leftover (LeftoverFile).
    `previous` and `reread`: read again only the parts `reread` names, and take
    the others from `previous` (an observation of the same project); without
    them, everything is read.

    Raises KernelError when a part cannot be read, a namespace included (the
    process out of descriptors, say): its mark unread, it is neither the
    project's nor foreign."""
    scan = _Scan(project, kernel)
    kept: Mapping[str, _Scan] = previous.parts if previous is not None and reread else {}
    again = reread or Reread()
    parts: dict[str, _Scan] = {}

    def part(key: str, fresh: bool, read: Callable[[_Scan], object]) -> _Scan:
        found = None if fresh else kept.get(key)
        if found is None:
            found = scan.part()
            read(found)
        parts[key] = found
        scan.merge(found)
        return found

    wanted_names = frozenset(names)
    _scan_dirs(scan)
    host_kept = kept.get(HOST_PART)
    if not again.host and again.host_links is not None and host_kept is not None:
        reads = _HostReads.of(kernel)
        links = _patched_links(kernel, host_kept.links, again.host_links, reads)
        part(HOST_PART, True, lambda p: _scan_host(p, links, reads))
        host_read = True
    else:
        part(HOST_PART, again.host, _scan_host)
        host_read = again.host
    for name in SYSCTLS:
        value = kernel.sysctl_get(name)
        if value is not None:
            scan.resources[(Kind.SYSCTL, name)] = Sysctl(name, value)
    nft = part(NFT_PART, again.nft, _scan_nft).nft
    assert nft is not None
    listing = part(NETNS_LIST, again.netns_dir, _list_netns_dir)
    netns_names = listing.names
    for name in netns_names:
        earlier = kept.get(name)
        # A macvlan/ipvlan link names its parent from the host's links.
        fresh = name in again.namespaces or (
            host_read and earlier is not None and earlier.sublinks)
        part(name, fresh, lambda p, name=name: _scan_named_ns(p, name))  # type: ignore[misc]
    _scan_netns_dir(scan, listing.entries, set(netns_names), wanted_names)
    missing, ids = _scan_paths(scan, sorted(set(paths)), kept, again, host_read, parts)
    paired = _pair_veths(scan, previous.paired if previous is not None and reread else {})
    part(TABLES_PART, again.tables, _scan_own_tables)
    # Which entries /etc/netns has: a change of any marks its name (files).
    etc = part(ETC_LIST, bool(again.files),
               lambda p: p.entries.update(kernel.dir_entries(ETC_NETNS_DIR)))
    for entry, kind in sorted(etc.entries.items()):
        if entry != tables_dir(project):
            earlier = kept.get(FILES_PART + entry)
            # What is a leftover there depends on whether the spec has the name.
            fresh = entry in again.files or (
                earlier is not None and earlier.wanted != (entry in wanted_names))
            part(FILES_PART + entry, fresh,
                 lambda p, e=entry, k=kind: _scan_hosts_entry(  # type: ignore[misc]
                     p, e, k, wanted_names))
    for container, (path, ns) in sorted((blocks or {}).items()):
        text = kernel.read_file(path)
        lines = None if text is None else hosts_block_of(text, project)
        if lines is not None:
            block = HostsBlock(project, container, lines, ns, path)
            scan.resources[block.key] = block
    return ObservedState(
        resources=scan.resources,
        foreign=Foreign(
            links=frozenset(scan.foreign_links),
            netns=frozenset(scan.foreign_netns),
            hosts=frozenset(scan.foreign_hosts),
            routes=frozenset(scan.foreign_routes),
            host_nets=tuple(scan.host_nets),
            host_links=tuple(scan.host_links),
            host_addresses=tuple(scan.host_addresses),
            vxlans=tuple(scan.vxlans),
            nft_tables=nft.tables,
            nft_chains=nft.chains,
            nft_error=nft.error,
            held_ports=(*ports.listeners(kernel.sockets()), *nft.held),
            files=tuple(sorted(scan.foreign_files.items())),
        ),
        missing_paths=missing,
        ns_ids=ids,
        missing_kinds=frozenset(k for k in set(kinds) if not kernel.link_kind_supported(k)),
        unread=(*([nft.unread] if nft.unread else []), *scan.unread),
        parts=parts,
        paired=paired,
    )


def _scan_named_ns(scan: _Scan, name: str) -> None:
    """A namespace of /run/netns: the project's (its loopback's mark says so)
    and what it holds, or another's."""
    try:
        links = scan.kernel.links(name)
    except KernelError as e:
        # Gone since it was listed: neither the project's nor in the way.
        if e.errno not in GONE:  # it may be the project's: its mark is unknown
            scan.unread.append(f"netns {name} ({e})")
        return
    lo = next((link for link in links if link.ifname == LOOPBACK), None)
    if lo is not None and lo.alias == owner_alias(scan.project, "netns", name):
        scan.resources[(Kind.NETNS, name)] = Netns(name, lo_up=lo.up)
        _scan_container_ns(scan, name, links, owned_ns=True)
    else:
        scan.foreign_netns.add(name)


def _scan_paths(
    scan: _Scan, paths: list[str], kept: Mapping[str, _Scan], again: Reread, host_read: bool,
    parts: dict[str, _Scan],
) -> tuple[dict[str, str], dict[str, tuple[int, int]]]:
    """Read the namespaces of netns_paths; return the paths that are none (and
    why) and the identities of every namespace a path could collide with. A
    namespace is read once: never the one netapply runs in as a container's,
    nor an owned named one again under a path (the spec is refused for both:
    desired.namespace_problems)."""
    missing: dict[str, str] = {}
    ids: dict[str, tuple[int, int]] = {}
    if not paths:
        return missing, ids
    own = scan.kernel.ns_file(HOST_NS).identity
    if own is not None:
        ids[HOST_NS] = own
    for key in list(scan.resources):
        if key[0] == Kind.NETNS:
            identity = scan.kernel.ns_file(key[1]).identity
            if identity is not None:
                ids[key[1]] = identity
    read = set(ids.values())
    for path in paths:
        found = scan.kernel.ns_file(path)
        if found.identity is None:
            missing[path] = found.problem
            continue
        ids[path] = found.identity
        if found.identity not in read:
            read.add(found.identity)
            part = kept.get(path)
            # Kept only while the path leads to the namespace read then.
            if (part is None or path in again.namespaces or part.path_identity != found.identity
                    or (host_read and part.sublinks)):
                part = scan.part()
                part.path_identity = found.identity
                _scan_container_ns(part, path, scan.kernel.links(path), owned_ns=False)
            parts[path] = part
            scan.merge(part)
    return missing, ids


@dataclass(frozen=True)
class _HostReads:
    """What the host's part reads besides its links: read once, whether the
    links are dumped or patched (_patched_links looks at them too)."""

    addresses: list[AddrInfo]
    routes: list[RouteInfo]
    policy_routes: list[tuple[RouteInfo, int, int]]

    @staticmethod
    def of(kernel: Kernel) -> _HostReads:
        return _HostReads(kernel.addresses(HOST_NS), kernel.routes(HOST_NS),
                          kernel.policy_routes())


def _patched_links(
    kernel: Kernel, kept: list[LinkInfo], refs: frozenset[int | str], reads: _HostReads
) -> list[LinkInfo]:
    """The host's links as kept, with those refs name (by index or name) read
    again one by one: gone ones left out, new ones added, in index order (a
    dump's order, kernel 6.x: net->dev_by_index). A link that now has the name
    of a kept one replaces it. A link the host's addresses, routes or ports
    name by an index not kept is read too (a VPN's link that came up, whose
    address the host's part reports by the link's name)."""
    by_index = {link.index: link for link in kept}
    for ref in sorted(refs, key=str):
        found = kernel.link(HOST_NS, ref)
        for index in [i for i, link in by_index.items()
                      if ref in (i, link.ifname)
                      or (found is not None and link.ifname == found.ifname)]:
            del by_index[index]
        if found is not None:
            by_index[found.index] = found
    named = {a.index for a in reads.addresses}
    named.update(r.oif for r in reads.routes if r.oif is not None)
    named.update(r.oif for r, _, _ in reads.policy_routes if r.oif is not None)
    named.update(link.master for link in by_index.values() if link.master)
    for index in sorted(named - by_index.keys()):
        found = kernel.link(HOST_NS, index)
        if found is not None:
            by_index[found.index] = found
    return [by_index[i] for i in sorted(by_index)]


def _scan_host(
    scan: _Scan, links: list[LinkInfo] | None = None, reads: _HostReads | None = None
) -> None:
    """The host namespace: its links (dumped, or `links` as _patched_links
    gives them), addresses, routes, bridges' sysctls, overlay entries."""
    if links is None:
        links = scan.kernel.links(HOST_NS)
    scan.links = links
    names = {link.index: link.ifname for link in links}
    owned: dict[int, Key] = {}
    bridges: dict[int, str] = {}
    vxlans: list[tuple[str, LinkInfo]] = []
    for link in links:
        parts = scan.alias_parts(link)
        if parts and parts[0] == "vxlan" and len(parts) == 2 and link.vxlan is not None:
            vxlans.append((parts[1], link))
            owned[link.index] = (Kind.VXLAN, parts[1])
        elif parts and parts[0] == "bridge" and len(parts) == 2 and link.kind == "bridge":
            localnet = scan.kernel.sysctl_get(localnet_sysctl(link.ifname))
            rp_filter = scan.kernel.sysctl_get(rp_filter_sysctl(link.ifname))
            bridge = Bridge(parts[1], link.ifname, link.mtu, link.mac, link.up, localnet == "1",
                            rp_filter == RP_LOOSE, link.ipv6_ll)
            scan.resources[bridge.key] = bridge
            owned[link.index] = bridge.key
            bridges[link.index] = parts[1]
        elif parts and parts[0] == "veth" and len(parts) in (4, 5) and parts[3] == "host":
            end = scan.host_ends[(parts[1], parts[2])] = _End(HOST_NS, link)
            end.allocated = parts[4] if len(parts) == 5 else ""
        elif not scan.leftover(HOST_NS, link, owned_ns=False):
            scan.foreign_links.add((HOST_NS, link.ifname))
            scan.host_links.append((link.ifname, link.mtu, link.master is not None))
            if link.vxlan is not None:
                scan.vxlans.append((link.ifname, link.vxlan.vni, link.vxlan.port))
    for end in scan.host_ends.values():
        end.master = _master(end.link, bridges, names)
        end.master_ifname = names.get(end.link.master or 0)
    scan.host_names = names
    if vxlans:
        _scan_overlays(scan, vxlans, bridges, names)
    if reads is None:
        reads = _HostReads.of(scan.kernel)
    infos = reads.addresses
    _scan_addresses(scan, HOST_NS, owned, names, infos)
    ours = set(owned) | {end.link.index for end in scan.host_ends.values()}
    _scan_host_nets(scan, ours, names, reads)


def _master(link: LinkInfo, bridges: dict[int, str], names: dict[int, str]) -> str | None:
    """A port's bridge: an owned bridge by network name, "?name" for any other."""
    if not link.master:
        return None
    return bridges.get(link.master, "?" + names.get(link.master, str(link.master)))


def _scan_overlays(
    scan: _Scan, vxlans: list[tuple[str, LinkInfo]], bridges: dict[int, str],
    names: dict[int, str],
) -> None:
    """Owned VXLAN devices, and the static entries on them: forwarding entries
    the device's own (to a machine) and the bridge's (to the device), and
    permanent neighbour entries. Entries the kernel learns are not the project's."""
    networks: dict[int, str] = {}
    for network, link in vxlans:
        assert link.vxlan is not None
        info = link.vxlan
        vxlan = Vxlan(network, link.ifname, info.vni, info.local or "", info.port, link.mtu,
                      _master(link, bridges, names), link.up, link.isolated, info.learning,
                      info.proxy, link.ipv6_ll,
                      master_ifname=names.get(link.master or 0))
        scan.resources[vxlan.key] = vxlan
        networks[link.index] = network
    for entry in scan.kernel.fdb():
        on = networks.get(entry.index)
        if on is None:
            continue
        if entry.master and entry.state == NUD_NOARP:  # static, added by a user
            fdb = Fdb(on, entry.mac, "", names[entry.index])
        elif not entry.master and entry.dst and entry.state & NUD_PERMANENT:
            fdb = Fdb(on, entry.mac, entry.dst, names[entry.index])
        else:
            continue
        scan.resources[fdb.key] = fdb
    for neigh in scan.kernel.neighbours():
        on = networks.get(neigh.index)
        if on is not None and neigh.state & NUD_PERMANENT and neigh.mac:
            res = Neigh(on, neigh.ip, neigh.mac, names[neigh.index])
            scan.resources[res.key] = res


def _scan_host_nets(
    scan: _Scan, owned: set[int], names: dict[int, str], reads: _HostReads
) -> None:
    """What the machine reaches through interfaces that are not the project's."""
    for info in reads.addresses:
        if info.index in owned:
            continue
        iface = ipaddress.ip_interface(info.cidr)
        where = names.get(info.index, str(info.index))
        scan.host_addresses.append((iface.ip, where))
        if not _special(iface.network):
            scan.host_nets.append((iface.network, f"address {iface} on {where}"))
    # The main table, and every table a policy rule looks up (a VPN's: the
    # host would route a network's traffic there, not to the bridge).
    tables = [(route, "") for route in reads.routes]
    tables += [(route, f" in table {table} (looked up by rule {pref})")
               for route, table, pref in reads.policy_routes]
    for route, where_table in tables:
        net = ipaddress.ip_network(route.dst)
        if (route.oif is not None and route.oif in owned) or _special(net) or _default_like(net):
            continue
        what = f"route {route.dst}"
        if route.via:
            what += f" via {route.via}"
        if route.oif is not None:
            what += f" dev {names.get(route.oif, route.oif)}"
        scan.host_nets.append((net, what + where_table))


def _default_like(net: model.IPNetwork) -> bool:
    """A default route, or one of the halves VPNs use to override it
    (0.0.0.0/1 + 128.0.0.0/1, ::/1 + 8000::/1, 2000::/3): routes to
    "everything", not networks in use."""
    return net.prefixlen <= (1 if net.version == 4 else 3)


def _special(net: model.IPNetwork) -> bool:
    return net.is_loopback or net.is_link_local or net.is_multicast


@dataclass(frozen=True)
class _Nft:
    tables: tuple[tuple[str, str], ...] = ()
    chains: tuple[NftChain, ...] = ()
    error: str | None = None
    held: tuple[ports.Held, ...] = ()  # ports other tables publish (DNAT)
    unread: str | None = None  # the ruleset, unread, may hold the project's objects


def _scan_nft(scan: _Scan) -> None:
    """The project's table as a Firewall resource; other tables by name."""
    scan.nft = _read_nft(scan)


def _read_nft(scan: _Scan) -> _Nft:
    try:
        items = scan.kernel.nft_ruleset()
    except KernelError as e:
        return _unread_nft(scan, str(e))
    own = (firewall.FAMILY, firewall.table_name(scan.project))
    found = False
    shape: list[str] = []  # chains, and anything else someone put into the table
    rules: list[Rule] = []
    tables: list[tuple[str, str]] = []
    chains: list[NftChain] = []
    # The project's rules in Docker's DOCKER-USER chain, by family: (rules, handles).
    docker_user: dict[str, tuple[list[Rule], list[int]]] = {}
    held: list[ports.Held] = []
    mark = docker_user_comment(scan.project, "")
    for item in items:
        if not (isinstance(item, dict) and len(item) == 1):
            continue  # not an object of the ruleset (a newer nft's extra entry)
        ((kind, body),) = item.items()
        if not isinstance(body, dict):
            continue
        table = (str(body.get("family", "")), str(body.get("table", body.get("name", ""))))
        if kind == "table":
            if table == own:
                found = True
                if body.get("flags"):  # a dormant table filters nothing
                    shape.append(canonical({"table flags": body["flags"]}))
            else:
                tables.append(table)
        elif table != own:
            if kind == "rule" and (dnat := ports.dnat_port(body.get("expr"))) is not None:
                name = table[1]
                holder = (f"netapply project '{name[len('netapply-'):]}'"
                          if name.startswith("netapply-") else
                          f"a DNAT rule of nftables table {table[0]} {name} (chain "
                          f"{body.get('chain', '?')})")
                held.append(ports.Held(*dnat, holder))
            if kind == "chain":
                chains.append(NftChain(*table, body.get("name", ""), body.get("hook"),
                                       body.get("policy")))
            elif (kind == "rule" and table[1] == DOCKER_USER_TABLE
                  and body.get("chain") == DOCKER_USER_CHAIN
                  and str(body.get("comment", "")).startswith(mark)):
                theirs = docker_user.setdefault(table[0], ([], []))
                theirs[0].append(Rule.of(DOCKER_USER_CHAIN, body["comment"],
                                         body.get("expr", [])))
                theirs[1].append(int(body.get("handle", 0)))
        elif kind == "rule":
            rules.append(Rule.of(body.get("chain", ""), body.get("comment", ""),
                                 body.get("expr", [])))
        else:
            shape.append(canonical({k: v for k, v in body.items() if k != "handle"}))
    if found:
        res = Firewall(own[1], tuple(shape), tuple(rules))
        scan.resources[res.key] = res
    for family, (marked, handles) in docker_user.items():
        # Listed top to bottom, as they were inserted.
        user = DockerUser(family, tuple(marked), tuple(handles))
        scan.resources[user.key] = user
    return _Nft(tuple(tables), tuple(chains), held=tuple(held))


def _unread_nft(scan: _Scan, error: str) -> _Nft:
    """nft could not list the ruleset. The names of the tables, read without
    nft, tell whether it may hold the project's objects: its own table, or a
    table where Docker's DOCKER-USER chain (with the project's rules) can be."""
    try:
        tables = scan.kernel.nft_tables()
    except KernelError as e:
        return _Nft(error=error, unread=f"the nftables ruleset ({error}; {e})")
    own = (firewall.FAMILY, firewall.table_name(scan.project))
    holding = [t for t in tables
               if t == own or (t[1] == DOCKER_USER_TABLE and t[0] in ("ip", "ip6"))]
    unread = None
    if holding:
        names = " and ".join(f"table {family} {name}" for family, name in holding)
        unread = f"the nftables ruleset, which holds {names} ({error})"
    return _Nft(tuple(t for t in tables if t != own), error=error, unread=unread)


def _scan_container_ns(scan: _Scan, ns: str, links: list[LinkInfo], owned_ns: bool) -> None:
    owned: dict[int, Key] = {}
    for link in links:
        parts = scan.alias_parts(link)
        if parts and parts[0] == "veth" and len(parts) == 3:
            scan.inner_ends[(parts[1], parts[2])] = _End(ns, link)
            owned[link.index] = (Kind.VETH, parts[1], parts[2])
        elif parts and parts[0] == "sublink" and len(parts) in (3, 4) and link.kind:
            sublink = Sublink(
                parts[1], parts[2], ns, link.ifname, link.kind,
                (scan.parent_names if scan.parent_names is not None else scan.host_names
                 ).get(link.parent or 0, "?"), link.mode or "",
                Sublink.own_mac(link.kind, link.mode or "", link.mac),
                link.mtu, link.up,
                allocated=parts[3] if len(parts) == 4 else "",
                ipv6_ll=link.ipv6_ll,
                owned_ns=owned_ns,
            )
            scan.resources[sublink.key] = sublink
            scan.sublinks = True
            owned[link.index] = sublink.key
        elif link.ifname != LOOPBACK and not scan.leftover(ns, link, owned_ns):
            scan.foreign_links.add((ns, link.ifname))
    names = {link.index: link.ifname for link in links}
    addresses = _scan_addresses(scan, ns, owned, names, scan.kernel.addresses(ns))
    for info in scan.kernel.routes(ns):
        oif = info.oif or 0
        link_key = owned.get(oif)
        if info.proto == RTPROT_NETAPPLY and link_key is not None and info.via:
            route = Route(
                ns, info.dst, info.via, link_key, names.get(oif, ""),
                source=_source(addresses, link_key, info.via),
            )
            scan.resources[route.key] = route
        elif info.proto != RTPROT_KERNEL:
            scan.foreign_routes.add((ns, info.dst))


def _scan_addresses(
    scan: _Scan, ns: str, owned: dict[int, Key], names: dict[int, str], infos: list[AddrInfo]
) -> list[Address]:
    found = []
    for info in infos:
        link_key = owned.get(info.index)
        if link_key is None:
            continue
        iface = ipaddress.ip_interface(info.cidr)
        if iface.version == 6 and iface.ip.is_link_local:
            continue  # the kernel adds these by itself
        address = Address(link_key, str(iface), ns=ns, ifname=names[info.index])
        scan.resources[address.key] = address
        found.append(address)
    return found


def _source(addresses: list[Address], link: Key, via: str) -> Key | None:
    gateway = ipaddress.ip_address(via)
    for address in addresses:
        if address.link == link and gateway in ipaddress.ip_interface(address.cidr).network:
            return address.key
    return None


def _pair_veths(scan: _Scan, earlier: Mapping[tuple[str, str], _Pair]) -> dict[
        tuple[str, str], _Pair]:
    """A Veth of each (container, network) from its host end and its inner end
    (either may be missing); `earlier`: an earlier observation's pairs, whose
    Veth is taken again when both ends are the very objects it was made of."""
    netns_owned = {r.name for r in scan.resources.values() if isinstance(r, Netns)}
    paired: dict[tuple[str, str], _Pair] = {}
    for ident in sorted(scan.host_ends.keys() | scan.inner_ends.keys()):
        host, inner = scan.host_ends.get(ident), scan.inner_ends.get(ident)
        owned_ns = inner is not None and inner.ns in netns_owned
        was = earlier.get(ident)
        if was is not None and was[0] is host and was[1] is inner \
                and was[2].owned_ns == owned_ns:
            paired[ident] = was
            scan.resources[was[2].key] = was[2]
            continue
        veth = Veth(
            container=ident[0],
            network=ident[1],
            ns=inner.ns if inner else UNSEEN_NS,
            ifname=inner.link.ifname if inner else "",
            mac=inner.link.mac if inner else "",
            mtu=inner.link.mtu if inner else 0,
            host_ifname=host.link.ifname if host else "",
            host_mtu=host.link.mtu if host else 0,
            master=host.master if host else None,
            master_ifname=host.master_ifname if host else None,
            up=inner.link.up if inner else False,
            host_up=host.link.up if host else False,
            isolated=host.link.isolated if host else False,
            hairpin=host.link.hairpin if host else False,
            allocated=host.allocated if host else "",
            ipv6_ll=inner.link.ipv6_ll if inner else False,
            host_ipv6_ll=host.link.ipv6_ll if host else False,
            owned_ns=owned_ns,
        )
        paired[ident] = (host, inner, veth)
        scan.resources[veth.key] = veth
    return paired


def _scan_dirs(scan: _Scan) -> None:
    """/run/netns, /etc/netns and /run/netapply must be directories (or absent,
    to be made): anything else there, a link above all, is in the way."""
    for path in (NETNS_DIR, ETC_NETNS_DIR, LOCK_DIR):
        kind = scan.kernel.file_type(path)
        if kind is not None and kind != FileType.DIRECTORY:
            scan.in_the_way(path, kind)


def _list_netns_dir(part: _Scan) -> None:
    part.names.extend(part.kernel.netns_names())
    part.entries.update(part.kernel.dir_entries(NETNS_DIR))


def _scan_netns_dir(
    scan: _Scan, entries: dict[str, FileType], netns: set[str], names: frozenset[str]
) -> None:
    """Entries of /run/netns that are no network namespace: an empty file (what
    an interrupted `ip netns add` leaves) under a name of the spec is a
    leftover; anything else is in the way of that name."""
    for name, kind in sorted(entries.items()):
        if name in netns:
            continue
        path = f"{NETNS_DIR}/{name}"
        if kind == FileType.EMPTY:
            if name in names:
                scan.leftover_file(path)
        else:
            scan.in_the_way(path, kind)


def _scan_own_tables(scan: _Scan) -> None:
    """The project's own directory of hosts tables, if there is one."""
    own_dir = tables_dir(scan.project)
    directory = f"{ETC_NETNS_DIR}/{own_dir}"
    kind = scan.kernel.file_type(directory)
    if kind == FileType.DIRECTORY:
        _scan_tables(scan, directory, scan.kernel.dir_entries(directory),
                     f"{HOSTS_HEADER}{scan.project};")
    elif kind is not None:
        scan.in_the_way(directory, kind)


def _scan_hosts_entry(scan: _Scan, name: str, kind: FileType, names: frozenset[str]) -> None:
    """One entry of /etc/netns other than the project's tables: the hosts file
    of a namespace. A link into the project's directory is the project's;
    anything else there is foreign. Types come first: only regular files are
    read, no link is followed."""
    directory = f"{ETC_NETNS_DIR}/{name}"
    scan.wanted = name in names
    if kind != FileType.DIRECTORY:
        scan.in_the_way(directory, kind)
        return
    inside = scan.kernel.dir_entries(directory)
    if name in names:
        _scan_leftovers(scan, directory, inside)
    path = hosts_path(name)
    hosts = inside.get("hosts")
    if hosts is None:
        return
    if hosts == FileType.LINK:
        link = scan.kernel.read_link(path)
        if link is not None and link.startswith(f"../{tables_dir(scan.project)}/"):
            res = HostsFile(name, link)
            scan.resources[res.key] = res
        else:
            scan.foreign_hosts.add(name)
        return
    content = None
    if hosts in (FileType.FILE, FileType.EMPTY):
        content = scan.kernel.read_file(path)
    if content is not None and content.startswith(f"{HOSTS_HEADER}{scan.project};"):
        res = HostsFile(name, "")  # written by an earlier version: replace it
        scan.resources[res.key] = res
    else:
        scan.foreign_hosts.add(name)  # a foreign file, or a directory or FIFO (never opened)


def _scan_tables(scan: _Scan, directory: str, inside: dict[str, FileType], header: str) -> None:
    """The project's own directory: its tables, and what an interrupted write
    left; anything else there is in the way of a table of that name."""
    if not inside:
        scan.leftover_file(directory, directory=True)
    for table, kind in sorted(inside.items()):
        path = f"{directory}/{table}"
        if table.endswith(TMP_SUFFIX) and kind in (FileType.FILE, FileType.EMPTY, FileType.LINK):
            scan.leftover_file(path)
            continue
        content = scan.kernel.read_file(path) if kind == FileType.FILE else None
        if content is not None and content.startswith(header):
            res = HostsTable(scan.project, table, content)
            scan.resources[res.key] = res
        else:
            scan.in_the_way(path, kind)


def _scan_leftovers(scan: _Scan, directory: str, inside: dict[str, FileType]) -> None:
    """/etc/netns/<name> of a namespace of the spec: left empty, or holding only
    a half-written hosts file, by an interrupted run."""
    if not inside:
        scan.leftover_file(directory, directory=True)
    for entry, kind in inside.items():
        if entry.endswith(TMP_SUFFIX) and kind in (FileType.FILE, FileType.EMPTY, FileType.LINK):
            scan.leftover_file(f"{directory}/{entry}")
