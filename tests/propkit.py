"""Shared helpers for the property-based tests: apply, observe, look at foreign objects."""

from __future__ import annotations

import copy
import dataclasses
import errno
from typing import Any

from reconciler import engine, firewall, planner
from reconciler.drivers.kernel import ETC_NETNS_DIR, NUD_NOARP, NUD_PERMANENT, Kernel
from reconciler.errors import KernelError
from reconciler.model import Spec
from reconciler.planner import Action, Plan
from reconciler.resources import (
    HOSTS_HEADER,
    Address,
    Bridge,
    Key,
    Kind,
    Resource,
    Rule,
    Veth,
    is_shared,
    is_staging_name,
    owner_alias,
)
from reconciler.state.observe import observe
from tests.strategies import HERE, PROJECT

WRITES = frozenset({
    "netns_add", "netns_del", "bridge_add", "veth_add", "link_set", "link_del", "addr_add",
    "addr_del", "route_add", "route_del", "write_file", "write_link", "remove_file",
    "nft_apply", "sysctl_set", "sublink_add", "vxlan_add", "fdb_add", "fdb_del", "neigh_add",
    "neigh_del", "link_addr_gen",
})


def host_of(spec: Spec) -> str | None:
    """The test machine is host HERE of a spec with hosts."""
    return HERE if spec.hosts else None


def snapshot(kernel: Kernel, spec: Spec, destroy: bool = False) -> engine.Snapshot:
    return engine.snapshot(kernel, spec, destroy=destroy, host=host_of(spec))


def apply(kernel: Kernel, spec: Spec, destroy: bool = False) -> Plan:
    """Plan and apply; engine.apply re-observes and raises unless converged."""
    snap = snapshot(kernel, spec, destroy)
    engine.apply(kernel, spec, snap.plan, destroy=destroy, host=host_of(spec))
    return snap.plan


def converge(kernel: Kernel, spec: Spec) -> Plan:
    return apply(kernel, spec)


def destroy(kernel: Kernel, spec: Spec) -> None:
    apply(kernel, spec, destroy=True)


def owned(kernel: Kernel, spec: Spec | None = None) -> dict[Key, Resource]:
    """What the project owns: machine-wide settings it only ensures (IPv4
    forwarding) are not owned, and stay as they are after a destroy."""
    paths = engine.netns_paths(spec) if spec is not None else []
    # A bridge's loose rp_filter is set when a spec needs it and never reverted,
    # like IPv4 forwarding: it depends on history by design.
    return {k: dataclasses.replace(r, rp_loose=False) if isinstance(r, Bridge) else r
            for k, r in observe(kernel, PROJECT, paths).resources.items()
            if not is_shared(r)}


def nft_view(kernel: Kernel, foreign_only: bool) -> list[Any]:
    """The nftables ruleset without handles (numbers the kernel assigns), rule
    expressions as the observer compares them (nft versions print one-element
    lists differently); with foreign_only, without the project's table."""
    own = firewall.table_name(PROJECT)
    out = []
    for item in kernel.nft_ruleset():
        ((kind, body),) = item.items()
        if foreign_only and own in (body.get("table"), body.get("name")):
            continue
        shown = {k: v for k, v in body.items() if k != "handle"}
        if kind == "rule":
            shown["expr"] = Rule.of("", "", shown.get("expr", [])).expr
        out.append({kind: shown})
    return out


def writes_of(kernel: Kernel, spec: Spec) -> int:
    """How many kernel writes converging `spec` takes from the kernel's current state."""
    probe = copy.deepcopy(kernel)
    before = probe.writes
    converge(probe, spec)
    return probe.writes - before


def foreign_view(kernel: Kernel) -> dict[str, Any]:
    """Everything not owned by the project, for before/after comparisons:
    links without the project's alias (outside the project's namespaces, and not
    the project's own leftovers of an interrupted create), their addresses and
    routes, and unmanaged files."""
    mark = owner_alias(PROJECT) + "/"
    view: dict[str, Any] = {}
    for ns in ["", *kernel.netns_names()]:
        links = kernel.links(ns)
        lo = next((link for link in links if link.ifname == "lo"), None)
        if ns and lo is not None and lo.alias == owner_alias(PROJECT, "netns", ns):
            continue  # the project's namespace: what is inside belongs to it
        theirs = {
            link.index: link for link in links
            if not (link.alias or "").startswith(mark)
            and not (not link.alias and is_staging_name(PROJECT, link.ifname))
        }
        names = {link.index: link.ifname for link in links}
        view[f"links {ns}"] = sorted(
            (link.ifname, link.kind, link.mtu, link.mac, link.up, link.alias,
             names.get(link.master or 0)) for link in theirs.values()
        )
        # IPv6 link-local addresses come and go with carrier, by the kernel's hand.
        view[f"addresses {ns}"] = sorted(
            (names[a.index], a.cidr) for a in kernel.addresses(ns)
            if a.index in theirs and not a.cidr.startswith("fe80:")
        )
        view[f"routes {ns}"] = sorted(
            (r.dst, r.via, names.get(r.oif or 0), r.proto) for r in kernel.routes(ns)
            if r.oif in theirs and r.proto != 2
        )
    files = {}
    for name in kernel.list_dir(ETC_NETNS_DIR):
        content = kernel.read_file(f"{ETC_NETNS_DIR}/{name}/hosts")
        if content is not None and not content.startswith(f"{HOSTS_HEADER}{PROJECT};"):
            files[name] = content
    view["files"] = files
    view["nft"] = nft_view(kernel, foreign_only=True)
    return view


