"""A fleet on etcd, without etcd: live hosts merged into a spec read from
etcd, forwarding and neighbour entries only for hosts that are members,
sticky overlay addresses pinned, and the allocation plan (fleet.py,
sources/alloc.py: the pure parts)."""

from __future__ import annotations

import ipaddress
import re

import pytest

from reconciler import cli, desired, fleet, sourcecli
from reconciler import spec as spec_mod
from reconciler.errors import NetapplyError, SpecError
from reconciler.model import IPAddress, Spec
from reconciler.resources import Fdb, Neigh
from reconciler.sources import alloc
from reconciler.state.observe import Foreign, ObservedState

SPEC = """\
version: 1
project: fleet
networks:
  blue: {driver: overlay, vni: 100, subnet: 10.200.0.0/24}
containers:
  web: {host: a, networks: [blue]}
  db: {host: b, networks: [blue]}
"""
LIVE = {"a": "192.0.2.11", "b": "192.0.2.12"}


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def build(text: str, live: dict[str, str] | None = None,
          pinned: dict[tuple[str, str], tuple[str, ...]] | None = None) -> Spec:
    """The spec as read from etcd with these registrations and allocations."""
    state = fleet.Fleet({n: ip(a) for n, a in (live or {}).items()},
                        {k: tuple(map(ip, v)) for k, v in (pinned or {}).items()})
    read = spec_mod.from_files([("etcd://e:2379/p/spec.yaml", text.encode())], "etcd://e:2379/p",
                               7, state)
    return spec_mod.build(read)


def on(address: str) -> ObservedState:
    """A machine whose underlay address is `address`."""
    return ObservedState({}, Foreign(host_addresses=((ip(address), "eth0"),),
                                     host_links=(("eth0", 1500, False),)))


def test_registered_machines_are_the_hosts_of_a_spec_without_hosts() -> None:
    spec = build(SPEC, LIVE)
    assert {h.name: str(h.address) for h in spec.hosts.values()} == LIVE
    # From files, the same spec is refused: there is nobody to register.
    with pytest.raises(SpecError) as e:
        spec_mod.load_text(SPEC)
    assert "host 'a' is not defined in hosts" in str(e.value.problems)


def test_a_host_written_in_the_spec_wins_and_stays_without_registration() -> None:
    text = SPEC.replace("networks:\n", "hosts:\n  a: {address: 192.0.2.99}\nnetworks:\n", 1)
    spec = build(text, {"b": "192.0.2.12", "a": "192.0.2.11"})
    assert str(spec.hosts["a"].address) == "192.0.2.99"
    assert set(build(text, {}).hosts) == {"a"}  # static: a member without registering


def test_a_spec_that_spans_no_machines_ignores_registrations() -> None:
    text = "version: 1\nproject: one\nnetworks:\n  n: {subnet: 172.30.1.0/24}\n" \
           "containers:\n  c: {networks: [n]}\n"
    assert build(text, LIVE).hosts == {}


def test_in_etcd_a_container_must_name_its_host_once_any_does() -> None:
    text = SPEC.replace("  db: {host: b, networks: [blue]}", "  db: {networks: [blue]}")
    with pytest.raises(SpecError) as e:
        build(text, LIVE)
    assert "container 'db': host is required because the spec has hosts or a container " \
           "names its host" in str(e.value.problems)
    with pytest.raises(SpecError) as e:
        build(SPEC.replace("host: b", "host: 'b c'"), LIVE)
    assert "host 'b c' is not a host name" in str(e.value.problems)


def entries(spec: Spec, host: str, address: str) -> set[tuple[str, str]]:
    state = desired.build(spec, on(address), host)
    return {("fdb", r.dst) for r in state.values() if isinstance(r, Fdb) and r.dst} | \
           {("neigh", r.ip) for r in state.values() if isinstance(r, Neigh)}


def test_entries_for_a_machine_go_with_its_registration_and_come_back_with_it() -> None:
    pins = {("blue", "db"): ("10.200.0.20",), ("blue", "web"): ("10.200.0.10",)}
    both = entries(build(SPEC, LIVE, pins), "a", "192.0.2.11")
    assert both == {("fdb", "192.0.2.12"), ("neigh", "10.200.0.20")}
    gone = build(SPEC, {"a": "192.0.2.11"}, pins)
    assert entries(gone, "a", "192.0.2.11") == set()
    assert fleet.gone(gone) == [
        "container 'db' is on host 'b', which is not registered now (its lease expired, or it "
        "never started watch): the other machines dropped its forwarding and neighbour "
        "entries; netapply does not move it"]
    # db keeps its name and address in web's hosts table while b is away.
    assert "10.200.0.20\tdb" in desired.hosts_lines(
        desired.allocate(gone, on("192.0.2.11"), "a"))["blue"]
    assert entries(build(SPEC, LIVE, pins), "a", "192.0.2.11") == both


