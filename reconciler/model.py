"""The validated spec as immutable values: what spec.py produces.

Every default SPEC.md defines is already filled in here, so the rest of the
engine never looks at raw YAML.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from reconciler.errors import Where

IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

IFNAMSIZ = 15  # the kernel's limit on interface names, without the NUL


class Driver(StrEnum):
    BRIDGE = "bridge"
    OVERLAY = "overlay"
    MACVLAN = "macvlan"
    IPVLAN = "ipvlan"


class Runtime(StrEnum):
    """Container engines whose running containers a spec can name (`runtime`)."""

    DOCKER = "docker"
    PODMAN = "podman"


class NetworkMode(StrEnum):
    BRIDGE = "bridge"
    HOST = "host"
    NONE = "none"


DEFAULT_MTU = 1500
OVERLAY_MTU = 1450
VXLAN_PORT = 4789


def bridge_ifname(project: str, network: str) -> str:
    """Default bridge device name: Docker's `br-` + 12 hex digits, derived from project+name."""
    digest = hashlib.sha256(f"{project}/{network}".encode()).hexdigest()
    return "br-" + digest[:12]


def default_mac(ipv4: IPv4Address) -> str:
    """Docker's rule: 02:42 followed by the four bytes of the IPv4 address."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipv4.packed)


@dataclass(frozen=True)
class Host:
    name: str
    address: IPAddress


@dataclass(frozen=True)
class Network:
    name: str
    subnet: ipaddress.IPv4Network
    gateway: IPv4Address | None  # filled with the first usable address unless overlay
    interface: str  # bridge device name
    driver: Driver = Driver.BRIDGE
    ip_range: ipaddress.IPv4Network | None = None
    ipv6_subnet: ipaddress.IPv6Network | None = None
    ipv6_gateway: IPv6Address | None = None
    mtu: int = DEFAULT_MTU
    internal: bool = False
    icc: bool = True
    masquerade: bool = True
    labels: tuple[tuple[str, str], ...] = ()
    vni: int | None = None
    port: int = VXLAN_PORT
    parent: str | None = None
    mode: str | None = None


@dataclass(frozen=True)
class Attachment:
    network: str
    interface: str  # name inside the container
    ipv4_address: IPv4Address | None = None  # None: allocated
    ipv6_address: IPv6Address | None = None  # None: allocated when the network has ipv6
    mac_address: str | None = None  # None: derived from the IPv4 address
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    to: IPNetwork
    via: IPAddress


@dataclass(frozen=True)
class Port:
    published: int
    target: int
    protocol: str = "tcp"
    host_ip: IPAddress | None = None
    network: str | None = None


@dataclass(frozen=True)
class Container:
    name: str
    network_mode: NetworkMode = NetworkMode.BRIDGE
    netns: str | None = None  # named namespace; None when netns_path is set or mode is host
    netns_path: str | None = None
    host: str | None = None
    attachments: tuple[Attachment, ...] = ()
    # The networks giving the IPv4 and the IPv6 default route (SPEC.md
    # `default_route`); by default the first listed non-internal network that
    # has a gateway of that family.
    default_route: str | None = None
    default_route_ipv6: str | None = None
    routes: tuple[Route, ...] = ()
    ports: tuple[Port, ...] = ()
    runtime: Runtime | None = None  # a container of this engine, found by runtime_name
    runtime_name: str | None = None  # the engine's name for it; default: the container's name
    # Filled by runtimes.resolve for a runtime container that is running: its
    # namespace goes in netns_path, and this is the hosts file the engine gave it.
    hosts_path: str | None = None
    # False for a runtime container that is not running (or not resolved yet):
    # it keeps its addresses and DNS names, but nothing is made for it.
    running: bool = True

    @property
    def ns(self) -> str | None:
        """Namespace reference used in resources: a name, an absolute path, or None (host)."""
        if self.network_mode == NetworkMode.HOST:
            return None
        return self.netns_path or self.netns

    @property
    def engine_name(self) -> str:
        """The name a runtime container has in its engine."""
        return self.runtime_name or self.name


@dataclass(frozen=True)
class Expectation:
    """One `expect` entry: what `source` (a container's name) must reach, or
    must not (`reach` False), at `target`: a container's name, or an address
    (`address` is then set). A TCP connect to `port`, or an ICMP echo (`port`
    None, `ping` True). `index` is its place in the merged `expect` list."""

    index: int
    source: str
    target: str
    address: IPAddress | None = None
    port: int | None = None
    reach: bool = True

    @property
    def ping(self) -> bool:
        return self.port is None

    @property
    def what(self) -> str:
        """"tcp/5432" or "ping"."""
        return "ping" if self.port is None else f"tcp/{self.port}"


@dataclass(frozen=True)
class Spec:
    project: str
    networks: Mapping[str, Network]
    containers: Mapping[str, Container]
    hosts: Mapping[str, Host] = field(default_factory=dict)
    # Source positions by path, e.g. ("containers", "web", "networks", "frontend",
    # "ipv4_address"); used for errors found after loading (foreign collisions).
    where: Mapping[tuple[str, ...], Where] = field(default_factory=dict, compare=False)
    expect: tuple[Expectation, ...] = ()  # checked with real packets after apply (expect.py)

    def network_labels(self) -> dict[str, dict[str, str]]:
        """Network name -> its `labels` (SPEC.md: shown in plan and show
        output), for the networks that have any."""
        return {n.name: dict(n.labels) for n in self.networks.values() if n.labels}

    def ns_owners(self) -> Mapping[str, str]:
        """Namespace (a name or a path, as resources key it) -> the names of the
        containers in it ("web", or "web, sidecar" when they share one), for
        progress lines that say whose network a step changes. Worked out once
        per spec (watch mode asks at every reconcile); read-only."""
        return self._ns_owners

    @functools.cached_property
    def _ns_owners(self) -> Mapping[str, str]:
        owners: dict[str, list[str]] = {}
        for c in self.containers.values():
            if c.ns is not None:
                owners.setdefault(c.ns, []).append(c.name)
        return MappingProxyType({ns: ", ".join(sorted(names)) for ns, names in owners.items()})

    def locate(self, *path: str) -> Where | None:
        """The position of the longest prefix of path that was written in the files."""
        for n in range(len(path), 0, -1):
            found = self.where.get(tuple(path[:n]))
            if found is not None:
                return found
        return None
