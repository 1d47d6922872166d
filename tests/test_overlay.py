"""Overlay networks across machines, on plain values: what each machine derives
from the whole spec, and how a plan moves entries when a container moves."""

from __future__ import annotations

import ipaddress

import pytest

from reconciler import desired, engine, planner
from reconciler.errors import MachineError
from reconciler.planner import Action
from reconciler.resources import (
    ZERO_MAC,
    Address,
    Fdb,
    HostsTable,
    Key,
    Kind,
    Neigh,
    Resource,
    Vxlan,
)
from reconciler.spec import load_text
from reconciler.state.observe import Foreign, ObservedState

SPEC = """\
version: 1
project: mesh
hosts:
  a: {address: 192.0.2.11}
  b: {address: 192.0.2.12}
  c: {address: 192.0.2.13}
networks:
  blue: {driver: overlay, vni: 100, subnet: 10.200.0.0/24}
  green: {driver: overlay, vni: 200, port: 8472, subnet: 10.201.0.0/24, icc: false}
  front: {subnet: 172.30.1.0/24}
containers:
  web: {host: a, networks: [blue, front]}
  db: {host: b, networks: [blue, green]}
  cache: {host: c, networks: [green]}
"""
ADDRESSES = {"a": "192.0.2.11", "b": "192.0.2.12", "c": "192.0.2.13"}
OVERLAY_KINDS = (Kind.VXLAN, Kind.FDB, Kind.NEIGH)


def machine(host: str, resources: dict[Key, Resource] | None = None,
            mtu: int = 1500) -> ObservedState:
    """A machine whose eth0 has the host's address."""
    return ObservedState(dict(resources or {}), Foreign(
        host_addresses=((ipaddress.ip_address(ADDRESSES[host]), "eth0"),),
        host_links=(("eth0", mtu, False),),
    ))


def build(text: str, host: str, observed: ObservedState | None = None) -> dict[Key, Resource]:
    return desired.build(load_text(text, "mesh.yaml"), observed or machine(host), host)


def own_address(state: dict[Key, Resource], container: str, network: str) -> str:
    return next(r.cidr.split("/")[0] for r in state.values()
                if isinstance(r, Address) and r.link[1:] == (container, network))


def test_a_machine_knows_the_other_machines_members_of_its_overlays() -> None:
    on_a = build(SPEC, "a")
    db_ip = own_address(build(SPEC, "b"), "db", "blue")
    db_mac = "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.ip_address(db_ip).packed)
    vx = desired.vxlan_ifname("mesh", "blue")
    overlay = {k: r for k, r in on_a.items() if k[0] in OVERLAY_KINDS}
    assert overlay == {r.key: r for r in [
        Vxlan("blue", vx, 100, "192.0.2.11", 4789, 1450, "blue", ipv6_ll=False,
              master_ifname=load_text(SPEC, "m").networks["blue"].interface),
        Fdb("blue", ZERO_MAC, "192.0.2.12", vx),
        Fdb("blue", db_mac, "192.0.2.12", vx),
        Fdb("blue", db_mac, "", vx),
        Neigh("blue", db_ip, db_mac, vx),
    ]}
    # green has no member on a, so a has nothing of it; c has what b runs.
    on_c = build(SPEC, "c")
    green = on_c[(Kind.VXLAN, "green")]
    assert isinstance(green, Vxlan)
    assert (green.vni, green.port, green.local, green.isolated) == (200, 8472, "192.0.2.13", True)
    assert not any(k[0] in OVERLAY_KINDS and k[1] == "blue" for k in on_c)
    assert [k for k in on_c if k[0] == Kind.FDB and k[2] == ZERO_MAC] == [
        (Kind.FDB, "green", ZERO_MAC, "192.0.2.12")]


def test_every_machine_computes_the_same_overlay_addresses() -> None:
    states = {h: build(SPEC, h) for h in ADDRESSES}
    seen_remotely = {(r.network, r.ip) for s in states.values() for r in s.values()
                     if isinstance(r, Neigh)}
    own = {("blue", own_address(states["a"], "web", "blue")),
           ("blue", own_address(states["b"], "db", "blue")),
           ("green", own_address(states["b"], "db", "green")),
           ("green", own_address(states["c"], "cache", "green"))}
    assert seen_remotely == own
    # And names: the hosts table of web (on a) lists db, which runs on b.
    table = next(r for r in states["a"].values() if isinstance(r, HostsTable)
                 and "\tweb" in r.content)
    assert f"{own_address(states['b'], 'db', 'blue')}\tdb" in table.content


