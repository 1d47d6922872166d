"""Drift in the topology picture: this machine's kernel against the spec
(`netapply graph --live`), marked from one snapshot's plan."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace

from reconciler import desired as desired_mod
from reconciler import firewall, machines, ports
from reconciler.graph import (
    Edge,
    Node,
    NodeKind,
    Status,
    Topology,
    container_id,
    drawn,
    network_id,
    network_node_id,
    port_id,
    port_node_id,
)
from reconciler.model import NetworkMode, Port, Spec
from reconciler.planner import Action, Change
from reconciler.resources import (
    Address,
    Bridge,
    Firewall,
    Key,
    Kind,
    Netns,
    Resource,
    Rule,
    State,
    Sublink,
    Veth,
    diff_fields,
)
from reconciler.state.observe import ObservedState


def live(spec: Spec, observed: ObservedState, desired: State,
         changes: Iterable[Change], host: str | None) -> Topology:
    """This machine's share (`host`; None: a spec without hosts) as the
    kernel has it, from one snapshot (observed state, desired state, plan):
    addresses as allocated against the kernel, each object marked with how it
    differs. Objects apply would create are MISSING, those it would delete
    UNEXPECTED, those it would update or replace CHANGED; an attachment or a
    bridge whose addresses differ shows the spec's and the kernel's. The title
    counts the differences the picture does not show (routes, hosts files,
    other firewall rules)."""
    share = machines.share(spec, host)
    endpoints = [ep for ep in desired_mod.allocate(spec, observed, host)
                 if ep.container.name in share.containers]
    where = f" (host {host})" if host else ""
    topo = drawn(spec, [host], endpoints,
                  f"project {spec.project}: the kernel of this machine{where} against the spec")
    drift = _Drift(observed, desired, {c.key: c for c in changes})
    for ep in endpoints:
        pair = (container_id(ep.container.name), network_node_id(ep.network, host))
        if ep.container.running:
            topo.edges[pair] = drift.edge(topo.edges[pair], ep.key)
        else:  # nothing is made for it until it runs
            topo.edges[pair] = replace(topo.edges[pair], status=Status.MISSING)
    for network in share.networks.values():
        node_id = network_node_id(network, host)
        if network.driver in desired_mod.BRIDGED_DRIVERS:
            topo.nodes[node_id] = drift.node(topo.nodes[node_id], (Kind.BRIDGE, network.name))
    for container in share.containers.values():
        node_id = container_id(container.name)
        if not container.running:
            topo.nodes[node_id] = replace(topo.nodes[node_id], status=Status.MISSING,
                                          detail=f"{container.runtime} container not running")
        elif container.netns and container.network_mode != NetworkMode.HOST:
            topo.nodes[node_id] = drift.node(topo.nodes[node_id], (Kind.NETNS, container.netns))
    drift.ports(topo, share)
    drift.unexpected(topo, host)
    left = drift.undrawn()
    if not drift.changes:
        topo.notes.append("the kernel matches the spec")
    else:
        topo.notes.append("dashed red: missing in the kernel; orange: changed, or not in the spec")
        if left:
            topo.notes.append(f"{left} other difference(s) not drawn: netapply plan lists them")
    return topo


UNEXPECTED_DRAWN = (Kind.NETNS, Kind.BRIDGE, Kind.VETH, Kind.SUBLINK)


class _Drift:
    """Marks the picture's objects from one snapshot, and remembers which of
    the plan's changes it has shown."""

    def __init__(self, observed: ObservedState, desired: State, changes: dict[Key, Change]):
        self.observed = observed
        self.desired = desired
        self.changes = changes
        self.drawn: set[Key] = set()  # objects (links with their addresses) shown

    def node(self, node: Node, key: Key) -> Node:
        """A bridge or a namespace: missing, changed (fields, addresses) or as it is."""
        self.drawn.add(key)
        change = self.changes.get(key)
        if change is not None and change.action == Action.CREATE:
            return replace(node, status=Status.MISSING, detail="")
        differs = [_differs(change)] if change is not None else []
        want, have = self._addresses(key)
        if want != have:
            differs.append(f"addresses {', '.join(have) or 'none'} "
                           f"(spec {', '.join(want) or 'none'})")
        if not differs:
            return node
        return replace(node, status=Status.CHANGED, detail="; ".join(differs))

    def edge(self, edge: Edge, key: Key) -> Edge:
        """An attachment's link: missing, changed (fields; addresses as spec
        and kernel lines) or as it is."""
        self.drawn.add(key)
        change = self.changes.get(key)
        if change is not None and change.action == Action.CREATE:
            return replace(edge, status=Status.MISSING, detail="")
        want, have = self._addresses(key)
        if change is None and want == have:
            return edge
        lines = edge.lines
        if want != have:
            lines = (edge.lines[0], "spec " + (", ".join(want) or "none"),
                     "kernel " + (", ".join(have) or "none"))
        detail = _differs(change) if change is not None else "addresses differ"
        return replace(edge, lines=lines, status=Status.CHANGED, detail=detail)

    def _addresses(self, link: Key) -> tuple[list[str], list[str]]:
        return (_addresses(self.desired.values(), link),
                _addresses(self.observed.resources.values(), link))

    def ports(self, topo: Topology, share: Spec) -> None:
        """Published ports, by the project table's DNAT rules: missing or
        changed, and ports the kernel publishes that the spec does not."""
        table = (Kind.FIREWALL, firewall.table_name(share.project))
        want = _dnat_rules(self.desired.get(table))
        have = _dnat_rules(self.observed.resources.get(table))
        for container in share.containers.values():
            for port in container.ports if container.running else ():
                key, node_id = _port_key(port), port_id(container.name, port)
                if key not in want:
                    continue  # not published here (the plan's notes say why)
                if key not in have:
                    topo.nodes[node_id] = replace(topo.nodes[node_id], status=Status.MISSING,
                                                  detail="no rule in the kernel")
                elif have[key] != want[key]:
                    topo.nodes[node_id] = replace(topo.nodes[node_id], status=Status.CHANGED,
                                                  detail="the kernel's rule differs")
        for key in sorted(set(have) - set(want), key=str):
            protocol, address, number = key
            comment = min(r.comment for r in have[key])
            owner = comment.split(":", 1)[0]  # the rule's comment names its container
            host = _host_of(topo, owner)
            _ensure_container(topo, owner, host)
            where = f"{address}:" if address else ""
            node_id = port_node_id(owner, protocol, address, number)
            topo.add(Node(node_id, NodeKind.PORT, (f"published {where}{number}/{protocol}",),
                          host, Status.UNEXPECTED))
            topo.edges[(node_id, container_id(owner))] = Edge(
                node_id, container_id(owner), (comment.split(": ", 1)[-1],), Status.UNEXPECTED)
        if _only_dnat_differs(self.desired.get(table), self.observed.resources.get(table)):
            self.drawn.add(table)

    def unexpected(self, topo: Topology, host: str | None) -> None:
        """Owned namespaces, bridges and attachments the spec no longer has,
        with the nodes they need."""
        deletes = [c.before for c in self.changes.values()
                   if c.action == Action.DELETE and c.key[0] in UNEXPECTED_DRAWN
                   and c.key not in self.drawn]
        for res in deletes:
            assert res is not None
            self.drawn.add(res.key)
            if isinstance(res, Netns):
                _ensure_container(topo, res.name, host)
            elif isinstance(res, Bridge):
                overlay = (Kind.VXLAN, res.network) in self.observed.resources
                topo.add(Node(network_id(res.network, None if overlay else host), NodeKind.NETWORK,
                              (f"network {res.network}", f"device {res.ifname}"),
                              None if overlay else host, Status.UNEXPECTED))
        for res in deletes:
            if not isinstance(res, Veth | Sublink):
                continue
            _ensure_container(topo, res.container, host)
            head = next((i for i in (network_id(res.network, host), network_id(res.network))
                         if i in topo.nodes), network_id(res.network, host))
            topo.add(Node(head, NodeKind.NETWORK, (f"network {res.network}",), host,
                          Status.UNEXPECTED))
            have = _addresses(self.observed.resources.values(), res.key)
            topo.edges[(container_id(res.container), head)] = Edge(
                container_id(res.container), head, (res.ifname, *have), Status.UNEXPECTED)

    def undrawn(self) -> int:
        """How many of the plan's changes the picture does not show."""
        return sum(1 for key in self.changes if key not in self.drawn
                   and not (key[0] == Kind.ADDRESS and tuple(key[1:-1]) in self.drawn))


