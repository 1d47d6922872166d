"""Hypothesis strategies: valid specs, foreign objects, drift.

Specs are generated as plain dicts (what a user writes), so a failing example
can be printed as YAML and pasted into a bug report (see `spec_yaml`).
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass, replace
from typing import Any

import yaml
from hypothesis import strategies as st

from reconciler import firewall
from reconciler import spec as spec_mod
from reconciler.drivers.kernel import Kernel
from reconciler.drivers.ops import localnet_sysctl
from reconciler.errors import KernelError
from reconciler.model import Spec
from reconciler.resources import (
    Address,
    Bridge,
    Fdb,
    Firewall,
    HostsFile,
    HostsTable,
    Neigh,
    Netns,
    Resource,
    Route,
    Veth,
    Vxlan,
)

PROJECT = "prop"
NETWORKS = ["front", "back", "data"]
CONTAINERS = ["alpha", "beta", "gamma", "delta", "eps"]
# In specs with hosts, the test machine is HERE; THERE is another machine.
HERE, THERE = "here", "there"
HOSTS = {HERE: {"address": "198.51.100.1"}, THERE: {"address": "198.51.100.2"}}
UNDERLAY = ("fx-ul", "198.51.100.1/24")  # the test machine's link with HERE's address


def spec_yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def load(doc: dict[str, Any]) -> Spec:
    """A generated spec must be valid: a SpecError here is a bug in the strategy."""
    return spec_mod.load_text(spec_yaml(doc), "generated.yaml")


@st.composite
def network_dicts(draw: st.DrawFn, index: int, overlay: bool = False) -> dict[str, Any]:
    third = draw(st.sampled_from([0, 1]))  # changing it renumbers the network
    net: dict[str, Any] = {"subnet": f"10.{10 + index}.{third}.0/24"}
    if overlay:
        net["driver"] = "overlay"
        net["vni"] = draw(st.sampled_from([100 + index, 200 + index]))
        if draw(st.booleans()):
            net["gateway"] = f"10.{10 + index}.{third}.1"
    if draw(st.booleans()):
        # An overlay's fits the underlay's 9000 with the VXLAN headers.
        net["mtu"] = draw(st.sampled_from([1400, 1500, 8950 if overlay else 9000]))
    if draw(st.integers(0, 3)) == 0:
        net["ip_range"] = f"10.{10 + index}.{third}.128/25"
    if draw(st.integers(0, 2)) == 0:
        net["ipv6"] = {"subnet": f"fd00:{index + 1}::/64"}
    if draw(st.integers(0, 3)) == 0:
        net["interface"] = draw(st.sampled_from([f"br-{index}", f"brx-{index}"]))
    if draw(st.integers(0, 5)) == 0:
        net["internal"] = True
    elif draw(st.integers(0, 4)) == 0:
        net["masquerade"] = False
    if draw(st.integers(0, 3)) == 0:
        net["icc"] = False
    return net


@st.composite
def spec_dicts(
    draw: st.DrawFn, min_containers: int = 0, machines: bool | None = None
) -> dict[str, Any]:
    """Valid specs across what the engine supports: bridge networks and their
    options, containers in list and map form, explicit and automatic addresses,
    IPv6, routes, network_mode none/host, aliases, explicit netns names; and
    (unless machines is False) specs with hosts, where containers run here
    or on another machine, and overlay networks."""
    names = draw(st.lists(st.sampled_from(NETWORKS), min_size=1, max_size=3, unique=True))
    machines = machines is not False and draw(st.integers(0, 2)) == 0
    overlays = {n for n in names if machines and draw(st.booleans())}
    networks = {name: draw(network_dicts(NETWORKS.index(name), name in overlays))
                for name in names}
    used_v4: dict[str, set[str]] = {n: set() for n in names}
    used_v6: dict[str, set[str]] = {n: set() for n in names}
    used_macs: set[str] = set()
    containers: dict[str, Any] = {}
    attached_used = False
    chosen = draw(st.lists(st.sampled_from(CONTAINERS), min_size=min_containers,
                           max_size=len(CONTAINERS), unique=True))
    for cname in chosen:
        mode = draw(st.sampled_from(["bridge"] * 6 + ["none", "host"]))
        placed = {"host": draw(st.sampled_from([HERE, HERE, THERE]))} if machines else {}
        if mode != "bridge":
            containers[cname] = {"network_mode": mode, **(placed if mode == "none" else {})}
            continue
        attached = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names),
                                 unique=True))
        container: dict[str, Any] = dict(placed)
        if not attached_used and draw(st.integers(0, 5)) == 0:
            container["netns_path"] = ATTACH_PATH  # one container: they would share it
            attached_used = True
        elif draw(st.integers(0, 4)) == 0:
            container["netns"] = f"ns-{cname}"
        as_list = draw(st.integers(0, 2)) == 0
        if as_list:
            container["networks"] = attached
        else:
            entries: dict[str, Any] = {}
            for position, net in enumerate(attached):
                entries[net] = draw(_attachment(
                    networks[net], net, position, used_v4[net], used_v6[net], used_macs, cname
                ))
            container["networks"] = entries
        outward = [n for n in attached if not networks[n].get("internal")
                   and (n not in overlays or "gateway" in networks[n])]
        if outward and draw(st.integers(0, 3)) == 0:
            container["default_route"] = draw(st.sampled_from(outward))
        outward = [n for n in outward if n not in overlays]  # ports: bridge networks only
        if draw(st.integers(0, 3)) == 0:
            subnet = ipaddress.ip_network(networks[attached[0]]["subnet"])
            container["routes"] = [{"to": "10.99.0.0/16", "via": str(subnet[254])}]
        if outward and draw(st.integers(0, 2)) == 0:
            # Each container its own host port, so that no two clash.
            published = 8000 + CONTAINERS.index(cname)
            container["ports"] = [draw(st.sampled_from([
                f"{published}:80", f"127.0.0.1:{published}:80/udp",
                {"published": published, "target": 443, "network": outward[-1]},
            ]))]
        containers[cname] = container
    doc = {"version": 1, "project": PROJECT, "networks": networks, "containers": containers}
    return {**doc, "hosts": HOSTS} if machines else doc


def with_container_added(data: st.DataObject, doc: dict[str, Any]) -> dict[str, Any]:
    """doc with a container of CONTAINERS it lacks added on one of its
    networks (on one of its hosts, if it has some); doc must lack one."""
    absent = [c for c in CONTAINERS if c not in doc["containers"]]
    network = data.draw(st.sampled_from(sorted(doc["networks"])), label="network")
    added: dict[str, Any] = {"networks": [network]}
    if "hosts" in doc:
        added["host"] = data.draw(st.sampled_from(sorted(doc["hosts"])), label="host")
    name = data.draw(st.sampled_from(absent), label="added")
    return {**doc, "containers": {**doc["containers"], name: added}}


def with_container_removed(data: st.DataObject, doc: dict[str, Any]) -> dict[str, Any]:
    """doc without one of its containers; doc must have one."""
    name = data.draw(st.sampled_from(sorted(doc["containers"])), label="removed")
    return {**doc, "containers": {k: v for k, v in doc["containers"].items() if k != name}}


@st.composite
def _attachment(
    draw: st.DrawFn, network: dict[str, Any], name: str, position: int, used_v4: set[str],
    used_v6: set[str], used_macs: set[str], container: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    subnet = ipaddress.ip_network(network["subnet"])
    if draw(st.integers(0, 3)) == 0:
        address = str(subnet[draw(st.integers(10, 20))])
        if address not in used_v4:
            used_v4.add(address)
            out["ipv4_address"] = address
    if "ipv6" in network and draw(st.integers(0, 3)) == 0:
        v6 = str(ipaddress.ip_network(network["ipv6"]["subnet"])[draw(st.integers(16, 32))])
        if v6 not in used_v6:
            used_v6.add(v6)
            out["ipv6_address"] = v6
    if draw(st.integers(0, 5)) == 0:
        mac = f"02:42:00:00:{CONTAINERS.index(container):02x}:{NETWORKS.index(name):02x}"
        if mac not in used_macs:
            used_macs.add(mac)
            out["mac_address"] = mac
    if draw(st.integers(0, 5)) == 0:
        out["interface"] = f"net{position}"
    if draw(st.integers(0, 4)) == 0:
        out["aliases"] = [f"{container}-{name}"]
    return out


# ---- foreign objects --------------------------------------------------------------

# An existing namespace netapply attaches to (netns_path), as a running Docker
# container's would be: made by someone else, present on every test kernel.
ATTACH_NETNS = "fx-attach"
ATTACH_PATH = f"/run/netns/{ATTACH_NETNS}"


def attach_namespace(kernel: Kernel) -> Kernel:
    """The machine every test kernel is: it has the namespace ATTACH_PATH, and
    an interface with host HERE's address (a veth into that namespace)."""
    kernel.netns_add(ATTACH_NETNS, "someone else's")
    ifname, cidr = UNDERLAY
    kernel.veth_add(ifname, 9000, ATTACH_NETNS, "fx-ulp", "02:fa:00:00:00:0a", 9000)
    kernel.link_set("", ifname, up=True)
    kernel.addr_add("", ifname, cidr)
    return kernel

