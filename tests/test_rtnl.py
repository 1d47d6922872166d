"""The hand-written rtnetlink reader agrees with pyroute2 on the same kernel."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from reconciler.drivers.netlink import NetlinkKernel
from reconciler.drivers.rtnl import Rtnl

pytestmark = pytest.mark.kernel

SETUP = """\
link add br0 type bridge
link set br0 mtu 9000 alias "someone's bridge" up
addr add 10.1.0.1/24 dev br0
addr add fd00:1::1/64 dev br0 nodad
link add vh0 type veth peer name vc0
link set vh0 master br0 up
link set vc0 address 02:42:0a:01:00:02 up
addr add 10.1.0.2/24 dev vc0
addr add fd00:1::2/64 dev vc0 nodad
route add 10.99.0.0/16 via 10.1.0.254 dev vc0 proto 78
route add fd99::/64 via fd00:1::ff dev vc0 proto 78
route add 192.0.2.0/24 dev br0 proto static table 100
"""


def test_reads_agree_with_pyroute2(sandbox: Path) -> None:
    subprocess.run(["ip", "-batch", "-"], input=SETUP, text=True, check=True)
    with Rtnl() as ours, IPRoute() as theirs:
        assert sorted(
            (x.index, x.ifname, x.kind, x.mtu, x.mac, x.up, x.alias, x.master)
            for x in ours.links()
        ) == sorted(
            (m["index"], m.get("IFLA_IFNAME"),
             (m.get("IFLA_LINKINFO") or {}).get("IFLA_INFO_KIND") if m.get("IFLA_LINKINFO")
             else None,
             m.get("IFLA_MTU"), m.get("IFLA_ADDRESS"), bool(m["flags"] & 1),
             m.get("IFLA_IFALIAS"), m.get("IFLA_MASTER"))
            for m in theirs.get_links()
        )
        assert sorted((a.index, a.cidr) for a in ours.addresses()) == sorted(
            (m["index"], f"{m.get('address')}/{m['prefixlen']}") for m in theirs.get_addr()
        )
        expected = set()
        for m in theirs.route("dump"):
            if m["family"] not in (2, 10):
                continue
            dst = m.get("dst") or ("0.0.0.0" if m["family"] == 2 else "::")
            net = ipaddress.ip_network(f"{dst}/{m['dst_len']}", strict=False)
            expected.add((str(net), m.get("gateway"), m.get("oif"), m["proto"],
                          m.get("table")))
        assert {(r.dst, r.via, r.oif, r.proto, r.table) for r in ours.routes()} == expected
        assert ("10.99.0.0/16", "10.1.0.254") in {(r.dst, r.via) for r in ours.routes()}


OVERLAY_SETUP = """\
link add br0 type bridge
link add vx0 type vxlan id 4097 local 192.0.2.11 dstport 8472 nolearning proxy
link set vx0 master br0 up
neigh add 10.200.0.5 lladdr 02:42:0a:c8:00:05 dev vx0 nud permanent
neigh add fd00:200::5 lladdr 02:42:0a:c8:00:05 dev vx0 nud permanent
"""
FDB_SETUP = """\
fdb append 00:00:00:00:00:00 dev vx0 dst 192.0.2.12 self permanent
fdb append 00:00:00:00:00:00 dev vx0 dst 192.0.2.13 self permanent
fdb add 02:42:0a:c8:00:05 dev vx0 dst 192.0.2.12 self permanent
fdb add 02:42:0a:c8:00:05 dev vx0 master static
"""


def test_overlay_reads_agree_with_pyroute2(sandbox: Path) -> None:
    subprocess.run(["ip", "-batch", "-"], input=OVERLAY_SETUP, text=True, check=True)
    subprocess.run(["bridge", "-batch", "-"], input=FDB_SETUP, text=True, check=True)
    with Rtnl() as ours, IPRoute() as theirs:
        vxlan = next(x.vxlan for x in ours.links() if x.ifname == "vx0")
        data = next(m for m in theirs.get_links(ifname="vx0")).get_nested(
            "IFLA_LINKINFO", "IFLA_INFO_DATA")
        assert vxlan is not None
        assert (vxlan.vni, vxlan.local, vxlan.port, vxlan.learning, vxlan.proxy) == (
            data.get("IFLA_VXLAN_ID"), data.get("IFLA_VXLAN_LOCAL"),
            data.get("IFLA_VXLAN_PORT"), bool(data.get("IFLA_VXLAN_LEARNING")),
            bool(data.get("IFLA_VXLAN_PROXY")),
        ) == (4097, "192.0.2.11", 8472, False, True)
        fdb = sorted((e.index, e.mac, e.dst or "", e.master, e.state) for e in ours.fdb())
        assert fdb == sorted(
            (m["ifindex"], m.get("NDA_LLADDR"), m.get("NDA_DST") or "",
             bool(m.get("NDA_MASTER")) or bool(m["flags"] & 0x04), m["state"])
            for m in theirs.fdb("dump")
        )
        assert ("02:42:0a:c8:00:05", None, True, 0x40) in {
            (e.mac, e.dst, e.master, e.state) for e in ours.fdb()}
        neighbours = sorted((n.index, n.ip, n.mac or "", n.state) for n in ours.neighbours())
        assert neighbours == sorted(
            (m["ifindex"], m.get("NDA_DST"), m.get("NDA_LLADDR") or "", m["state"])
            for m in theirs.get_neighbours() if m["family"] in (2, 10)
        )
        assert {n.ip for n in ours.neighbours() if n.state == 0x80} == {
            "10.200.0.5", "fd00:200::5"}


KINDS = ("bridge", "veth", "vxlan", "macvlan", "ipvlan", "dummy", "geneve", "netapply-none")


def test_a_kind_is_found_supported_without_a_change_as_making_one_would_tell(
    sandbox: Path,
) -> None:
    """The answer of the read-only probe is the kernel's own: making a link of
    the kind fails with EOPNOTSUPP exactly when the probe says no (the kernel
    would have loaded a module for it meanwhile, so the probe comes first)."""
    kernel = NetlinkKernel()
    try:
        before = Rtnl.changes_sent
        supported = {kind: kernel.link_kind_supported(kind) for kind in KINDS}
        assert Rtnl.changes_sent == before
    finally:
        kernel.close()
    assert supported["bridge"] and supported["veth"] and not supported["netapply-none"]
    for kind in KINDS:
        made = subprocess.run(["ip", "link", "add", "probe0", "type", kind],
                              capture_output=True, text=True)
        subprocess.run(["ip", "link", "del", "probe0"], capture_output=True)
        refused = "not supported" in made.stderr or "Unknown device type" in made.stderr
        assert supported[kind] == (not refused), (kind, made.stderr)
