"""What a fleet on etcd adds to a spec, beyond its files (pure: no I/O).

- Live hosts: each machine running `watch --source etcd://...` registers
  PREFIX/hosts/NAME (its underlay address) under a lease. In a spec that
  spans machines (it has `hosts`, or a container names a `host`), the
  registered machines are hosts too. A host written in the spec's `hosts`
  wins: its address is the one written, and it stays a member whether it is
  registered or not (static, as with files). A host only registered is a
  member while its lease lives: when it expires, the other machines drop
  their forwarding and neighbour entries for it.
- Sticky overlay addresses: the addresses etcd holds for automatic overlay
  attachments (PREFIX/alloc/<network>/...) are pinned, as if written in the
  spec, so adding or removing a member never moves another. An explicit
  address always wins over a pinned one.

sources/alloc.py keeps the allocations in etcd; sources/membership.py keeps
this machine's registration.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from reconciler.model import Attachment, Driver, Host, IPAddress, Network, NetworkMode, Spec

DEFAULT_TTL = 10  # seconds: the lease of a machine's registration (watch --ttl)

HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")  # as the schema's hosts keys


@dataclass(frozen=True)
class Fleet:
    """What the store holds beside the spec files, at the revision read."""

    # Registered machines: name -> underlay address (only valid ones).
    live: Mapping[str, IPAddress] = field(default_factory=dict)
    # (network, container) -> the addresses etcd allocated to that attachment.
    pinned: Mapping[tuple[str, str], tuple[IPAddress, ...]] = field(default_factory=dict)


def spans(data: Mapping[str, object]) -> bool:
    """Whether merged spec data spans machines: it has `hosts`, or a
    container names the `host` it runs on."""
    containers = data.get("containers")
    return bool(data.get("hosts")) or (isinstance(containers, dict) and any(
        isinstance(c, dict) and c.get("host") is not None for c in containers.values()))


def complete(spec: Spec, fleet: Fleet, spanning: bool) -> Spec:
    """The spec with the fleet's live hosts (only when `spanning`) and its
    pinned overlay addresses."""
    hosts = dict(spec.hosts)
    if spanning:
        for name, address in sorted(fleet.live.items()):
            hosts.setdefault(name, Host(name, address))  # a host in the spec wins
    return pin(replace(spec, hosts=hosts), fleet.pinned)


def pin(spec: Spec, pinned: Mapping[tuple[str, str], tuple[IPAddress, ...]]) -> Spec:
    """Automatic overlay addresses made explicit where `pinned` holds a
    usable one (in the pool, not the gateway, not another attachment's
    explicit or pinned address). Explicit addresses are never changed."""
    if not pinned:
        return spec
    taken: dict[str, set[IPAddress]] = {}
    for c in spec.containers.values():
        for a in c.attachments:
            taken.setdefault(a.network, set()).update(
                ip for ip in (a.ipv4_address, a.ipv6_address) if ip is not None)
    containers = dict(spec.containers)
    for name, c in spec.containers.items():
        if c.network_mode != NetworkMode.BRIDGE:
            continue
        attachments = []
        for a in c.attachments:
            network = spec.networks.get(a.network)
            held = pinned.get((a.network, name), ())
            if network is not None and network.driver == Driver.OVERLAY and held:
                a = _pinned(a, network, held, taken.setdefault(a.network, set()))
            attachments.append(a)
        if tuple(attachments) != c.attachments:
            containers[name] = replace(c, attachments=tuple(attachments))
    return replace(spec, containers=containers)


def _pinned(a: Attachment, network: Network, held: tuple[IPAddress, ...],
            taken: set[IPAddress]) -> Attachment:
    for ip in held:
        if ip in taken or not usable(network, ip):
            continue
        if isinstance(ip, ipaddress.IPv4Address) and a.ipv4_address is None:
            a = replace(a, ipv4_address=ip)
            taken.add(ip)
        elif isinstance(ip, ipaddress.IPv6Address) and a.ipv6_address is None \
                and network.ipv6_subnet is not None:
            a = replace(a, ipv6_address=ip)
            taken.add(ip)
    return a


def pool(network: Network, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """Where automatic addresses of that family come from (None: none)."""
    if version == 4:
        return network.ip_range or network.subnet
    return network.ipv6_subnet


def usable(network: Network, ip: IPAddress) -> bool:
    """An address automatic allocation may hand out on the network."""
    found = pool(network, ip.version)
    if found is None or ip not in found:
        return False
    subnet = network.subnet if ip.version == 4 else network.ipv6_subnet
    assert subnet is not None
    gateway = network.gateway if ip.version == 4 else network.ipv6_gateway
    return ip not in (subnet.network_address, subnet.broadcast_address, gateway)


def gone(spec: Spec) -> list[str]:
    """Notes for the containers whose host is not a member now (a live
    host whose lease expired): reported, never moved."""
    if not spec.hosts:
        return []
    return [f"container '{c.name}' is on host '{c.host}', which is not registered now (its "
            "lease expired, or it never started watch): the other machines dropped its "
            "forwarding and neighbour entries; netapply does not move it"
            for c in spec.containers.values()
            if c.host is not None and c.host not in spec.hosts]
