"""Spec + observed state -> desired state (pure: no I/O).

Observed state is an input only for sticky allocation (an endpoint keeps the
address it already has while that address stays valid) and for refusing names
taken by foreign objects.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from reconciler import firewall, machines, ports
from reconciler.drivers.kernel import ETC_NETNS_DIR, NETNS_DIR
from reconciler.errors import InternalError, MachineError, Problem, SpecError, Where
from reconciler.lock import LOCK_DIR
from reconciler.model import (
    IFNAMSIZ,
    Attachment,
    Container,
    Driver,
    IPAddress,
    IPNetwork,
    Network,
    NetworkMode,
    Spec,
    default_mac,
)
from reconciler.resources import (
    DOCKER_USER_CHAIN,
    DOCKER_USER_TABLE,
    HOST_NS,
    HOSTS_HEADER,
    ZERO_MAC,
    Address,
    Bridge,
    Fdb,
    Firewall,
    HostsBlock,
    HostsFile,
    HostsTable,
    Key,
    Kind,
    Neigh,
    Netns,
    Resource,
    Route,
    Sublink,
    Veth,
    Vxlan,
    tables_dir,
)
from reconciler.state.observe import Foreign, ObservedState

DEFAULT_V4 = "0.0.0.0/0"
DEFAULT_V6 = "::/0"
SUBLINK_DRIVERS = (Driver.MACVLAN, Driver.IPVLAN)
BRIDGED_DRIVERS = (Driver.BRIDGE, Driver.OVERLAY)  # a bridge here, containers on veths
LINK_KINDS = {Driver.MACVLAN: "macvlan", Driver.IPVLAN: "ipvlan", Driver.OVERLAY: "vxlan"}
# Bytes VXLAN adds to each frame: outer IP header, UDP, VXLAN, inner Ethernet.
VXLAN_OVERHEAD = {4: 50, 6: 70}


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("/".join(parts).encode()).digest()


def host_ifname(project: str, container: str, network: str) -> str:
    """Host end of a veth: "veth" + 11 hex digits, stable for the attachment."""
    name = "veth" + _digest(project, container, network).hex()[: IFNAMSIZ - 4]
    assert len(name) <= IFNAMSIZ
    return name


def vxlan_ifname(project: str, network: str) -> str:
    """An overlay's VXLAN device: "vx-" + 12 hex digits, stable for the network."""
    return "vx-" + _digest(project, "vxlan", network).hex()[:12]


def bridge_mac(project: str, network: str) -> str:
    """A fixed, locally administered MAC, so the bridge's address does not follow
    its ports (which would make containers' ARP entries for the gateway stale)."""
    return "02:" + ":".join(f"{b:02x}" for b in _digest(project, "bridge", network)[:5])


@dataclass(frozen=True)
class Endpoint:
    container: Container
    attachment: Attachment
    network: Network
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address | None

    @property
    def key(self) -> Key:
        kind = Kind.SUBLINK if self.network.driver in SUBLINK_DRIVERS else Kind.VETH
        return (kind, self.container.name, self.network.name)

    @property
    def mac(self) -> str:
        return self.attachment.mac_address or default_mac(self.ipv4)


def build(spec: Spec, observed: ObservedState, host: str | None = None) -> dict[Key, Resource]:
    """The desired state of this machine (`host` in a spec with hosts), or
    SpecError listing every problem at once."""
    if spec.hosts and host is None:
        raise InternalError("a spec with hosts is built for one of its hosts")
    whole, spec = spec, machines.share(spec, host)
    problems = list(_missing_paths(spec, observed)) + namespace_problems(spec, observed)
    if problems:
        raise SpecError(problems)
    problems = list(_machine_problems(spec, observed, host))
    if problems:
        raise MachineError(problems)
    everywhere = allocate(whole, observed, host)
    # A runtime container that is not running keeps its addresses and names
    # (peers still list it), but nothing is made for it until it runs.
    endpoints = [ep for ep in everywhere
                 if machines.runs_here(ep.container, host) and ep.container.running]
    published = list(_published(spec, endpoints))
    problems = list(_taken_ports(spec, published, observed))
    if problems:
        raise MachineError(problems)
    table, forwarding = firewall.build(spec.project, spec.networks.values(), published)
    resources: list[Resource] = [r for r in (table, forwarding) if r is not None]
    resources.extend(firewall.docker_user(
        spec.project, spec.networks.values(),
        (c.family for c in observed.foreign.nft_chains
         if (c.table, c.name) == (DOCKER_USER_TABLE, DOCKER_USER_CHAIN)
         and c.family in ("ip", "ip6"))))
    if table is not None and observed.foreign.nft_error:
        raise MachineError([Problem(
            None, "bridge networks need nftables for isolation, masquerade and published "
            f"ports, but netapply could not {observed.foreign.nft_error}",
        )])
    localnet = firewall.localnet_bridges(published)
    loose = _reply_networks(spec, published)
    for network in spec.networks.values():
        if network.driver in BRIDGED_DRIVERS:
            resources.extend(_bridge(spec.project, network, network.name in localnet,
                                     network.name in loose or _is_loose(observed, network)))
        if network.driver == Driver.OVERLAY:
            assert host is not None
            resources.extend(_overlay(whole, network, host, everywhere))
    by_container: dict[str, list[Endpoint]] = {}
    for ep in endpoints:
        by_container.setdefault(ep.container.name, []).append(ep)
    # Members on other machines are named too: an overlay spans the machines.
    tables = HostsTables(spec.project, hosts_lines(everywhere))
    for container in spec.containers.values():
        if container.network_mode == NetworkMode.HOST or not container.running:
            continue
        own = by_container.get(container.name, [])
        resources.extend(_container(spec, container, own, tables))
    state: dict[Key, Resource] = {}
    problems = list(_collisions(spec, resources, observed))
    for res in resources:
        first = state.setdefault(res.key, res)
        if first is not res and isinstance(res, Route) and isinstance(first, Route):
            # Containers attached to one namespace (netns_path) share its routes.
            owner, other = res.link[1], first.link[1]
            dst = "default" if res.dst in (DEFAULT_V4, DEFAULT_V6) else res.dst
            problems.append(Problem(
                spec.locate("containers", owner),
                f"container '{owner}': route {dst} in {res.ns} is also wanted by "
                f"container '{other}', which shares that namespace",
            ))
    if problems:
        raise SpecError(problems)
    return state


