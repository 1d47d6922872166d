"""What a plan interrupts, and for whom: states built by hand as in
test_planner.py, one end-to-end case on the in-memory kernel, and one on the
real kernel through the CLI."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path

import pytest
from rich.console import Console

from reconciler import disruption, engine, firewall, planner, render
from reconciler.drivers.memory import MemoryKernel
from reconciler.model import Network, Port
from reconciler.planner import Plan
from reconciler.resources import (
    Address,
    Bridge,
    HostsTable,
    Key,
    Netns,
    Resource,
    Route,
    Veth,
    state_of,
)
from reconciler.spec import load_text
from tests.kernelutil import run_cli

FRONT = Network("front", ipaddress.IPv4Network("172.30.1.0/24"),
                ipaddress.IPv4Address("172.30.1.1"), "br-front")
BACK = Network("back", ipaddress.IPv4Network("172.30.2.0/24"),
               ipaddress.IPv4Address("172.30.2.1"), "br-back")
BR_FRONT = Bridge("front", "br-front", 1500, "02:00:00:00:00:01")
BR_BACK = Bridge("back", "br-back", 1500, "02:00:00:00:00:02")


def veth(container: str, network: str = "front", ifname: str = "eth0", **changes: object
         ) -> Veth:
    base = Veth(container, network, container, ifname, "02:42:ac:1e:01:0a", 1500,
                f"veth{container}{network}"[:15], 1500, network,
                master_ifname=f"br-{network}")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def address(link: Veth, cidr: str) -> Address:
    return Address(link.key, cidr, ns=link.ns, ifname=link.ifname)


def default_route(link: Veth, via: str, source: Address) -> Route:
    return Route(link.ns, "0.0.0.0/0", via, link.key, ifname=link.ifname, source=source.key)


def container(name: str, cidr: str, network: str = "front") -> list[Resource]:
    link = veth(name, network)
    addr = address(link, cidr)
    gateway = str(ipaddress.ip_interface(cidr).network.network_address + 1)
    return [Netns(name), link, addr, default_route(link, gateway, addr)]


WEB = container("web", "172.30.1.10/24")
API = container("api", "172.30.1.11/24")
DB = container("db", "172.30.2.5/24", "back")
BASE: list[Resource] = [BR_FRONT, BR_BACK, *WEB, *API, *DB]


def assessed(desired: list[Resource], observed: list[Resource],
             names: dict[str, str] | None = None) -> Plan:
    want, have = state_of(desired), state_of(observed)
    plan = planner.plan(want, have)
    return dataclasses.replace(plan, disruption=disruption.assess(plan, want, have, names))


def lines(plan: Plan) -> dict[Key, list[str]]:
    assert plan.disruption is not None
    return {c.key: [d.line() for d in plan.disruption.of(c.key)] for c in plan.changes
            if plan.disruption.of(c.key)}


def swap(resources: list[Resource], old: Resource, new: Resource) -> list[Resource]:
    return [new if r is old else r for r in resources]


def test_replaced_veth_disrupts_its_container_and_its_address_and_route_say_nothing() -> None:
    moved = veth("web", ns="web2")  # a veth end cannot change namespace in place
    desired = [*swap(BASE, WEB[1], moved)]
    plan = assessed(desired, BASE)
    assert plan.counts()["replace"] == 3  # the veth, its address and its route
    assert lines(plan) == {moved.key: ["web: loses front while its veth is replaced"]}
    assert plan.disruption is not None
    assert plan.disruption.disrupted == ("web",)
    assert plan.disruption.untouched == ("api", "db")


def test_half_a_veth_pair_replaced_disrupts_nobody() -> None:
    half = veth("web", ns="?", host_ifname="")  # nothing works through it now
    plan = assessed(BASE, swap(BASE, WEB[1], half))
    assert plan.counts()["replace"] >= 1
    assert lines(plan) == {}


def test_bridge_mtu_change_disrupts_every_container_of_the_network() -> None:
    bigger = dataclasses.replace(BR_FRONT, mtu=9000)
    plan = assessed(swap(BASE, BR_FRONT, bigger), BASE)
    assert lines(plan) == {
        BR_FRONT.key: ["all containers of front (api, web): bridge MTU change 1500 -> 9000"],
    }
    assert plan.disruption is not None
    assert plan.disruption.summary_text() == "2 containers disrupted (api, web), 1 untouched."


def test_address_change_names_old_and_new_address() -> None:
    link, old = DB[1], DB[2]
    assert isinstance(link, Veth) and isinstance(old, Address)
    new = address(link, "172.30.2.9/24")
    plan = assessed(swap(BASE, old, new), BASE)
    assert lines(plan) == {old.key: [
        "db: address on back changes 172.30.2.5 -> 172.30.2.9 (open connections break)"]}


def test_default_route_moving_to_another_network() -> None:
    route = WEB[3]
    assert isinstance(route, Route)
    back = veth("web", "back", "eth1")
    back_addr = address(back, "172.30.2.20/24")
    moved = default_route(back, "172.30.2.1", back_addr)
    observed = [*BASE, back, back_addr]
    plan = assessed(swap(observed, route, moved), observed)
    assert lines(plan) == {route.key: [
        "web: default route changes: via 172.30.1.1 on front -> via 172.30.2.1 on back"]}


def test_in_place_updates_that_take_nothing_and_creates_disrupt_nobody() -> None:
    table = HostsTable("p", "hosts-abc", "# one\n")
    observed = [*BASE, table]
    # A changed allocation record (the link's mark), a renamed host end of a
    # veth, a renamed bridge, a rewritten hosts table, a new container.
    marked = veth("web", allocated="172.30.1.10")
    renamed = veth("api", host_ifname="vethrenamed")
    bridge = dataclasses.replace(BR_BACK, ifname="br-back2")
    desired = [*swap(swap(swap(observed, WEB[1], marked), API[1], renamed), BR_BACK, bridge),
               dataclasses.replace(table, content="# two\n"),
               *container("new", "172.30.1.12/24")]
    plan = assessed(desired, observed)
    assert plan.counts() == {"create": 4, "update": 4, "replace": 0, "delete": 0}
    assert lines(plan) == {}
    assert plan.disruption is not None
    assert plan.disruption.summary_text() == "This plan disrupts no running container."
    assert plan.disruption.untouched == ("api", "db", "web")
    assert plan.disruption.new == ("new",)


def test_updates_that_take_something_away() -> None:
    isolated = veth("web", isolated=True)
    renamed = veth("api", ifname="eth5")
    plan = assessed(swap(swap(BASE, WEB[1], isolated), API[1], renamed), BASE)
    assert lines(plan) == {
        isolated.key: ["web: cut off from the other containers of front (icc: false)"],
        renamed.key: ["api: interface eth0 on front is renamed eth5"],
    }


def test_removed_container_is_named_from_the_spec_and_its_links() -> None:
    batch = Netns("batch-ns")  # network_mode: none, netns: batch-ns
    observed = [*BASE, batch]
    plan = assessed([BR_FRONT, BR_BACK, *API, *DB], observed, names={"batch-ns": "batch"})
    assert lines(plan) == {
        batch.key: ["batch: its namespace batch-ns is deleted, with everything in it"],
        WEB[0].key: ["web: its namespace web is deleted, with everything in it"],
        WEB[1].key: ["web: loses front: its veth eth0 is deleted"],
    }
    assert plan.disruption is not None
    assert plan.disruption.disrupted == ("batch", "web")
    assert plan.disruption.untouched == ("api", "db")


def table(published: list[tuple[str, Port, str]], networks: list[Network] | None = None
          ) -> Resource:
    entries = [firewall.Published(c, port, FRONT, ipaddress.IPv4Address(ip))
               for c, port, ip in published]
    built, _ = firewall.build("p", networks or [FRONT, BACK], entries)
    assert built is not None
    return built


def test_published_port_moving_between_containers() -> None:
    before = table([("web", Port(8080, 80), "172.30.1.10"), ("web", Port(53, 53, "udp"),
                                                             "172.30.1.10")])
    after = table([("api", Port(8080, 80), "172.30.1.11"), ("web", Port(53, 5353, "udp"),
                                                            "172.30.1.10")])
    plan = assessed([*BASE, after], [*BASE, before])
    assert lines(plan) == {before.key: [
        "web: published 8080/tcp moves from web to api",
        "web: published 53/udp now leads to port 5353 instead of 53 (its open connections "
        "break)",
    ]}
    assert plan.disruption is not None
    assert plan.disruption.disrupted == ("web",)  # api only gains a port


def test_published_port_removed_and_added() -> None:
    before = table([("web", Port(8080, 80, host_ip=ipaddress.IPv4Address("127.0.0.1")),
                     "172.30.1.10")])
    after = table([("api", Port(9090, 90), "172.30.1.11")])
    plan = assessed([*BASE, after], [*BASE, before])
    assert lines(plan) == {before.key: [
        "web: published 127.0.0.1:8080/tcp is removed (its open connections break)"]}


def test_firewall_rules_that_take_something_away_from_a_network() -> None:
    internal = dataclasses.replace(BACK, internal=True, masquerade=False)
    renamed_front = dataclasses.replace(FRONT, interface="br-front2")
    before = table([], [FRONT, BACK])
    after = table([], [renamed_front, internal])
    plan = assessed([*BASE, after], [*BASE, before])
    # front's rules only name another bridge: nothing is lost there. In back's
    # forward chain "internal, nothing enters/leaves" take over from "nothing
    # else enters": what is lost there is the accept of replies.
    assert lines(plan) == {before.key: [
        "all containers of back (db): firewall rule removed: replies to its own connections",
        "all containers of back (db): firewall rule added: internal, only its gateway address "
        "on the host (IPv4)",
        "all containers of back (db): firewall rule removed: masquerade traffic leaving it",
    ]}
    # The reverse widens what back may do: nobody loses anything.
    assert lines(assessed([*BASE, before], [*BASE, after])) == {}


def test_icc_off_is_a_new_drop_for_the_network() -> None:
    before = table([], [FRONT, BACK])
    after = table([], [dataclasses.replace(FRONT, icc=False), BACK])
    assert lines(assessed([*BASE, after], [*BASE, before])) == {before.key: [
        "all containers of front (api, web): firewall rule added: icc off, no routing between "
        "its containers"]}


def test_json_has_disruption_per_change_and_the_summary() -> None:
    bigger = dataclasses.replace(BR_FRONT, mtu=9000)
    link, old = DB[1], DB[2]
    assert isinstance(link, Veth) and isinstance(old, Address)
    desired = swap(swap(BASE, BR_FRONT, bigger), old, address(link, "172.30.2.9/24"))
    doc = json.loads(json.dumps(assessed(desired, BASE).to_json("p")))
    by_key = {tuple(c["key"]): c["disrupts"] for c in doc["changes"]}
    assert by_key[BR_FRONT.key] == [
        {"container": "api", "network": "front", "what": "bridge MTU change 1500 -> 9000"},
        {"container": "web", "network": "front", "what": "bridge MTU change 1500 -> 9000"},
    ]
    assert by_key[old.key] == [{"container": "db", "network": "back", "what":
                                "address on back changes 172.30.2.5 -> 172.30.2.9 "
                                "(open connections break)"}]
    assert by_key[("address", "veth", "db", "back", "172.30.2.9/24")] == []  # a create
    assert doc["disruption"] == {"disrupted": ["api", "db", "web"], "untouched": [], "new": []}


SHOP = (Path(__file__).resolve().parent.parent / "examples" / "shop.yaml").read_text()
SHOP_CHANGED = (
    SHOP.replace("mtu: 1400", "mtu: 1300")
    .replace('ports: ["8080:80", "127.0.0.1:8443:443"]', 'ports: ["127.0.0.1:8443:443"]')
    .replace("    routes:\n", '    ports: ["8080:80"]\n    routes:\n')
)


def test_plan_text_and_json_of_a_real_spec_on_the_memory_kernel() -> None:
    kernel = MemoryKernel()
    spec = load_text(SHOP, "shop.yaml")
    first = engine.snapshot(kernel, spec).plan
    assert first.disruption is not None
    assert first.disruption.summary_text() == "This plan disrupts no running container."
    assert first.disruption.new == ("batch", "db", "proxy", "web")  # host mode: nothing made
    engine.apply(kernel, spec, first)
    plan = engine.snapshot(kernel, load_text(SHOP_CHANGED, "shop.yaml")).plan
    console = Console(width=200, no_color=True)
    with console.capture() as captured:
        console.print(render.plan_text(plan, "shop"))
    text = captured.get()
    assert "! proxy: published 8080/tcp moves from proxy to web" in text
    assert "! all containers of backend (db, web): bridge MTU change 1400 -> 1300" in text
    assert "! db: MTU of eth0 on backend changes 1400 -> 1300" in text
    assert text.rstrip().endswith(
        "Disruption: 3 containers disrupted (db, proxy, web), 1 untouched.")
    doc = plan.to_json("shop")
    assert doc["disruption"] == {"disrupted": ["db", "proxy", "web"], "untouched": ["batch"],
                                 "new": []}


@pytest.mark.kernel
def test_cli_plan_shows_what_a_real_change_disrupts(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = sandbox / "shop.yaml"
    spec.write_text(SHOP)
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, err
    code, out, err = run_cli(capsys, "plan", str(spec))
    assert code == 0, err
    assert "No changes." in out
    spec.write_text(SHOP_CHANGED.replace("172.30.2.10", "172.30.2.11"))
    code, out, err = run_cli(capsys, "plan", str(spec))
    assert code == 0, err
    assert "! proxy: published 8080/tcp moves from proxy to web" in out
    assert "! all containers of backend (db, web): bridge MTU change 1400 -> 1300" in out
    assert ("! db: address on backend changes 172.30.2.10 -> 172.30.2.11 (open connections "
            "break)") in out
    assert "Disruption: 3 containers disrupted (db, proxy, web), 1 untouched." in out
    code, out, err = run_cli(capsys, "plan", "--output", "json", str(spec))
    assert code == 0, err
    doc = json.loads(out)
    assert doc["disruption"]["disrupted"] == ["db", "proxy", "web"]
    firewall_change = next(c for c in doc["changes"] if c["kind"] == "firewall")
    assert firewall_change["disrupts"] == [{"container": "proxy", "network": "frontend",
                                            "what": "published 8080/tcp moves from proxy to web"}]
