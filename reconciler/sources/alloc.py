"""Sticky overlay addresses kept in etcd, allocated with transactions.

For each automatic attachment of an overlay network (no address written in
the spec), etcd holds

    PREFIX/alloc/<network>/<address>                 -> the container's name
    PREFIX/alloc/<network>/by-container/<container>  -> "ipv4[,ipv6]"

written together in one transaction that holds only if the address keys do
not exist yet (create_revision 0), the container's key is as read, and the
spec is the one the machine read (PREFIX/.netapply-push unchanged, see
push.py). So two machines allocating at once never hand out one address
twice: one transaction fails, and that machine lists again and takes the
next free address (or finds the container allocated by the other). An
allocation is released (both keys deleted) when the container leaves the
network or the spec, or gets an explicit address; an allocation that is no
longer usable (out of a changed pool, or an address someone writes
explicitly now) is replaced. Nobody else's address ever moves.

A new address is looked for from a place in the pool derived from the names,
as a spec read from files places overlay members (desired.allocate), so a
spec moved from git to etcd keeps the addresses it had where places did not
collide.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler import desired, fleet
from reconciler.errors import NetapplyError, Problem, SpecError
from reconciler.model import Driver, IPAddress, Network, NetworkMode, Spec
from reconciler.sources import Changed
from reconciler.sources import etcd as etcd_mod

ALLOC = "alloc"
BY_CONTAINER = "by-container"
MARKER = ".netapply-push"  # push.py's: rewritten by every push
BATCH = 25  # attachments per transaction (etcd allows 128 operations in one)
ATTEMPTS = 20


@dataclass(frozen=True)
class Record:
    addresses: tuple[IPAddress, ...]
    mod_revision: int  # of the by-container key


@dataclass(frozen=True)
class Allocations:
    """The allocations in a listing of the prefix."""

    records: dict[tuple[str, str], Record]  # (network, container) ->
    owners: dict[tuple[str, IPAddress], str]  # (network, address) -> container
    marker: int  # mod_revision of the push marker (0: none)

    def pinned(self) -> dict[tuple[str, str], tuple[IPAddress, ...]]:
        return {key: r.addresses for key, r in self.records.items()}


def read(where: etcd_mod.Location, entries: Iterable[etcd_mod.Entry]) -> Allocations:
    """The allocations among a listing's entries (keys that are not
    allocations, or that this version did not write, are skipped)."""
    records: dict[tuple[str, str], Record] = {}
    owners: dict[tuple[str, IPAddress], str] = {}
    marker = 0
    for entry in entries:
        name = where.name(entry.key)
        if name == MARKER:
            marker = entry.mod_revision
        parts = name.split("/")
        if len(parts) < 3 or parts[0] != ALLOC:
            continue
        try:
            if len(parts) == 4 and parts[2] == BY_CONTAINER:
                text = entry.value.decode()
                addresses = tuple(ipaddress.ip_address(t) for t in text.split(",") if t)
                records[(parts[1], parts[3])] = Record(addresses, entry.mod_revision)
            elif len(parts) == 3:
                owners[(parts[1], ipaddress.ip_address(parts[2]))] = entry.value.decode()
        except (ValueError, UnicodeDecodeError):
            continue
    return Allocations(records, owners, marker)


@dataclass(frozen=True)
class _Change:
    network: str
    container: str
    record: Record | None  # as read
    keep: tuple[IPAddress, ...]
    add: tuple[IPAddress, ...]

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        return tuple(sorted((*self.keep, *self.add), key=lambda ip: ip.version))


def changes(spec: Spec, found: Allocations) -> list[_Change]:
    """What must change in etcd next for the spec (read without pinned
    addresses: the explicit ones are the spec's own). Releases first: the
    allocations of attachments that left, or that have an explicit address
    now, and addresses no longer usable. Once none is left, the allocations
    to make. Pure. Raises SpecError when a pool has no free address left."""
    wanted: dict[tuple[str, str], dict[int, IPAddress | None]] = {}
    explicit: dict[str, set[IPAddress]] = {}
    for network in spec.networks.values():
        if network.driver != Driver.OVERLAY:
            continue
        explicit[network.name] = {
            ip for c in spec.containers.values() for a in c.attachments
            if a.network == network.name for ip in (a.ipv4_address, a.ipv6_address)
            if ip is not None}
        for c in sorted(spec.containers.values(), key=lambda c: c.name):
            for a in c.attachments if c.network_mode == NetworkMode.BRIDGE else ():
                if a.network == network.name:
                    # family -> None: to allocate (when that family has a pool)
                    wanted[(network.name, c.name)] = {
                        version: None for version, written in ((4, a.ipv4_address),
                                                               (6, a.ipv6_address))
                        if written is None and fleet.pool(network, version) is not None}
    releases = []
    for key, record in sorted(found.records.items()):
        families = wanted.get(key, {})
        held_on = spec.networks.get(key[0])
        keep = tuple(ip for ip in record.addresses
                     if held_on is not None and ip.version in families
                     and fleet.usable(held_on, ip) and ip not in explicit[key[0]]
                     and found.owners.get((key[0], ip)) == key[1])
        if len({ip.version for ip in keep}) != len(keep):
            keep = keep[:1]
        if keep != record.addresses:
            releases.append(_Change(key[0], key[1], record, keep, ()))
        for ip in keep:
            families[ip.version] = ip
    if releases:
        return releases
    out = []
    taken = {name: ips | {ip for (n, ip) in found.owners if n == name}
             for name, ips in explicit.items()}
    for (name, container), families in sorted(wanted.items()):
        network = spec.networks[name]
        add = []
        for version in sorted(v for v, ip in families.items() if ip is None):
            new = _free(spec.project, network, container, version, taken[name])
            if new is None:
                raise SpecError([Problem(
                    spec.locate("networks", name, "subnet"),
                    f"network '{name}': no free IPv{version} address left in "
                    f"{fleet.pool(network, version)} for container '{container}'")])
            taken[name].add(new)
            add.append(new)
        if add:
            had = found.records.get((name, container))
            out.append(_Change(name, container, had, had.addresses if had else (), tuple(add)))
    return out


def _free(project: str, network: Network, container: str, version: int,
          taken: set[IPAddress]) -> IPAddress | None:
    pool = fleet.pool(network, version)
    assert pool is not None
    subnet = network.subnet if version == 4 else network.ipv6_subnet
    gateway = network.gateway if version == 4 else network.ipv6_gateway
    assert subnet is not None
    blocked = taken | {subnet.network_address, subnet.broadcast_address}
    if gateway is not None:
        blocked.add(gateway)
    return desired.place(project, network.name, container, pool, blocked)


def _ops(where: etcd_mod.Location, found: Allocations, change: _Change
         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The compares and operations of one change."""
    base = f"{ALLOC}/{change.network}"
    reverse = where.key(f"{base}/{BY_CONTAINER}/{change.container}")
    compares = [etcd_mod.mod_revision_is(reverse, change.record.mod_revision
                                         if change.record else 0)]
    ops: list[dict[str, Any]] = []
    for ip in change.add:
        compares.append(etcd_mod.create_revision_is(where.key(f"{base}/{ip}"), 0))
        ops.append(etcd_mod.put(where.key(f"{base}/{ip}"), change.container.encode()))
    for ip in change.record.addresses if change.record else ():
        if ip not in change.keep and found.owners.get((change.network, ip)) == change.container:
            ops.append(etcd_mod.delete(where.key(f"{base}/{ip}")))
    addresses = change.addresses
    ops.append(etcd_mod.put(reverse, ",".join(map(str, addresses)).encode()) if addresses
               else etcd_mod.delete(reverse))
    return compares, ops


def settle(store: etcd_mod.Store, spec: Spec, marker: int) -> Allocations:
    """Make etcd hold an allocation for every automatic overlay attachment of
    the spec (read without pinned addresses, at a revision where the push
    marker was at `marker`), and none for what left it. Returns the
    allocations as they are then. Raises Changed (the spec in etcd changed:
    read it again), SpecError (a pool is full), Unavailable, StoreError,
    NetapplyError (no progress after many attempts)."""
    where = store.location
    prefix = where.key(ALLOC) + "/"
    found = _list(store, prefix, marker)
    for _attempt in range(ATTEMPTS):
        todo = changes(spec, found)
        if not todo:
            return found
        guard = etcd_mod.mod_revision_is(where.key(MARKER), marker)
        for batch in _batches(todo, BATCH):
            compares, ops = [guard], []
            for change in batch:
                more, these = _ops(where, found, change)
                compares += more
                ops += these
            if not store.txn(compares, ops).succeeded:
                break  # another machine was quicker: list again, and look again
        found = _list(store, prefix, marker)
    if not changes(spec, found):
        return found
    raise NetapplyError(f"{where.url}: overlay addresses could not be allocated after "
                        f"{ATTEMPTS} attempts (other machines kept changing them)")


def _list(store: etcd_mod.Store, prefix: str, marker: int) -> Allocations:
    where = store.location
    result = store.txn([], [etcd_mod.get_prefix(prefix), etcd_mod.get(where.key(MARKER))])
    found = read(where, [*result.ranges[0].entries, *result.ranges[1].entries])
    if found.marker != marker:
        raise Changed(f"the spec at {where.url} changed while overlay addresses were being "
                      "allocated: read again")
    return found


def _batches(items: Sequence[_Change], size: int) -> Iterable[Sequence[_Change]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