def _attached_networks(spec: Spec) -> set[str]:
    return {a.network for c in spec.containers.values()
            if c.network_mode == NetworkMode.BRIDGE for a in c.attachments}


def used_link_kinds(spec: Spec) -> set[str]:
    """Link kinds beyond bridge and veth that the attachments of (this
    machine's share of) the spec need."""
    drivers = {spec.networks[name].driver for name in _attached_networks(spec)}
    return {LINK_KINDS[d] for d in drivers if d in LINK_KINDS}


def _machine_problems(
    spec: Spec, observed: ObservedState, host: str | None
) -> Iterator[Problem]:
    """What this machine lacks for a valid spec, found before any change."""
    in_use = _attached_networks(spec)
    parents = {name: (mtu, enslaved) for name, mtu, enslaved in observed.foreign.host_links}
    for network in spec.networks.values():
        kind = LINK_KINDS.get(network.driver)
        problem: tuple[tuple[str, ...], str] | None = None
        if kind is not None and network.name in in_use:
            if kind in observed.missing_kinds:
                problem = ("networks", network.name, "driver"), (
                    f"the running kernel has no {kind} driver (module {kind} is neither built "
                    "in nor loadable); load it or use another driver")
            elif network.driver == Driver.OVERLAY:
                assert host is not None
                problem = _underlay_problem(spec, network, host, observed.foreign, parents)
            else:
                problem = _parent_problem(network, kind, parents)
        if problem is not None:
            path, cause = problem
            yield Problem(spec.locate(*path), f"network '{network.name}': {cause}")
        if network.driver in BRIDGED_DRIVERS:
            yield from _overlaps(spec, network, observed.foreign.host_nets)


def _underlay_problem(
    spec: Spec, network: Network, host: str, foreign: Foreign,
    links: dict[str, tuple[int, bool]],
) -> tuple[tuple[str, ...], str] | None:
    """(spec path, cause) of why this machine cannot carry the overlay's frames:
    another device has its vni and port, its host address is not here, or the
    interface with that address is too small for the overlay's MTU plus the
    VXLAN headers."""
    for name, vni, port in foreign.vxlans:
        if (vni, port) == (network.vni, network.port):
            return ("networks", network.name, "vni"), (
                f"vni {vni} on UDP port {port} is taken by vxlan device {name} of this machine, "
                "which is not this project's; choose another vni or port")
    address = spec.hosts[host].address
    ifname = dict(foreign.host_addresses).get(address)
    if ifname is None:
        return ("hosts", host, "address"), (
            f"this machine is host '{host}', but its address {address} is not an address of "
            "this machine; VXLAN packets would leave with a wrong source")
    overhead = VXLAN_OVERHEAD[address.version]
    mtu = links.get(ifname, (None, False))[0]
    if mtu is not None and network.mtu + overhead > mtu:
        return ("networks", network.name, "mtu"), (
            f"mtu {network.mtu} plus {overhead} bytes of VXLAN headers is larger than the mtu "
            f"{mtu} of {ifname}, which has host '{host}''s address {address}; set mtu to at "
            f"most {mtu - overhead}")
    return None


