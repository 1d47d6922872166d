"""The `expect` section: schema-valid entries -> model.Expectation, every
semantic problem reported with its position (pure; speccheck.Builder calls it).

What is refused here is what can never be checked or can never hold,
whatever the kernel looks like: an unknown container, an entry that says
neither or both of port and ping, an address no single host answers at, a
target without an address. `reach: true` from a container whose namespace
has only loopback can never hold either, but SPEC.md writes one (`{from:
batch, to: web, ping: true}`): it is valid, noted at plan time (expect.Check
caution) and checked, and fails.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable, Mapping, Set
from typing import Any

from reconciler import reserved
from reconciler.model import Container, Driver, Expectation, IPAddress, Network, NetworkMode
from reconciler.yamlsource import Path, show

Report = Callable[[Path, str], None]
SECTION = "expect"
# Address classes a check may still aim at: a container's own loopback, and
# IPv4 link-local addresses (which, unlike IPv6 ones, need no zone).
CHECKABLE = ("loopback", "link-local")


def build(raw: list[Any] | None, containers: Mapping[str, Container],
          networks: Mapping[str, Network], report: Report,
          skipped: Set[str] = frozenset(), broken: Set[int] = frozenset(),
          ) -> tuple[Expectation, ...]:
    """The spec's expectations in written order; problems go to report(path, message).

    `networks` holds only the networks without problems (a container's
    attachment to another was reported already). An entry of `broken` (its
    schema problems are reported) or naming a container of `skipped` (one
    with schema problems, not built) is passed over."""
    found = []
    for i, entry in enumerate(raw or []):
        if i in broken or entry.get("from") in skipped or entry.get("to") in skipped:
            continue
        made = _entry(i, entry, containers, networks, report)
        if made is not None:
            found.append(made)
    return tuple(found)


def _entry(i: int, raw: dict[str, Any], containers: Mapping[str, Container],
           networks: Mapping[str, Network], report: Report) -> Expectation | None:
    base: Path = (SECTION, str(i))
    what = f"expect[{i}]"
    ok = True
    ping, port = bool(raw.get("ping", False)), raw.get("port")
    if ping and port is not None:
        report((*base, "ping"), f"{what}: give port (a TCP connect) or ping: true (an ICMP "
                                "echo), not both")
        ok = False
    elif not ping and port is None:
        report(base, f"{what}: say what to check: port (a TCP connect to it) or ping: true "
                     "(an ICMP echo)")
        ok = False
    source, target = raw["from"], raw["to"]
    origin = containers.get(source)
    if origin is None:
        report((*base, "from"), f"{what}: from {show(source)} is not a container of the spec"
                                + _did_you_mean(source, containers))
        ok = False
    address: IPAddress | None = None
    if target not in containers:
        address = _address((*base, "to"), what, target, containers, networks, report)
        ok = ok and address is not None
    if not ok or origin is None:
        return None
    expectation = Expectation(i, source, target, address, port, bool(raw.get("reach", True)))
    problem = _unreachable(expectation, origin, containers, networks)
    if problem is not None:
        path, cause = problem
        report((*base, path), f"{what}: {cause}")
        return None
    return expectation


def _did_you_mean(name: str, containers: Mapping[str, Container]) -> str:
    close = difflib.get_close_matches(name, list(containers), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _address(path: Path, what: str, text: str, containers: Mapping[str, Container],
             networks: Mapping[str, Network], report: Report) -> IPAddress | None:
    """`to` written as an address: one a single host can answer at."""
    zone = reserved.zone_problem(text)
    if zone is not None:
        report(path, f"{what}: to {show(text)} {zone}")
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        report(path, f"{what}: to {show(text)} is neither a container of the spec nor an IP "
                     "address" + _did_you_mean(text, containers))
        return None
    entry = reserved.address_class(address)
    if entry is not None and not (
            entry.name in CHECKABLE and (entry.name == "loopback" or address.version == 4)):
        report(path, f"{what}: to {address} is {entry.name} ({entry.network}), which no "
                     "single host answers at")
        return None
    for network in networks.values() if address.version == 4 else ():
        # (IPv6 has no broadcast; its subnet-router anycast address is answered.)
        subnet = network.subnet
        if subnet.prefixlen >= 31:
            continue  # /31 (RFC 3021) and /32 have no such addresses
        role = ("network" if address == subnet.network_address else
                "broadcast" if address == subnet.broadcast_address else "")
        if role:
            report(path, f"{what}: to {address} is the {role} address of network "
                         f"'{network.name}' ({subnet}), which no single host answers at")
            return None
    return address


def _unreachable(e: Expectation, origin: Container, containers: Mapping[str, Container],
                 networks: Mapping[str, Network]) -> tuple[str, str] | None:
    """(field, why) when the entry can never be checked, or can never hold."""
    if e.address is not None or e.target == e.source:
        return None
    peer = containers[e.target]
    if peer.network_mode == NetworkMode.NONE:
        return "to", (f"to '{e.target}' has network_mode none: it has only loopback, so no "
                      "address of it can be checked from another container")
    if peer.network_mode == NetworkMode.BRIDGE and not peer.attachments:
        return "to", f"to '{e.target}' is attached to no network, so it has no address"
    if peer.network_mode == NetworkMode.HOST and origin.network_mode != NetworkMode.HOST \
            and host_gateway(origin, networks) is None \
            and all(a.network in networks for a in origin.attachments):
        return "to", (f"to '{e.target}' shares the host's namespace, which a container reaches "
                      "at the gateway of a bridge network; from "
                      f"'{e.source}' is on no bridge network with a gateway (name an address "
                      "in to instead)")
    return None


def host_gateway(container: Container, networks: Mapping[str, Network]) -> IPAddress | None:
    """The host's address as `container` sees it: the gateway of its first
    bridge network that has one (set on the bridge, in the host's namespace).
    None when it has none."""
    if container.network_mode != NetworkMode.BRIDGE:
        return None
    for attachment in container.attachments:
        network = networks.get(attachment.network)
        if network is not None and network.driver == Driver.BRIDGE and network.gateway:
            return network.gateway
    return None
