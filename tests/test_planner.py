"""The planner on plain values: for each resource kind, a "changes" test with the
exact actions and an "idempotent" test (desired fed back as observed)."""

from __future__ import annotations

import json

import pytest

from reconciler import executor, planner, render
from reconciler.planner import KIND_ORDER, RANK, Action, Plan
from reconciler.resources import (
    Address,
    Bridge,
    HostsFile,
    HostsTable,
    Kind,
    Netns,
    Resource,
    Route,
    Veth,
    parking_ifname,
    state_of,
)

BR = Bridge("front", "br-front", 1500, "02:00:00:00:00:01")
NS = Netns("web")
VETH = Veth(
    "web", "front", "web", "eth0", "02:42:ac:1e:01:0a", 1500, "vethabc", 1500, "front",
    master_ifname="br-front",
)
ADDR = Address(VETH.key, "172.30.1.10/24", ns="web", ifname="eth0")
GW = Address(BR.key, "172.30.1.1/24", ns="", ifname="br-front")
ROUTE = Route("web", "0.0.0.0/0", "172.30.1.1", VETH.key, ifname="eth0", source=ADDR.key)
TABLE = HostsTable("p", "hosts-abc", "# managed by netapply project p; x\n")
HOSTS = HostsFile("web", "../.netapply-p/hosts-abc")
ALL: list[Resource] = [BR, NS, VETH, ADDR, GW, ROUTE, TABLE, HOSTS]


def actions(plan: Plan) -> list[tuple[str, tuple[str, ...], str]]:
    return [(str(c.action), c.key, c.reason) for c in plan.changes]


def test_create_everything_in_dependency_order() -> None:
    plan = planner.plan(state_of(ALL), {})
    assert [c.key for c in plan.changes] == [
        NS.key, BR.key, VETH.key, GW.key, ADDR.key, ROUTE.key, TABLE.key, HOSTS.key,
    ]
    assert {c.action for c in plan.changes} == {Action.CREATE}


@pytest.mark.parametrize("resource", ALL, ids=lambda r: str(r.kind))
def test_idempotent_per_kind(resource: Resource) -> None:
    state = state_of([resource])
    assert planner.plan(state, state).empty


def test_converged_state_plans_nothing() -> None:
    assert planner.plan(state_of(ALL), state_of(ALL)).empty


def test_every_dependency_points_to_an_earlier_kind() -> None:
    for res in ALL:
        for dep in res.deps:
            assert RANK[Kind(dep.key[0])] < RANK[res.kind], (res.key, dep.key)
    assert set(KIND_ORDER) == set(Kind)


def test_mtu_change_is_an_update_with_reason() -> None:
    bigger = Veth(**{**VETH.__dict__, "mtu": 9000, "host_mtu": 9000})
    plan = planner.plan(state_of([bigger]), state_of([VETH]))
    assert actions(plan) == [("update", VETH.key, "mtu 1500 -> 9000, host_mtu 1500 -> 9000")]


def test_bridge_rename_is_an_update() -> None:
    renamed = Bridge("front", "br-new", 1500, BR.mac)
    plan = planner.plan(state_of([renamed]), state_of([BR]))
    assert actions(plan) == [("update", BR.key, "ifname br-front -> br-new")]


def test_namespace_change_replaces_veth_and_its_children() -> None:
    moved = Veth(**{**VETH.__dict__, "ns": "other"})
    moved_addr = Address(VETH.key, ADDR.cidr, ns="other", ifname="eth0")
    moved_route = Route("other", "0.0.0.0/0", "172.30.1.1", VETH.key, "eth0", ADDR.key)
    plan = planner.plan(
        state_of([moved, moved_addr, moved_route]), state_of([VETH, ADDR, ROUTE])
    )
    # The old namespace's route (another key) goes with the old veth: not listed.
    assert actions(plan) == [
        ("replace", VETH.key, "a veth end cannot change namespace in place (web -> other)"),
        ("replace", ADDR.key, "removed with veth eth0 (container web, network front)"),
        ("create", moved_route.key, "not in the kernel"),
    ]


