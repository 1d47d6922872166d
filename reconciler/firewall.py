"""Docker's bridge-network semantics as one nftables table per project (pure).

The table `inet netapply-<project>` holds every rule the project needs; it is
written as a whole in one transaction, so the kernel never holds half a
ruleset. Rules are built as nftables JSON (the form `nft -j list` prints back,
so desired and observed compare as canonical strings).

What the rules do, per bridge network and per overlay's bridge on this machine
(Docker's behaviour, as in its DOCKER-ISOLATION chains, its MASQUERADE rule
and its DNAT rules):
- nothing from other interfaces enters the network, except replies to its own
  connections and published ports; so networks (of this project or of
  others, and the outside) cannot reach its containers;
- published ports: DNAT from host addresses (prerouting, for other machines,
  other networks and the network's own containers, which are masqueraded so
  that replies come back through the host; output, for the host itself).
  127.0.0.1 works because the bridge has route_localnet and loopback sources
  are masqueraded onto it; packets from other machines to 127.0.0.0/8 are
  never rewritten, so a port published on 127.0.0.1 stays local, and packets
  from containers to 127.0.0.0/8 are dropped before routing, so they never
  reach the host's loopback services;
- internal: nothing leaves the network either, and nothing enters;
- icc false: no traffic between its containers, bridged (bridge port
  isolation on the veths) or routed (a drop here), published ports of the
  same network through a host address included;
- masquerade: traffic from the subnet that leaves through another interface
  gets the outgoing interface's address.
Rules match interface names, which need no interface to exist, so the table
can be written before the bridges it names.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from reconciler import ports
from reconciler.model import Driver, IPAddress, Network, Port
from reconciler.resources import (
    DOCKER_USER_CHAIN,
    DOCKER_USER_TABLE,
    DockerUser,
    Firewall,
    Rule,
    Sysctl,
    canonical,
    docker_user_comment,
)

FAMILY = "inet"
IP_FORWARD = "net/ipv4/ip_forward"
PRIO_RAW, PRIO_FILTER, PRIO_DSTNAT, PRIO_SRCNAT = -300, 0, -100, 100


@dataclass(frozen=True)
class Chain:
    name: str
    type: str
    hook: str
    prio: int

    def json(self, table: str) -> dict[str, Any]:
        return {
            "family": FAMILY, "table": table, "name": self.name, "type": self.type,
            "hook": self.hook, "prio": self.prio, "policy": "accept",
        }


GUARD = Chain("guard", "filter", "prerouting", PRIO_RAW)
FORWARD = Chain("forward", "filter", "forward", PRIO_FILTER)
INPUT = Chain("input", "filter", "input", PRIO_FILTER)
PREROUTING = Chain("prerouting", "nat", "prerouting", PRIO_DSTNAT)
OUTPUT = Chain("output", "nat", "output", PRIO_DSTNAT)
POSTROUTING = Chain("postrouting", "nat", "postrouting", PRIO_SRCNAT)
CHAINS = (GUARD, FORWARD, INPUT, PREROUTING, OUTPUT, POSTROUTING)


@dataclass(frozen=True)
class Published:
    """A published port with the container address it leads to."""

    container: str
    port: Port
    network: Network
    ipv4: IPAddress


def table_name(project: str) -> str:
    return f"netapply-{project}"


def chain_key(table: str, chain: Chain) -> str:
    """A chain as compared: its listing without the handle nft adds."""
    return canonical(chain.json(table))


def build(
    project: str, networks: Iterable[Network], published: Iterable[Published]
) -> tuple[Firewall | None, Sysctl | None]:
    """The project's table and the IPv4 forwarding it needs, or None for each
    when no bridge network asks for them."""
    # An overlay has a bridge on each machine too, and the same rules hold for
    # what is routed into and out of it there.
    bridges = [n for n in networks if n.driver in (Driver.BRIDGE, Driver.OVERLAY)]
    if not bridges:
        return None, None
    table = table_name(project)
    ports = list(published)
    with_ports = {p.network.name for p in ports}
    localnet = localnet_bridges(ports)
    rules = [*_guard(bridges, localnet), *_forward(bridges, with_ports), *_input(bridges),
             *_dnat(ports), *_postrouting(bridges, with_ports, localnet)]
    order = {chain.name: i for i, chain in enumerate(CHAINS)}
    rules.sort(key=lambda r: order[r.chain])  # stable: keeps the order within a chain
    firewall = Firewall(table, tuple(chain_key(table, c) for c in CHAINS), tuple(rules))
    routed = [n.name for n in bridges if not n.internal and n.gateway is not None]
    forwarding = None
    if routed:
        forwarding = Sysctl(
            IP_FORWARD, "1", why="IPv4 forwarding, for network " + ", ".join(routed)
        )
    return firewall, forwarding


def docker_user(
    project: str, networks: Iterable[Network], families: Iterable[str]
) -> list[DockerUser]:
    """Where Docker's chain DOCKER-USER exists (`families`: "ip", "ip6"), the
    project's rules there: accept what enters or leaves its bridges, so that
    Docker's FORWARD policy drop (and br_netfilter, which hands bridged frames
    to the same hook) leaves the project's traffic to the project's own table.
    Docker's documented way to coexist ("Docker and iptables": DOCKER-USER)."""
    bridges = [n for n in networks if n.driver in (Driver.BRIDGE, Driver.OVERLAY)]
    if not bridges:
        return []
    rules: list[Rule] = []
    for net in bridges:
        for key, way in (("iifname", "from"), ("oifname", "to")):
            rules.append(Rule.of(
                DOCKER_USER_CHAIN, docker_user_comment(project, f"{net.name}: {way} its bridge"),
                [_meta(key, net.interface), ACCEPT]))
    return [DockerUser(family, tuple(rules)) for family in sorted(set(families))]