def _parent_problem(
    network: Network, kind: str, parents: dict[str, tuple[int, bool]],
) -> tuple[tuple[str, ...], str] | None:
    """(spec path, cause) of why links of this network cannot be made here."""
    where = ("networks", network.name)
    found = parents.get(network.parent or "")
    if found is None:
        return (*where, "parent"), (f"parent interface {network.parent} does not exist on "
                                    "this machine")
    mtu, enslaved = found
    if enslaved:
        return (*where, "parent"), (f"parent interface {network.parent} is a port of a bridge "
                                    f"or bond, which passes its traffic on before {kind} "
                                    "could see it")
    if network.mtu > mtu:
        return (*where, "mtu"), (f"mtu {network.mtu} is larger than the mtu {mtu} of parent "
                                 f"interface {network.parent}; set mtu to at most {mtu}")
    return None


def _overlaps(
    spec: Spec, network: Network, host_nets: tuple[tuple[IPNetwork, str], ...]
) -> Iterator[Problem]:
    for subnet, path in ((network.subnet, "subnet"), (network.ipv6_subnet, "ipv6")):
        if subnet is None:
            continue
        for used, what in host_nets:
            if used.version == subnet.version and used.overlaps(subnet):
                yield Problem(
                    spec.locate("networks", network.name, path),
                    f"network '{network.name}': subnet {subnet} overlaps {what}, which is "
                    "already in use on this machine (a LAN, a VPN or another project)",
                )
                break


def _published(spec: Spec, endpoints: list[Endpoint]) -> Iterator[firewall.Published]:
    by_attachment = {(ep.container.name, ep.network.name): ep for ep in endpoints}
    for container in spec.containers.values():
        for port in container.ports:
            ep = by_attachment.get((container.name, port.network or ""))
            if ep is None:
                continue  # the spec checks reported it
            yield firewall.Published(container.name, port, ep.network, ep.ipv4)


def _reply_networks(spec: Spec, published: list[firewall.Published]) -> set[str]:
    """Networks where replies to a published port arrive from another network's
    address: the default route's network of a container whose port is on
    another of its networks (such a bridge needs loose rp_filter)."""
    return {container.default_route for p in published
            if (container := spec.containers[p.container]).default_route
            and container.default_route != p.network.name}


def _is_loose(observed: ObservedState, network: Network) -> bool:
    """A bridge already loose stays so: netapply sets rp_filter, never reverts it."""
    have = observed.resources.get((Kind.BRIDGE, network.name))
    return isinstance(have, Bridge) and have.rp_loose


def _own_ports(observed: ObservedState) -> set[tuple[str, IPAddress | None, int]]:
    """What the project's table publishes now: (protocol, address, port)."""
    table = next((r for r in observed.resources.values() if isinstance(r, Firewall)), None)
    if table is None:
        return set()
    return {(h.protocol, h.address, h.port)
            for h in ports.published_by_rules((r.expr for r in table.rules), "")}


def _port_key(p: firewall.Published) -> tuple[str, IPAddress | None, int]:
    host_ip = p.port.host_ip
    address = None if host_ip is None or host_ip.is_unspecified else host_ip
    return p.port.protocol, address, p.port.published


def _taken_ports(
    spec: Spec, published: list[firewall.Published], observed: ObservedState
) -> Iterator[Problem]:
    """A port to publish that someone else holds (SPEC.md: never a silent
    takeover). What the project publishes already is left to late_port_holders."""
    own = _own_ports(observed)
    for p in published:
        key = _port_key(p)
        if key in own:
            continue
        for held in observed.foreign.held_ports:
            if held.overlaps(*key):
                container = spec.containers[p.container]
                index = container.ports.index(p.port)
                on = f" on {key[1]}" if key[1] is not None else ""
                yield Problem(
                    spec.locate("containers", p.container, "ports", str(index)),
                    f"container '{p.container}': port {key[2]}/{key[0]}{on} is already taken "
                    f"by {held.holder}; publish another port, or free that one",
                )
                break


def late_port_holders(observed: ObservedState) -> list[str]:
    """Notes for ports the project publishes that someone else holds too (a
    service started after the project published the port: the project's rule
    still takes the traffic)."""
    notes = []
    for protocol, address, port in sorted(_own_ports(observed), key=str):
        for held in observed.foreign.held_ports:
            if held.overlaps(protocol, address, port):
                notes.append(f"port {port}/{protocol}, which the project publishes, is also "
                             f"held by {held.holder}, which gets none of its traffic")
                break
    return notes


def _missing_paths(spec: Spec, observed: ObservedState) -> Iterator[Problem]:
    for container in spec.containers.values():
        why = observed.missing_paths.get(container.netns_path) if container.netns_path else None
        if why is not None:
            yield Problem(_ns_where(spec, container),
                          f"container '{container.name}': {_ns_reference(container)} {why}")