def _differs(change: Change) -> str:
    if change.before is None or change.after is None:
        return change.reason
    return ", ".join(f"{name} {old} (spec {new})"
                     for name, old, new in diff_fields(change.before, change.after))


def _addresses(resources: Iterable[Resource], link: Key) -> list[str]:
    return sorted(r.cidr for r in resources if isinstance(r, Address) and r.link == link)


PortKey = tuple[str, str | None, int]  # protocol, host address (None: all), port


def _dnat_rules(table: Resource | None) -> dict[PortKey, set[Rule]]:
    """A project table's DNAT rules by what they publish."""
    found: dict[PortKey, set[Rule]] = {}
    for rule in table.rules if isinstance(table, Firewall) else ():
        published = ports.dnat_port(json.loads(rule.expr))
        if published is not None:
            protocol, address, port = published
            key = (protocol, str(address) if address else None, port)
            found.setdefault(key, set()).add(rule)
    return found


def _only_dnat_differs(want: Resource | None, have: Resource | None) -> bool:
    if not isinstance(want, Firewall) or not isinstance(have, Firewall):
        return want == have
    return want.chains == have.chains and all(
        ports.dnat_port(json.loads(r.expr)) is not None
        for r in set(want.rules) ^ set(have.rules))


def _port_key(port: Port) -> PortKey:
    host_ip = None if port.host_ip is None or port.host_ip.is_unspecified else str(port.host_ip)
    return (port.protocol, host_ip, port.published)


def _host_of(topo: Topology, container: str) -> str | None:
    node = topo.nodes.get(container_id(container))
    return node.host if node else next(iter(topo.hosts), None)


def _ensure_container(topo: Topology, name: str, host: str | None) -> None:
    topo.add(Node(container_id(name), NodeKind.CONTAINER, (f"container {name}",), host,
                  Status.UNEXPECTED))
