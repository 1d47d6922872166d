"""A picture of a project: networks, containers, their addresses, published
ports and machines, as a Graphviz graph (DOT).

Two sources, one shape (Topology): the spec alone (`from_spec`, no kernel:
automatic addresses as a first apply allocates them), or this machine's
kernel against the spec (graphlive.live: drift marked from the plan).
Layout and rendering are Graphviz's; this module only says what is drawn
(graphviz.Graph) and calls `dot` for svg and png.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import cast

import graphviz

from reconciler import desired as desired_mod
from reconciler import machines, outfile
from reconciler.errors import NetapplyError
from reconciler.model import Container, Driver, Network, NetworkMode, Port, Spec
from reconciler.resources import Key
from reconciler.state.observe import ObservedState


class Status(StrEnum):
    """How an object of the picture compares with the kernel (live only), in
    the words its label shows."""

    OK = "ok"
    MISSING = "missing"  # in the spec, not in the kernel: apply would create it
    UNEXPECTED = "not in the spec"  # owned by the project in the kernel: apply would delete it
    CHANGED = "changed"  # in both, different: apply would update or replace it


class NodeKind(StrEnum):
    NETWORK = "network"
    CONTAINER = "container"
    PORT = "port"


@dataclass(frozen=True)
class Node:
    id: str  # stable and unique: "<kind>/..." (see network_id, container_id, port_id)
    kind: NodeKind
    lines: tuple[str, ...]  # the label, first line the name
    host: str | None = None  # the machine (cluster) it is drawn in; None: outside any
    status: Status = Status.OK
    detail: str = ""  # what differs, when not ok


@dataclass(frozen=True)
class Edge:
    tail: str  # node ids: port -> container, container -> network
    head: str
    lines: tuple[str, ...]
    status: Status = Status.OK
    detail: str = ""


@dataclass
class Topology:
    project: str
    title: str
    hosts: dict[str, str] = field(default_factory=dict)  # name -> underlay address
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[tuple[str, str], Edge] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # lines under the title

    def add(self, node: Node) -> None:
        self.nodes.setdefault(node.id, node)


# Node ids never contain ':' (DOT reads it as a node's port): IPv6 text has '-' instead.
def network_id(name: str, host: str | None = None) -> str:
    """A network's node; a network local to each machine (bridge, macvlan,
    ipvlan in a spec with hosts) has one node per machine."""
    return f"network/{host}/{name}" if host else f"network/{name}"


def container_id(name: str) -> str:
    return f"container/{name}"


def port_id(container: str, port: Port) -> str:
    host_ip = str(port.host_ip) if port.host_ip is not None else None
    return port_node_id(container, port.protocol, host_ip, port.published)


def port_node_id(container: str, protocol: str, host_ip: str | None, published: int) -> str:
    """A published port's node; host_ip None: all the host's addresses."""
    where = host_ip.replace(":", "-") if host_ip is not None else "*"
    return f"port/{container}/{protocol}/{where}/{published}"


EMPTY = ObservedState(resources={})


def from_spec(spec: Spec, host: str | None = None) -> Topology:
    """The spec drawn whole (every machine of `hosts` as a cluster), or only
    the share of machine `host`. No kernel: automatic addresses are the ones a
    first apply allocates (an applied project keeps those it has; --live shows
    them). Raises SpecError when a network has no address left to allocate."""
    names: Sequence[str | None] = [host] if host else list(spec.hosts) or [None]
    endpoints: dict[Key, desired_mod.Endpoint] = {}
    for name in names:
        for ep in desired_mod.allocate(spec, EMPTY, name):
            if machines.runs_here(ep.container, name):
                endpoints.setdefault(ep.key, ep)
    title = f"project {spec.project}: the spec"
    if host:
        title += f", host {host}'s share"
    return drawn(spec, names, endpoints.values(), title)


def drawn(spec: Spec, names: Sequence[str | None],
          endpoints: Iterable[desired_mod.Endpoint], title: str) -> Topology:
    """The shares of machines `names` (None: a spec without hosts) with the
    attachments `endpoints`, nothing marked."""
    topo = Topology(spec.project, title,
                    {n: str(spec.hosts[n].address) for n in names if n is not None})
    for name in names:
        share = machines.share(spec, name)
        for network in share.networks.values():
            topo.add(Node(network_node_id(network, name), NodeKind.NETWORK,
                          _network_lines(network), None if _spans(network) else name))
        for container in share.containers.values():
            topo.add(Node(container_id(container.name), NodeKind.CONTAINER,
                          _container_lines(container), name))
            for port in container.ports:
                topo.add(Node(port_id(container.name, port), NodeKind.PORT, (_port_text(port),),
                              name))
                edge = Edge(port_id(container.name, port), container_id(container.name),
                            (f"to {port.target}/{port.protocol}", f"on {port.network}"))
                topo.edges[(edge.tail, edge.head)] = edge
    for ep in endpoints:
        host = ep.container.host if spec.hosts else None
        edge = Edge(container_id(ep.container.name), network_node_id(ep.network, host),
                    _attachment_lines(ep))
        topo.edges[(edge.tail, edge.head)] = edge
    return topo


def _spans(network: Network) -> bool:
    return network.driver == Driver.OVERLAY


def network_node_id(network: Network, host: str | None) -> str:
    return network_id(network.name, None if _spans(network) else host)


def _network_lines(n: Network) -> tuple[str, ...]:
    lines = [f"network {n.name}", f"{n.driver} {n.subnet}"]
    if n.gateway is not None:
        lines.append(f"gateway {n.gateway}")
    if n.ipv6_subnet is not None:
        lines.append(f"ipv6 {n.ipv6_subnet}")
    if n.driver in desired_mod.BRIDGED_DRIVERS:
        lines.append(f"device {n.interface}")
    if n.vni is not None:
        lines.append(f"vni {n.vni}, udp {n.port}")
    if n.parent is not None:
        lines.append(f"parent {n.parent}, mode {n.mode}")
    flags = [f for f, on in (("internal", n.internal), ("icc off", not n.icc)) if on]
    lines.extend(flags)
    lines.extend(f"{k}={v}" for k, v in n.labels)
    return tuple(lines)


def _container_lines(c: Container) -> tuple[str, ...]:
    lines = [f"container {c.name}"]
    if c.network_mode != NetworkMode.BRIDGE:
        lines.append(f"network_mode {c.network_mode}")
    if c.runtime is not None:
        lines.append(f"{c.runtime} container {c.engine_name}")
    elif c.netns_path:
        lines.append(f"netns_path {c.netns_path}")
    elif c.netns and c.netns != c.name:
        lines.append(f"netns {c.netns}")
    return tuple(lines)


def _port_text(port: Port) -> str:
    where = f"{port.host_ip}:" if port.host_ip is not None else ""
    return f"published {where}{port.published}/{port.protocol}"


def _attachment_lines(ep: desired_mod.Endpoint) -> tuple[str, ...]:
    a = ep.attachment
    lines = [a.interface, str(ep.ipv4) + ("" if a.ipv4_address else " (auto)")]
    if ep.ipv6 is not None:
        lines.append(str(ep.ipv6) + ("" if a.ipv6_address else " (auto)"))
    if a.aliases:
        lines.append("alias " + ", ".join(a.aliases))
    return tuple(lines)


# ---- drawing -------------------------------------------------------------------


FONT = "Helvetica"
STYLE = {  # node kind -> shape and fill
    NodeKind.NETWORK: {"shape": "box", "style": "rounded,filled", "fillcolor": "#dbe9f6"},
    NodeKind.CONTAINER: {"shape": "box", "style": "filled", "fillcolor": "#fdf3d0"},
    NodeKind.PORT: {"shape": "cds", "style": "filled", "fillcolor": "#e3f4e1"},
}
MARK = {  # status -> what is added to the style, and the colour
    Status.MISSING: ("dashed", "red"),
    Status.UNEXPECTED: ("bold", "darkorange"),
    Status.CHANGED: ("bold", "darkorange"),
}


def _label(lines: Iterable[str]) -> str:
    """A DOT label of plain text lines (never read as HTML; backslashes kept)."""
    text = "\\n".join(line.replace("\\", "\\\\") for line in lines)
    return cast(str, graphviz.nohtml(text))


def _attrs(base: dict[str, str], lines: Sequence[str], status: Status,
           detail: str) -> dict[str, str]:
    attrs = dict(base)
    if status != Status.OK:
        extra, colour = MARK[status]
        attrs["style"] = ",".join(filter(None, (attrs.get("style", ""), extra)))
        attrs.update(color=colour, fontcolor=colour)
        lines = [*lines, f"[{status}{': ' + detail if detail else ''}]"]
    attrs["label"] = _label(lines)
    return attrs


def dot(topo: Topology) -> graphviz.Graph:
    """The topology as an undirected graph laid out left to right: published
    ports, then containers, then networks; each machine of `hosts` a cluster
    (`cluster_host/<name>`), networks spanning machines outside them."""
    g = graphviz.Graph(
        f"netapply-{topo.project}",
        graph_attr={"rankdir": "LR", "label": _label([topo.title, *topo.notes]), "labelloc": "t",
                    "fontname": FONT, "nodesep": "0.3", "ranksep": "1.2"},
        node_attr={"fontname": FONT, "fontsize": "11"},
        edge_attr={"fontname": FONT, "fontsize": "9", "color": "gray40"},
    )
    for host in [None, *topo.hosts]:
        nodes = sorted((n for n in topo.nodes.values() if n.host == host), key=_order)
        if host is None:
            for node in nodes:
                g.node(node.id, **_attrs(STYLE[node.kind], node.lines, node.status, node.detail))
            continue
        with g.subgraph(name=f"cluster_host/{host}") as sub:
            sub.attr(label=_label([f"host {host} ({topo.hosts[host]})"]), style="rounded",
                     color="gray50", fontname=FONT)
            for node in nodes:
                sub.node(node.id,
                         **_attrs(STYLE[node.kind], node.lines, node.status, node.detail))
    for edge in sorted(topo.edges.values(), key=lambda e: (e.tail, e.head)):
        g.edge(edge.tail, edge.head, **_attrs({}, edge.lines, edge.status, edge.detail))
    return g


def _order(node: Node) -> tuple[int, str]:
    return (list(NodeKind).index(node.kind), node.id)


# ---- output --------------------------------------------------------------------


FORMATS = {".dot": "dot", ".gv": "dot", ".svg": "svg", ".png": "png"}


def format_of(path: str) -> str:
    """The output format a file name asks for, by its extension; NetapplyError
    for any other."""
    for ext, fmt in FORMATS.items():
        if path.lower().endswith(ext):
            return fmt
    raise NetapplyError(f"{path}: unknown picture format; name the file .svg, .png or .dot")


def rendered(graph: graphviz.Graph, fmt: str) -> bytes:
    """The graph as bytes of `fmt` ("dot": the DOT source, no program needed;
    "svg", "png": drawn by Graphviz's `dot`). NetapplyError when `dot` is not
    installed or fails."""
    if fmt == "dot":
        return cast(str, graph.source).encode()
    try:
        return cast(bytes, graph.pipe(format=fmt, quiet=True))
    except graphviz.ExecutableNotFound:
        raise NetapplyError(
            f"drawing {fmt} needs Graphviz's `dot` program, which is not installed: install "
            "it (Debian: apt-get install graphviz), or write DOT with -o FILE.dot"
        ) from None
    except graphviz.CalledProcessError as e:
        stderr = e.stderr.decode(errors="replace").strip() if e.stderr else ""
        raise NetapplyError(f"Graphviz's dot failed to draw {fmt}: {stderr}") from None


def save(path: str, data: bytes) -> None:
    """Write the picture to `path` whole or not at all (outfile.write_whole)."""
    outfile.write_whole(path, data, "the picture")
