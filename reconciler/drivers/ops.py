"""Turn one planned change into kernel primitive calls.

Shared by every Kernel implementation, so the in-memory kernel runs the same
code as the real one. Deletes treat "already gone" errnos as success; ownership
marks (interface aliases) are written right after each create.
"""

from __future__ import annotations

import errno
import os

from reconciler import firewall
from reconciler.drivers.kernel import ETC_NETNS_DIR, GONE, Kernel
from reconciler.errors import InternalError, KernelError
from reconciler.resources import (
    HOST_NS,
    Address,
    Bridge,
    DockerUser,
    Fdb,
    Firewall,
    HostsBlock,
    HostsFile,
    HostsTable,
    Leftover,
    LeftoverFile,
    Neigh,
    Netns,
    Resource,
    Route,
    Sublink,
    Sysctl,
    Veth,
    Vxlan,
    link_alias,
    owner_alias,
    splice_hosts_block,
    staging_ifname,
)

LOOPBACK = "lo"


def hosts_path(netns: str) -> str:
    return os.path.join(ETC_NETNS_DIR, netns, "hosts")


def create(kernel: Kernel, project: str, res: Resource, announce: bool = False) -> None:
    """Create res. A link is created under a staging name and then marked and
    renamed in one call, so an interruption never leaves an unmarked link under
    a wanted name: only a leftover that the next apply recognises and removes.
    `announce`: a container's address that neighbours may know at another
    MAC (it moved here in this apply) is announced (drivers/announce.py)."""
    if isinstance(res, Firewall):
        kernel.nft_apply(firewall.commands(res), f"write nftables table inet {res.table}")
        _forget_flows(kernel, None, res)
    elif isinstance(res, DockerUser):
        kernel.nft_apply(firewall.docker_user_commands(None, res), f"add {res.title()}")
    elif isinstance(res, Sysctl):
        kernel.sysctl_set(res.name, res.value)
    elif isinstance(res, Netns):
        kernel.netns_add(res.name, owner_alias(project, "netns", res.name))
        if not res.lo_up:
            kernel.link_set(res.name, LOOPBACK, up=False)
    elif isinstance(res, Bridge):
        staged = staging_ifname(project, res.key)
        kernel.bridge_add(staged, res.mac)
        _new_link_ipv6(kernel, "", staged, res.ipv6_ll)
        # The MTU is set after creation so that the kernel keeps it as set by the
        # user instead of following the ports' MTU.
        kernel.link_set(
            "", staged, new_name=res.ifname, alias=owner_alias(project, "bridge", res.network),
            mtu=res.mtu, up=res.up,
        )
        if res.localnet:
            kernel.sysctl_set(localnet_sysctl(res.ifname), "1")
        if res.rp_loose:
            kernel.sysctl_set(rp_filter_sysctl(res.ifname), RP_LOOSE)
    elif isinstance(res, Veth):
        host, inner = staging_ifname(project, res.key, "host"), staging_ifname(project, res.key)
        kernel.veth_add(host, res.host_mtu, res.ns, inner, res.mac, res.mtu)
        _new_link_ipv6(kernel, "", host, res.host_ipv6_ll)
        _new_link_ipv6(kernel, res.ns, inner, res.ipv6_ll)
        alias = link_alias(project, "veth", res.container, res.network)
        kernel.link_set(
            "", host, new_name=res.host_ifname,
            alias=link_alias(project, "veth", res.container, res.network, "host", res.allocated),
            master=res.master_ifname, up=res.host_up,
        )
        if res.isolated or res.hairpin:  # before the container end is up
            kernel.link_set("", res.host_ifname, isolated=res.isolated or None,
                            hairpin=res.hairpin or None)
        kernel.link_set(res.ns, inner, new_name=res.ifname, alias=alias, up=res.up)
    elif isinstance(res, Sublink):
        staged = staging_ifname(project, res.key)
        kernel.sublink_add(res.driver, res.parent, res.mode, res.ns, staged, res.mac or None,
                           res.mtu)
        _new_link_ipv6(kernel, res.ns, staged, res.ipv6_ll)
        alias = link_alias(project, "sublink", res.container, res.network,
                           allocated=res.allocated)
        kernel.link_set(res.ns, staged, new_name=res.ifname, alias=alias, up=res.up)
    elif isinstance(res, Vxlan):
        staged = staging_ifname(project, res.key)
        kernel.vxlan_add(staged, res.vni, res.local, res.port, res.mtu)
        _new_link_ipv6(kernel, "", staged, res.ipv6_ll)
        kernel.link_set("", staged, new_name=res.ifname,
                        alias=owner_alias(project, "vxlan", res.network),
                        master=res.master_ifname, up=res.up)
        if res.isolated:
            kernel.link_set("", res.ifname, isolated=True)
    elif isinstance(res, Fdb):
        kernel.fdb_add(res.ifname, res.mac, res.dst or None)
    elif isinstance(res, Neigh):
        kernel.neigh_add(res.ifname, res.ip, res.mac)
    elif isinstance(res, Address):
        kernel.addr_add(res.ns, res.ifname, res.cidr)
        if announce and res.ns != HOST_NS:
            kernel.announce(res.ns, res.ifname)
    elif isinstance(res, Route):
        kernel.route_add(res.ns, res.dst, res.via, res.ifname)
    elif isinstance(res, HostsTable):
        kernel.write_file(res.path, res.content)
    elif isinstance(res, HostsFile):
        kernel.write_link(hosts_path(res.netns), res.link)
    elif isinstance(res, HostsBlock):
        _splice(kernel, res)
    else:  # pragma: no cover - the Resource union is closed
        raise InternalError(f"no create for {res!r}")


