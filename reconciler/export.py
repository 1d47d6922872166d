"""A project's live state as a spec (pure: observed state in, spec data out).

`netapply export --project NAME` and `netapply show SPEC --output yaml` print
what the kernel holds of a project as a spec that, applied, plans nothing:
nmstatectl's `show` and Terraform's import, for a project that lost its files.
Everything comes from the project's ownership marks and what netapply writes
(link aliases and their allocation records, the firewall table's rules, the
hosts tables); defaults are omitted, and addresses (allocated or not) become
explicit ones, so that applying the spec never renumbers anything.

What the kernel cannot tell is listed in `Exported.unknown`, which callers
print as comments at the top of the spec.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from reconciler import engine, firewall, ports
from reconciler import spec as spec_mod
from reconciler.desired import DEFAULT_V4, DEFAULT_V6
from reconciler.errors import NetapplyError
from reconciler.model import (
    DEFAULT_MTU,
    OVERLAY_MTU,
    VXLAN_PORT,
    Driver,
    bridge_ifname,
    default_mac,
)
from reconciler.resources import (
    HOSTS_HEADER,
    ZERO_MAC,
    Address,
    Bridge,
    DockerUser,
    Fdb,
    Firewall,
    HostsTable,
    Key,
    Neigh,
    Netns,
    Resource,
    Route,
    Sublink,
    Veth,
    Vxlan,
    docker_user_comment,
)
from reconciler.state.observe import UNSEEN_NS, ObservedState

EXPORTED = "exported spec"  # the file name problems of the printed spec are reported at
DEFAULT_MODES = {"macvlan": "bridge", "ipvlan": "l2"}  # the first mode speccheck accepts
CONTAINER_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
# Always unknown to the kernel, whatever the project holds.
NEVER_READ = (
    "labels and ip_range of networks (they change nothing in the kernel); addresses are "
    "explicit instead",
    "expect entries",
    "containers with network_mode: host (netapply makes nothing for them)",
)


@dataclass
class _Net:
    """What the kernel says about one network of the project."""

    name: str
    driver: Driver
    subnet: ipaddress.IPv4Network | None = None
    gateway: ipaddress.IPv4Address | None = None
    subnet6: ipaddress.IPv6Network | None = None
    gateway6: ipaddress.IPv6Address | None = None
    interface: str | None = None
    mtu: int | None = None
    internal: bool = False
    icc: bool = True
    masquerade_rule: bool = False
    vni: int | None = None
    port: int = VXLAN_PORT
    parent: str | None = None
    mode: str | None = None


@dataclass
class _Link:
    """One attachment seen in a container's namespace (a veth end or a sublink)."""

    container: str
    network: str
    ns: str
    ifname: str
    mac: str
    ipv4: ipaddress.IPv4Address | None
    ipv6: ipaddress.IPv6Address | None
    key: Key


@dataclass(frozen=True)
class Exported:
    """The spec as data (YAML-ready), and what the kernel could not tell."""

    project: str
    data: dict[str, Any]
    unknown: tuple[str, ...] = ()
    host: str | None = None  # with overlays: the name this machine has in `hosts`

    def text(self) -> str:
        """The spec as YAML (PyYAML's safe dumper), with the unknowns as comments."""
        head = [f"# The live state of netapply project '{self.project}', read from the kernel "
                "by netapply.", "# Applied as it is, this spec plans nothing on this machine.",
                "# What the kernel cannot tell, and so is not here:"]
        head += [f"#   - {line}" for line in self.unknown]
        body = yaml.safe_dump(self.data, sort_keys=False, default_flow_style=False,
                               allow_unicode=True, width=100)
        return "\n".join(head) + "\n" + body

    def to_json(self) -> dict[str, Any]:
        return {"project": self.project, "spec": self.data, "unknown": list(self.unknown)}


