"""Desired state from spec + observed, on plain values (no kernel)."""

from __future__ import annotations

import pytest

from reconciler import desired, planner
from reconciler.errors import SpecError
from reconciler.resources import (
    HOST_NS,
    Address,
    Bridge,
    HostsFile,
    HostsTable,
    Kind,
    Route,
    Veth,
)
from reconciler.spec import load_text
from reconciler.state.observe import Foreign, ObservedState

SPEC = """\
version: 1
project: shop
networks:
  front:
    subnet: 172.30.1.0/24
    interface: br-front
containers:
  web:
    networks:
      front: {aliases: [www]}
  db:
    networks: [front]
"""
EMPTY = ObservedState({})


def addresses(state: dict[tuple[str, ...], object]) -> dict[str, str]:
    return {
        res.link[1]: res.cidr
        for res in state.values()
        if isinstance(res, Address) and res.link[0] == Kind.VETH
    }


def test_fresh_allocation_is_lowest_free_in_name_order() -> None:
    state = desired.build(load_text(SPEC, "shop.yaml"), EMPTY)
    assert addresses(state) == {"db": "172.30.1.2/24", "web": "172.30.1.3/24"}
    web = state[(Kind.VETH, "web", "front")]
    assert isinstance(web, Veth)
    assert web.mac == "02:42:ac:1e:01:03"
    assert (web.master, web.master_ifname) == ("front", "br-front")
    assert web.host_ifname == desired.host_ifname("shop", "web", "front")
    assert len(web.host_ifname) <= 15


def test_kept_addresses_are_sticky_and_never_reused() -> None:
    spec = load_text(SPEC + "  aaa:\n    networks: [front]\n", "shop.yaml")
    observed = ObservedState({
        a.key: a for a in (
            Address((Kind.VETH, "web", "front"), "172.30.1.7/24", ns="web", ifname="eth0"),
            Address((Kind.VETH, "db", "front"), "172.30.1.2/24", ns="db", ifname="eth0"),
        )
    })
    assert addresses(desired.build(spec, observed)) == {
        "aaa": "172.30.1.3/24", "db": "172.30.1.2/24", "web": "172.30.1.7/24",
    }


def test_a_kept_address_that_became_explicit_elsewhere_is_given_up() -> None:
    spec = load_text(
        SPEC.replace("networks: [front]", "networks:\n      front: {ipv4_address: 172.30.1.7}"),
        "shop.yaml",
    )
    observed = ObservedState({
        ("address", "veth", "web", "front", "172.30.1.7/24"): Address(
            (Kind.VETH, "web", "front"), "172.30.1.7/24", ns="web", ifname="eth0"
        )
    })
    assert addresses(desired.build(spec, observed)) == {
        "db": "172.30.1.7/24", "web": "172.30.1.2/24",
    }


def test_hosts_file_links_to_a_table_of_peers_with_aliases() -> None:
    state = desired.build(load_text(SPEC, "shop.yaml"), EMPTY)
    hosts = state[(Kind.HOSTS, "db")]
    assert isinstance(hosts, HostsFile)
    assert hosts == state[(Kind.HOSTS, "web")].__class__("db", state[(Kind.HOSTS, "web")].link)
    table = state[(Kind.HOSTS_TABLE, hosts.link.rsplit("/", 1)[-1])]
    assert isinstance(table, HostsTable)
    assert hosts.link == f"../.netapply-shop/{table.name}"
    assert table.content.splitlines() == [
        "# managed by netapply project shop; changes here are overwritten",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "172.30.1.2\tdb",
        "172.30.1.3\tweb www",
    ]


def test_default_route_and_gateway_address() -> None:
    state = desired.build(load_text(SPEC, "shop.yaml"), EMPTY)
    route = state[(Kind.ROUTE, "web", "0.0.0.0/0")]
    assert isinstance(route, Route) and route.via == "172.30.1.1"
    bridge = state[(Kind.BRIDGE, "front")]
    assert isinstance(bridge, Bridge) and bridge.ifname == "br-front"
    gateway_key = (Kind.ADDRESS, Kind.BRIDGE, "front", "172.30.1.1/24")
    assert state[gateway_key] == Address(bridge.key, "172.30.1.1/24", ns=HOST_NS, ifname="br-front")


def test_desired_fed_back_as_observed_plans_nothing() -> None:
    spec = load_text(SPEC, "shop.yaml")
    state = desired.build(spec, EMPTY)
    assert planner.plan(desired.build(spec, ObservedState(state)), state).empty


def test_foreign_names_are_spec_errors_with_positions() -> None:
    spec = load_text(SPEC, "shop.yaml")
    observed = ObservedState(
        {}, Foreign(links=frozenset({("", "br-front"), ("web", "eth0")}),
                    netns=frozenset({"db"}), hosts=frozenset({"web"}))
    )
    with pytest.raises(SpecError) as caught:
        desired.build(spec, observed)
    assert [str(p) for p in caught.value.problems] == [
        "shop.yaml:6:5: network 'front': interface br-front exists and is not owned by "
        "project 'shop'",
        "shop.yaml:8:3: container 'web': /etc/netns/web/hosts exists and is not managed by "
        "netapply project 'shop'",
        "shop.yaml:10:7: container 'web': interface eth0 in its namespace exists and is not "
        "owned by project 'shop'",
        "shop.yaml:11:3: container 'db': netns db exists and is not owned by project 'shop'",
    ]