def namespace_problems(spec: Spec, observed: ObservedState) -> list[Problem]:
    """Containers whose namespace can never be right, found by namespace
    identity (observed.ns_ids: the nsfs inode, never the path's text):

    - a netns_path, or a runtime container's namespace, that is the namespace
      netapply runs in: attaching would give the host the container's
      interfaces and default route;
    - one namespace under two references: a path to the named namespace the
      project makes for a container (or made, for one no longer here), or two
      different paths. Each reference would be read and planned as a namespace
      of its own, so every apply would undo the other's links.

    Containers may share a namespace under one netns_path (docs/docker.md).
    Pure; each problem names both containers, at the path's position."""
    ids = observed.ns_ids
    own = ids.get(HOST_NS)
    named = {c.netns: c.name for c in spec.containers.values() if c.netns}
    # identity -> (container, its reference): named namespaces first
    holders: dict[tuple[int, int], tuple[str | None, str]] = {
        identity: (named.get(ref), ref) for ref, identity in ids.items()
        if ref and not ref.startswith("/")
    }
    problems = []
    for container in spec.containers.values():
        path = container.netns_path
        identity = ids.get(path) if path else None
        if path is None or identity is None:
            continue
        what, ref = f"container '{container.name}'", _ns_reference(container)
        if identity == own:
            problems.append(Problem(_ns_where(spec, container), (
                f"{what}: {ref} is the network namespace netapply runs in (the host's own); "
                "attaching to it would give the host this container's interfaces and routes "
                "(network_mode: host shares the host's network)")))
            continue
        other, other_ref = holders.setdefault(identity, (container.name, path))
        if other_ref == path:
            continue
        if other_ref.startswith("/"):
            first = spec.containers[other or ""]
            cause = (f"is the namespace container '{other}' attaches to as "
                     f"{_ns_reference(first)}; containers that share a namespace must name it "
                     "by the same netns_path")
        elif other is None:
            cause = (f"is namespace '{other_ref}', which project '{spec.project}' made and "
                     "deletes (no container here uses it)")
        else:
            cause = (f"is the namespace of container '{other}' (netns {other_ref}), which "
                     "netapply makes and deletes with that container; a container cannot also "
                     "be attached to it by path")
        problems.append(Problem(_ns_where(spec, container), f"{what}: {ref} {cause}"))
    return problems


def _ns_reference(container: Container) -> str:
    """How the spec names a container's namespace, for messages."""
    if container.runtime is not None:
        return f"{container.runtime} container '{container.engine_name}' ({container.netns_path})"
    return f"netns_path {container.netns_path}"


def _ns_where(spec: Spec, container: Container) -> Where | None:
    key = "runtime" if container.runtime is not None else "netns_path"
    return spec.locate("containers", container.name, key)


def ipv6_ll(network: Network) -> bool:
    """Whether the links of a network (bridge, VXLAN device, both ends of each
    veth, macvlan and ipvlan links) get IPv6 link-local addresses: only on a
    network with IPv6. On an IPv4-only network each would probe for duplicates,
    solicit routers and report its multicast groups, flooded by the bridge to
    every port through netfilter and a veth into each namespace, under the
    kernel's RTNL lock: the cost of adding a container grew with the number
    already there. Their address generation mode is none (kernel
    Documentation/networking/ip-sysctl.rst, addr_gen_mode: 1 = "do no generate a
    link-local address"). Docker does the same since its fix of CVE-2024-32473
    (interfaces of IPv4-only networks got IPv6 addresses anyway)."""
    return network.ipv6_subnet is not None


def _bridge(project: str, network: Network, localnet: bool, rp_loose: bool
            ) -> Iterator[Resource]:
    bridge = Bridge(
        network.name, network.interface, network.mtu, bridge_mac(project, network.name),
        localnet=localnet, rp_loose=rp_loose, ipv6_ll=ipv6_ll(network),
    )
    yield bridge
    if network.gateway is not None:
        cidr = f"{network.gateway}/{network.subnet.prefixlen}"
        yield Address(bridge.key, cidr, ns=HOST_NS, ifname=bridge.ifname)
    if network.ipv6_subnet is not None and network.ipv6_gateway is not None:
        cidr = f"{network.ipv6_gateway}/{network.ipv6_subnet.prefixlen}"
        yield Address(bridge.key, cidr, ns=HOST_NS, ifname=bridge.ifname)


def _overlay(
    spec: Spec, network: Network, host: str, endpoints: list[Endpoint]
) -> Iterator[Resource]:
    """This machine's VXLAN device of an overlay, and what it must know of the
    other machines' members, all from the spec: no learning, no multicast."""
    assert network.vni is not None
    vxlan = Vxlan(
        network.name, vxlan_ifname(spec.project, network.name), network.vni,
        str(spec.hosts[host].address), network.port, network.mtu, master=network.name,
        # Isolated like the containers' ports under icc: false, so that isolation
        # holds between machines too.
        isolated=not network.icc, ipv6_ll=ipv6_ll(network), master_ifname=network.interface,
    )
    yield vxlan
    # A member on a machine that is not a host now (its etcd lease expired,
    # fleet.py) keeps its address, but nothing here leads to it.
    remote = [ep for ep in endpoints
              if ep.network.name == network.name and ep.container.host != host
              and ep.container.host in spec.hosts]
    ifname = vxlan.ifname
    for machine in sorted({ep.container.host for ep in remote if ep.container.host}):
        yield Fdb(network.name, ZERO_MAC, str(spec.hosts[machine].address), ifname)
    for ep in remote:
        assert ep.container.host is not None
        yield Fdb(network.name, ep.mac, str(spec.hosts[ep.container.host].address), ifname)
        yield Fdb(network.name, ep.mac, "", ifname)
        for ip in (ep.ipv4, ep.ipv6):
            if ip is not None:
                yield Neigh(network.name, str(ip), ep.mac, ifname)


