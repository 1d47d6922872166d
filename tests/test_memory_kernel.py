"""Differential test: the in-memory kernel agrees with the real one.

Generated sequences of kernel-interface calls (the primitives the executor and
drift use, valid and invalid) are replayed on MemoryKernel and on the real
kernel in a private namespace. After every call both must give the same result
(success or the same errno), and both must then read back the same state.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import example, given, note
from hypothesis import strategies as st

from reconciler import firewall
from reconciler.drivers.kernel import GONE, Kernel
from reconciler.drivers.memory import KINDS, MemoryKernel
from reconciler.drivers.netlink import NetlinkKernel
from reconciler.errors import KernelError
from reconciler.spec import load_text
from tests.kernelutil import private_namespace, require_sandbox
from tests.propkit import normalized

pytestmark = pytest.mark.kernel

NAMESPACES = ["n1", "n2"]
SPACES = ["", *NAMESPACES]
BRIDGES = ["br1", "br2"]
HOST_ENDS = ["vh1", "vh2", "vh3"]
INNER = ["eth0", "eth1", "lo"]
ALL_LINKS = BRIDGES + HOST_ENDS + INNER + ["a-name-that-is-too-long"]
MTUS = [1400, 1500, 9000, 50]
MACS = ["02:42:ac:1e:01:02", "02:42:ac:1e:01:03", "01:00:5e:00:00:01"]
CIDRS = ["10.1.0.2/24", "10.1.0.3/24", "10.2.0.2/24", "fd00:1::2/64", "fd00:1::3/64"]
DESTS = ["0.0.0.0/0", "10.9.0.0/16", "::/0", "fd99::/64"]
GATEWAYS = {4: ["10.1.0.1", "10.7.0.1"], 6: ["fd00:1::1", "fd77::1"]}
VXLANS = ["vx1", "vx2"]
FDB_MACS = ["00:00:00:00:00:00", "02:42:0a:c8:00:05", "02:42:0a:c8:00:06"]
VTEPS = ["192.0.2.12", "192.0.2.13"]
NEIGHBOURS = ["10.200.0.5", "10.200.0.6", "fd00:200::5"]
FIREWALL_SPEC = """\
version: 1
project: p
networks:
  front: {subnet: 10.1.0.0/24, interface: br1}
  quiet: {subnet: 10.2.0.0/24, interface: br2, icc: false, masquerade: false}
  vault: {subnet: 10.3.0.0/24, internal: true}
containers:
  web:
    networks: [front]
    ports: ["8080:80", "127.0.0.1:8081:80", "10.9.0.1:53:53/udp"]