def _new_link_ipv6(kernel: Kernel, ns: str, ifname: str, enabled: bool) -> None:
    """A new link, still down, of a network without IPv6: no address generation,
    so it never gets a link-local address (desired.ipv6_ll). Its own change:
    the kernel takes it neither in the creating message nor, in time, in the
    one that sets the link up."""
    if not enabled:
        kernel.link_addr_gen(ns, ifname, False)


# Below this MTU a link has no IPv6 at all (RFC 8200 section 5; the kernel's
# addrconf_notify, NETDEV_CHANGEMTU).
IPV6_MIN_MTU = 1280


def _set_ipv6(
    kernel: Kernel, ns: str, ifname: str, before: bool, after: bool, mtu: int, new_mtu: int
) -> int:
    """Address generation of a link that may be up: switched off, its link-local
    addresses go too; switched on, the kernel makes one when the link next
    comes up (it does not when the mode is set over netlink).

    A link whose MTU was set below 1280 from outside has no IPv6, and its
    mode cannot be set (EAFNOSUPPORT); raised to 1280 or more, the kernel
    gives it IPv6 again, the mode taken from net.ipv6.conf.default.addr_gen_mode
    (EUI-64 unless changed) and, when the link is up, a new link-local
    address. So such an MTU (`mtu` -> `new_mtu`) is set first, and the mode
    is then set whatever it was. Returns the link's MTU now, for _set_link."""
    if mtu < IPV6_MIN_MTU <= new_mtu:
        kernel.link_set(ns, ifname, mtu=new_mtu)
        mtu, before = new_mtu, not after
    if before != after:
        kernel.link_addr_gen(ns, ifname, after, drop_link_local=not after)
    return mtu


def _forget_flows(kernel: Kernel, before: Firewall | None, after: Firewall | None) -> None:
    """After the table changed, flows to a port whose DNAT rule came, went or
    now leads elsewhere start over under the rules as they are now."""
    changed = firewall.changed_ports(before, after)
    for protocol, port in sorted(changed):
        kernel.forget_flows(protocol, port)


def _splice(kernel: Kernel, block: HostsBlock, remove: bool = False) -> None:
    """Put the project's block into an engine's hosts file (or take it out), in
    place: the engine bind-mounts that file by inode. A file that is gone (its
    container removed meanwhile) needs no block."""
    text = kernel.read_file(block.path)
    if text is None:
        if remove:
            return
        raise KernelError(f"write the hosts block into {block.path}", errno.ENOENT)
    lines = None if remove else block.content
    kernel.rewrite_file(block.path, splice_hosts_block(text, block.project, lines))


def localnet_sysctl(ifname: str) -> str:
    return f"net/ipv4/conf/{ifname}/route_localnet"


RP_LOOSE = "2"  # the kernel uses the larger of conf/all and conf/<ifname>