@dataclass
class _Reader:
    project: str
    resources: Mapping[Key, Resource]
    host_names: Mapping[str, str]  # host address -> the name to give that machine
    nets: dict[str, _Net] = field(default_factory=dict)
    links: list[_Link] = field(default_factory=list)
    names: dict[str, list[str]] = field(default_factory=dict)  # address -> names (hosts tables)
    unknown: list[str] = field(default_factory=list)

    def of(self, kind: type[Any]) -> list[Any]:
        return [r for r in self.resources.values() if isinstance(r, kind)]

    def addresses(self, link: Key) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        return [ipaddress.ip_interface(a.cidr) for a in self.of(Address) if a.link == link]


def live_spec(project: str, resources: Mapping[Key, Resource],
              host_names: Mapping[str, str] | None = None,
              attached: Mapping[str, Mapping[str, str]] | None = None) -> Exported:
    """The spec of what `resources` (an observation of `project`) holds.

    host_names: host address -> machine name, for a project with overlays (by
    default each machine is named by its address). attached: namespace path
    -> the keys that say where it comes from (`netns_path`, or `runtime` and
    `runtime_name`), for the namespaces the observation was told of (`show
    SPEC`; a path alone is written as netns_path). A veth whose other end is
    in a namespace the observation did not read is reported in `unknown`."""
    reader = _Reader(project, resources, host_names or {})
    reader.unknown.extend(NEVER_READ)
    _read_names(reader)
    _read_networks(reader)
    _read_links(reader)
    containers = _containers(reader, attached or {})
    hosts = _hosts(reader, containers)
    data: dict[str, Any] = {"version": 1, "project": project}
    if hosts:
        data["hosts"] = hosts
    data["networks"] = {name: _network_data(project, reader.nets[name])
                        for name in _network_order(reader)}
    data["containers"] = containers
    local = next((v.local for v in reader.of(Vxlan)), None)
    host = _host_name(reader.host_names, local) if local else None
    return Exported(project, data, tuple(reader.unknown), host)


# ---- reading ---------------------------------------------------------------------


def _read_names(reader: _Reader) -> None:
    """address -> [container, aliases...] from the project's hosts tables."""
    for table in reader.of(HostsTable):
        for line in table.content.splitlines():
            if not line or line.startswith(HOSTS_HEADER) or line.startswith("#"):
                continue
            address, _, names = line.partition("\t")
            if names.split()[:1] == ["localhost"]:
                continue
            reader.names.setdefault(address, names.split())


def _read_networks(reader: _Reader) -> None:
    for bridge in reader.of(Bridge):
        net = reader.nets.setdefault(bridge.network, _Net(bridge.network, Driver.BRIDGE))
        net.interface, net.mtu = bridge.ifname, bridge.mtu
        for iface in reader.addresses(bridge.key):
            if isinstance(iface, ipaddress.IPv4Interface):
                net.subnet, net.gateway = iface.network, iface.ip
            else:
                net.subnet6, net.gateway6 = iface.network, iface.ip
    for vxlan in reader.of(Vxlan):
        net = reader.nets.setdefault(vxlan.network, _Net(vxlan.network, Driver.OVERLAY))
        net.driver, net.vni, net.port, net.mtu = Driver.OVERLAY, vxlan.vni, vxlan.port, vxlan.mtu
        net.icc = not vxlan.isolated
    for sub in reader.of(Sublink):
        net = reader.nets.setdefault(sub.network, _Net(sub.network, Driver(sub.driver)))
        net.parent, net.mode, net.mtu = sub.parent, sub.mode, sub.mtu
    for veth in reader.of(Veth):
        if veth.network not in reader.nets:
            reader.unknown.append(f"network '{veth.network}': its bridge is gone (container "
                                  f"'{veth.container}' still has a veth on it)")
            reader.nets[veth.network] = _Net(veth.network, Driver.BRIDGE)
        if veth.isolated:
            reader.nets[veth.network].icc = False
    table = next(iter(reader.of(Firewall)), None)
    for rule in table.rules if table else ():
        network, _, what = rule.comment.partition(": ")
        marked = reader.nets.get(network)
        if marked is None:
            continue
        if what.startswith("internal"):
            marked.internal = True
        elif what.startswith("icc off"):
            marked.icc = False
        elif what.startswith("masquerade"):
            marked.masquerade_rule = True