def test_overlay_addresses_do_not_depend_on_what_a_machine_has_seen() -> None:
    """Sticky allocation would keep an address a machine has seen; on an
    overlay that would make machines disagree, so the spec alone decides."""
    first = build(SPEC, "b")
    web_now = own_address(build(SPEC, "a"), "web", "blue")
    stale = Address((Kind.VETH, "db", "blue"), "10.200.0.77/24", ns="db", ifname="eth0")
    again = build(SPEC, "b", machine("b", {stale.key: stale}))
    assert own_address(again, "db", "blue") == own_address(first, "db", "blue") != "10.200.0.77"
    assert own_address(build(SPEC, "a"), "web", "blue") == web_now


def test_adding_a_member_keeps_the_others_addresses_and_explicit_ones_win() -> None:
    grown = SPEC + "  api: {host: c, networks: {blue: {ipv4_address: 10.200.0.9}}}\n"
    grown += "  queue: {host: c, networks: [blue]}\n"
    before, after = build(SPEC, "a"), build(grown, "a")
    mine = {r.ip for r in before.values() if isinstance(r, Neigh)}
    assert mine <= {r.ip for r in after.values() if isinstance(r, Neigh)}
    assert own_address(after, "web", "blue") == own_address(before, "web", "blue")
    neighbours = {r.ip for r in after.values() if isinstance(r, Neigh)}
    assert "10.200.0.9" in neighbours and len(neighbours) == 3


def test_moving_a_container_moves_its_entries_on_the_other_machines() -> None:
    before = build(SPEC, "a")
    moved = SPEC.replace("db: {host: b", "db: {host: c")
    plan = planner.plan(build(moved, "a", machine("a", before)), before)
    changes = sorted((c.action, c.key) for c in plan.changes)
    db_mac = next(r.mac for r in before.values() if isinstance(r, Fdb) and r.mac != ZERO_MAC)
    assert changes == [
        (Action.CREATE, (Kind.FDB, "blue", ZERO_MAC, "192.0.2.13")),
        (Action.CREATE, (Kind.FDB, "blue", db_mac, "192.0.2.13")),
        (Action.DELETE, (Kind.FDB, "blue", ZERO_MAC, "192.0.2.12")),
        (Action.DELETE, (Kind.FDB, "blue", db_mac, "192.0.2.12")),
    ]


@pytest.mark.parametrize("host", sorted(ADDRESSES))
def test_an_applied_share_plans_nothing(host: str) -> None:
    state = build(SPEC, host)
    assert planner.plan(build(SPEC, host, machine(host, state)), state).empty


def test_a_changed_vni_replaces_the_device_and_its_entries() -> None:
    before = build(SPEC, "a")
    plan = planner.plan(build(SPEC.replace("vni: 100", "vni: 101"), "a", machine("a", before)),
                        before)
    actions = {c.key: (c.action, c.reason) for c in plan.changes}
    assert actions[(Kind.VXLAN, "blue")] == (
        Action.REPLACE, "a vxlan device keeps its vni, address, port and flags (100 -> 101)")
    assert {k[0] for k, (action, _) in actions.items() if action == Action.REPLACE} == {
        Kind.VXLAN, Kind.FDB, Kind.NEIGH}


@pytest.mark.parametrize(("observed", "message"), [
    (ObservedState({}, Foreign(host_links=(("eth0", 1500, False),))),
     "mesh.yaml:4:7: network 'blue': this machine is host 'a', but its address 192.0.2.11 is "
     "not an address of this machine; VXLAN packets would leave with a wrong source"),
    (machine("a", mtu=1480),
     "mesh.yaml:8:3: network 'blue': mtu 1450 plus 50 bytes of VXLAN headers is larger than "
     "the mtu 1480 of eth0, which has host 'a''s address 192.0.2.11; set mtu to at most 1430"),
    (ObservedState({}, Foreign(
        links=frozenset({("", desired.vxlan_ifname("mesh", "blue"))}),
        host_addresses=((ipaddress.ip_address("192.0.2.11"), "eth0"),))),
     f"mesh.yaml:8:3: network 'blue': vxlan interface {desired.vxlan_ifname('mesh', 'blue')} "
     "exists and is not owned by project 'mesh'"),
    (ObservedState({}, Foreign(
        vxlans=(("flannel.1", 100, 4789),),
        host_addresses=((ipaddress.ip_address("192.0.2.11"), "eth0"),))),
     "mesh.yaml:8:27: network 'blue': vni 100 on UDP port 4789 is taken by vxlan device "
     "flannel.1 of this machine, which is not this project's; choose another vni or port"),
])
def test_what_a_machine_lacks_for_an_overlay_is_refused(
    observed: ObservedState, message: str
) -> None:
    with pytest.raises(Exception) as caught:
        build(SPEC, "a", observed)
    assert [str(p) for p in getattr(caught.value, "problems", [])] == [message]


