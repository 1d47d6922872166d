"""A fleet's bookkeeping in a real etcd (3 members on loopback, inside the
test's sandbox): sticky overlay addresses allocated with transactions (members
come and go, nobody else moves; two machines allocating at once agree), and
registrations under a lease (taken over by the same machine, refused to
another, gone when revoked or expired)."""

from __future__ import annotations

import base64
import ipaddress
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from reconciler import push as push_mod
from reconciler import spec as spec_mod
from reconciler.model import IPAddress, Spec
from reconciler.sources import alloc, membership
from reconciler.sources import etcd as etcd_mod
from reconciler.sources.etcdsource import EtcdSource
from tests.etcdlab import EtcdCluster

pytestmark = pytest.mark.kernel

SPEC = """\
version: 1
project: fleet
networks:
  blue: {driver: overlay, vni: 100, subnet: 10.200.0.0/24}
containers:
"""


def members(*names: str, host: str = "a") -> str:
    return SPEC + "".join(f"  {n}: {{host: {host}, networks: [blue]}}\n" for n in names)


def store(cluster: EtcdCluster) -> etcd_mod.Store:
    return etcd_mod.Store(etcd_mod.parse_location(cluster.url("netapply/fleet")))


def push(cluster: EtcdCluster, tmp: Path, text: str) -> None:
    path = tmp / "fleet.yaml"
    path.write_text(text)
    target = store(cluster)
    try:
        push_mod.push(str(path), target)
    finally:
        target.close()


class Machine:
    """What one machine's watch does with the store: read, build, settle."""

    def __init__(self, cluster: EtcdCluster, name: str, hook: Any = None):
        self.store = HookedStore(etcd_mod.parse_location(cluster.url("netapply/fleet")), hook)
        self.member = membership.Membership(self.store, membership.Identity(
            name, ipaddress.ip_address(f"192.0.2.{10 + ord(name[0]) - ord('a')}"), 3))
        self.source = EtcdSource(self.store, self.member)

    def spec(self) -> Spec:
        return self.source.settle(spec_mod.build(self.source.read()))

    def close(self) -> None:
        self.source.close()


class HookedStore(etcd_mod.Store):
    """A Store that runs `hook` before its first transaction that writes
    (another machine acting in between), and counts failed transactions."""

    def __init__(self, location: etcd_mod.Location, hook: Any):
        super().__init__(location)
        self.hook = hook
        self.failed = 0

    def txn(self, compares: Sequence[Mapping[str, Any]], success: Sequence[Mapping[str, Any]],
            failure: Sequence[Mapping[str, Any]] = ()) -> etcd_mod.TxnResult:
        if self.hook is not None and compares and any("alloc/" in str(
                base64.b64decode(c["key"])) for c in compares):
            hook, self.hook = self.hook, None
            hook()
        result = super().txn(compares, success, failure)
        self.failed += not result.succeeded
        return result


def addresses(spec: Spec) -> dict[str, IPAddress | None]:
    return {c.name: c.attachments[0].ipv4_address for c in spec.containers.values()}


def test_overlay_addresses_stay_as_members_come_and_go(cluster: EtcdCluster,
                                                       tmp_path: Path) -> None:
    a = Machine(cluster, "a")
    try:
        push(cluster, tmp_path, members("web", "db"))
        first = addresses(a.spec())
        assert None not in first.values() and len(set(first.values())) == 2
        # Held in etcd, both ways.
        found = alloc.read(a.store.location, a.store.list("/netapply/fleet/").entries)
        assert {c: r.addresses[0] for (_n, c), r in found.records.items()} == first
        assert {ip: c for (_n, ip), c in found.owners.items()} == {v: k for k, v in first.items()}

        # Many more members, placed where the names lead: web and db stay.
        names = [f"n{i:02}" for i in range(40)]
        push(cluster, tmp_path, members("web", "db", *names))
        grown = addresses(a.spec())
        assert {k: grown[k] for k in first} == first
        assert len(set(grown.values())) == 42

        # web leaves: its allocation is released; nobody moves.
        push(cluster, tmp_path, members("db", *names))
        fewer = addresses(a.spec())
        assert fewer == {k: v for k, v in grown.items() if k != "web"}
        found = alloc.read(a.store.location, a.store.list("/netapply/fleet/").entries)
        assert ("blue", "web") not in found.records
        assert ("blue", first["web"]) not in found.owners

        # An explicit address takes db's: db alone moves (explicit wins).
        text = members(*names) + f"  db: {{host: a, networks: {{blue: {{ipv4_address: " \
            f"{grown['n07']}}}}}}}\n"
        push(cluster, tmp_path, text)
        moved = addresses(a.spec())
        assert moved["db"] == grown["n07"]
        assert moved["n07"] != grown["n07"]
        assert {k: v for k, v in moved.items() if k not in ("db", "n07")} == \
            {k: v for k, v in fewer.items() if k not in ("db", "n07")}
    finally:
        a.close()