def _read_links(reader: _Reader) -> None:
    for res in [*reader.of(Veth), *reader.of(Sublink)]:
        if res.ns == UNSEEN_NS or not res.ifname:
            record = f" (addresses {res.allocated})" if res.allocated else ""
            reader.unknown.append(
                f"container '{res.container}' on network '{res.network}'{record}: its "
                "namespace is none netapply names (a netns_path or a docker/podman container); "
                "add it by hand")
            continue
        v4 = v6 = None
        recorded = _recorded(res.allocated)
        for iface in reader.addresses(res.key):
            if isinstance(iface, ipaddress.IPv4Interface):
                v4 = v4 or iface
            else:
                v6 = v6 or iface
        ipv4 = recorded.get(4) or (v4.ip if v4 else None)
        ipv6 = recorded.get(6) or (v6.ip if v6 else None)
        net = reader.nets[res.network]
        if net.subnet is None and v4 is not None:
            net.subnet = v4.network
        if net.subnet6 is None and v6 is not None:
            net.subnet6 = v6.network
        assert ipv4 is None or isinstance(ipv4, ipaddress.IPv4Address)
        assert ipv6 is None or isinstance(ipv6, ipaddress.IPv6Address)
        reader.links.append(_Link(res.container, res.network, res.ns, res.ifname, res.mac,
                                  ipv4, ipv6, res.key))
    # The gateway of a macvlan/ipvlan network is on no device here: a default
    # route through it says which it is.
    for route in reader.of(Route):
        if route.dst in (DEFAULT_V4, DEFAULT_V6) and route.link[0] == "sublink":
            net = reader.nets[route.link[2]]
            via = ipaddress.ip_address(route.via)
            if isinstance(via, ipaddress.IPv4Address):
                net.gateway = via
            else:
                net.gateway6 = via


