"""The firewall's desired rules and their plan, on plain values (no kernel)."""

from __future__ import annotations

import errno
import json
from typing import Any

import pytest

from reconciler import desired, engine, managers, planner, render
from reconciler.drivers.memory import MemoryKernel
from reconciler.errors import KernelError, MachineError, SpecError, UnreadError
from reconciler.resources import Bridge, Firewall, Kind, Sublink, Sysctl, Veth
from reconciler.spec import load_text
from reconciler.state.observe import Foreign, ObservedState

SPEC = """\
version: 1
project: shop
networks:
  front: {subnet: 172.30.1.0/24, interface: br-front}
  back: {subnet: 172.30.2.0/24, interface: br-back, internal: true}
containers:
  web:
    networks: [front]
    ports: ["8080:80", "127.0.0.1:8081:80/udp"]
  db:
    networks: [back]
"""
EMPTY = ObservedState({})


def build(text: str = SPEC, observed: ObservedState = EMPTY) -> dict[tuple[str, ...], object]:
    return dict(desired.build(load_text(text, "shop.yaml"), observed))


def table(state: dict[tuple[str, ...], object]) -> Firewall:
    found = state[(Kind.FIREWALL, "netapply-shop")]
    assert isinstance(found, Firewall)
    return found


def comments(fw: Firewall) -> list[str]:
    return [rule.text() for rule in fw.rules]


def test_rules_follow_docker_per_network() -> None:
    assert comments(table(build())) == [
        "guard: front: containers never reach the host's 127.0.0.1",
        "forward: front: replies to its own connections",
        "forward: front: published ports",
        "forward: front: nothing else enters",
        "forward: back: internal, nothing leaves",
        "forward: back: internal, nothing enters",
        "input: back: internal, only its gateway address on the host (IPv4)",
        "prerouting: web: publish 8080/tcp -> 80",
        "output: web: publish 8080/tcp -> 80, from this host",
        "output: web: publish 127.0.0.1:8081/udp -> 80, from this host",
        "postrouting: front: masquerade traffic leaving it",
        "postrouting: front: published ports reached from inside",
        "postrouting: front: published ports reached via 127.0.0.1",
    ]