"""


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...] = ()

    def run(self, kernel: Kernel) -> int:
        """0 on success, else the errno."""
        try:
            getattr(kernel, self.name)(*self.args, **dict(self.kwargs))
        except KernelError as e:
            return e.errno or -1  # -1: refused without an errno (nft's text errors)
        return 0

    def __repr__(self) -> str:
        if self.name == "nft_apply":
            commands = self.args[0]
            return f"nft_apply({len(commands)} commands, first {commands[0]!r})"
        kw = "".join(f", {k}={v!r}" for k, v in self.kwargs)
        return f"{self.name}({', '.join(map(repr, self.args))}{kw})"


def _link_set() -> st.SearchStrategy[Call]:
    change = st.one_of(
        st.booleans().map(lambda v: ("up", v)),
        st.sampled_from(MTUS).map(lambda v: ("mtu", v)),
        st.sampled_from(MACS).map(lambda v: ("mac", v)),
        st.sampled_from(ALL_LINKS).map(lambda v: ("new_name", v)),
        st.sampled_from(BRIDGES + HOST_ENDS + VXLANS[:1]).map(lambda v: ("master", v)),
        st.just(("nomaster", True)),
        st.sampled_from(["netapply/p/x", "someone else"]).map(lambda v: ("alias", v)),
        st.booleans().map(lambda v: ("isolated", v)),
        st.booleans().map(lambda v: ("hairpin", v)),
    )
    # The loopback's MTU is outside the model (below 1280 or 68 the kernel drops
    # its IPv6 or IPv4 addresses); netapply never sets it.
    return st.builds(
        lambda ns, name, kv: Call("link_set", (ns, name), (kv,)),
        st.sampled_from(SPACES), st.sampled_from(ALL_LINKS + VXLANS), change,
    ).filter(lambda call: not (call.args[1] == "lo" and call.kwargs[0][0] == "mtu"))


def _route_add() -> st.SearchStrategy[Call]:
    def build(ns: str, dst: str, via_index: int, ifname: str, replace: bool) -> Call:
        version = 6 if ":" in dst else 4
        via = GATEWAYS[version][via_index]
        return Call("route_add", (ns, dst, via, ifname), (("replace", replace),))

    return st.builds(
        build, st.sampled_from(NAMESPACES), st.sampled_from(DESTS), st.integers(0, 1),
        st.sampled_from(["eth0", "eth1"]), st.booleans(),
    )


def _firewall_rules() -> list[dict[str, Any]]:
    """Every rule form the firewall writes, so that the memory kernel's "a listing
    shows exactly what was written" is checked against nft for each of them."""
    spec = load_text(FIREWALL_SPEC, "fw.yaml")
    front = spec.networks["front"]
    published = [firewall.Published("web", port, front, ipaddress.ip_address("10.1.0.2"))
                 for port in spec.containers["web"].ports]
    table, _ = firewall.build("p", spec.networks.values(), published)
    assert table is not None
    return [c for c in firewall.commands(table) if "rule" in c.get("add", {})]


RULES = _firewall_rules()
TABLES = [{"family": "inet", "name": name} for name in ("netapply-p", "other")]


def _nft_command() -> st.SearchStrategy[dict[str, Any]]:
    def chain(table: dict[str, Any], chain: firewall.Chain) -> dict[str, Any]:
        return {"add": {"chain": chain.json(table["name"])}}

    def rule(table: dict[str, Any], command: dict[str, Any]) -> dict[str, Any]:
        return {"add": {"rule": {**command["add"]["rule"], "table": table["name"]}}}

    return st.one_of(
        st.sampled_from(TABLES).map(lambda t: {"add": {"table": t}}),
        st.sampled_from(TABLES).map(lambda t: {"delete": {"table": t}}),
        st.builds(chain, st.sampled_from(TABLES), st.sampled_from(firewall.CHAINS)),
        st.builds(rule, st.sampled_from(TABLES), st.sampled_from(RULES)),
    )


def _sysctl_set() -> st.SearchStrategy[Call]:
    names = ["net/ipv4/ip_forward", *(f"net/ipv4/conf/{n}/route_localnet" for n in
                                      [*BRIDGES, "vh1", "nothere"])]
    return st.builds(lambda n, v: Call("sysctl_set", (n, v)), st.sampled_from(names),
                     st.sampled_from(["0", "1"]))


def _sublink_add() -> st.SearchStrategy[Call]:
    def build(kind: str, parent: str, ns: str, ifname: str, mac: str, mtu: int) -> Call:
        mode = {"macvlan": "bridge", "ipvlan": "l2"}[kind]
        return Call("sublink_add", (kind, parent, mode, ns, ifname,
                                    mac if kind == "macvlan" else None, mtu))

    return st.builds(build, st.sampled_from(["macvlan", "ipvlan"]),
                     st.sampled_from([*BRIDGES, "vh1", "nothere"]), st.sampled_from(NAMESPACES),
                     st.sampled_from(["eth0", "eth1", "mv0"]), st.sampled_from(MACS),
                     st.sampled_from([1400, 1500, 9000]))