def _container(
    spec: Spec, container: Container, own: list[Endpoint], tables: HostsTables
) -> Iterator[Resource]:
    ns = container.ns
    assert ns is not None
    if container.netns:
        yield Netns(container.netns)
        table = tables.of(container)
        yield table
        yield HostsFile(container.netns, f"../{tables_dir(spec.project)}/{table.name}")
    if container.hosts_path:
        yield HostsBlock(spec.project, container.name, tables.names_of(container), ns,
                         container.hosts_path)
    for ep in own:
        link: Veth | Sublink
        if ep.network.driver in SUBLINK_DRIVERS:
            link = _sublink(container, ep, ns)
        else:
            link = _veth(spec, container, ep, ns)
        yield link
        yield _address(link, ep.ipv4, ep.network.subnet.prefixlen)
        if ep.ipv6 is not None and ep.network.ipv6_subnet is not None:
            yield _address(link, ep.ipv6, ep.network.ipv6_subnet.prefixlen)
    yield from _routes(container, own)


def _sublink(container: Container, ep: Endpoint, ns: str) -> Sublink:
    assert ep.network.parent is not None and ep.network.mode is not None
    kind = LINK_KINDS[ep.network.driver]
    return Sublink(
        container=container.name,
        network=ep.network.name,
        ns=ns,
        ifname=ep.attachment.interface,
        driver=kind,
        parent=ep.network.parent,
        mode=ep.network.mode,
        mac=Sublink.own_mac(kind, ep.network.mode, ep.mac),
        mtu=ep.network.mtu,
        allocated=_record(ep),
        ipv6_ll=ipv6_ll(ep.network),
        owned_ns=container.netns is not None,
    )


def _veth(spec: Spec, container: Container, ep: Endpoint, ns: str) -> Veth:
    publishes = any(p.network == ep.network.name for p in container.ports)
    return Veth(
        container=container.name,
        network=ep.network.name,
        ns=ns,
        ifname=ep.attachment.interface,
        mac=ep.mac,
        mtu=ep.network.mtu,
        host_ifname=host_ifname(spec.project, container.name, ep.network.name),
        host_mtu=ep.network.mtu,
        master=ep.network.name,
        isolated=not ep.network.icc,
        # Back out of the port it came in by: the container reaching its own
        # published port (port isolation forbids that anyway under icc: false).
        hairpin=ep.network.icc and publishes,
        allocated=_record(ep),
        ipv6_ll=ipv6_ll(ep.network),
        host_ipv6_ll=ipv6_ll(ep.network),
        owned_ns=container.netns is not None,
        master_ifname=ep.network.interface,
    )


def _address(link: Veth | Sublink, ip: IPAddress, prefixlen: int) -> Address:
    return Address(link.key, f"{ip}/{prefixlen}", ns=link.ns, ifname=link.ifname)


def _routes(container: Container, own: list[Endpoint]) -> Iterator[Route]:
    ns = container.ns
    assert ns is not None
    for ep in own:
        if ep.network.name == container.default_route and ep.network.gateway is not None:
            yield _route(ns, DEFAULT_V4, ep.network.gateway, ep)
        if (ep.network.name == container.default_route_ipv6 and ep.ipv6 is not None
                and ep.network.ipv6_gateway is not None):
            yield _route(ns, DEFAULT_V6, ep.network.ipv6_gateway, ep)
    for extra in container.routes:
        for ep in own:
            if extra.via.version == 4 and extra.via in ep.network.subnet:
                yield _route(ns, str(extra.to), extra.via, ep)
                break
            subnet6 = ep.network.ipv6_subnet
            if extra.via.version == 6 and subnet6 is not None and extra.via in subnet6:
                yield _route(ns, str(extra.to), extra.via, ep)
                break


def _route(ns: str, dst: str, via: IPAddress, ep: Endpoint) -> Route:
    if via.version == 4:
        source = (Kind.ADDRESS, *ep.key, f"{ep.ipv4}/{ep.network.subnet.prefixlen}")
    else:
        assert ep.network.ipv6_subnet is not None
        source = (Kind.ADDRESS, *ep.key, f"{ep.ipv6}/{ep.network.ipv6_subnet.prefixlen}")
    return Route(ns, dst, str(via), ep.key, ifname=ep.attachment.interface, source=source)