def test_two_machines_allocating_at_once_agree(cluster: EtcdCluster, tmp_path: Path) -> None:
    names = [f"n{i:02}" for i in range(30)]
    push(cluster, tmp_path, members(*names, host="b"))
    b = Machine(cluster, "b")
    seen: dict[str, Spec] = {}
    # c settles everything between a's read and a's first transaction: a's
    # transaction fails, a lists again and takes what c allocated.
    a = Machine(cluster, "a", hook=lambda: seen.setdefault("b", b.spec()))
    try:
        on_a = addresses(a.spec())
        assert a.store.failed >= 1
        assert on_a == addresses(seen["b"])
        assert len(set(on_a.values())) == 30 and None not in on_a.values()

        # And truly at once, from two threads, for ten new members.
        more = members(*names, *[f"m{i}" for i in range(10)], host="b")
        push(cluster, tmp_path, more)
        results: dict[str, dict[str, IPAddress | None]] = {}
        start = threading.Barrier(2)

        def run(machine: Machine, name: str) -> None:
            start.wait()
            results[name] = addresses(machine.spec())

        threads = [threading.Thread(target=run, args=(m, n)) for m, n in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert results["a"] == results["b"]
        assert len(set(results["a"].values())) == 40
        assert {k: results["a"][k] for k in on_a} == on_a
    finally:
        a.close()
        b.close()


def test_a_registration_lives_with_its_lease(cluster: EtcdCluster, tmp_path: Path) -> None:
    push(cluster, tmp_path, members("web"))
    a = Machine(cluster, "a")
    try:
        a.source.read()  # registers
        reader = store(cluster)
        live = membership.live_hosts(reader.location, reader.list("/netapply/fleet/").entries)
        assert live == {"a": ipaddress.ip_address("192.0.2.10")}

        # Another machine under the same name, at another address: refused.
        other = store(cluster)
        imposter = membership.Membership(other, membership.Identity(
            "a", ipaddress.ip_address("192.0.2.99"), 3))
        with pytest.raises(membership.MembershipError, match=r"registered by a live machine "
                                                             r"at 192\.0\.2\.10"):
            imposter.join({}, tuple)

        # The same machine again (a watch killed and started anew): taken over.
        again = membership.Membership(other, membership.Identity(
            "a", ipaddress.ip_address("192.0.2.10"), 3))
        again.join({}, tuple)
        entries = reader.list("/netapply/fleet/hosts/").entries
        assert [e.lease for e in entries] == [again.lease]
        again.stopping.set()  # no keepalive: let it expire
        a.member.stopping.set()
        deadline = time.monotonic() + 30
        while reader.list("/netapply/fleet/hosts/").entries:
            assert time.monotonic() < deadline, "the registration outlived its lease"
            time.sleep(0.2)

        # Revoked on leave: gone at once.
        b = Machine(cluster, "b")
        b.source.read()
        assert [e.key for e in reader.list("/netapply/fleet/hosts/").entries] == \
            ["/netapply/fleet/hosts/b"]
        b.close()
        assert reader.list("/netapply/fleet/hosts/").entries == ()
        reader.close()
        other.close()
    finally:
        a.close()