def _overlay_calls() -> st.SearchStrategy[Call]:
    """VXLAN devices and the entries netapply puts on them (and on a missing
    device; neighbours on a veth too)."""
    devices = st.sampled_from([*VXLANS, "nothere"])
    return st.one_of(
        st.builds(lambda n, vni, port, mtu: Call("vxlan_add", (n, vni, "192.0.2.11", port, mtu)),
                  st.sampled_from(VXLANS + BRIDGES[:1]), st.sampled_from([100, 200, 1 << 24]),
                  st.sampled_from([4789, 8472]), st.sampled_from([1450, 50])),
        st.builds(lambda n, mac, dst: Call("fdb_add", (n, mac, dst)), devices,
                  st.sampled_from(FDB_MACS), st.sampled_from([*VTEPS, None])),
        st.builds(lambda n, mac, dst: Call("fdb_del", (n, mac, dst)), devices,
                  st.sampled_from(FDB_MACS), st.sampled_from([*VTEPS, None])),
        st.builds(lambda n, ip, mac, r: Call("neigh_add", (n, ip, mac), (("replace", r),)),
                  st.sampled_from([*VXLANS, "vh1", "nothere"]), st.sampled_from(NEIGHBOURS),
                  st.sampled_from(FDB_MACS[1:]), st.booleans()),
        st.builds(lambda n, ip: Call("neigh_del", (n, ip)), devices,
                  st.sampled_from(NEIGHBOURS)),
    )


CALLS = st.one_of(
    st.sampled_from(NAMESPACES).map(lambda n: Call("netns_add", (n, f"netapply/p/netns/{n}"))),
    st.sampled_from(NAMESPACES).map(lambda n: Call("netns_del", (n,))),
    st.builds(lambda b, mac: Call("bridge_add", (b, mac)),
              st.sampled_from([*BRIDGES, "a-name-that-is-too-long"]), st.sampled_from(MACS)),
    st.builds(lambda h, ns, inner, mac, mtu: Call("veth_add", (h, mtu, ns, inner, mac, mtu)),
              st.sampled_from(HOST_ENDS), st.sampled_from(NAMESPACES),
              st.sampled_from(INNER), st.sampled_from(MACS), st.sampled_from(MTUS)),
    _link_set(),
    st.builds(lambda ns, n, on, drop: Call("link_addr_gen", (ns, n, on),
                                           (("drop_link_local", drop),)),
              st.sampled_from(SPACES), st.sampled_from(ALL_LINKS + VXLANS), st.booleans(),
              st.booleans()),
    st.builds(lambda ns, n: Call("link_del", (ns, n)),
              st.sampled_from(SPACES), st.sampled_from(ALL_LINKS)),
    st.builds(lambda ns, n, c: Call("addr_add", (ns, n, c)),
              st.sampled_from(SPACES), st.sampled_from(ALL_LINKS[:-1]), st.sampled_from(CIDRS)),
    st.builds(lambda ns, n, c: Call("addr_del", (ns, n, c)),
              st.sampled_from(SPACES), st.sampled_from(ALL_LINKS[:-1]), st.sampled_from(CIDRS)),
    _route_add(),
    st.builds(lambda ns, d: Call("route_del", (ns, d)),
              st.sampled_from(NAMESPACES), st.sampled_from(DESTS)),
    st.lists(_nft_command(), min_size=1, max_size=4).map(
        lambda commands: Call("nft_apply", (commands, "nft"))),
    _sysctl_set(),
    _sublink_add(),
    _overlay_calls(),
)

