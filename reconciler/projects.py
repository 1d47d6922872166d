"""Every netapply project on the machine, found from the kernel's ownership
marks alone (no spec): `netapply ls`, and `destroy --project`/`export
--project` of a project that lost its files.

A project is named by any of its marks (README "Ownership"): a link alias
`netapply/<project>/...` in the host namespace or in a named namespace (a
namespace's loopback included), an nftables table `inet netapply-<project>`,
a rule in Docker's DOCKER-USER chain commented `netapply/<project>: ...`, or
a hosts-table directory `/etc/netns/.netapply-<project>`. What a project owns
is then read by the same observation every command makes, and checked for
pieces that are missing or left over (`problems`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler import export, firewall
from reconciler.drivers.kernel import ETC_NETNS_DIR, GONE, FileType, Kernel
from reconciler.errors import KernelError
from reconciler.resources import (
    ALIAS_PREFIX,
    DOCKER_USER_CHAIN,
    HOST_NS,
    Address,
    Bridge,
    Firewall,
    HostsFile,
    HostsTable,
    Key,
    Leftover,
    LeftoverFile,
    Netns,
    Resource,
    Sublink,
    Veth,
    Vxlan,
    tables_dir,
)
from reconciler.state.observe import UNSEEN_NS, ObservedState, observe

PROJECT_NAME = re.compile(r"[a-z][a-z0-9-]{0,15}")  # SPEC.md's rule for `project`


def valid_name(name: str) -> bool:
    return bool(PROJECT_NAME.fullmatch(name))


@dataclass(frozen=True)
class Found:
    """The projects whose marks the kernel holds, and the parts that could not
    be read (which may hold marks of more projects)."""

    projects: tuple[str, ...]
    unread: tuple[str, ...] = ()


def _from_alias(alias: str | None) -> str | None:
    parts = (alias or "").split("/")
    if len(parts) >= 3 and parts[0] == ALIAS_PREFIX and valid_name(parts[1]):
        return parts[1]
    return None


def discover(kernel: Kernel) -> Found:
    """Names of the projects with at least one mark in the kernel, sorted."""
    names: set[str] = set()
    unread: list[str] = []
    namespaces = [HOST_NS, *kernel.netns_names()]
    for ns in namespaces:
        try:
            links = kernel.links(ns)
        except KernelError as e:
            if e.errno not in GONE:
                unread.append(f"netns {ns} ({e})")
            continue
        names.update(p for link in links if (p := _from_alias(link.alias)) is not None)
    table_prefix = firewall.table_name("")
    try:
        for item in kernel.nft_ruleset():
            ((kind, body),) = item.items() if isinstance(item, dict) and len(item) == 1 \
                else ((None, None),)
            if not isinstance(body, dict):
                continue
            if kind == "table" and body.get("family") == firewall.FAMILY:
                name = str(body.get("name", ""))
                if name.startswith(table_prefix) and valid_name(name[len(table_prefix):]):
                    names.add(name[len(table_prefix):])
            elif kind == "rule" and body.get("chain") == DOCKER_USER_CHAIN:
                comment = str(body.get("comment", ""))
                project = _from_alias(comment.split(":", 1)[0] + "/x")
                if project is not None:
                    names.add(project)
    except KernelError as e:
        try:  # the table names alone, over netlink
            for family, name in kernel.nft_tables():
                if family == firewall.FAMILY and name.startswith(table_prefix) \
                        and valid_name(name[len(table_prefix):]):
                    names.add(name[len(table_prefix):])
            unread.append(f"the rules of Docker's {DOCKER_USER_CHAIN} chain ({e})")
        except KernelError as e2:
            unread.append(f"the nftables ruleset ({e}; {e2})")
    dir_prefix = tables_dir("")
    for entry, kind in kernel.dir_entries(ETC_NETNS_DIR).items():
        if kind == FileType.DIRECTORY and entry.startswith(dir_prefix) \
                and valid_name(entry[len(dir_prefix):]):
            names.add(entry[len(dir_prefix):])
    return Found(tuple(sorted(names)), tuple(unread))


@dataclass(frozen=True)
class Summary:
    """One project as `ls` shows it."""

    project: str
    networks: tuple[dict[str, Any], ...]
    containers: tuple[dict[str, Any], ...]
    ports: tuple[dict[str, Any], ...]
    problems: tuple[str, ...] = ()
    unread: tuple[str, ...] = ()

    @property
    def broken(self) -> bool:
        return bool(self.problems)

    def to_json(self) -> dict[str, Any]:
        return {"project": self.project, "networks": list(self.networks),
                "containers": list(self.containers), "ports": list(self.ports),
                "broken": self.broken, "problems": list(self.problems),
                "unread": list(self.unread)}

    def text(self) -> str:
        state = "broken" if self.problems else "ok"
        lines = [f"project {self.project}: {len(self.networks)} network(s), "
                 f"{len(self.containers)} container(s), {len(self.ports)} published port(s); "
                 f"{state}"]
        for net in self.networks:
            where = f"{net['driver']} {net['device']}" if net.get("device") else net["driver"]
            subnet = f"subnet {net['subnet']}" if net["subnet"] else "no address (incomplete)"
            lines.append(f"  network {net['name']}: {where}, {subnet}")
        for c in self.containers:
            attached = ", ".join(f"{n['network']} {n['ipv4_address']}" for n in c["networks"])
            namespace = c["namespace"] or "a namespace netapply does not name"
            lines.append(f"  container {c['name']} ({namespace}): "
                         + (attached or "no network"))
        for p in self.ports:
            lines.append(f"  port {p['host_ip'] or '*'}:{p['published']}/{p['protocol']} -> "
                         f"{p['container']}:{p['target']}")
        lines.extend(f"  problem: {problem}" for problem in self.problems)
        lines.extend(f"  unread: {part}" for part in self.unread)
        return "\n".join(lines)


def summarize(project: str, observed: ObservedState) -> Summary:
    """What the project has (networks, containers, ports) and what looks
    broken, from its observation alone."""
    resources = observed.resources
    data = export.live_spec(project, resources).data
    devices = {r.network: r.ifname for r in resources.values() if isinstance(r, Bridge)}
    networks = tuple(
        {"name": name, "driver": net.get("driver", "bridge"), "subnet": net.get("subnet"),
         "device": devices.get(name)}
        for name, net in sorted(data["networks"].items()))
    containers = []
    published = []
    for name, c in sorted(data["containers"].items()):
        if _remote(c, resources, name):
            continue
        namespace = c.get("netns_path") or c.get("netns") or name
        attached = c.get("networks") or {}
        containers.append({"name": name, "namespace": namespace, "networks": [
            {"network": n, "ipv4_address": o.get("ipv4_address"),
             "ipv6_address": o.get("ipv6_address")} for n, o in attached.items()]})
        for port in c.get("ports", []):
            published.append(_port_json(name, port))
    # Attached to a namespace netapply does not name (netns_path, docker, podman):
    # the host end of the veth and its allocation record are all that is here.
    for veth in sorted((r for r in resources.values() if isinstance(r, Veth)
                        and r.ns == UNSEEN_NS and r.host_ifname), key=lambda r: r.key):
        entry = next((c for c in containers if c["name"] == veth.container), None)
        if entry is None:
            entry = {"name": veth.container, "namespace": None, "networks": []}
            containers.append(entry)
        recorded = veth.allocated.split(",") if veth.allocated else []
        entry["networks"].append({
            "network": veth.network, "ipv4_address": recorded[0] if recorded else None,
            "ipv6_address": recorded[1] if len(recorded) > 1 else None})
    return Summary(project, networks, tuple(containers), tuple(published),
                   tuple(problems(project, resources, observed.foreign.netns)),
                   observed.unread)


def _remote(container: dict[str, Any], resources: Mapping[Key, Resource], name: str) -> bool:
    """A member of an overlay on another machine: neither a link nor a
    namespace of it is here."""
    netns = container.get("netns", name)
    return not any((isinstance(r, Veth | Sublink) and r.container == name)
                   or (isinstance(r, Netns) and r.name == netns) for r in resources.values())


def _port_json(container: str, port: Any) -> dict[str, Any]:
    if isinstance(port, dict):
        return {"container": container, "host_ip": port.get("host_ip"),
                "published": port["published"], "target": port["target"],
                "protocol": port["protocol"], "network": port.get("network")}
    text, _, protocol = str(port).partition("/")
    parts = text.split(":")
    return {"container": container, "host_ip": parts[0] if len(parts) == 3 else None,
            "published": int(parts[-2]), "target": int(parts[-1]),
            "protocol": protocol or "tcp", "network": None}


@dataclass
class _Index:
    resources: Mapping[Key, Resource]
    by_kind: dict[type, list[Any]] = field(default_factory=dict)

    def of(self, kind: type) -> list[Any]:
        if kind not in self.by_kind:
            self.by_kind[kind] = [r for r in self.resources.values() if isinstance(r, kind)]
        return self.by_kind[kind]


def problems(project: str, resources: Mapping[Key, Resource],
             foreign_netns: Collection[str] = ()) -> list[str]:
    """What looks broken: leftovers of interrupted runs, and owned objects
    missing a piece netapply always makes with them. Each is a sentence.
    foreign_netns: the named namespaces without the project's mark."""
    idx = _Index(resources)
    out: list[str] = [r.title() for r in (*idx.of(Leftover), *idx.of(LeftoverFile))]
    bridges = {b.network: b for b in idx.of(Bridge)}
    bridged = set(bridges) | {v.network for v in idx.of(Vxlan)}
    table = firewall.table_name(project)
    if bridged and not idx.of(Firewall):
        out.append(f"network(s) {', '.join(sorted(bridged))} have no firewall table (inet "
                   f"{table}): no isolation, masquerade or published ports")
    if idx.of(Firewall) and not bridged:
        out.append(f"the firewall table inet {table} is left without any network")
    out.extend(_unaddressed(idx))
    for vxlan in idx.of(Vxlan):
        if vxlan.master != vxlan.network:
            out.append(f"network {vxlan.network}: {vxlan.title()} is not a port of the "
                       "network's bridge")
    for veth in idx.of(Veth):
        what = f"container {veth.container}: veth on network {veth.network}"
        if not veth.host_ifname:
            out.append(f"{what} has no host end")
        elif veth.network not in bridges:
            out.append(f"{what}: the network's bridge is missing")
        elif veth.master != veth.network:
            out.append(f"{what} is not a port of the network's bridge")
    for link in [*idx.of(Veth), *idx.of(Sublink)]:
        if link.ns == UNSEEN_NS or not link.ifname or not link.allocated:
            continue
        have = {ipaddress.ip_interface(a.cidr).ip for a in idx.of(Address) if a.link == link.key}
        for text in link.allocated.split(","):
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                break
            if ip not in have:
                out.append(f"container {link.container}: address {ip} is missing from "
                           f"{link.ifname} (network {link.network})")
    out.extend(_namespace_problems(idx))
    out.extend(_gone_namespaces(idx, foreign_netns))
    return out