def test_a_kernel_without_vxlan_is_refused() -> None:
    observed = machine("a")
    observed = ObservedState({}, observed.foreign, missing_kinds=frozenset({"vxlan"}))
    with pytest.raises(MachineError) as caught:
        build(SPEC, "a", observed)
    assert [str(p) for p in caught.value.problems] == [
        "mesh.yaml:8:10: network 'blue': the running kernel has no vxlan driver (module vxlan "
        "is neither built in nor loadable); load it or use another driver"]


def big_spec(machines: int, containers: int, overlays: int) -> str:
    lines = ["version: 1", "project: big", "hosts:"]
    lines += [f"  h{i:03}: {{address: 10.0.{i // 250}.{i % 250 + 1}}}" for i in range(machines)]
    lines.append("networks:")
    for n in range(overlays):
        lines.append(f"  ov{n}: {{driver: overlay, vni: {1000 + n}, subnet: 10.{100 + n}.0.0/19}}")
    lines.append("  local: {subnet: 172.30.0.0/16}")
    lines.append("containers:")
    for c in range(containers):
        host, overlay = f"h{c % machines:03}", f"ov{c % overlays}"
        lines.append(f"  c{c:04}: {{host: {host}, networks: [{overlay}, local]}}")
    return "\n".join(lines) + "\n"


def test_planning_one_machine_of_a_100_machine_5000_container_spec() -> None:
    spec = load_text(big_spec(100, 5000, 7), "big.yaml")
    observed = ObservedState({}, Foreign(host_addresses=((ipaddress.ip_address("10.0.0.8"),
                                                          "eth0"),),
                                         host_links=(("eth0", 9000, False),)))
    state = desired.build(spec, observed, "h007")
    plan = planner.plan(state, {})
    # h007 runs c0007, c0107, ...: 50 containers, on every overlay (7 and 100
    # have no common divisor), so it knows the 4950 others' overlay endpoints.
    kinds = [c.key[0] for c in plan.changes]
    assert kinds.count(Kind.NETNS) == 50
    assert kinds.count(Kind.VXLAN) == 7
    assert kinds.count(Kind.NEIGH) == 4950
    assert kinds.count(Kind.FDB) == 2 * 4950 + 7 * 99
    assert all(c.action == Action.CREATE for c in plan.changes)
    # Applied, it plans nothing more.
    assert planner.plan(desired.build(spec, ObservedState(state, observed.foreign), "h007"),
                        state).empty


RUN = """\
version: 1
project: mesh
hosts:
  a: {address: 192.0.2.11}
  b: {address: 192.0.2.12}
networks:
  blue: {driver: overlay, vni: 100, subnet: 10.200.0.0/24}
containers:
  n800: {host: b, networks: [blue]}
  n993: {host: b, networks: [blue]}
"""


def test_a_member_whose_place_is_taken_moves_and_the_plan_says_so() -> None:
    """n800 and n993 both start at .3, so n993 has .4; n217 starts at .4 and
    comes first in name order: it takes .4, and n993 moves on to .5."""
    before = build(RUN, "b")
    assert own_address(before, "n993", "blue") == "10.200.0.4"
    grown = RUN + "  n217: {host: a, networks: [blue]}\n"
    snap = engine.plan_from(load_text(grown, "mesh.yaml"), machine("b", before), host="b")
    assert own_address(snap.desired, "n993", "blue") == "10.200.0.5"
    assert own_address(snap.desired, "n800", "blue") == "10.200.0.3"
    assert list(snap.notes) == [
        "container 'n993' moves from 10.200.0.4 to 10.200.0.5 on overlay 'blue': a member "
        "added or removed before it took or freed its place (overlay addresses come from the "
        "spec alone); set ipv4_address to keep an address"]
    pinned = grown.replace("n993: {host: b, networks: [blue]}",
                           "n993: {host: b, networks: {blue: {ipv4_address: 10.200.0.4}}}")
    snap = engine.plan_from(load_text(pinned, "mesh.yaml"), machine("b", before), host="b")
    assert own_address(snap.desired, "n993", "blue") == "10.200.0.4"
    assert list(snap.notes) == []