def test_pinned_addresses_are_used_and_an_explicit_address_wins() -> None:
    pins = {("blue", "db"): ("10.200.0.20",), ("blue", "web"): ("10.200.0.10",)}
    spec = build(SPEC, LIVE, pins)
    assert [str(a.ipv4_address) for c in spec.containers.values() for a in c.attachments] \
        == ["10.200.0.10", "10.200.0.20"]
    taken = SPEC.replace("web: {host: a, networks: [blue]}",
                         "web: {host: a, networks: {blue: {ipv4_address: 10.200.0.20}}}")
    spec = build(taken, LIVE, pins)
    assert spec.containers["db"].attachments[0].ipv4_address is None  # allocated anew
    outside = build(SPEC, LIVE, {("blue", "db"): ("10.9.9.9",)})
    assert outside.containers["db"].attachments[0].ipv4_address is None


def settled(spec: Spec, found: alloc.Allocations) -> alloc.Allocations:
    """Apply the changes as etcd would, round after round, until none is left."""
    for _round in range(5):
        todo = alloc.changes(spec, found)
        if not todo:
            return found
        records, owners = dict(found.records), dict(found.owners)
        for change in todo:
            key = (change.network, change.container)
            for old in records.get(key, alloc.Record((), 0)).addresses:
                owners.pop((change.network, old), None)
            records[key] = alloc.Record(change.addresses, 1)
            owners.update({(change.network, a): change.container for a in change.addresses})
            if not change.addresses:
                del records[key]
        found = alloc.Allocations(records, owners, found.marker)
    raise AssertionError("the allocation does not settle")


def addresses(spec: Spec, found: alloc.Allocations) -> dict[str, str]:
    """container -> its addresses once the allocation settled."""
    return {c: ",".join(map(str, r.addresses))
            for (_n, c), r in settled(spec, found).records.items()}


def held(pairs: dict[str, str]) -> alloc.Allocations:
    records = {("blue", c): alloc.Record((ip(a),), 5) for c, a in pairs.items()}
    owners = {("blue", ip(a)): c for c, a in pairs.items()}
    return alloc.Allocations(records, owners, 3)


def test_allocation_keeps_every_address_as_members_come_and_go() -> None:
    first = addresses(build(SPEC, LIVE), held({}))
    assert set(first) == {"web", "db"} and first["web"] != first["db"]
    more = SPEC + "".join(f"  n{i}: {{host: a, networks: [blue]}}\n" for i in range(30))
    grown = addresses(build(more, LIVE), held(first))
    assert {c: grown[c] for c in first} == first
    assert len(set(grown.values())) == 32
    # web leaves: its allocation is released, nobody else moves.
    fewer = more.replace("  web: {host: a, networks: [blue]}\n", "")
    found = held(grown)
    changed = alloc.changes(build(fewer, LIVE), found)
    assert [(c.container, c.addresses) for c in changed] == [("web", ())]
    assert addresses(build(fewer, LIVE), found) == {c: a for c, a in grown.items() if c != "web"}


def test_an_explicit_address_takes_an_allocated_one_and_that_member_alone_moves() -> None:
    found = held({"web": "10.200.0.10", "db": "10.200.0.20"})
    text = SPEC.replace("db: {host: b, networks: [blue]}",
                        "db: {host: b, networks: {blue: {ipv4_address: 10.200.0.10}}}")
    changed = {c.container: c for c in alloc.changes(build(text, LIVE), found)}
    # db is explicit now: its allocation goes; web's address is db's now.
    assert {n: c.addresses for n, c in changed.items()} == {"db": (), "web": ()}
    after = addresses(build(text, LIVE), found)
    assert set(after) == {"web"} and after["web"] not in ("10.200.0.10", "10.200.0.20")


def test_an_address_freed_by_a_leaving_member_is_there_for_a_new_one() -> None:
    small = SPEC.replace("10.200.0.0/24", "10.200.0.0/30")
    found = held({"web": "10.200.0.1", "db": "10.200.0.2"})
    swapped = small.replace("  db: {host: b", "  newer: {host: b")
    assert addresses(build(swapped, LIVE), found) == {"web": "10.200.0.1",
                                                      "newer": "10.200.0.2"}


def test_a_full_pool_is_a_spec_problem() -> None:
    # The spec's own check counts members; here address keys that no
    # member's allocation claims (written by hand) fill the pool.
    small = SPEC.replace("10.200.0.0/24", "10.200.0.0/30")
    found = alloc.Allocations({}, {("blue", ip("10.200.0.1")): "other",
                                   ("blue", ip("10.200.0.2")): "other2"}, 3)
    with pytest.raises(SpecError) as e:
        alloc.changes(build(small, LIVE), found)
    assert "no free IPv4 address left in 10.200.0.0/30 for container 'db'" \
        in str(e.value.problems)


@pytest.mark.parametrize(("options", "message"), [
    (["--ttl", "0"], "--ttl 0: a lease lasts at least 1 second"),
    (["--address", "node-a"], "--address 'node-a' is not an IP address"),
])
def test_watch_membership_options_are_checked(options: list[str], message: str) -> None:
    args = cli._parser().parse_args(["watch", "--source", "etcd://127.0.0.1:1/p", *options])
    with pytest.raises(NetapplyError, match=re.escape(message)):
        sourcecli.source(args)