def docker_user_commands(
    before: DockerUser | None, after: DockerUser | None
) -> list[dict[str, Any]]:
    """One transaction: the project's old rules out (by handle), the new ones in
    at the top of the chain, before Docker's own RETURN."""
    out: list[dict[str, Any]] = []
    res = after or before
    assert res is not None
    where = {"family": res.family, "table": DOCKER_USER_TABLE, "chain": DOCKER_USER_CHAIN}
    for handle in before.handles if before else ():
        out.append({"delete": {"rule": {**where, "handle": handle}}})
    # Each insert goes to the top: insert in reverse to keep the rules' order.
    for rule in reversed(after.rules if after else ()):
        out.append({"insert": {"rule": {**where, "expr": rule.to_json()["expr"],
                                        "comment": rule.comment}}})
    return out


def changed_ports(before: Firewall | None, after: Firewall | None) -> set[tuple[str, int]]:
    """(protocol, port) of every DNAT rule that one table has and the other
    has not: a port published, unpublished, or leading somewhere else now."""
    old = set(before.rules if before else ())
    new = set(after.rules if after else ())
    out = set()
    for rule in old ^ new:
        found = ports.dnat_port(json.loads(rule.expr))
        if found is not None:
            out.add((found[0], found[2]))
    return out


def localnet_bridges(published: Iterable[Published]) -> set[str]:
    """Networks whose bridge must accept loopback-sourced packets (route_localnet):
    those with a port the host can reach through 127.0.0.1."""
    return {p.network.name for p in published if _reaches_loopback(p.port.host_ip)}


def _reaches_loopback(host_ip: IPAddress | None) -> bool:
    return host_ip is None or (host_ip.version == 4 and (host_ip.is_unspecified or
                                                         host_ip.is_loopback))


# ---- expressions ----------------------------------------------------------------


def _meta(key: str, value: str, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": value}}


def _payload(protocol: str, field: str, value: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"payload": {"protocol": protocol, "field": field}},
                      "right": value}}


def _prefix(network: Any) -> dict[str, Any]:
    return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}


def _ct(key: str, value: Any) -> dict[str, Any]:
    return {"match": {"op": "in", "left": {"ct": {"key": key}}, "right": value}}


ACCEPT: dict[str, Any] = {"accept": None}
DROP: dict[str, Any] = {"drop": None}
MASQUERADE: dict[str, Any] = {"masquerade": None}
LOOPBACK_NET = {"prefix": {"addr": "127.0.0.0", "len": 8}}
NOT_LOOPBACK = {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                          "right": LOOPBACK_NET}}
LOCAL_DADDR = {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}},
                         "right": "local"}}


# ---- rules ------------------------------------------------------------------------


def _guard(bridges: list[Network], localnet: set[str]) -> Iterator[Rule]:
    """route_localnet makes the kernel route packets to 127.0.0.0/8 that arrive
    on the bridge: without this drop, before routing, a container could reach
    services the host binds to 127.0.0.1 (CVE-2020-8558 in Kubernetes)."""
    for net in bridges:
        if net.name in localnet:
            yield Rule.of(GUARD.name, f"{net.name}: containers never reach the host's 127.0.0.1",
                          [_meta("iifname", net.interface), _payload("ip", "daddr", LOOPBACK_NET),
                           DROP])


def _forward(bridges: list[Network], with_ports: set[str]) -> Iterator[Rule]:
    for net in bridges:
        dev, name = net.interface, net.name
        into = [_meta("oifname", dev), _meta("iifname", dev, "!=")]
        if not net.icc:
            # Port isolation also stops what the host routes from one isolated port
            # back into another (a published port reached through a host address),
            # so this drop covers only what would otherwise be routed directly.
            yield Rule.of(FORWARD.name, f"{name}: icc off, no routing between its containers",
                          [_meta("iifname", dev), _meta("oifname", dev), DROP])
        if net.internal:
            yield Rule.of(FORWARD.name, f"{name}: internal, nothing leaves",
                          [_meta("iifname", dev), _meta("oifname", dev, "!="), DROP])
            yield Rule.of(FORWARD.name, f"{name}: internal, nothing enters", [*into, DROP])
            continue
        yield Rule.of(FORWARD.name, f"{name}: replies to its own connections",
                      [*into, _ct("state", ["established", "related"]), ACCEPT])
        if name in with_ports:
            yield Rule.of(FORWARD.name, f"{name}: published ports",
                          [*into, _ct("status", "dnat"), ACCEPT])
        yield Rule.of(FORWARD.name, f"{name}: nothing else enters", [*into, DROP])