def _unaddressed(idx: _Index) -> list[str]:
    """A network whose subnet nothing here tells: its bridge has no address
    (netapply gives every bridge network's bridge its gateway), nor has any
    of its links (an overlay without a gateway, a macvlan/ipvlan network)."""
    addressed = {a.link[-1] for a in idx.of(Address)}
    out = []
    for bridge in sorted(idx.of(Bridge), key=lambda b: b.network):
        if bridge.network in addressed:
            continue
        if any(v.network == bridge.network for v in idx.of(Vxlan)):
            what = "neither its bridge nor any of its containers' links has an address"
        else:
            what = f"its bridge {bridge.ifname} has no address"
        out.append(f"network {bridge.network}: {what}, so its subnet is unknown (incomplete)")
    for network in sorted({s.network for s in idx.of(Sublink)} - addressed):
        out.append(f"network {network}: none of its containers' links has an address, so its "
                   "subnet is unknown (incomplete)")
    return out


def _gone_namespaces(idx: _Index, foreign_netns: Collection[str]) -> list[str]:
    """A hosts file of the project's for a namespace that is gone (deleted
    with `ip netns del`, which takes the container's veths with it) or that is
    no longer the project's: the container is gone, while its hosts file, and
    the hosts tables of its peers, still name it."""
    owned = {n.name for n in idx.of(Netns)}
    tables = {t.name: t for t in idx.of(HostsTable)}
    out = []
    for hosts in sorted(idx.of(HostsFile), key=lambda f: f.netns):
        if hosts.netns in owned:
            continue
        table = tables.get(hosts.link.rsplit("/", 1)[-1]) if hosts.link else None
        listed = {line.partition("\t")[2].split()[0] for line in
                  (table.content.splitlines() if table else ()) if "\t" in line
                  and line.partition("\t")[2].split()[:1] != ["localhost"]}
        # A container is named after its namespace unless `netns` says otherwise:
        # only a table that lists no such name leaves the container unknown.
        who = (f"container {hosts.netns}" if hosts.netns in listed or table is None
               or not listed else f"the container of namespace {hosts.netns}")
        what = ("its namespace is no longer the project's (no mark on its loopback)"
                if hosts.netns in foreign_netns else "its namespace is gone")
        out.append(f"{who}: {what}; its {hosts.title()} is left")
    return out