def hosts_lines(endpoints: list[Endpoint]) -> dict[str, list[str]]:
    """Per network, the hosts-file lines of its members, by container name."""
    lines: dict[str, list[str]] = {}
    for ep in sorted(endpoints, key=lambda ep: ep.container.name):
        names = " ".join((ep.container.name, *ep.attachment.aliases))
        entry = lines.setdefault(ep.network.name, [])
        entry.append(f"{ep.ipv4}\t{names}")
        if ep.ipv6 is not None:
            entry.append(f"{ep.ipv6}\t{names}")
    return lines


class HostsTables:
    """Docker's embedded DNS, as a hosts file: the container itself and every
    container it shares a network with, by name and per-network aliases. It is
    the same for every container on the same set of networks, so it is one
    table per set (networks in name order), made once, which containers link to."""

    def __init__(self, project: str, lines: dict[str, list[str]]):
        self.project = project
        self.lines = lines
        self.made: dict[tuple[str, ...], HostsTable] = {}

    @staticmethod
    def _networks(container: Container) -> tuple[str, ...]:
        return tuple(sorted(
            {a.network for a in container.attachments}
            if container.network_mode == NetworkMode.BRIDGE else set()
        ))

    def names_of(self, container: Container) -> str:
        """The lines naming the container and its peers, without the table's
        header and localhost (for an engine's hosts file, which has those)."""
        return "".join(line + "\n" for network in self._networks(container)
                       for line in self.lines.get(network, []))

    def of(self, container: Container) -> HostsTable:
        networks = self._networks(container)
        table = self.made.get(networks)
        if table is None:
            table = self.made[networks] = self._make(networks)
        return table

    def _make(self, networks: tuple[str, ...]) -> HostsTable:
        out = [
            f"{HOSTS_HEADER}{self.project}; changes here are overwritten",
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
        ]
        for network in networks:
            out.extend(self.lines.get(network, []))
        name = "hosts-" + hashlib.sha256(",".join(networks).encode()).hexdigest()[:12]
        return HostsTable(self.project, name, "\n".join(out) + "\n")


# ---- allocation ---------------------------------------------------------------


def allocate(spec: Spec, observed: ObservedState, host: str | None = None) -> list[Endpoint]:
    """Addresses for the attachments of this machine (`host`), and for every
    member of an overlay wherever it runs. Explicit addresses win. Otherwise, on
    networks local to the machine, an endpoint keeps the address it has while
    it stays valid and new ones get the lowest free address of the pool; on an
    overlay, every machine must compute the same addresses from the spec alone,
    so each member starts looking at a place in the pool derived from its name.
    Deterministic for a given spec and observed state."""
    kept = _observed_addresses(observed)
    explicit = _explicit(spec)
    endpoints = []
    by_network: dict[str, list[tuple[Container, Attachment]]] = {}
    for c in sorted(spec.containers.values(), key=lambda c: c.name):
        if c.network_mode == NetworkMode.BRIDGE:
            for a in c.attachments:
                by_network.setdefault(a.network, []).append((c, a))
    for network in spec.networks.values():
        members = by_network.get(network.name, [])
        spread = network.driver == Driver.OVERLAY
        if not spread:
            members = [(c, a) for c, a in members if machines.runs_here(c, host)]
            if not members:
                continue
        v4 = _allocate_family(
            spec, explicit.get((network.name, 4), ()), network, members,
            {} if spread else kept, 4,
            pool=network.ip_range or network.subnet, subnet=network.subnet,
            gateway=network.gateway, spread=spread,
        )
        v6: dict[str, IPAddress] = {}
        if network.ipv6_subnet is not None:
            v6 = _allocate_family(
                spec, explicit.get((network.name, 6), ()), network, members,
                {} if spread else kept, 6, pool=network.ipv6_subnet,
                subnet=network.ipv6_subnet, gateway=network.ipv6_gateway, spread=spread,
            )
        for container, attachment in members:
            ipv4 = v4[container.name]
            ipv6 = v6.get(container.name)
            assert isinstance(ipv4, ipaddress.IPv4Address)
            assert ipv6 is None or isinstance(ipv6, ipaddress.IPv6Address)
            endpoints.append(Endpoint(container, attachment, network, ipv4, ipv6))
    order = {name: i for i, name in enumerate(spec.containers)}
    endpoints.sort(key=lambda ep: (order[ep.container.name], _position(ep)))
    return endpoints


def _position(ep: Endpoint) -> int:
    return ep.container.attachments.index(ep.attachment)


def _observed_addresses(observed: ObservedState) -> dict[Key, list[IPAddress]]:
    """What each attachment keeps: the allocation recorded in its link's mark;
    where a mark has no record (made by an older version), the addresses on
    the link. An address someone put there by hand is drift, not a choice."""
    kept: dict[Key, list[IPAddress]] = {}
    recorded: set[Key] = set()
    for res in observed.resources.values():
        if isinstance(res, Veth | Sublink) and res.allocated:
            try:
                kept[res.key] = [ipaddress.ip_address(a) for a in res.allocated.split(",")]
            except ValueError:
                continue  # not a record this version wrote: fall back to the link
            recorded.add(res.key)
    for res in observed.resources.values():
        if isinstance(res, Address) and res.link[0] in (Kind.VETH, Kind.SUBLINK) \
                and res.link not in recorded:
            kept.setdefault(res.link, []).append(ipaddress.ip_interface(res.cidr).ip)
    return kept