# Calls that build a usable topology, so that generated sequences reach deep
# states (addresses on up links, routes) instead of failing early.
SETUP = [
    Call("netns_add", ("n1", "netapply/p/netns/n1")),
    Call("bridge_add", ("br1", "02:00:00:00:00:01")),
    Call("veth_add", ("vh1", 1500, "n1", "eth0", "02:42:ac:1e:01:02", 1500)),
    Call("link_addr_gen", ("", "vh1", False)),  # as on a network without IPv6
    Call("link_set", ("", "vh1"), (("master", "br1"), ("up", True))),
    Call("link_set", ("n1", "eth0"), (("up", True),)),
    Call("link_set", ("n1", "lo"), (("up", True),)),
    Call("addr_add", ("n1", "eth0", "10.1.0.2/24")),
    Call("addr_add", ("n1", "eth0", "fd00:1::2/64")),
    # An overlay's device on the bridge, with its entries.
    Call("vxlan_add", ("vx1", 100, "192.0.2.11", 4789, 1450)),
    Call("link_set", ("", "vx1"), (("master", "br1"), ("up", True))),
    Call("fdb_add", ("vx1", "00:00:00:00:00:00", "192.0.2.12")),
    Call("fdb_add", ("vx1", "02:42:0a:c8:00:05", "192.0.2.12")),
    Call("fdb_add", ("vx1", "02:42:0a:c8:00:05", None)),
    Call("neigh_add", ("vx1", "10.200.0.5", "02:42:0a:c8:00:05")),
    # The project's table with every rule form the firewall writes.
    Call("nft_apply", ([{"add": {"table": TABLES[0]}},
                        *({"add": {"chain": c.json("netapply-p")}} for c in firewall.CHAINS),
                        *RULES], "nft")),
]


def _settle(real: NetlinkKernel, memory: MemoryKernel) -> None:
    """A deleted namespace is torn down asynchronously by the kernel (its veth
    peers linger briefly); wait for that before comparing or going on."""
    deadline = time.monotonic() + 30
    want = sorted(link.ifname for link in memory.links(""))
    while sorted(link.ifname for link in real.links("")) != want:
        if time.monotonic() > deadline:
            return  # the comparison will show the difference
        time.sleep(0.01)


def replay(calls: list[Call], compare: Callable[[], None], real: NetlinkKernel,
           memory: MemoryKernel) -> None:
    for i, call in enumerate(calls):
        got_memory = call.run(memory)
        got_real = call.run(real)
        note(f"{i}: {call!r} -> real {got_real}, memory {got_memory}")
        assert got_memory == got_real, f"call {i} {call!r}: real {got_real}, memory {got_memory}"
        if call.name == "netns_del":
            _settle(real, memory)
        compare()


@given(st.lists(CALLS, max_size=25), st.booleans())
@example(  # IPv6 address generation off and on again, of up links, the loopback, a new veth
    calls=[Call("link_addr_gen", ("n1", "eth0", False), (("drop_link_local", True),)),
           Call("link_addr_gen", ("", "vh1", True)),
           Call("link_addr_gen", ("n1", "lo", False)),
           Call("veth_add", ("vh2", 1500, "n1", "eth1", "02:42:ac:1e:01:03", 1500)),
           Call("link_addr_gen", ("n1", "eth1", False)),
           Call("link_addr_gen", ("n1", "eth9", False))],
    with_setup=True,
)
@example(  # a secondary address goes with its subnet's primary
    calls=[Call("addr_add", ("n1", "eth0", "10.1.0.3/24")),
           Call("addr_del", ("n1", "eth0", "10.1.0.2/24"))],
    with_setup=True,
)
def test_memory_kernel_agrees_with_the_real_kernel(calls: list[Call], with_setup: bool) -> None:
    require_sandbox()
    sequence = (SETUP if with_setup else []) + calls
    with private_namespace():
        real = NetlinkKernel()
        # The memory kernel has the drivers the real one has (this one: no ipvlan).
        kinds = frozenset(k for k in KINDS if real.link_kind_supported(k))
        memory = MemoryKernel(kinds=kinds)
        try:
            def compare() -> None:
                random_macs = memory.random_mac_links()
                assert normalized(real, random_macs) == normalized(memory, random_macs)

            replay(sequence, compare, real, memory)
        finally:
            real.close()


def test_gone_errnos_cover_what_deletes_of_missing_objects_return() -> None:
    memory = MemoryKernel()
    memory.netns_add("n1", "netapply/p/netns/n1")
    results = [
        Call("link_del", ("n1", "eth9")).run(memory),
        Call("addr_del", ("n1", "lo", "10.1.0.2/24")).run(memory),
        Call("route_del", ("n1", "10.9.0.0/16")).run(memory),
        Call("link_set", ("n1", "eth9"), (("up", True),)).run(memory),
    ]
    assert all(code in GONE for code in results), results