def normalized(kernel: Kernel, random_macs: set[tuple[str, str]]) -> dict[str, Any]:
    """What both kernels must agree on: names, not ifindexes; no kernel-made
    link-local addresses or connected routes; no randomly chosen MACs."""
    out: dict[str, Any] = {"netns": kernel.netns_names()}
    host_names = {link.index: link.ifname for link in kernel.links("")}
    for ns in ["", *kernel.netns_names()]:
        links = kernel.links(ns)
        names = {link.index: link.ifname for link in links}
        out[f"links {ns}"] = sorted(
            (link.ifname, link.kind, link.mtu,
             None if (ns, link.ifname) in random_macs else link.mac,
             link.up, link.alias, names.get(link.master) if link.master else None,
             link.isolated, link.hairpin, link.mode, host_names.get(link.parent or 0),
             link.vxlan, link.ipv6_ll)
            for link in links
        )
        out[f"addresses {ns}"] = sorted(
            (names[a.index], a.cidr) for a in kernel.addresses(ns)
            if not a.cidr.startswith("fe80:")
        )
        out[f"routes {ns}"] = sorted(
            (r.dst, r.via, names.get(r.oif or 0), r.proto) for r in kernel.routes(ns)
            if r.proto != 2 and not r.dst.startswith(("fe80:", "ff00:"))
        )
    out["fdb"] = sorted(
        (host_names.get(e.index), e.mac, e.dst or "", e.master, e.state) for e in kernel.fdb()
        if (e.master and e.state == NUD_NOARP) or (not e.master and e.dst)
    )
    out["neighbours"] = sorted(
        (host_names.get(n.index), n.ip, n.mac, n.state) for n in kernel.neighbours()
        if n.state == NUD_PERMANENT
    )
    out["nft"] = nft_view(kernel, foreign_only=False)
    out["ip_forward"] = kernel.sysctl_get("net/ipv4/ip_forward")
    return out


def dump(kernel: Kernel, other: Kernel | None = None) -> dict[str, Any]:
    """normalized() without the MACs either kernel chose at random, and without
    what netapply sets but never reverts."""
    random_macs: set[tuple[str, str]] = set()
    for k in (kernel, other):
        if k is not None and hasattr(k, "random_mac_links"):
            random_macs |= k.random_mac_links()
    out = normalized(kernel, random_macs)
    # IPv4 forwarding is switched on when a spec needs it and never switched off
    # (it is the machine's, not the project's): it depends on history by design.
    del out["ip_forward"]
    return out


def endpoints(resources: dict[Key, Resource]) -> dict[tuple[str, str], tuple[str, ...]]:
    """(container, network) -> its MAC and addresses."""
    out: dict[tuple[str, str], tuple[str, ...]] = {}
    for res in resources.values():
        if isinstance(res, Veth):
            out[(res.container, res.network)] = (res.mac, *sorted(
                a.cidr for a in resources.values()
                if isinstance(a, Address) and a.link == res.key
            ))
    return out


def check_order(plan: Plan, observed: dict[Key, Resource]) -> None:
    """Every step's prerequisites exist when it runs, nothing is deleted before
    its dependants, and the end result holds exactly the desired keys."""
    present = set(observed)

    def remove(key: Key) -> None:
        present.discard(key)
        for other in list(present):
            res = observed.get(other)
            if res is not None and any(d.key == key and d.cascade for d in res.deps):
                remove(other)  # the kernel takes it along

    for action, change in plan.steps():
        if action == Action.DELETE:
            assert change.key in present or change.action == Action.REPLACE, change
            for other in present - {change.key}:
                res = observed.get(other)
                assert res is None or not any(
                    d.key == change.key and d.lasting and not d.cascade for d in res.deps
                ), f"delete {change.key} before its dependant {other}"
            remove(change.key)
            continue
        assert change.after is not None
        if change in plan.parked:  # only a rename out of the way: needs the link alone
            assert change.key in present, change
            continue
        for dep in change.after.deps:
            assert dep.key in present, f"{action} {change.key} before its dependency {dep.key}"
        if action == Action.UPDATE:
            assert change.key in present, change
        present.add(change.key)
    desired = {c.key for c in plan.changes if c.after is not None}
    stale = {c.key for c in plan.changes if c.after is None}
    assert desired <= present
    assert not (stale & present), stale & present


def pinned(doc: dict[str, Any], resources: dict[Key, Resource]) -> dict[str, Any]:
    """The spec with every endpoint's current address written in explicitly."""
    doc = copy.deepcopy(doc)
    for res in resources.values():
        if not (isinstance(res, Address) and res.link[0] == Kind.VETH):
            continue
        _, container, network = res.link
        entry = doc["containers"][container]
        if isinstance(entry["networks"], list):
            entry["networks"] = {name: {} for name in entry["networks"]}
        attachment = entry["networks"][network] or {}
        ip = res.cidr.split("/")[0]
        attachment["ipv6_address" if ":" in ip else "ipv4_address"] = ip
        entry["networks"][network] = attachment
    return doc


class FailAt:
    """A kernel whose k-th write fails (EIO), as a crash in the middle would stop it."""

    def __init__(self, inner: Kernel, k: int):
        self._inner = inner
        self._fail_at = inner.writes + k

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in WRITES:
            return attr

        def write(*args: Any, **kwargs: Any) -> Any:
            if self._inner.writes + 1 >= self._fail_at:
                raise KernelError(f"injected failure in {name}", errno.EIO)
            return attr(*args, **kwargs)

        return write


def plan_for(kernel: Kernel, spec: Spec) -> Plan:
    return snapshot(kernel, spec).plan


__all__ = ["planner"]