FOREIGN_NETNS = "fx-ns"


@dataclass(frozen=True)
class ForeignPlan:
    """Objects another tool made, with names netapply never generates."""

    bridge: bool
    veth_into_netns: bool
    netns_hosts_file: bool
    address: bool
    route_in_netns: bool
    nft_table: bool = False

    def make(self, kernel: Kernel) -> None:
        if self.nft_table:
            kernel.nft_apply(FOREIGN_TABLE, "make a foreign table")
        if self.bridge:
            kernel.bridge_add("fx-br", "02:fa:00:00:00:01")
            kernel.link_set("", "fx-br", up=True, alias="someone else's")
            if self.address:
                kernel.addr_add("", "fx-br", "192.0.2.1/24")
        if self.veth_into_netns or self.netns_hosts_file or self.route_in_netns:
            kernel.netns_add(FOREIGN_NETNS, "someone else's")
        if self.veth_into_netns or self.route_in_netns:
            kernel.veth_add("fx-h", 1500, FOREIGN_NETNS, "fx-c", "02:fa:00:00:00:02", 1500)
            kernel.link_set(FOREIGN_NETNS, "fx-c", up=True)
            if self.bridge:
                kernel.link_set("", "fx-h", master="fx-br", up=True)
            if self.route_in_netns:
                kernel.addr_add(FOREIGN_NETNS, "fx-c", "192.0.2.2/24")
                kernel.route_add(FOREIGN_NETNS, "198.51.100.0/24", "192.0.2.1", "fx-c")
        if self.netns_hosts_file:
            kernel.write_file(f"/etc/netns/{FOREIGN_NETNS}/hosts", "127.0.0.1 localhost\n")