def test_address_change_deletes_old_creates_new_and_replaces_dependent_route() -> None:
    new_addr = Address(VETH.key, "172.30.1.20/24", ns="web", ifname="eth0")
    new_route = Route("web", "0.0.0.0/0", "172.30.1.1", VETH.key, "eth0", new_addr.key)
    plan = planner.plan(state_of([VETH, new_addr, new_route]), state_of([VETH, ADDR, ROUTE]))
    assert actions(plan) == [
        ("delete", ADDR.key, "not in spec"),
        ("create", new_addr.key, "not in the kernel"),
        ("replace", ROUTE.key, "removed with address 172.30.1.10/24 on eth0"),
    ]


def test_deleting_a_link_leaves_out_what_the_kernel_removes_with_it() -> None:
    plan = planner.plan({}, state_of([NS, VETH, ADDR, ROUTE]))
    # The address and route go with the veth; the veth is deleted explicitly
    # before its namespace (namespace teardown is asynchronous).
    assert actions(plan) == [
        ("delete", VETH.key, "not in spec"),
        ("delete", NS.key, "not in spec"),
    ]


def test_deletes_run_in_reverse_dependency_order() -> None:
    plan = planner.plan({}, state_of([BR, GW, NS, VETH, ADDR, ROUTE, HOSTS]))
    assert [(str(a), c.key) for a, c in plan.steps()] == [
        ("delete", HOSTS.key), ("delete", VETH.key), ("delete", BR.key), ("delete", NS.key),
    ]


def test_swapped_interface_names_go_through_parking_names() -> None:
    other = Veth("web", "back", "web", "eth1", "02:42:ac:1e:02:0a", 1500, "vethdef", 1500,
                 "back", master_ifname="br-back")
    swapped_a = Veth(**{**VETH.__dict__, "ifname": "eth1"})
    swapped_b = Veth(**{**other.__dict__, "ifname": "eth0"})
    plan = planner.plan(state_of([swapped_a, swapped_b]), state_of([VETH, other]))
    steps = [(str(a), c.key, c.before.ifname, c.after.ifname)  # type: ignore[union-attr]
             for a, c in plan.steps()]
    park_a, park_b = (parking_ifname(VETH.key, "ifname"), parking_ifname(other.key, "ifname"))
    assert steps == [
        ("update", other.key, "eth1", park_b),
        ("update", VETH.key, "eth0", park_a),
        ("update", other.key, park_b, "eth0"),
        ("update", VETH.key, park_a, "eth1"),
    ]


def test_deletes_run_before_creates_and_in_reverse_order() -> None:
    old = Bridge("old", "br-old", 1500, "02:00:00:00:00:02")
    old_gw = Address(old.key, "10.1.0.1/24", ns="", ifname="br-old")
    plan = planner.plan(state_of([BR]), state_of([old, old_gw]))
    steps = [(str(a), c.key) for a, c in plan.steps()]
    assert steps == [("delete", old.key), ("create", BR.key)]


def test_replace_steps_delete_first_then_create() -> None:
    moved = Veth(**{**VETH.__dict__, "ns": "other"})
    plan = planner.plan(state_of([moved]), state_of([VETH]))
    assert [(str(a), c.key) for a, c in plan.steps()] == [
        ("delete", VETH.key), ("create", VETH.key),
    ]


def test_route_gateway_change_is_an_in_place_update() -> None:
    changed = Route("web", "0.0.0.0/0", "172.30.1.254", VETH.key, "eth0", ADDR.key)
    plan = planner.plan(state_of([changed]), state_of([ROUTE]))
    assert actions(plan) == [("update", ROUTE.key, "via 172.30.1.1 -> 172.30.1.254")]