def rp_filter_sysctl(ifname: str) -> str:
    return f"net/ipv4/conf/{ifname}/rp_filter"


def update(kernel: Kernel, project: str, before: Resource, after: Resource) -> None:
    if isinstance(before, Firewall) and isinstance(after, Firewall):
        # The whole table, in one transaction: never half a ruleset.
        kernel.nft_apply(firewall.commands(after), f"replace nftables table inet {after.table}")
        _forget_flows(kernel, before, after)
    elif isinstance(before, DockerUser) and isinstance(after, DockerUser):
        kernel.nft_apply(firewall.docker_user_commands(before, after), f"replace {after.title()}")
    elif isinstance(before, Sysctl) and isinstance(after, Sysctl):
        kernel.sysctl_set(after.name, after.value)
    elif isinstance(before, Netns) and isinstance(after, Netns):
        kernel.link_set(after.name, LOOPBACK, up=after.lo_up)
    elif isinstance(before, Bridge) and isinstance(after, Bridge):
        mtu = _set_ipv6(kernel, "", before.ifname, before.ipv6_ll, after.ipv6_ll, before.mtu,
                        after.mtu)
        _set_link(kernel, "", before.ifname, after.ifname, mtu, after.mtu,
                  before.mac, after.mac, before.up, after.up)
        if before.localnet != after.localnet:
            kernel.sysctl_set(localnet_sysctl(after.ifname), "1" if after.localnet else "0")
        if after.rp_loose and not before.rp_loose:
            kernel.sysctl_set(rp_filter_sysctl(after.ifname), RP_LOOSE)
    elif isinstance(before, Sublink) and isinstance(after, Sublink):
        mtu = _set_ipv6(kernel, after.ns, before.ifname, before.ipv6_ll, after.ipv6_ll,
                        before.mtu, after.mtu)
        _set_link(kernel, after.ns, before.ifname, after.ifname, mtu, after.mtu,
                  before.mac or None, after.mac or None, before.up, after.up)
        if before.mac != after.mac:
            kernel.announce(after.ns, after.ifname)
        if before.allocated != after.allocated:
            kernel.link_set(after.ns, after.ifname, alias=link_alias(
                project, "sublink", after.container, after.network, allocated=after.allocated))
    elif isinstance(before, Vxlan) and isinstance(after, Vxlan):
        mtu = _set_ipv6(kernel, "", before.ifname, before.ipv6_ll, after.ipv6_ll, before.mtu,
                        after.mtu)
        _set_link(kernel, "", before.ifname, after.ifname, mtu, after.mtu, None, None,
                  before.up, after.up)
        _set_master(kernel, after.ifname, before.master, after.master, after.master_ifname)
        _set_port_options(kernel, after.ifname, before, after, ("isolated",))
    elif isinstance(before, Neigh) and isinstance(after, Neigh):
        kernel.neigh_add(after.ifname, after.ip, after.mac, replace=True)
    elif isinstance(before, Veth) and isinstance(after, Veth):
        mtu = _set_ipv6(kernel, after.ns, before.ifname, before.ipv6_ll, after.ipv6_ll,
                        before.mtu, after.mtu)
        host_mtu = _set_ipv6(kernel, "", before.host_ifname, before.host_ipv6_ll,
                             after.host_ipv6_ll, before.host_mtu, after.host_mtu)
        _set_link(kernel, after.ns, before.ifname, after.ifname, mtu, after.mtu,
                  before.mac, after.mac, before.up, after.up)
        _set_link(kernel, "", before.host_ifname, after.host_ifname, host_mtu,
                  after.host_mtu, None, None, before.host_up, after.host_up)
        _set_master(kernel, after.host_ifname, before.master, after.master,
                    after.master_ifname)
        _set_port_options(kernel, after.host_ifname, before, after, ("isolated", "hairpin"))
        if before.mac != after.mac:  # neighbours still hold the old one
            kernel.announce(after.ns, after.ifname)
        if before.allocated != after.allocated:
            kernel.link_set("", after.host_ifname, alias=link_alias(
                project, "veth", after.container, after.network, "host", after.allocated))
    elif isinstance(before, Route) and isinstance(after, Route):
        kernel.route_add(after.ns, after.dst, after.via, after.ifname, replace=True)
    elif isinstance(before, HostsTable) and isinstance(after, HostsTable):
        kernel.write_file(after.path, after.content)
    elif isinstance(before, HostsFile) and isinstance(after, HostsFile):
        kernel.write_link(hosts_path(after.netns), after.link)
    elif isinstance(before, HostsBlock) and isinstance(after, HostsBlock):
        _splice(kernel, after)
    else:
        raise InternalError(f"no in-place update from {before!r} to {after!r}")