FOREIGN_TABLE: list[dict[str, Any]] = [
    {"add": {"table": {"family": "inet", "name": "fx"}}},
    {"add": {"chain": {"family": "inet", "table": "fx", "name": "fwd", "type": "filter",
                       "hook": "forward", "prio": 0, "policy": "accept"}}},
    {"add": {"rule": {"family": "inet", "table": "fx", "chain": "fwd",
                      "comment": "someone else's", "expr": [{"accept": None}]}}},
]

foreign_plans = st.builds(ForeignPlan, st.booleans(), st.booleans(), st.booleans(),
                          st.booleans(), st.booleans(), st.booleans())


# ---- drift --------------------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    """One change someone else makes to an owned object."""

    what: str
    target: Resource

    def apply(self, kernel: Kernel) -> None:
        with contextlib.suppress(KernelError):  # already gone through an earlier drift
            _drift(kernel, self.what, self.target)

    def __repr__(self) -> str:
        return f"Drift({self.what} {self.target.title()})"


DRIFTS: dict[type, list[str]] = {
    Firewall: ["delete", "drop a rule", "add a rule"],
    Netns: ["delete", "loopback down"],
    Bridge: ["delete", "mtu", "down", "rename", "localnet toggled", "ipv6 toggled"],
    Veth: ["delete host end", "delete container end", "mtu", "mac", "down", "rename",
           "detach", "add address", "host end down", "host end mtu", "host end rename",
           "isolation toggled", "hairpin toggled", "ipv6 toggled", "host end ipv6 toggled"],
    Vxlan: ["delete", "down", "mtu", "detach", "rename", "isolation toggled", "ipv6 toggled"],
    Fdb: ["delete"],
    Neigh: ["delete", "other mac"],
    Address: ["delete"],
    Route: ["delete"],
    HostsFile: ["delete"],
    HostsTable: ["delete", "edit"],
}