def test_hosts_table_content_change_is_an_update() -> None:
    changed = HostsTable("p", "hosts-abc", TABLE.content + "172.30.1.11\tdb\n")
    plan = planner.plan(state_of([changed]), state_of([TABLE]))
    assert actions(plan) == [("update", TABLE.key, "lines: 1 added, 0 removed")]


def test_a_changed_hosts_table_is_shown_as_its_changed_lines() -> None:
    """Not "content differs": the lines that go and come, in text and JSON."""
    head = "# managed by netapply project p\n172.30.1.10\tweb\n"
    before = HostsTable("p", "hosts-abc", head + "172.30.1.11\tdb\n")
    after = HostsTable("p", "hosts-abc", head + "172.30.1.12\tdb\n172.30.1.13\tcache\n")
    plan = planner.plan(state_of([after]), state_of([before]))
    assert actions(plan) == [("update", before.key, "lines: 2 added, 1 removed")]
    doc = plan.to_json("p")["changes"][0]
    assert doc["lines_removed"] == ["172.30.1.11\tdb"]
    assert doc["lines_added"] == ["172.30.1.12\tdb", "172.30.1.13\tcache"]
    text = render.plan_text(plan, "p")
    assert "- 172.30.1.11\tdb" in text and "+ 172.30.1.13\tcache" in text
    assert "172.30.1.10" not in text  # unchanged lines are not repeated


def test_loopback_down_is_repaired_in_place() -> None:
    plan = planner.plan(state_of([NS]), state_of([Netns("web", lo_up=False)]))
    assert actions(plan) == [("update", NS.key, "lo_up down -> up")]


def test_missing_container_end_replaces_the_pair() -> None:
    half = Veth(**{**VETH.__dict__, "ns": "?", "ifname": "", "mac": "", "mtu": 0, "up": False})
    plan = planner.plan(state_of([VETH]), state_of([half]))
    assert actions(plan) == [
        ("replace", VETH.key, "container end of the veth pair is missing")
    ]


def test_json_plan_is_stable_and_complete() -> None:
    plan = planner.plan(state_of([BR, GW]), {})
    doc = plan.to_json("p")
    # The same inputs in another order give the same text.
    again = planner.plan(dict(reversed(list(state_of([BR, GW]).items()))), {}).to_json("p")
    assert json.dumps(again, sort_keys=True) == json.dumps(doc, sort_keys=True)
    assert doc["summary"] == {"create": 2, "update": 0, "replace": 0, "delete": 0}
    first = doc["changes"][0]
    assert first == {
        "action": "create",
        "kind": "bridge",
        "key": ["bridge", "front"],
        "ns": "",
        "reason": "not in the kernel",
        "before": None,
        "after": {"network": "front", "ifname": "br-front", "mtu": 1500,
                  "mac": "02:00:00:00:00:01", "up": True, "localnet": False, "rp_loose": False,
                  "ipv6_ll": True},
    }


def test_only_addresses_that_move_are_announced() -> None:
    """A cold apply announces nothing (a gratuitous ARP is flooded to every
    port and was most of its cost); an address taken from one container and
    given to another, or on a link whose MAC changes, is announced."""
    cold = planner.plan(state_of(ALL), {})
    assert executor.moved_addresses(cold) == set()
    other = Veth(**{**VETH.__dict__, "container": "db", "ns": "db",
                    "mac": "02:42:ac:1e:01:0b", "allocated": "172.30.1.10"})
    taken = planner.plan(state_of([BR, VETH, ADDR]), state_of([BR, other]))
    assert executor.moved_addresses(taken) == {"172.30.1.10"}
    remac = Veth(**{**VETH.__dict__, "mac": "02:42:ac:1e:01:99", "allocated": "172.30.1.10"})
    moved = planner.plan(state_of([BR, remac, ADDR]),
                         state_of([BR, Veth(**{**remac.__dict__, "mac": VETH.mac})]))
    assert executor.moved_addresses(moved) == {"172.30.1.10"}