def _recorded(allocated: str) -> dict[int, ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out: dict[int, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
    for text in allocated.split(",") if allocated else ():
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return {}
        out[ip.version] = ip
    return out


# ---- networks --------------------------------------------------------------------


def _effective_gateway(net: _Net) -> ipaddress.IPv4Address | None:
    """The gateway the spec gives the network (SPEC.md defaults included)."""
    if net.gateway is not None or net.driver == Driver.OVERLAY or net.subnet is None:
        return net.gateway
    return net.subnet.network_address + 1


def _effective_gateway6(net: _Net) -> ipaddress.IPv6Address | None:
    if net.gateway6 is not None or net.driver == Driver.OVERLAY or net.subnet6 is None:
        return net.gateway6
    return net.subnet6.network_address + 1


def _network_data(project: str, net: _Net) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if net.driver != Driver.BRIDGE:
        out["driver"] = str(net.driver)
    if net.vni is not None:
        out["vni"] = net.vni
        if net.port != VXLAN_PORT:
            out["port"] = net.port
    if net.parent is not None:
        out["parent"] = net.parent
        if net.mode and net.mode != DEFAULT_MODES.get(str(net.driver)):
            out["mode"] = net.mode
    out["subnet"] = str(net.subnet) if net.subnet is not None else None
    if net.gateway is not None and net.subnet is not None and (
            net.driver == Driver.OVERLAY or net.gateway != net.subnet.network_address + 1):
        out["gateway"] = str(net.gateway)
    if net.subnet6 is not None:
        v6: dict[str, str] = {"subnet": str(net.subnet6)}
        if net.gateway6 is not None and (
                net.driver == Driver.OVERLAY or net.gateway6 != net.subnet6.network_address + 1):
            v6["gateway"] = str(net.gateway6)
        out["ipv6"] = v6
    default_mtu = OVERLAY_MTU if net.driver == Driver.OVERLAY else DEFAULT_MTU
    if net.mtu is not None and net.mtu != default_mtu:
        out["mtu"] = net.mtu
    if net.interface is not None and net.interface != bridge_ifname(project, net.name):
        out["interface"] = net.interface
    if net.internal:
        out["internal"] = True
    if not net.icc:
        out["icc"] = False
    # masquerade defaults to "not internal"; a rule only exists with a gateway.
    if net.driver in (Driver.BRIDGE, Driver.OVERLAY) and _effective_gateway(net) is not None \
            and net.masquerade_rule == net.internal:
        out["masquerade"] = net.masquerade_rule
    return out


def _network_order(reader: _Reader) -> list[str]:
    """The firewall's rules follow the order of the spec's networks: keep it
    (the table would differ otherwise); networks without rules by name.

    No one chain names every network in every case (a guard rule exists only
    for a network with a port on 127.0.0.1, an input rule only for an internal
    one), and several chains together may name them in an order none of them
    holds alone: each chain's rules, and the project's rules in DOCKER-USER,
    give the order of the networks they name, and the spec's order is the one
    that agrees with all of them (a topological sort of what each says)."""
    sequences = [_named_order(reader, rules) for rules in _ordered_rules(reader)]
    after: dict[str, set[str]] = {name: set() for name in reader.nets}
    before_count = dict.fromkeys(reader.nets, 0)
    for seq in sequences:
        for first, then in itertools.pairwise(seq):
            if then not in after[first]:
                after[first].add(then)
                before_count[then] += 1
    named = {name for seq in sequences for name in seq}
    order: list[str] = []
    left = set(reader.nets)
    while left:
        ready = [n for n in left if before_count[n] == 0] or list(left)  # a cycle: tampered
        # Networks some rule names come first; among equals, by name.
        pick = min(ready, key=lambda n: (n not in named, n))
        order.append(pick)
        left.discard(pick)
        for then in after[pick]:
            before_count[then] -= 1
    return order


# The chains whose rules are commented `<network>: ...` (the DNAT chains'
# comments name containers).
NETWORK_CHAINS = frozenset(c.name for c in (firewall.GUARD, firewall.FORWARD, firewall.INPUT,
                                            firewall.POSTROUTING))


def _ordered_rules(reader: _Reader) -> list[list[str]]:
    """Per chain of the project's table, and per DOCKER-USER family, the
    network each rule names, in the rules' order."""
    out: list[list[str]] = []
    for table in reader.of(Firewall):
        chains: dict[str, list[str]] = {}
        for rule in table.rules:
            if rule.chain in NETWORK_CHAINS:
                chains.setdefault(rule.chain, []).append(rule.comment.partition(": ")[0])
        out.extend(chains.values())
    mark = docker_user_comment(reader.project, "")
    for docker in reader.of(DockerUser):
        out.append([rule.comment[len(mark):].partition(": ")[0] for rule in docker.rules
                    if rule.comment.startswith(mark)])
    return out


def _named_order(reader: _Reader, names: list[str]) -> list[str]:
    """The project's networks in `names`, each once, where it first comes."""
    return list(dict.fromkeys(n for n in names if n in reader.nets))


# ---- containers ------------------------------------------------------------------


def _ifname_order(link: _Link) -> tuple[str, int, str]:
    """eth2 before eth10: the order the spec lists the attachments in."""
    found = re.fullmatch(r"(.*?)(\d+)", link.ifname)
    return (found[1], int(found[2]), "") if found else (link.ifname, -1, link.ifname)


def _containers(reader: _Reader, attached: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    by_ns: dict[str, list[_Link]] = {}
    for link in reader.links:
        by_ns.setdefault(link.ns, []).append(link)
    out: dict[str, dict[str, Any]] = {}
    for ns in sorted({n.name for n in reader.of(Netns)} | set(by_ns)):
        links = by_ns.get(ns, [])
        names = sorted({link.container for link in links}) or [ns]
        if not CONTAINER_NAME.fullmatch(names[0]):
            reader.unknown.append(f"namespace {ns}: the name of its container (no container "
                                  "name can be the same as the namespace's); add it by hand")
            continue
        for name in names:
            out[name] = _container(reader, name, ns, attached.get(ns, {"netns_path": ns}),
                                   [link for link in links if link.container == name])
    return {name: out[name] for name in sorted(out, key=lambda n: (_publish_order(reader, n), n))}


def _publish_order(reader: _Reader, container: str) -> int:
    """The DNAT rules follow the order of the spec's containers: keep it for
    those that publish ports; the others come after, by name."""
    table = next(iter(reader.of(Firewall)), None)
    for i, rule in enumerate(table.rules if table else ()):
        if rule.chain == firewall.OUTPUT.name and rule.comment.startswith(f"{container}: publish "):
            return i
    return 1 << 30


def _container(reader: _Reader, name: str, ns: str, where: Mapping[str, str],
               links: list[_Link]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if ns.startswith("/"):
        out.update(where)
    elif ns != name:
        out["netns"] = ns
    if not links:
        out["network_mode"] = "none"
        return out
    links.sort(key=_ifname_order)
    defaults = all(link.ifname == f"eth{i}" for i, link in enumerate(links))
    networks: dict[str, dict[str, Any]] = {}
    for link in links:
        entry: dict[str, Any] = {}
        if link.ipv4 is not None:
            entry["ipv4_address"] = str(link.ipv4)
        if link.ipv6 is not None:
            entry["ipv6_address"] = str(link.ipv6)
        if link.mac and (link.ipv4 is None or link.mac != default_mac(link.ipv4)):
            entry["mac_address"] = link.mac
        if not defaults:
            entry["interface"] = link.ifname
        aliases = _aliases(reader, name, link.ipv4)
        if aliases:
            entry["aliases"] = aliases
        networks[link.network] = entry
    out["networks"] = networks
    default_route = _default_route(reader, ns, links)
    if default_route is not None:
        out["default_route"] = default_route
    routes = sorted((r for r in reader.of(Route) if r.ns == ns
                     and r.dst not in (DEFAULT_V4, DEFAULT_V6) and r.link[1] == name),
                    key=lambda r: r.dst)
    if routes:
        out["routes"] = [{"to": r.dst, "via": r.via} for r in routes]
    published = _ports(reader, links)
    if published:
        out["ports"] = published
    return out


def _aliases(reader: _Reader, name: str, ipv4: ipaddress.IPv4Address | None) -> list[str]:
    names = reader.names.get(str(ipv4), []) if ipv4 is not None else []
    return names[1:] if names[:1] == [name] else []


def _default_route(reader: _Reader, ns: str, links: list[_Link]) -> Any:
    """default_route, where the kernel's default routes differ from what the
    order of the attachments gives (SPEC.md: the first listed non-internal
    network with a gateway of that family)."""
    have: dict[int, str] = {}
    for route in reader.of(Route):
        if route.ns == ns and route.dst in (DEFAULT_V4, DEFAULT_V6):
            have[6 if route.dst == DEFAULT_V6 else 4] = route.link[2]
    chosen: dict[int, str] = {}
    for family in (4, 6):
        by_order = next((link.network for link in links
                         if not reader.nets[link.network].internal and (
                             _effective_gateway(reader.nets[link.network]) if family == 4
                             else _effective_gateway6(reader.nets[link.network])) is not None
                         and (family == 4 or link.ipv6 is not None)), None)
        if family in have and have[family] != by_order:
            chosen[family] = have[family]
        elif family not in have and by_order is not None:
            reader.unknown.append(
                f"container '{links[0].container}': its IPv{family} default route (via network "
                f"'{by_order}') is gone, and a spec cannot say there is none")
    if not chosen:
        return None
    if set(chosen) == {4, 6} and chosen[4] == chosen[6]:
        return chosen[4]
    return {f"ipv{family}": network for family, network in sorted(chosen.items())}


def _ports(reader: _Reader, links: list[_Link]) -> list[Any]:
    """The container's published ports, from the DNAT rules of the project's
    table (the output chain has every port, the one bound to 127.0.0.1 too)."""
    table = next(iter(reader.of(Firewall)), None)
    by_address = {str(link.ipv4): link.network for link in links if link.ipv4 is not None}
    default = next((link.network for link in links
                    if reader.nets[link.network].driver == Driver.BRIDGE
                    and not reader.nets[link.network].internal), None)
    out: list[Any] = []
    for rule in table.rules if table else ():
        if rule.chain != firewall.OUTPUT.name:
            continue
        expr = json.loads(rule.expr)
        found = ports.dnat_port(expr)
        nat = next((e["dnat"] for e in expr if isinstance(e, dict) and "dnat" in e), None)
        if found is None or not isinstance(nat, dict) or str(nat.get("addr")) not in by_address:
            continue
        protocol, host_ip, published = found
        target, network = int(nat.get("port", published)), by_address[str(nat["addr"])]
        # A port on 0.0.0.0 is written without the address: both mean all.
        on = f"{host_ip}:" if host_ip is not None else ""
        if rule.comment.split(": publish ", 1)[-1].startswith("0.0.0.0:"):
            on = "0.0.0.0:"
        short = f"{on}{published}:{target}" + ("/udp" if protocol == "udp" else "")
        if network == default:
            out.append(short)
        else:
            entry: dict[str, Any] = {"published": published, "target": target,
                                     "protocol": protocol}
            if on:
                entry["host_ip"] = on[:-1]
            entry["network"] = network
            out.append(entry)
    return out


# ---- machines --------------------------------------------------------------------


def _hosts(reader: _Reader, containers: dict[str, Any]) -> dict[str, Any]:
    """With overlays: this machine (the VXLAN devices' local address) and the
    others it forwards to, with their members on the overlays (from the static
    forwarding and neighbour entries and the names in the hosts tables)."""
    vxlans = reader.of(Vxlan)
    if not vxlans:
        return {}

    def name_of(address: str) -> str:
        return _host_name(reader.host_names, address)

    local = vxlans[0].local
    machines = {local}
    for name, container in list(containers.items()):
        containers[name] = {"host": name_of(local), **container}
    machine_of = {f.mac: f.dst for f in reader.of(Fdb) if f.dst and f.mac != ZERO_MAC}
    remote: dict[str, dict[str, Any]] = {}
    for neigh in sorted(reader.of(Neigh), key=lambda n: (n.network, n.ip)):
        names = reader.names.get(neigh.ip)
        dst = machine_of.get(neigh.mac)
        if not names or dst is None:
            reader.unknown.append(f"the container with address {neigh.ip} on network "
                                  f"'{neigh.network}' of another machine (its name or machine)")
            continue
        machines.add(dst)
        name = names[0]
        entry = remote.setdefault(name, {"host": name_of(dst), "networks": {}})
        net = entry["networks"].setdefault(neigh.network, {})
        ip = ipaddress.ip_address(neigh.ip)
        net[f"ipv{ip.version}_address"] = neigh.ip
        if isinstance(ip, ipaddress.IPv4Address):
            if neigh.mac != default_mac(ip):
                net["mac_address"] = neigh.mac
            if names[1:]:
                net["aliases"] = names[1:]
    for name, entry in remote.items():
        if name in containers:
            reader.unknown.append(f"container '{name}': a remote member has the same name")
            continue
        for net in entry["networks"].values():  # the order speccheck writes keys in
            if "mac_address" in net:
                net["mac_address"] = net.pop("mac_address")
            if "aliases" in net:
                net["aliases"] = net.pop("aliases")
        containers[name] = entry
    reader.unknown.append(
        "the names of the machines: each is named by its address here; and the containers "
        "of other machines that share no overlay network with this one, with their other "
        "networks")
    return {name_of(a): {"address": a} for a in sorted(machines, key=_address_order)}


def _host_name(host_names: Mapping[str, str], address: str) -> str:
    """The machine's name in the spec, else its address (a valid host name
    once an IPv6 address's colons are dashes)."""
    return host_names.get(address) or address.replace(":", "-")


def _address_order(text: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(text)
    return (ip.version, int(ip))


def verify(exported: Exported, observed: ObservedState) -> list[str]:
    """The changes applying the exported spec here would make, [] when none:
    whether the export says everything the plan needs. (Plans only: no I/O.)"""
    try:
        spec = spec_mod.load_text(exported.text(), EXPORTED)
        snap = engine.plan_from(spec, observed, host=exported.host)
    except NetapplyError as e:
        return [str(e)]
    return [f"{c.action} {c.title()}: {c.reason}" if c.reason else f"{c.action} {c.title()}"
            for c in snap.plan.changes]