def _namespace_problems(idx: _Index) -> list[str]:
    """A container namespace without its hosts file, or without a link on a
    network its hosts table lists it on (a namespace whose veth is gone)."""
    out: list[str] = []
    tables = {t.name: t for t in idx.of(HostsTable)}
    files = {f.netns: f for f in idx.of(HostsFile)}
    subnets = []
    for address in idx.of(Address):
        # ("bridge", network) or ("veth"|"sublink", container, network)
        subnets.append((ipaddress.ip_interface(address.cidr).network, address.link[-1]))
    for netns in idx.of(Netns):
        hosts = files.get(netns.name)
        if hosts is None:
            out.append(f"namespace {netns.name} has no hosts file")
            continue
        table = tables.get(hosts.link.rsplit("/", 1)[-1]) if hosts.link else None
        if table is None:
            if hosts.link:
                out.append(f"namespace {netns.name}: its hosts file points to a missing table")
            continue
        links = [r for r in (*idx.of(Veth), *idx.of(Sublink)) if r.ns == netns.name]
        names = {r.container for r in links} or {netns.name}
        have = {(r.container, r.network) for r in links}
        for line in table.content.splitlines():
            address, _, rest = line.partition("\t")
            listed = rest.split()[:1]
            if not listed or listed[0] not in names:
                continue
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                continue
            network = next((n for subnet, n in subnets if ip in subnet), None)
            if network is None:
                out.append(f"namespace {netns.name}: container {listed[0]} has no link for "
                           f"{ip}, which its hosts file lists")
            elif (listed[0], network) not in have:
                out.append(f"namespace {netns.name}: container {listed[0]} has no link on "
                           f"network {network}, which its hosts file lists it on")
    return sorted(set(out), key=out.index)


def list_projects(kernel: Kernel) -> tuple[list[Summary], tuple[str, ...]]:
    """Every project found, summarized; and the parts of the kernel that
    could not be read while looking for them."""
    found = discover(kernel)
    return [summarize(p, observe(kernel, p)) for p in found.projects], found.unread