def test_a_port_on_127_0_0_1_is_never_rewritten_from_outside() -> None:
    prerouting = [r for r in table(build()).rules if r.chain == "prerouting"]
    assert len(prerouting) == 1  # none for the port published on 127.0.0.1
    first = json.loads(prerouting[0].expr)[0]
    assert first == {"match": {"op": "!=", "left": {"payload": {"protocol": "ip",
                                                                "field": "daddr"}},
                               "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}}


def test_forwarding_localnet_and_port_flags() -> None:
    state = build(SPEC.replace("front: {subnet: 172.30.1.0/24,",
                               "front: {icc: false, subnet: 172.30.1.0/24,"))
    forwarding = state[(Kind.SYSCTL, "net/ipv4/ip_forward")]
    assert isinstance(forwarding, Sysctl) and forwarding.value == "1"
    assert forwarding.title() == (
        "sysctl net.ipv4.ip_forward = 1 (IPv4 forwarding, for network front)"
    )
    front, back = state[(Kind.BRIDGE, "front")], state[(Kind.BRIDGE, "back")]
    assert isinstance(front, Bridge) and isinstance(back, Bridge)
    assert (front.localnet, back.localnet) == (True, False)
    web, db = state[(Kind.VETH, "web", "front")], state[(Kind.VETH, "db", "back")]
    assert isinstance(web, Veth) and isinstance(db, Veth)
    assert (web.isolated, web.hairpin) == (True, False)  # isolation rules hairpin out
    assert (db.isolated, db.hairpin) == (False, False)
    assert "forward: front: icc off, no routing between its containers" in comments(table(state))


def test_internal_networks_only_need_no_forwarding() -> None:
    state = build(SPEC.replace("  front: {subnet: 172.30.1.0/24, interface: br-front}\n", "")
                  .replace("    networks: [front]\n    ports: [\"8080:80\", "
                           "\"127.0.0.1:8081:80/udp\"]\n", "    networks: [back]\n"))
    assert (Kind.SYSCTL, "net/ipv4/ip_forward") not in state
    assert comments(table(state)) == [
        "forward: back: internal, nothing leaves", "forward: back: internal, nothing enters",
        "input: back: internal, only its gateway address on the host (IPv4)",
    ]


def test_no_bridge_network_no_table() -> None:
    observed = ObservedState({}, Foreign(host_links=(("eth1", 1500, False),)))
    state = build(observed=observed, text=(
        "version: 1\nproject: shop\nnetworks:\n  lan: {driver: macvlan, parent: eth1,"
        " subnet: 192.168.50.0/24}\ncontainers:\n  web: {networks: [lan]}\n"
    ))
    assert not [k for k in state if k[0] in (Kind.FIREWALL, Kind.SYSCTL)]


def test_firewall_changes_and_idempotence() -> None:
    before = build()
    after = build(SPEC.replace("internal: true", "internal: true, icc: false"))
    plan = planner.plan(after, before)
    assert [(c.action, c.key[0], c.reason) for c in plan.changes] == [
        ("update", Kind.FIREWALL, "rules: 1 added, 0 removed"),
        ("update", Kind.VETH, "isolated off -> on"),
    ]
    text = render.plan_text(plan, "shop")
    assert "+ rule forward: back: icc off, no routing between its containers" in text
    assert planner.plan(after, after).empty


def test_shared_settings_are_never_deleted() -> None:
    state = build()
    plan = planner.plan({}, state)
    assert (Kind.SYSCTL, "net/ipv4/ip_forward") not in {c.key for c in plan.changes}
    assert ("delete", (Kind.FIREWALL, "netapply-shop")) in {
        (str(c.action), c.key) for c in plan.changes}


class NoNftKernel(MemoryKernel):
    def nft_ruleset(self) -> list[dict[str, Any]]:
        raise KernelError("list the nftables ruleset", 0, "the nft command is missing")


def test_without_nft_bridge_networks_stop_before_any_change() -> None:
    kernel = NoNftKernel()
    with pytest.raises(MachineError) as caught:
        engine.snapshot(kernel, load_text(SPEC, "shop.yaml"))
    assert str(caught.value) == (
        "bridge networks need nftables for isolation, masquerade and published ports, but "
        "netapply could not list the nftables ruleset: the nft command is missing"
    )
    assert kernel.writes == 0
    # No table the project could own: nothing is missed, destroy has nothing to do.
    assert engine.snapshot(kernel, load_text(SPEC, "shop.yaml"), destroy=True).plan.empty


def test_an_unread_ruleset_that_may_hold_the_projects_table_is_never_called_clean() -> None:
    spec = load_text(SPEC, "shop.yaml")
    applied = MemoryKernel()
    engine.apply(applied, spec, engine.snapshot(applied, spec).plan)
    kernel = NoNftKernel()
    kernel.nft = applied.nft  # the table is there; nft cannot list it
    with pytest.raises(UnreadError) as caught:
        engine.snapshot(kernel, spec)
    assert caught.value.parts == [
        "the nftables ruleset, which holds table inet netapply-shop (list the nftables "
        "ruleset: the nft command is missing)"]
    snap = engine.snapshot(kernel, spec, destroy=True)  # destroy removes the rest
    assert snap.notes == (f"netapply could not read {caught.value.parts[0]}; destroy removes "
                          "everything else, then fails",)
    with pytest.raises(UnreadError):
        engine.destroyed(snap.observed, 0)
    assert kernel.writes == 0


class NoEnteringKernel(MemoryKernel):
    """A namespace that cannot be entered (out of descriptors), or is gone."""

    errno_ = 0

    def links(self, ns: str) -> list[Any]:
        if ns == "web" and self.errno_:
            raise KernelError("open netns web", self.errno_)
        return super().links(ns)


def test_a_namespace_that_cannot_be_entered_is_unread_not_foreign() -> None:
    spec = load_text(SPEC, "shop.yaml")
    kernel = NoEnteringKernel()
    engine.apply(kernel, spec, engine.snapshot(kernel, spec).plan)
    kernel.errno_ = errno.EMFILE
    with pytest.raises(UnreadError) as caught:
        engine.snapshot(kernel, spec)
    assert caught.value.parts == [
        "netns web (open netns web: Too many open files (EMFILE))"]
    kernel.errno_ = errno.ENOENT  # deleted after it was listed: not the project's
    assert not engine.observe_project(kernel, spec).unread


LAN = """\
version: 1
project: shop
networks:
  lan: {driver: macvlan, parent: eth1, subnet: 192.168.50.0/24, mtu: 1500}
containers:
  web: {networks: [lan]}
"""


@pytest.mark.parametrize(("link", "message"), [
    (("eth1", 1500, True), "shop.yaml:4:26: network 'lan': parent interface eth1 is a port of a "
     "bridge or bond, which passes its traffic on before macvlan could see it"),
    (("eth1", 1400, False), "shop.yaml:4:65: network 'lan': mtu 1500 is larger than the mtu "
     "1400 of parent interface eth1; set mtu to at most 1400"),
])
def test_a_parent_that_cannot_carry_the_network(
    link: tuple[str, int, bool], message: str
) -> None:
    with pytest.raises(MachineError) as caught:
        build(LAN, ObservedState({}, Foreign(host_links=(link,))))
    assert [str(p) for p in caught.value.problems] == [message]


def test_passthru_gives_the_parent_to_one_container_and_keeps_its_address() -> None:
    one = LAN.replace("mtu: 1500}", "mtu: 1500, mode: passthru}")
    state = build(one, ObservedState({}, Foreign(host_links=(("eth1", 1500, False),))))
    link = state[(Kind.SUBLINK, "web", "lan")]
    assert isinstance(link, Sublink) and link.mac == ""  # the parent's: never set
    with pytest.raises(SpecError) as caught:
        load_text(one + "  db: {networks: [lan]}\n", "shop.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "shop.yaml:4:76: network 'lan': mode passthru gives the parent eth1 to one container "
        "alone, but 2 containers are attached"
    ]


def test_macvlan_and_ipvlan_cannot_share_a_parent() -> None:
    with pytest.raises(SpecError) as caught:
        load_text(LAN.replace("containers:", "  lan2: {driver: ipvlan, parent: eth1, "
                              "subnet: 192.168.51.0/24}\ncontainers:"), "shop.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "shop.yaml:5:26: network 'lan2': parent eth1 also carries macvlan network 'lan'; the "
        "kernel allows one of macvlan and ipvlan on a parent"
    ]


@pytest.mark.parametrize(("table", "chain", "manager"), [
    ("filter", "DOCKER-USER", "Docker"),
    ("docker-bridges", "", "Docker"),
    ("netavark", "", "netavark (Podman)"),
    ("cni_hostport", "", "CNI plugins"),
    ("filter", "ufw-user-input", "ufw"),
    ("netapply-docker-lab", "", "netapply project 'docker-lab'"),
    ("scanner", "", None),
    ("filter", "INPUT", None),
])
def test_other_managers_are_told_apart(table: str, chain: str, manager: str | None) -> None:
    assert managers._manager(table, chain) == manager


def test_json_plan_lists_rules_added_and_removed() -> None:
    before = build()
    after = build(SPEC.replace("internal: true", "internal: true, icc: false")
                  .replace('"8080:80", ', ""))
    doc = planner.plan(after, before).to_json("shop")
    (table,) = [c for c in doc["changes"] if c["kind"] == "firewall"]
    assert table["rules_added"] == ["forward: back: icc off, no routing between its containers"]
    assert table["rules_removed"] == [
        "prerouting: web: publish 8080/tcp -> 80",
        "output: web: publish 8080/tcp -> 80, from this host",
    ]
    assert json.loads(json.dumps(doc)) == doc  # plain JSON all the way down