def _record(ep: Endpoint) -> str:
    """The allocation record of an endpoint, for its link's mark."""
    return f"{ep.ipv4},{ep.ipv6}" if ep.ipv6 is not None else str(ep.ipv4)


def _explicit(spec: Spec) -> dict[tuple[str, int], list[IPAddress]]:
    """(network, IP version) -> the explicit addresses of the spec's
    attachments to it, on every machine: looked up once per allocation, not
    once per network (10,000 containers on 1,000 networks: 10 million steps)."""
    found: dict[tuple[str, int], list[IPAddress]] = {}
    for container in spec.containers.values():
        for attachment in container.attachments:
            for ip in (attachment.ipv4_address, attachment.ipv6_address):
                if ip is not None:
                    found.setdefault((attachment.network, ip.version), []).append(ip)
    return found


def _allocate_family(
    spec: Spec,
    claimed: Iterable[IPAddress],  # every explicit address on the network (_explicit)
    network: Network,
    members: list[tuple[Container, Attachment]],
    kept: dict[Key, list[IPAddress]],
    version: int,
    pool: ipaddress.IPv4Network | ipaddress.IPv6Network,
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network,
    gateway: IPAddress | None,
    spread: bool = False,
) -> dict[str, IPAddress]:
    taken: set[IPAddress] = {subnet.network_address, subnet.broadcast_address}
    if gateway is not None:
        taken.add(gateway)
    chosen: dict[str, IPAddress] = {}
    for container, attachment in members:
        explicit = attachment.ipv4_address if version == 4 else attachment.ipv6_address
        if explicit is not None:
            chosen[container.name] = explicit
            taken.add(explicit)
    # An explicit address is never handed out, even one of a container on
    # another machine: the spec holds addresses unique per network name.
    taken.update(claimed)
    # Sticky: keep what the endpoint has, if still in the pool and not claimed.
    for container, _attachment in members:
        if container.name in chosen:
            continue
        for ip in kept.get((Kind.VETH, container.name, network.name), []):
            if ip.version == version and ip in pool and ip not in taken:
                chosen[container.name] = ip
                taken.add(ip)
                break
    free = (ip for ip in pool if ip not in taken)
    for container, _attachment in members:
        if container.name in chosen:
            continue
        if spread:
            new_ip = place(spec.project, network.name, container.name, pool, taken)
        else:
            new_ip = next(free, None)
        if new_ip is None:
            raise SpecError([Problem(
                spec.locate("networks", network.name, "subnet"),
                f"network '{network.name}': no free IPv{version} address left in {pool} "
                f"for container '{container.name}'",
            )])
        chosen[container.name] = new_ip
        taken.add(new_ip)
    return chosen


def place(
    project: str, network: str, container: str,
    pool: ipaddress.IPv4Network | ipaddress.IPv6Network, taken: set[IPAddress],
) -> IPAddress | None:
    """The first free address from a place in the pool derived from the names
    (members are placed in name order). Adding or removing a member moves
    another when the address it takes or frees lies between the other's place
    and the other's address: only where places collide."""
    size = pool.num_addresses
    start = int.from_bytes(_digest(project, network, container)[:16], "big") % size
    for step in range(min(size, len(taken) + 1)):
        ip = pool[(start + step) % size]
        if ip not in taken:
            return ip
    return next((ip for ip in pool if ip not in taken), None)


def overlay_renumbering(
    spec: Spec, wanted: dict[Key, Resource], observed: ObservedState
) -> list[str]:
    """Notes for the plan: containers of this machine whose automatic address
    on an overlay changes because a member added or removed elsewhere in the
    pool's order took or freed its place (see allocate)."""
    automatic = {(c.name, a.network) for c in spec.containers.values() for a in c.attachments
                 if a.ipv4_address is None
                 and spec.networks[a.network].driver == Driver.OVERLAY}
    if not automatic:
        return []

    def ipv4(state: Iterable[Resource]) -> dict[tuple[str, str], str]:
        return {(r.link[1], r.link[2]): r.cidr.split("/")[0] for r in state
                if isinstance(r, Address) and r.link[0] == Kind.VETH
                and (r.link[1], r.link[2]) in automatic and ":" not in r.cidr}

    before, after = ipv4(observed.resources.values()), ipv4(wanted.values())
    return [
        f"container '{container}' moves from {before[key]} to {after[key]} on overlay "
        f"'{network}': a member added or removed before it took or freed its place (overlay "
        "addresses come from the spec alone); set ipv4_address to keep an address"
        for key in sorted(before.keys() & after.keys()) if before[key] != after[key]
        for container, network in [key]
    ]