def _set_port_options(
    kernel: Kernel, ifname: str, before: Veth | Vxlan, after: Veth | Vxlan,
    names: tuple[str, ...],
) -> None:
    """Bridge port flags that differ; a port that changed bridges starts
    without any."""
    if after.master_ifname is None:
        return
    new_port = before.master != after.master
    options = {name: getattr(after, name) for name in names
               if getattr(after, name) != (getattr(before, name) and not new_port)}
    if options:
        kernel.link_set("", ifname, **options)


def _set_master(
    kernel: Kernel, ifname: str, master: str | None, new_master: str | None,
    new_master_ifname: str | None,
) -> None:
    """Move a host-namespace port to the bridge it should be on (or none)."""
    if master == new_master:
        return
    if new_master_ifname is None:
        kernel.link_set("", ifname, nomaster=True)
    else:
        kernel.link_set("", ifname, master=new_master_ifname)


def _set_link(
    kernel: Kernel, ns: str, name: str, new_name: str, mtu: int, new_mtu: int,
    mac: str | None, new_mac: str | None, up: bool, new_up: bool,
) -> None:
    if name != new_name:
        kernel.link_set(ns, name, new_name=new_name)
    changes: dict[str, object] = {}
    if mtu != new_mtu:
        changes["mtu"] = new_mtu
    if mac != new_mac and new_mac is not None:
        changes["mac"] = new_mac
    if up != new_up:
        changes["up"] = new_up
    if changes:
        kernel.link_set(ns, new_name, **changes)  # type: ignore[arg-type]


def delete(kernel: Kernel, res: Resource) -> None:
    """Remove res; a resource that is already gone counts as removed."""
    try:
        _delete(kernel, res)
    except KernelError as e:
        if e.errno not in GONE:
            raise


def _delete(kernel: Kernel, res: Resource) -> None:
    if isinstance(res, Firewall):
        kernel.nft_apply(firewall.delete_commands(res.table),
                         f"delete nftables table inet {res.table}")
        _forget_flows(kernel, res, None)
    elif isinstance(res, DockerUser):
        kernel.nft_apply(firewall.docker_user_commands(res, None), f"delete {res.title()}")
    elif isinstance(res, Sysctl):
        pass  # shared with the machine: never reverted (the planner does not ask)
    elif isinstance(res, Netns):
        kernel.netns_del(res.name)
    elif isinstance(res, Bridge):
        kernel.link_del("", res.ifname)
    elif isinstance(res, Veth):
        # Deleting either end removes the pair; the host end is always reachable.
        if res.host_ifname:
            kernel.link_del("", res.host_ifname)
        else:
            kernel.link_del(res.ns, res.ifname)
    elif isinstance(res, Sublink | Vxlan):
        kernel.link_del(res.ns, res.ifname)
    elif isinstance(res, Fdb):
        kernel.fdb_del(res.ifname, res.mac, res.dst or None)
    elif isinstance(res, Neigh):
        kernel.neigh_del(res.ifname, res.ip)
    elif isinstance(res, Address):
        kernel.addr_del(res.ns, res.ifname, res.cidr)
    elif isinstance(res, Route):
        kernel.route_del(res.ns, res.dst)
    elif isinstance(res, HostsTable):
        kernel.remove_file(res.path)
    elif isinstance(res, HostsFile):
        kernel.remove_file(hosts_path(res.netns))
    elif isinstance(res, HostsBlock):
        _splice(kernel, res, remove=True)
    elif isinstance(res, Leftover):
        kernel.link_del(res.ns, res.ifname)
    elif isinstance(res, LeftoverFile):
        if res.directory:
            kernel.remove_dir(res.path)
        else:
            kernel.remove_file(res.path)
    else:  # pragma: no cover
        raise InternalError(f"no delete for {res!r}")