# Link-local unicast and multicast: IPv6 neighbour discovery with the gateway.
IPV6_LINK = {"set": [{"prefix": {"addr": "fe80::", "len": 10}},
                     {"prefix": {"addr": "ff02::", "len": 16}}]}


def _input(bridges: list[Network]) -> Iterator[Rule]:
    """SPEC.md: containers of an internal network reach their own network and its
    gateway address, nothing else, whatever routes they are given. Forwarding
    is already dropped; this stops what the host would take in itself: its
    other addresses (an outside address, other networks' gateways)."""
    for net in bridges:
        if not net.internal:
            continue
        dev = net.interface
        for family, gateway in (("ip", net.gateway), ("ip6", net.ipv6_gateway)):
            if family == "ip6" and net.ipv6_subnet is None:
                continue
            allowed: list[Any] = [str(gateway)] if gateway is not None else []
            if family == "ip6":
                allowed.extend(IPV6_LINK["set"])
            # As nft lists it back: one address bare, several as a set; a
            # daddr match implies the family, and without a gateway the
            # family alone (nfproto) is matched.
            match = [_meta("iifname", dev)]
            if not allowed:
                match.append(_meta("nfproto", "ipv4" if family == "ip" else "ipv6"))
            else:
                right: Any = allowed[0] if len(allowed) == 1 else {"set": allowed}
                match.append({"match": {"op": "!=", "left": {"payload": {
                    "protocol": family, "field": "daddr"}}, "right": right}})
            what = "IPv4" if family == "ip" else "IPv6"
            yield Rule.of(INPUT.name, f"{net.name}: internal, only its gateway address on the "
                          f"host ({what})", [*match, DROP])


def _dnat(ports: list[Published]) -> Iterator[Rule]:
    """IPv4 only: netapply does not NAT IPv6 (desired.py refuses an IPv6 host_ip)."""
    for p in ports:
        port = p.port
        match = [LOCAL_DADDR]
        if port.host_ip is not None and not port.host_ip.is_unspecified:
            match.append(_payload("ip", "daddr", str(port.host_ip)))
        match.append(_payload(port.protocol, "dport", port.published))
        action = {"dnat": {"family": "ip", "addr": str(p.ipv4), "port": port.target}}
        on = f"{port.host_ip}:" if port.host_ip is not None else ""
        what = f"{p.container}: publish {on}{port.published}/{port.protocol} -> {port.target}"
        if not _loopback_only(port.host_ip):
            # Packets from other machines to 127.0.0.0/8 are martians; without this
            # match, DNAT would rewrite them before the kernel drops them, and a
            # port published on 127.0.0.1 would be open to the LAN.
            yield Rule.of(PREROUTING.name, what, [NOT_LOOPBACK, *match, action])
        yield Rule.of(OUTPUT.name, f"{what}, from this host", [*match, action])


def _loopback_only(host_ip: IPAddress | None) -> bool:
    return host_ip is not None and host_ip.is_loopback


def _postrouting(
    bridges: list[Network], with_ports: set[str], localnet: set[str]
) -> Iterator[Rule]:
    for net in bridges:
        dev = net.interface
        if net.masquerade and net.gateway is not None:  # an overlay may have no way out
            yield Rule.of(POSTROUTING.name, f"{net.name}: masquerade traffic leaving it",
                          [_payload("ip", "saddr", _prefix(net.subnet)),
                           _meta("oifname", dev, "!="), MASQUERADE])
        if net.name in with_ports:
            # A container reaching a published port of its own network through a
            # host address (hairpin): without SNAT the reply would bypass the host.
            yield Rule.of(POSTROUTING.name, f"{net.name}: published ports reached from inside",
                          [_payload("ip", "saddr", _prefix(net.subnet)), _meta("oifname", dev),
                           _ct("status", "dnat"), MASQUERADE])
        if net.name in localnet:
            yield Rule.of(POSTROUTING.name, f"{net.name}: published ports reached via 127.0.0.1",
                          [_payload("ip", "saddr", LOOPBACK_NET), _meta("oifname", dev),
                           MASQUERADE])


def commands(firewall: Firewall) -> list[dict[str, Any]]:
    """Replace the table in one transaction: adding it first makes the delete
    succeed whether or not it existed."""
    table = {"family": FAMILY, "name": firewall.table}
    out: list[dict[str, Any]] = [
        {"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}},
    ]
    for chain in CHAINS:
        out.append({"add": {"chain": chain.json(firewall.table)}})
    for rule in firewall.rules:
        body = {"family": FAMILY, "table": firewall.table, "chain": rule.chain,
                "expr": rule.to_json()["expr"]}
        if rule.comment:
            body["comment"] = rule.comment
        out.append({"add": {"rule": body}})
    return out


def delete_commands(table: str) -> list[dict[str, Any]]:
    body = {"family": FAMILY, "name": table}
    return [{"add": {"table": body}}, {"delete": {"table": body}}]