# ---- foreign objects --------------------------------------------------------------


def _collisions(
    spec: Spec, resources: list[Resource], observed: ObservedState
) -> Iterator[Problem]:
    foreign = observed.foreign
    project = spec.project
    not_owned = f"exists and is not owned by project '{project}'"
    if foreign.files:
        yield from _file_collisions(spec, resources, dict(foreign.files))
    for res in resources:
        if isinstance(res, Netns) and res.name in foreign.netns:
            container = _container_of_netns(spec, res.name)
            yield Problem(
                spec.locate("containers", container, "netns"),
                f"container '{container}': netns {res.name} {not_owned}",
            )
        elif isinstance(res, HostsFile) and res.netns in foreign.hosts:
            container = _container_of_netns(spec, res.netns)
            yield Problem(
                spec.locate("containers", container),
                f"container '{container}': /etc/netns/{res.netns}/hosts exists and is not "
                f"managed by netapply project '{project}'",
            )
        elif isinstance(res, Bridge) and (HOST_NS, res.ifname) in foreign.links:
            yield Problem(
                spec.locate("networks", res.network, "interface"),
                f"network '{res.network}': interface {res.ifname} {not_owned}",
            )
        elif isinstance(res, Vxlan) and (HOST_NS, res.ifname) in foreign.links:
            yield Problem(
                spec.locate("networks", res.network),
                f"network '{res.network}': vxlan interface {res.ifname} {not_owned}",
            )
        elif isinstance(res, Veth):
            yield from _veth_collisions(spec, res, foreign.links, not_owned)
        elif isinstance(res, Sublink) and (res.ns, res.ifname) in foreign.links:
            yield Problem(
                spec.locate("containers", res.container, "networks", res.network),
                f"container '{res.container}': interface {res.ifname} in its namespace "
                f"{not_owned}",
            )
        elif isinstance(res, Route) and (res.ns, res.dst) in foreign.routes:
            container = res.link[1]
            yield Problem(
                spec.locate("containers", container),
                f"container '{container}': route {res.dst} in its namespace {not_owned}",
            )


def _file_collisions(
    spec: Spec, resources: list[Resource], files: dict[str, str]
) -> Iterator[Problem]:
    """Desired objects whose place in the file system something netapply did
    not make takes: a symbolic link (never followed), a file where a directory
    goes, a FIFO, a directory where a file goes. Each such path is said once."""
    said: set[str] = set()
    tail = (f", which project '{spec.project}' did not make: netapply never follows a link "
            "or replaces what is in its way")

    def check(paths: Iterable[str], where: Where | None, label: str,
              hint: str) -> Iterator[Problem]:
        for path in paths:
            if path in files and path not in said:
                said.add(path)
                yield Problem(where, f"{label}{files[path]}{tail}; {hint}")

    if resources:
        yield from check([LOCK_DIR], spec.locate("project"), f"project '{spec.project}': ",
                         f"remove it (netapply holds the lock of a run in {LOCK_DIR})")
    own_dir = f"{ETC_NETNS_DIR}/{tables_dir(spec.project)}"
    other_netns = "remove it or choose another netns"
    for res in resources:
        if isinstance(res, Netns):
            container = _container_of_netns(spec, res.name)
            yield from check(
                (NETNS_DIR, f"{NETNS_DIR}/{res.name}"),
                spec.locate("containers", container, "netns"),
                f"container '{container}': netns {res.name} cannot be made: ", other_netns)
        elif isinstance(res, HostsFile):
            container = _container_of_netns(spec, res.netns)
            yield from check(
                (ETC_NETNS_DIR, f"{ETC_NETNS_DIR}/{res.netns}"),
                spec.locate("containers", container),
                f"container '{container}': /etc/netns/{res.netns}/hosts cannot be written: ",
                other_netns)
        elif isinstance(res, HostsTable):
            yield from check(
                (ETC_NETNS_DIR, own_dir, res.path), spec.locate("project"),
                f"project '{spec.project}': its hosts tables cannot be written: ",
                "remove it (netapply keeps the project's hosts tables there)")


def _veth_collisions(
    spec: Spec, veth: Veth, foreign_links: frozenset[tuple[str, str]], not_owned: str
) -> Iterator[Problem]:
    where = spec.locate("containers", veth.container, "networks", veth.network)
    if (HOST_NS, veth.host_ifname) in foreign_links:
        yield Problem(
            where,
            f"container '{veth.container}': host interface {veth.host_ifname} for network "
            f"'{veth.network}' {not_owned}",
        )
    if (veth.ns, veth.ifname) in foreign_links:
        yield Problem(
            where,
            f"container '{veth.container}': interface {veth.ifname} in its namespace "
            f"{not_owned}",
        )


def _container_of_netns(spec: Spec, netns: str) -> str:
    return next(c.name for c in spec.containers.values() if c.netns == netns)