def _drift(kernel: Kernel, what: str, res: Resource) -> None:
    if isinstance(res, Firewall):
        if what == "delete":
            kernel.nft_apply(firewall.delete_commands(res.table), "drift")
        elif what == "drop a rule":
            kernel.nft_apply(firewall.commands(replace(res, rules=res.rules[1:])), "drift")
        else:
            rule = {"family": "inet", "table": res.table, "chain": "forward",
                    "expr": [{"accept": None}]}
            kernel.nft_apply([{"add": {"rule": rule}}], "drift")
    elif isinstance(res, Netns):
        if what == "delete":
            kernel.netns_del(res.name)
        else:
            kernel.link_set(res.name, "lo", up=False)
    elif isinstance(res, Bridge):
        {
            "delete": lambda: kernel.link_del("", res.ifname),
            "mtu": lambda: kernel.link_set("", res.ifname, mtu=1300),
            "down": lambda: kernel.link_set("", res.ifname, up=False),
            "rename": lambda: kernel.link_set("", res.ifname, new_name="br-drift"),
            "localnet toggled": lambda: kernel.sysctl_set(
                localnet_sysctl(res.ifname), "0" if res.localnet else "1"),
            "ipv6 toggled": lambda: kernel.link_addr_gen("", res.ifname, not res.ipv6_ll),
        }[what]()
    elif isinstance(res, Veth):
        {
            "delete host end": lambda: kernel.link_del("", res.host_ifname),
            "delete container end": lambda: kernel.link_del(res.ns, res.ifname),
            "mtu": lambda: kernel.link_set(res.ns, res.ifname, mtu=1300),
            "mac": lambda: kernel.link_set(res.ns, res.ifname, mac="02:99:00:00:00:01"),
            "down": lambda: kernel.link_set(res.ns, res.ifname, up=False),
            "rename": lambda: kernel.link_set(res.ns, res.ifname, new_name="drift0"),
            "detach": lambda: kernel.link_set("", res.host_ifname, nomaster=True),
            "add address": lambda: kernel.addr_add(res.ns, res.ifname, "10.250.0.9/24"),
            "host end down": lambda: kernel.link_set("", res.host_ifname, up=False),
            "host end mtu": lambda: kernel.link_set("", res.host_ifname, mtu=1280),
            "host end rename": lambda: kernel.link_set("", res.host_ifname, new_name="vdrift"),
            "isolation toggled": lambda: kernel.link_set("", res.host_ifname,
                                                         isolated=not res.isolated),
            "hairpin toggled": lambda: kernel.link_set("", res.host_ifname,
                                                       hairpin=not res.hairpin),
            "ipv6 toggled": lambda: kernel.link_addr_gen(res.ns, res.ifname, not res.ipv6_ll),
            "host end ipv6 toggled": lambda: kernel.link_addr_gen(
                "", res.host_ifname, not res.host_ipv6_ll),
        }[what]()
    elif isinstance(res, Vxlan):
        {
            "delete": lambda: kernel.link_del("", res.ifname),
            "down": lambda: kernel.link_set("", res.ifname, up=False),
            "mtu": lambda: kernel.link_set("", res.ifname, mtu=1300),
            "detach": lambda: kernel.link_set("", res.ifname, nomaster=True),
            "rename": lambda: kernel.link_set("", res.ifname, new_name="vx-drift"),
            "isolation toggled": lambda: kernel.link_set("", res.ifname,
                                                         isolated=not res.isolated),
            "ipv6 toggled": lambda: kernel.link_addr_gen("", res.ifname, not res.ipv6_ll),
        }[what]()
    elif isinstance(res, Fdb):
        kernel.fdb_del(res.ifname, res.mac, res.dst or None)
    elif isinstance(res, Neigh):
        if what == "delete":
            kernel.neigh_del(res.ifname, res.ip)
        else:
            kernel.neigh_add(res.ifname, res.ip, "02:99:00:00:00:02", replace=True)
    elif isinstance(res, Address):
        kernel.addr_del(res.ns, res.ifname, res.cidr)
    elif isinstance(res, Route):
        kernel.route_del(res.ns, res.dst)
    elif isinstance(res, HostsFile):
        kernel.remove_file(f"/etc/netns/{res.netns}/hosts")
    elif isinstance(res, HostsTable):
        if what == "delete":
            kernel.remove_file(res.path)
        else:
            kernel.write_file(res.path, res.content + "10.0.0.66 intruder\n")


# Drift is drawn as plain numbers and mapped onto the objects present when it is
# applied, so that what hypothesis generates never depends on kernel state
# (which, on the real kernel, can differ between replays of one example).
drift_choices = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 16)), max_size=4)


def pick_drifts(choices: list[tuple[int, int]], resources: list[Resource]) -> list[Drift]:
    """Up to four drifts, each on an owned object that existed before any drift."""
    if not resources:
        return []
    ordered = sorted(resources, key=lambda r: r.key)
    picked = []
    for which, how in choices:
        target = ordered[which % len(ordered)]
        kinds = DRIFTS[type(target)]
        picked.append(Drift(kinds[how % len(kinds)], target))
    return picked