def test_containers_sharing_an_attached_namespace_cannot_both_route_the_same() -> None:
    spec = load_text(SPEC.replace(
        "  web:\n    networks:",
        "  web:\n    netns_path: /proc/1/ns/net\n    networks:",
    ).replace("  db:\n    networks: [front]", "  db:\n    netns_path: /proc/1/ns/net\n"
              "    networks:\n      front: {interface: eth1}"), "shop.yaml")
    with pytest.raises(SpecError) as caught:
        desired.build(spec, EMPTY)
    assert [str(p) for p in caught.value.problems] == [
        "shop.yaml:12:3: container 'db': route default in /proc/1/ns/net is also wanted by "
        "container 'web', which shares that namespace"
    ]


ATTACHED = SPEC + """\
  side:
    netns_path: /proc/7/ns/net
    networks:
      front: {interface: eth1}
  other:
    netns_path: /run/netns/x
    networks: [front]
"""  # side's netns_path on line 14, other's on line 18


def observed_ids(**paths: tuple[int, int]) -> ObservedState:
    """An observation whose namespaces have these identities ("" is netapply's own)."""
    ids = {HOST_NS: (4, 1), "web": (4, 2), "db": (4, 3), **{
        k.replace("_", "/"): v for k, v in paths.items()}}
    return ObservedState({}, ns_ids=ids)


def test_a_netns_path_that_is_netapply_s_own_namespace_is_refused() -> None:
    spec = load_text(ATTACHED, "shop.yaml")
    with pytest.raises(SpecError) as caught:
        desired.build(spec, observed_ids(_proc_7_ns_net=(4, 1), _run_netns_x=(4, 9)))
    assert [str(p) for p in caught.value.problems] == [
        "shop.yaml:14:5: container 'side': netns_path /proc/7/ns/net is the network namespace "
        "netapply runs in (the host's own); attaching to it would give the host this "
        "container's interfaces and routes (network_mode: host shares the host's network)",
    ]


def test_one_namespace_under_two_references_is_refused_naming_both() -> None:
    spec = load_text(ATTACHED, "shop.yaml")
    with pytest.raises(SpecError) as caught:  # /proc/7/ns/net is web's named namespace
        desired.build(spec, observed_ids(_proc_7_ns_net=(4, 2), _run_netns_x=(4, 2)))
    assert [str(p) for p in caught.value.problems] == [
        "shop.yaml:14:5: container 'side': netns_path /proc/7/ns/net is the namespace of "
        "container 'web' (netns web), which netapply makes and deletes with that container; "
        "a container cannot also be attached to it by path",
        "shop.yaml:18:5: container 'other': netns_path /run/netns/x is the namespace of "
        "container 'web' (netns web), which netapply makes and deletes with that container; "
        "a container cannot also be attached to it by path",
    ]
    with pytest.raises(SpecError) as caught:  # two paths, one namespace
        desired.build(spec, observed_ids(_proc_7_ns_net=(4, 8), _run_netns_x=(4, 8)))
    assert [str(p) for p in caught.value.problems] == [
        "shop.yaml:18:5: container 'other': netns_path /run/netns/x is the namespace "
        "container 'side' attaches to as netns_path /proc/7/ns/net; containers that share a "
        "namespace must name it by the same netns_path",
    ]


def test_one_netns_path_shared_by_two_containers_is_allowed() -> None:
    spec = load_text(SPEC.replace("containers:", "  back: {subnet: 172.30.2.0/24, internal: "
                                  "true}\ncontainers:") + """\
  side: {netns_path: /proc/7/ns/net, networks: [front]}
  other: {netns_path: /proc/7/ns/net, networks: {back: {interface: eth1}}}
""", "shop.yaml")
    state = desired.build(spec, observed_ids(_proc_7_ns_net=(4, 8)))
    assert {state[(Kind.VETH, "side", "front")].ns, state[(Kind.VETH, "other", "back")].ns} == {
        "/proc/7/ns/net"}


def test_paths_in_the_way_are_spec_errors_with_positions_said_once() -> None:
    spec = load_text(SPEC, "shop.yaml")
    observed = ObservedState({}, Foreign(files=(
        ("/etc/netns", "/etc/netns is a symbolic link to /srv/netns"),
        ("/run/netns/web", "/run/netns/web is a FIFO"),
    )))
    with pytest.raises(SpecError) as caught:
        desired.build(spec, observed)
    made = (", which project 'shop' did not make: netapply never follows a link or replaces "
            "what is in its way")
    assert [str(p) for p in caught.value.problems] == [
        "shop.yaml:2:1: project 'shop': its hosts tables cannot be written: /etc/netns is a "
        f"symbolic link to /srv/netns{made}; remove it (netapply keeps the project's hosts "
        "tables there)",
        f"shop.yaml:8:3: container 'web': netns web cannot be made: /run/netns/web is a "
        f"FIFO{made}; remove it or choose another netns",
    ]


def test_an_explicit_address_on_another_machine_is_never_kept_or_handed_out_here() -> None:
    """The spec holds addresses unique per network name, across machines: a
    local endpoint gives up an address that a container elsewhere now has
    explicitly (found by the history-independence property)."""
    spec = load_text("""\
version: 1
project: shop
hosts:
  here: {address: 198.51.100.1}
  there: {address: 198.51.100.2}
networks:
  front: {subnet: 172.30.1.0/24}
containers:
  web: {host: here, networks: [front]}
  far: {host: there, networks: {front: {ipv4_address: 172.30.1.2}}}
""", "s.yaml")
    observed = ObservedState({a.key: a for a in (
        Address((Kind.VETH, "web", "front"), "172.30.1.2/24", ns="web", ifname="eth0"),)})
    assert addresses(desired.build(spec, observed, "here")) == {"web": "172.30.1.3/24"}
