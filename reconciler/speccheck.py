"""Semantic checks and defaults: schema-valid data -> model.Spec, every problem collected."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Set
from dataclasses import dataclass, replace
from typing import Any

from reconciler import expectspec, fleet, model, reserved
from reconciler.drivers.kernel import NETNS_DIR
from reconciler.errors import Problem, SpecError, Where
from reconciler.model import Driver, NetworkMode, Spec
from reconciler.yamlsource import Path, locate, show

MODES = {
    Driver.MACVLAN: ("bridge", "private", "vepa", "passthru"),
    Driver.IPVLAN: ("l2", "l3", "l3s"),
}
NETNS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
IPV6_MIN_MTU = 1280
MIN_PREFIX_V4 = 30  # smallest subnet: network, gateway, one container, broadcast


@dataclass(frozen=True)
class _Placed:
    """A value of one container, with the path it was written at (for cross checks)."""

    container: str
    value: Any
    path: Path


MODE_CONFLICTS = {
    NetworkMode.HOST: (
        "networks", "ports", "default_route", "routes", "netns", "netns_path", "runtime",
        "runtime_name",
    ),
    NetworkMode.NONE: ("networks", "ports", "default_route", "routes"),
}
DRIVER_ONLY = {
    "vni": (Driver.OVERLAY,),
    "port": (Driver.OVERLAY,),
    "parent": (Driver.MACVLAN, Driver.IPVLAN),
    "mode": (Driver.MACVLAN, Driver.IPVLAN),
}
SHORT_PORT = re.compile(
    r"(?:(?:\[(?P<ip6>[^\]]*)\]|(?P<ip>[^\[\]]+)):)?(?P<published>\d+):(?P<target>\d+)"
    r"(?:/(?P<protocol>.*))?"
)
PROTOCOLS = ("tcp", "udp")
MIN_PREFIX_V6 = 126


def _gateway(network: model.Network, family: int) -> model.IPAddress | None:
    if family == 4:
        return network.gateway
    return network.ipv6_gateway if network.ipv6_subnet is not None else None


class Builder:
    """Turns schema-valid data into model values, collecting every semantic problem."""

    def __init__(self, data: dict[str, Any], where: dict[Path, Where],
                 broken: Set[tuple[str | int, ...]] = frozenset(), live_hosts: bool = False):
        """`broken`: the entries the schema found problems in, ("networks",
        "front") or ("expect", 2): not checked here, and where another entry
        names one, it counts as defined (its problems are reported already).
        `live_hosts`: a spec read from etcd, whose hosts may also be machines
        registered there (fleet.py): a container may name a host the spec
        does not list."""
        self.data = data
        self.live_hosts = live_hosts
        self.spans = fleet.spans(data) if live_hosts else bool(data.get("hosts"))
        self.where = where
        self.broken = broken
        self.project: str = data["project"]
        self.raw_hosts: dict[str, Any] = data.get("hosts") or {}
        self.raw_networks: dict[str, Any] = data.get("networks") or {}
        self.problems: list[Problem] = []
        self.hosts: dict[str, model.Host] = {}
        self.networks: dict[str, model.Network] = {}  # only networks without problems
        self.attachments: list[_Placed] = []
        self.ports: list[_Placed] = []

    def build(self) -> Spec:
        for name, raw in self.raw_hosts.items():
            if ("hosts", name) not in self.broken:
                self._host(name, raw)
        for name, raw in self.raw_networks.items():
            if ("networks", name) in self.broken:
                continue
            before = len(self.problems)
            network = self._network(name, raw)
            if len(self.problems) == before:
                self.networks[name] = network
        self._check_networks()
        raw_containers: dict[str, Any] = self.data.get("containers") or {}
        containers = {name: self._container(name, raw) for name, raw in raw_containers.items()
                      if ("containers", name) not in self.broken}
        self._check_addresses()
        self._check_namespaces(containers)
        self._check_ports(containers)
        for network in self.networks.values():
            self._check_pools(network)
        self._check_parents()
        expect = expectspec.build(
            self.data.get("expect"), containers, self.networks, self.report,
            skipped={str(n) for section, n in self.broken if section == "containers"},
            broken={int(n) for section, n in self.broken if section == "expect"})
        if self.problems:
            raise SpecError(self.problems)
        return Spec(self.project, self.networks, containers, self.hosts, self.where, expect)

    def report(self, path: Path, message: str) -> None:
        self.problems.append(Problem(locate(self.where, path), message))

    # parsing helpers: report and return None when the text does not parse

    def _cidr(
        self, path: Path, what: str, label: str, text: str, version: int | None
    ) -> model.IPNetwork | None:
        noun = f"an IPv{version} network" if version else "a network"
        example = "fd00:30:1::/64" if version == 6 else "172.30.1.0/24"
        zone = reserved.zone_problem(text)
        if zone is not None:
            self.report(path, f"{what}: {label} {show(text)} {zone}")
            return None
        try:
            interface = ipaddress.ip_interface(text) if "/" in text else None
        except ValueError:
            interface = None
        if interface is None:
            self.report(
                path, f"{what}: {label} {show(text)} is not {noun} in CIDR form like {example}"
            )
            return None
        if version is not None and interface.version != version:
            hint = " (IPv6 subnets go under ipv6.subnet)" if label == "subnet" else ""
            self.report(path, f"{what}: {label} {text} is not {noun}{hint}")
            return None
        network = interface.network
        if interface.ip != network.network_address:
            self.report(path, f"{what}: {label} {text} has host bits set (did you mean {network}?)")
            return None
        return network

    def _address(
        self, path: Path, what: str, label: str, text: str, version: int | None
    ) -> model.IPAddress | None:
        noun = f"an IPv{version} address" if version else "an IP address"
        zone = reserved.zone_problem(text)
        if zone is not None:
            self.report(path, f"{what}: {label} {show(text)} {zone}")
            return None
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            address = None
        if address is None or (version is not None and address.version != version):
            self.report(path, f"{what}: {label} {show(text)} is not {noun}")
            return None
        return address

    # hosts and networks

    def _host(self, name: str, raw: dict[str, Any]) -> None:
        path = ("hosts", name, "address")
        address = self._address(path, f"host '{name}'", "address", raw["address"], None)
        if address is None:
            return
        if cause := reserved.endpoint_problem(address):
            self.report(path, f"host '{name}': address {address} {cause}")
        for other in self.hosts.values():
            if other.address == address:
                self.report(
                    path, f"host '{name}': address {address} is already used by host '{other.name}'"
                )
        self.hosts[name] = model.Host(name, address)

    def _network(self, name: str, raw: dict[str, Any]) -> model.Network:
        base = ("networks", name)
        what = f"network '{name}'"
        driver = Driver(raw.get("driver", Driver.BRIDGE))
        subnet = self._subnet(base, what, raw["subnet"])
        ipv6_subnet, ipv6_gateway = self._ipv6(base, what, driver, raw.get("ipv6"))
        internal = bool(raw.get("internal", False))
        masquerade = bool(raw.get("masquerade", not internal))
        if internal and masquerade:
            path = (*base, "masquerade")
            self.report(path, f"{what}: masquerade cannot be true on an internal network")
        vni, parent, mode = self._driver_options(base, what, driver, raw)
        if "interface" in raw:
            self._ifname((*base, "interface"), what, "interface", raw["interface"],
                         "the host's loopback device")
        default_mtu = model.OVERLAY_MTU if driver == Driver.OVERLAY else model.DEFAULT_MTU
        mtu = int(raw.get("mtu", default_mtu))
        if ipv6_subnet is not None and mtu < IPV6_MIN_MTU:
            self.report(
                (*base, "mtu"),
                f"{what}: mtu {mtu} is below {IPV6_MIN_MTU}, the minimum for IPv6 "
                "(raise it or remove ipv6)",
            )
        return model.Network(
            name=name,
            subnet=subnet or ipaddress.IPv4Network("0.0.0.0/32"),  # unused: the spec is rejected
            gateway=self._gateway(base, what, driver, subnet, raw) if subnet else None,
            interface=raw.get("interface") or model.bridge_ifname(self.project, name),
            driver=driver,
            ip_range=self._ip_range(base, what, subnet, raw) if subnet else None,
            ipv6_subnet=ipv6_subnet,
            ipv6_gateway=ipv6_gateway,
            mtu=mtu,
            internal=internal,
            icc=bool(raw.get("icc", True)),
            masquerade=masquerade,
            labels=tuple(sorted((raw.get("labels") or {}).items())),
            vni=vni,
            port=int(raw.get("port", model.VXLAN_PORT)),
            parent=parent,
            mode=mode,
        )

    def _subnet(self, base: Path, what: str, text: str) -> ipaddress.IPv4Network | None:
        path = (*base, "subnet")
        subnet = self._cidr(path, what, "subnet", text, 4)
        if subnet is not None and subnet.prefixlen > MIN_PREFIX_V4:
            self.report(
                path, f"{what}: subnet {subnet} is too small (use /{MIN_PREFIX_V4} or larger)"
            )
            return None
        if subnet is not None and (cause := reserved.subnet_problem(subnet)):
            self.report(path, f"{what}: subnet {subnet} {cause}")
            return None
        assert subnet is None or isinstance(subnet, ipaddress.IPv4Network)
        return subnet

    def _gateway(
        self,
        base: Path,
        what: str,
        driver: Driver,
        subnet: ipaddress.IPv4Network,
        raw: dict[str, Any],
    ) -> ipaddress.IPv4Address | None:
        if "gateway" not in raw:
            return None if driver == Driver.OVERLAY else subnet.network_address + 1
        path = (*base, "gateway")
        gateway = self._address(path, what, "gateway", raw["gateway"], 4)
        if gateway is not None:
            cause = _misplaced(gateway, subnet, f"subnet {subnet}")
            if cause:
                self.report(path, f"{what}: gateway {gateway} {cause}")
        assert gateway is None or isinstance(gateway, ipaddress.IPv4Address)
        return gateway

    def _ip_range(
        self, base: Path, what: str, subnet: ipaddress.IPv4Network, raw: dict[str, Any]
    ) -> ipaddress.IPv4Network | None:
        if "ip_range" not in raw:
            return None
        path = (*base, "ip_range")
        ip_range = self._cidr(path, what, "ip_range", raw["ip_range"], 4)
        if not isinstance(ip_range, ipaddress.IPv4Network):
            return None
        if not ip_range.subnet_of(subnet):
            self.report(path, f"{what}: ip_range {ip_range} is not inside subnet {subnet}")
        return ip_range

    def _ipv6(
        self, base: Path, what: str, driver: Driver, raw: dict[str, Any] | None
    ) -> tuple[ipaddress.IPv6Network | None, ipaddress.IPv6Address | None]:
        if raw is None:
            return None, None
        path = (*base, "ipv6", "subnet")
        subnet = self._cidr(path, what, "ipv6.subnet", raw["subnet"], 6)
        if not isinstance(subnet, ipaddress.IPv6Network):
            return None, None
        if subnet.prefixlen > MIN_PREFIX_V6:
            self.report(
                path, f"{what}: ipv6.subnet {subnet} is too small (use /{MIN_PREFIX_V6} or larger)"
            )
            return None, None
        if cause := reserved.subnet_problem(subnet):
            self.report(path, f"{what}: ipv6.subnet {subnet} {cause}")
            return None, None
        if "gateway" not in raw:
            return subnet, None if driver == Driver.OVERLAY else subnet.network_address + 1
        path = (*base, "ipv6", "gateway")
        gateway = self._address(path, what, "ipv6.gateway", raw["gateway"], 6)
        if not isinstance(gateway, ipaddress.IPv6Address):
            return subnet, None
        cause = _misplaced(gateway, subnet, f"ipv6.subnet {subnet}")
        if cause:
            self.report(path, f"{what}: ipv6.gateway {gateway} {cause}")
        return subnet, gateway

    def _driver_options(
        self, base: Path, what: str, driver: Driver, raw: dict[str, Any]
    ) -> tuple[int | None, str | None, str | None]:
        for key, drivers in DRIVER_ONLY.items():
            if key in raw and driver not in drivers:
                names = " and ".join(drivers)
                self.report((*base, key), f"{what}: {key} only applies to {names} networks")
        vni = int(raw["vni"]) if "vni" in raw else None
        if driver == Driver.OVERLAY:
            if vni is None:
                self.report(base, f"{what}: vni is required for overlay networks")
            if not self.spans:
                self.report(base, f"{what}: overlay networks need a hosts section listing the "
                            "machines" + (", or containers naming their host (registered "
                            "machines are hosts)" if self.live_hosts else ""))
        if driver not in MODES:
            return vni, None, None
        parent, mode = raw.get("parent"), raw.get("mode")
        if parent is None:
            self.report(base, f"{what}: parent is required for {driver} networks")
        else:
            self._ifname((*base, "parent"), what, "parent", parent,
                         f"the loopback device; the kernel refuses it as the parent of {driver} "
                         "links, which must be an Ethernet device")
        modes = MODES[driver]
        if mode is not None and mode not in modes:
            cause = (
                f"mode {mode} is not valid for {driver} networks (use one of {', '.join(modes)})"
            )
            self.report((*base, "mode"), f"{what}: {cause}")
        return vni, parent, mode or modes[0]

    def _check_networks(self) -> None:
        seen: list[model.Network] = []
        for network in self.networks.values():
            for other in seen:
                self._check_network_pair(network, other)
            seen.append(network)

    def _check_network_pair(self, network: model.Network, other: model.Network) -> None:
        base, what = ("networks", network.name), f"network '{network.name}'"
        of_other = f"of network '{other.name}'"
        if network.subnet.overlaps(other.subnet):
            cause = f"subnet {network.subnet} overlaps subnet {other.subnet} {of_other}"
            self.report((*base, "subnet"), f"{what}: {cause}")
        if (
            network.ipv6_subnet
            and other.ipv6_subnet
            and network.ipv6_subnet.overlaps(other.ipv6_subnet)
        ):
            cause = (
                f"ipv6.subnet {network.ipv6_subnet} overlaps"
                f" ipv6.subnet {other.ipv6_subnet} {of_other}"
            )
            self.report((*base, "ipv6", "subnet"), f"{what}: {cause}")
        if network.interface == other.interface:
            cause = f"interface '{network.interface}' is already the bridge device {of_other}"
            self.report((*base, "interface"), f"{what}: {cause}")
        if network.vni is not None and network.vni == other.vni:
            self.report(
                (*base, "vni"),
                f"{what}: vni {network.vni} is already used by network '{other.name}'",
            )

    # containers

    def _container(self, name: str, raw: dict[str, Any]) -> model.Container:
        base = ("containers", name)
        what = f"container '{name}'"
        mode = NetworkMode(raw.get("network_mode", NetworkMode.BRIDGE))
        for key in MODE_CONFLICTS.get(mode, ()):
            if key in raw:
                self.report(
                    (*base, key), f"{what}: network_mode {mode} cannot be combined with {key}"
                )
        netns, netns_path = self._namespace(base, what, name, mode, raw)
        runtime = self._runtime(base, what, raw)
        host = self._host_ref(base, what, mode, raw)
        if mode != NetworkMode.BRIDGE:
            attachments: tuple[model.Attachment, ...] = ()
            defaults: dict[int, str | None] = {4: None, 6: None}
            routes: tuple[model.Route, ...] = ()
            ports: tuple[model.Port, ...] = ()
        else:
            attachments = self._attachments(base, what, raw.get("networks"))
            defaults = self._default_routes(base, what, raw, attachments)
            routes = self._routes(base, what, raw.get("routes") or [], attachments)
            ports = self._ports(base, what, raw.get("ports") or [], attachments)
        # Made once, not made and then replace()d: that made each container
        # twice, at every build (about 3 ms of a 1000-container spec's check).
        return model.Container(
            name=name,
            network_mode=mode,
            netns=None if runtime else netns,
            netns_path=netns_path,
            host=host,
            attachments=attachments,
            default_route=defaults[4],
            default_route_ipv6=defaults[6],
            routes=routes,
            ports=ports,
            runtime=runtime,
            runtime_name=raw.get("runtime_name"),
            # Unknown until runtimes.resolve has asked the engine.
            running=runtime is None,
        )

    def _namespace(
        self, base: Path, what: str, name: str, mode: NetworkMode, raw: dict[str, Any]
    ) -> tuple[str | None, str | None]:
        netns, netns_path = raw.get("netns"), raw.get("netns_path")
        if netns is not None and netns_path is not None:
            self.report((*base, "netns_path"), f"{what}: netns and netns_path cannot both be set")
        if netns is not None and not NETNS_NAME.fullmatch(netns):
            cause = (
                f"netns {show(netns)} is not safe as a file name (use up to 64 letters, digits,"
                " '_', '.' or '-', starting with a letter or digit)"
            )
            self.report((*base, "netns"), f"{what}: {cause}")
        if netns_path is not None and (not os.path.isabs(netns_path) or "\0" in netns_path):
            self.report(
                (*base, "netns_path"),
                f"{what}: netns_path {show(netns_path)} must be an absolute path",
            )
        if mode == NetworkMode.HOST:
            return None, None
        if netns_path is not None:
            return None, netns_path
        return netns or name, None

    def _runtime(self, base: Path, what: str, raw: dict[str, Any]) -> model.Runtime | None:
        """`runtime`, which names the namespace in place of netns and netns_path."""
        runtime = raw.get("runtime")
        if runtime is None:
            if "runtime_name" in raw:
                self.report((*base, "runtime_name"),
                            f"{what}: runtime_name needs runtime (docker or podman)")
            return None
        for key in ("netns", "netns_path"):
            if key in raw:
                self.report((*base, key), f"{what}: runtime {runtime} and {key} cannot both be "
                            "set (the engine's container has its own namespace)")
        return model.Runtime(runtime)

    def _host_ref(
        self, base: Path, what: str, mode: NetworkMode, raw: dict[str, Any]
    ) -> str | None:
        host = raw.get("host")
        if self.live_hosts and host is not None and host not in self.raw_hosts:
            # A machine that registers in etcd under that name (fleet.py).
            if not fleet.HOST_NAME.fullmatch(host):
                self.report((*base, "host"), f"{what}: host {show(host)} is not a host name "
                            "(^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$)")
        elif host is not None and host not in self.raw_hosts:
            self.report((*base, "host"), f"{what}: host {show(host)} is not defined in hosts")
        if host is None and self.spans and mode != NetworkMode.HOST:
            self.report(base, f"{what}: host is required because the spec has hosts"
                        + (" or a container names its host" if self.live_hosts else ""))
        return host

    def _attachments(self, base: Path, what: str, raw: Any) -> tuple[model.Attachment, ...]:
        entries = self._network_entries(base, what, raw)
        used = {options["interface"] for _, options, _ in entries if "interface" in options}
        attachments = []
        for position, (network, options, path) in enumerate(entries):
            interface = options.get("interface")
            if interface is None:
                interface = _free_interface(position, used)
                used.add(interface)
            else:
                self._ifname((*path, "interface"), what, "interface", interface,
                             "the namespace's loopback device")
            attachment = self._attachment(path, what, network, options, interface)
            attachments.append(attachment)
            self.attachments.append(_Placed(base[1], attachment, path))
        return tuple(attachments)

    def _ifname(self, path: Path, what: str, label: str, name: str, loopback: str) -> None:
        """An interface name the spec gives: one the kernel takes (reserved.py),
        and not the loopback device (`loopback` says which one it would be)."""
        if name == reserved.LOOPBACK_IFNAME:
            cause = f"{label} '{name}' is {loopback}"
            if label == "interface":
                cause += "; choose another name"
        else:
            problem = reserved.ifname_problem(name)
            if problem is None:
                return
            cause = f"{label} {show(name)} {problem}"
        self.report(path, f"{what}: {cause}")

    def _network_entries(
        self, base: Path, what: str, raw: Any
    ) -> list[tuple[str, dict[str, Any], Path]]:
        """(network name, attachment options, path) in listed order, for list or map form."""
        if isinstance(raw, list):
            items: list[tuple[str, dict[str, Any], Path]] = [
                (name, {}, (*base, "networks", str(i))) for i, name in enumerate(raw)
            ]
            for name, _, path in items:  # so Spec.locate() finds list entries by name too
                self.where.setdefault((*base, "networks", name), self.where[path])
        else:
            items = [
                (name, opts or {}, (*base, "networks", name)) for name, opts in (raw or {}).items()
            ]
        entries: list[tuple[str, dict[str, Any], Path]] = []
        for name, options, path in items:
            if any(name == seen for seen, _, _ in entries):
                self.report(path, f"{what}: network '{name}' is listed twice")
                continue
            if name not in self.raw_networks:
                self.report(path, f"{what}: network {show(name)} is not defined in networks")
            entries.append((name, options, path))
        return entries

    def _attachment(
        self, path: Path, what: str, name: str, options: dict[str, Any], interface: str
    ) -> model.Attachment:
        network = self.networks.get(name)
        ipv4 = ipv6 = None
        if "ipv4_address" in options:
            ipv4 = self._address(
                (*path, "ipv4_address"), what, "ipv4_address", options["ipv4_address"], 4
            )
            if ipv4 is not None and network is not None:
                self._check_endpoint((*path, "ipv4_address"), what, ipv4, network)
        if "ipv6_address" in options:
            ipv6 = self._ipv6_address(
                (*path, "ipv6_address"), what, options["ipv6_address"], network
            )
        mac = None
        if "mac_address" in options:
            mac = self._mac((*path, "mac_address"), what, options["mac_address"])
        return model.Attachment(
            network=name,
            interface=interface,
            ipv4_address=ipv4 if isinstance(ipv4, ipaddress.IPv4Address) else None,
            ipv6_address=ipv6,
            mac_address=mac,
            aliases=tuple(options.get("aliases") or ()),
        )

    def _ipv6_address(
        self, path: Path, what: str, text: str, network: model.Network | None
    ) -> ipaddress.IPv6Address | None:
        if network is not None and network.ipv6_subnet is None:
            cause = f"ipv6_address is set but network '{network.name}' has no ipv6 subnet"
            self.report(path, f"{what}: {cause}")
            return None
        address = self._address(path, what, "ipv6_address", text, 6)
        if isinstance(address, ipaddress.IPv6Address) and network is not None:
            self._check_endpoint(path, what, address, network)
            return address
        return None

    def _check_endpoint(
        self, path: Path, what: str, address: model.IPAddress, network: model.Network
    ) -> None:
        """A container address must be a usable address of the network, not its gateway."""
        if address.version == 4:
            subnet: model.IPNetwork | None = network.subnet
            gateway: model.IPAddress | None = network.gateway
        else:
            subnet, gateway = network.ipv6_subnet, network.ipv6_gateway
        assert subnet is not None
        label = f"ipv{address.version}_address"
        cause = _misplaced(address, subnet, f"network '{network.name}' ({subnet})")
        if cause is None and address == gateway:
            cause = f"is the gateway of network '{network.name}'"
        if cause:
            self.report(path, f"{what}: {label} {address} {cause}")

    def _mac(self, path: Path, what: str, text: str) -> str | None:
        mac = text.lower()
        if not MAC.fullmatch(mac):
            self.report(
                path,
                f"{what}: mac_address {show(text)} is not a MAC address like 02:42:ac:1e:01:0a",
            )
            return None
        if int(mac[:2], 16) & 1:
            cause = f"mac_address {mac} is a multicast address (the first byte must be even)"
            self.report(path, f"{what}: {cause}")
            return None
        if mac == "00:00:00:00:00:00":
            self.report(path, f"{what}: mac_address {mac} is not a usable address")
            return None
        return mac

    def _default_routes(
        self, base: Path, what: str, raw: dict[str, Any], attachments: tuple[model.Attachment, ...]
    ) -> dict[int, str | None]:
        """The networks giving each family's default route: `default_route: NAME`
        (each family that network has a gateway for), `{ipv4: NAME, ipv6: NAME}`,
        and for a family left open the first listed non-internal network with a
        gateway of that family (SPEC.md; Docker picks per family likewise)."""
        chosen = raw.get("default_route")
        path = (*base, "default_route")
        asked: dict[int, str | None] = {}
        if isinstance(chosen, str):
            network = self._default_network(path, what, "default_route", chosen, attachments)
            if network is not None:
                if network.gateway is None and network.ipv6_gateway is None:
                    self.report(path, f"{what}: default_route '{chosen}' has no gateway")
                asked = {family: chosen for family in (4, 6)
                         if _gateway(network, family) is not None}
        elif isinstance(chosen, dict):
            for key, family in (("ipv4", 4), ("ipv6", 6)):
                if key not in chosen:
                    continue
                name = chosen[key]
                label = f"default_route.{key}"
                asked[family] = name  # named: no other network gives it
                network = self._default_network((*path, key), what, label, name, attachments)
                if network is not None and _gateway(network, family) is None:
                    has = "ipv6 gateway" if family == 6 else "gateway"
                    self.report((*path, key), f"{what}: {label} '{name}' has no {has}")
        return {family: asked[family] if family in asked else next(
                    (n.name for a in attachments if (n := self.networks.get(a.network))
                     and not n.internal and _gateway(n, family) is not None), None)
                for family in (4, 6)}

    def _default_network(
        self, path: Path, what: str, label: str, name: str,
        attachments: tuple[model.Attachment, ...],
    ) -> model.Network | None:
        """The network a default_route names, if it can give one."""
        if name not in [a.network for a in attachments]:
            self.report(path, f"{what}: {label} {show(name)} is not one of the container's "
                        "networks")
            return None
        network = self.networks.get(name)
        if network is not None and network.internal:
            self.report(path, f"{what}: {label} '{name}' is an internal network, which has no "
                        "way out")
            return None
        return network

    def _routes(
        self,
        base: Path,
        what: str,
        raw: list[dict[str, str]],
        attachments: tuple[model.Attachment, ...],
    ) -> tuple[model.Route, ...]:
        subnets: list[model.IPNetwork] = []
        owners: dict[model.IPNetwork, str] = {}  # subnet -> network name
        for attachment in attachments:
            network = self.networks.get(attachment.network)
            if network is not None:
                subnets.extend(s for s in (network.subnet, network.ipv6_subnet) if s is not None)
                owners.update((s, network.name) for s in (network.subnet, network.ipv6_subnet)
                              if s is not None)
        routes = []
        listed: dict[model.IPNetwork, int] = {}  # destination -> first routes[] index
        for i, route in enumerate(raw):
            path = (*base, "routes", str(i))
            label = f"routes[{i}]"
            to = self._cidr((*path, "to"), what, f"{label}.to", route["to"], None)
            via = self._address((*path, "via"), what, f"{label}.via", route["via"], None)
            if to is None or via is None:
                continue
            if to.version != via.version:
                cause = (
                    f"{label}.via {via} is IPv{via.version} but {label}.to {to} is IPv{to.version}"
                )
                self.report((*path, "via"), f"{what}: {cause}")
            elif not any(via in subnet for subnet in subnets):
                cause = (
                    f"{label}.via {via} is not inside the subnet of any of the container's networks"
                )
                self.report((*path, "via"), f"{what}: {cause}")
            else:
                # The kernel takes no broadcast address as a gateway (EINVAL), and
                # a network address is no host to forward through.
                for subnet in subnets:
                    misplaced = _misplaced(via, subnet, f"network '{owners[subnet]}' ({subnet})")
                    if via in subnet and misplaced:
                        self.report((*path, "via"), f"{what}: {label}.via {via} {misplaced}")
                        break
            if to in subnets or to.prefixlen == 0:
                cause = (
                    f"{label}.to {to} is a subnet the container is attached to, reached directly"
                    if to.prefixlen else f"{label}.to {to} is the default route: use default_route"
                )
                self.report((*path, "to"), f"{what}: {cause}")
            first = listed.setdefault(to, i)
            if first != i:
                self.report((*path, "to"),
                            f"{what}: {label}.to {to} is listed twice (also routes[{first}])")
                continue
            routes.append(model.Route(to, via))
        return tuple(routes)

    def _ports(
        self, base: Path, what: str, raw: list[Any], attachments: tuple[model.Attachment, ...]
    ) -> tuple[model.Port, ...]:
        ports = []
        for i, value in enumerate(raw):
            path = (*base, "ports", str(i))
            port = self._port_value(path, what, f"ports[{i}]", value)
            if port is None:
                continue
            if port.host_ip is not None and port.host_ip.version == 6:
                self.report(path, f"{what}: ports[{i}] host_ip {port.host_ip}: ports are "
                                  "published on IPv4 host addresses only (netapply does not "
                                  "NAT IPv6)")
                continue
            network = self._port_network(path, what, f"ports[{i}]", value, attachments)
            port = replace(port, network=network)
            ports.append(port)
            self.ports.append(_Placed(base[1], port, path))
        return tuple(ports)

    def _port_value(self, path: Path, what: str, label: str, value: Any) -> model.Port | None:
        if isinstance(value, dict):
            host_ip = None
            if "host_ip" in value:
                host_ip = self._address(
                    (*path, "host_ip"), what, f"{label}.host_ip", value["host_ip"], None
                )
                if host_ip is None:
                    return None
            protocol = value.get("protocol", "tcp")
            return model.Port(int(value["published"]), int(value["target"]), protocol, host_ip)
        match = SHORT_PORT.fullmatch(value)
        if match is None:
            form = '[host_ip:]published:target[/tcp|udp], like "8080:80"'
            self.report(
                path, f"{what}: {label} {show(value)} is not a port mapping of the form {form}"
            )
            return None
        protocol = match["protocol"] or "tcp"
        if protocol not in PROTOCOLS:
            self.report(path, f"{what}: {label} protocol {show(protocol)} must be tcp or udp")
            return None
        numbers = int(match["published"]), int(match["target"])
        if not all(1 <= number <= 65535 for number in numbers):
            self.report(
                path, f"{what}: {label} {show(value)}: port numbers must be between 1 and 65535"
            )
            return None
        host_ip = None
        ip_text = match["ip6"] if match["ip6"] is not None else match["ip"]
        if ip_text is not None:
            host_ip = self._address(path, what, f"{label} host_ip", ip_text, None)
            if host_ip is None:
                return None
        return model.Port(numbers[0], numbers[1], protocol, host_ip)

    def _port_network(
        self,
        path: Path,
        what: str,
        label: str,
        value: Any,
        attachments: tuple[model.Attachment, ...],
    ) -> str | None:
        networks = [self.networks.get(a.network) for a in attachments]
        if not (isinstance(value, dict) and "network" in value):
            for network in networks:
                if network and network.driver == Driver.BRIDGE and not network.internal:
                    return network.name
            if all(networks):  # otherwise a broken network was already reported
                cause = (
                    f"{label} needs a bridge network that is not internal,"
                    " but the container has none"
                )
                self.report(path, f"{what}: {cause}")
            return None
        chosen: str = value["network"]
        path = (*path, "network")
        network = self.networks.get(chosen)
        if chosen not in [a.network for a in attachments]:
            self.report(
                path,
                f"{what}: {label}.network {show(chosen)} is not one of the container's networks",
            )
        elif network is not None and network.driver != Driver.BRIDGE:
            cause = (
                f"{label}.network '{chosen}' uses driver {network.driver};"
                " ports are published on bridge networks only"
            )
            self.report(path, f"{what}: {cause}")
        elif network is not None and network.internal:
            cause = (
                f"{label}.network '{chosen}' is internal; internal networks have no published ports"
            )
            self.report(path, f"{what}: {cause}")
        return chosen

    # checks across containers

    def _check_addresses(self) -> None:
        """Addresses and MAC addresses are unique on each network."""
        owners: dict[tuple[str, str, str], str] = {}
        for placed in self.attachments:
            attachment: model.Attachment = placed.value
            values = {
                "ipv4_address": attachment.ipv4_address,
                "ipv6_address": attachment.ipv6_address,
                "mac_address": attachment.mac_address,
            }
            for label, value in values.items():
                if value is None:
                    continue
                owner = owners.setdefault((attachment.network, label, str(value)), placed.container)
                if owner != placed.container:
                    cause = (
                        f"{label} {value} on network '{attachment.network}'"
                        f" is already used by container '{owner}'"
                    )
                    self.report((*placed.path, label), f"container '{placed.container}': {cause}")

    def _check_namespaces(self, containers: dict[str, model.Container]) -> None:
        """One named netns per container; interface names unique inside each namespace."""
        netns_owners: dict[tuple[str | None, str], str] = {}
        for name, container in containers.items():
            if container.netns is None:
                continue
            owner = netns_owners.setdefault((container.host, container.netns), name)
            if owner != name:
                cause = f"netns '{container.netns}' is already used by container '{owner}'"
                self.report(("containers", name, "netns"), f"container '{name}': {cause}")
        for name, container in containers.items():
            # The same namespace by identity is refused at plan time
            # (desired.namespace_problems); the path's text already tells here.
            path = container.netns_path
            if path is None or os.path.dirname(os.path.normpath(path)) != NETNS_DIR:
                continue
            target = netns_owners.get((container.host, os.path.basename(os.path.normpath(path))))
            if target is not None:
                self.report(("containers", name, "netns_path"), (
                    f"container '{name}': netns_path {path} is the namespace of container "
                    f"'{target}' (netns {containers[target].netns}), which netapply makes and "
                    "deletes with that container; a container cannot also be attached to it "
                    "by path"))
        engine_owners: dict[tuple[str | None, str, str], str] = {}
        for name, container in containers.items():
            if container.runtime is None:
                continue
            ref = (container.host, container.runtime, container.engine_name)
            owner = engine_owners.setdefault(ref, name)
            if owner != name:
                cause = (f"{container.runtime} container '{container.engine_name}' is already "
                         f"used by container '{owner}'")
                path = "runtime_name" if container.runtime_name else "runtime"
                self.report(("containers", name, path), f"container '{name}': {cause}")
        interfaces: dict[tuple[str | None, str, str], _Placed] = {}
        for placed in self.attachments:
            container = containers[placed.container]
            ns = container.ns
            if container.runtime is not None:
                ns = f"{container.runtime}:{container.engine_name}"
            if ns is None:
                continue
            key = (container.host, ns, placed.value.interface)
            first = interfaces.setdefault(key, placed)
            if first is placed:
                continue
            interface = placed.value.interface
            if first.container == placed.container:
                cause = (
                    f"interface '{interface}' is already used for network '{first.value.network}'"
                )
            else:
                cause = (
                    f"interface '{interface}' is already used by container '{first.container}'"
                    " in the same namespace"
                )
            self.report((*placed.path, "interface"), f"container '{placed.container}': {cause}")

    def _check_ports(self, containers: dict[str, model.Container]) -> None:
        """A host address, port and protocol can be published once per machine."""
        taken: dict[tuple[str | None, str, int], list[_Placed]] = {}
        for placed in self.ports:
            port: model.Port = placed.value
            key = (containers[placed.container].host, port.protocol, port.published)
            for other in taken.get(key, []):
                if _clash(port.host_ip, other.value.host_ip):
                    on = "all host addresses" if port.host_ip is None else str(port.host_ip)
                    cause = (
                        f"port {port.published}/{port.protocol} on {on}"
                        f" is already published by container '{other.container}'"
                    )
                    self.report(placed.path, f"container '{placed.container}': {cause}")
                    break
            taken.setdefault(key, []).append(placed)

    def _check_parents(self) -> None:
        """What the kernel refuses on one parent: macvlan and ipvlan links together,
        and a passthru macvlan beside any other link."""
        by_parent: dict[tuple[str | None, str | None], list[model.Network]] = {}
        for network in self.networks.values():
            if network.driver in (Driver.MACVLAN, Driver.IPVLAN):
                by_parent.setdefault((network.parent, network.driver), []).append(network)
        parents = {parent for parent, _ in by_parent}
        for parent in sorted(p for p in parents if p is not None):
            macvlan, ipvlan = by_parent.get((parent, Driver.MACVLAN)), by_parent.get(
                (parent, Driver.IPVLAN))
            if macvlan and ipvlan:
                other = ipvlan[0]
                self.report(("networks", other.name, "parent"),
                            f"network '{other.name}': parent {parent} also carries macvlan "
                            f"network '{macvlan[0].name}'; the kernel allows one of macvlan "
                            "and ipvlan on a parent")
        for network in self.networks.values():
            if network.driver != Driver.MACVLAN or network.mode != "passthru":
                continue
            users = sum(1 for p in self.attachments if p.value.network == network.name)
            sharing = [n.name for n in by_parent.get((network.parent, Driver.MACVLAN), [])
                       if n.name != network.name]
            if users > 1 or sharing:
                self.report(("networks", network.name, "mode"),
                            f"network '{network.name}': mode passthru gives the parent "
                            f"{network.parent} to one container alone, but "
                            + (f"{users} containers are attached" if users > 1 else
                               f"network '{sharing[0]}' uses it too"))

    def _check_pools(self, network: model.Network) -> None:
        """Enough free addresses for every attachment without an explicit one."""
        on_network = [p.value for p in self.attachments if p.value.network == network.name]
        base = ("networks", network.name)
        self._check_pool(
            (*base, "ip_range" if network.ip_range else "subnet"),
            network,
            network.ip_range or network.subnet,
            network.gateway,
            [a.ipv4_address for a in on_network],
        )
        if network.ipv6_subnet is not None:
            self._check_pool(
                (*base, "ipv6", "subnet"),
                network,
                network.ipv6_subnet,
                network.ipv6_gateway,
                [a.ipv6_address for a in on_network],
            )

    def _check_pool(
        self,
        path: Path,
        network: model.Network,
        pool: model.IPNetwork,
        gateway: model.IPAddress | None,
        addresses: list[Any],
    ) -> None:
        wanted = addresses.count(None)
        subnet = network.subnet if pool.version == 4 else network.ipv6_subnet
        assert subnet is not None
        reserved = {subnet.network_address, gateway, *addresses}
        if isinstance(subnet, ipaddress.IPv4Network):
            reserved.add(subnet.broadcast_address)
        free = pool.num_addresses - sum(
            1 for address in reserved if address is not None and address in pool
        )
        if wanted > free:
            family = f"IPv{pool.version}"
            need = "container needs" if wanted == 1 else "containers need"
            cause = f"{wanted} {need} an automatic {family} address, but {pool} has room for {free}"
            self.report(path, f"network '{network.name}': {cause}")


def _misplaced(address: model.IPAddress, subnet: model.IPNetwork, owner: str) -> str | None:
    """Why address cannot be used by an endpoint of subnet, or None when it can."""
    if address not in subnet:
        return f"is outside {owner}"
    if address == subnet.network_address:
        return f"is the network address of {owner}"
    if isinstance(subnet, ipaddress.IPv4Network) and address == subnet.broadcast_address:
        return f"is the broadcast address of {owner}"
    return None


def _free_interface(position: int, used: set[str]) -> str:
    """eth<position>, or the next ethN not taken by an explicit name."""
    number = position
    while f"eth{number}" in used:
        number += 1
    return f"eth{number}"


def _clash(a: model.IPAddress | None, b: model.IPAddress | None) -> bool:
    """Two host addresses clash when equal or when either means 'all addresses'."""
    return a is None or b is None or a.is_unspecified or b.is_unspecified or a == b
