"""A Compose project (the file's data) -> the blocks of a netapply spec: its
networks, and its services as containers with their attachments and ports;
problems of the Compose file's structure are collected with their places."""

from __future__ import annotations

import contextlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from reconciler import yamlsource
from reconciler.compose.ports import _port, _port_text, _short_port
from reconciler.compose.reading import netapply_project
from reconciler.compose.yamltext import _Block, _Comment, _text
from reconciler.errors import Problem, Where

# netapply's names (SPEC.md).
NETWORK_NAME = re.compile(r"[a-z][a-z0-9_-]{0,30}")
CONTAINER_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
IFNAME = re.compile(r"(?!\.\.?$)[A-Za-z0-9_.-]{1,15}")
DNSNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")

DEFAULT_NETWORK = "default"  # Compose's network for services without `networks`
# Where subnets come from for networks the Compose file gives none (Docker
# would pick one from its address pools; netapply needs it written down).
SUBNET_POOL = ipaddress.IPv4Network("172.30.0.0/16")
SUBNET_PREFIX = 24

TOP_LEVEL = ("version", "name", "include", "services", "networks", "volumes", "configs",
             "secrets", "models")
SUPPORTED_DRIVERS = ("bridge", "macvlan", "ipvlan")
LAN_MODE_OPTION = {"macvlan": "macvlan_mode", "ipvlan": "ipvlan_mode"}
# Bridge driver options with a spec key (docs/docker.md, "Bridge driver options").
BRIDGE_NAME = "com.docker.network.bridge.name"
DRIVER_MTU = "com.docker.network.driver.mtu"
BRIDGE_ICC = "com.docker.network.bridge.enable_icc"
BRIDGE_MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"
ENDPOINT_IFNAME = "com.docker.network.endpoint.ifname"
# Service keys about networking that netapply has no key for, and why.
SERVICE_KEY_REASONS = {
    "hostname": "the container's name in the hosts file netapply writes is its key",
    "domainname": "the container's name in the hosts file netapply writes is its key",
    "dns": "netapply runs no DNS server; names come from the hosts file it writes",
    "dns_search": "netapply runs no DNS server; names come from the hosts file it writes",
    "dns_opt": "netapply runs no DNS server; names come from the hosts file it writes",
    "extra_hosts": "netapply writes the hosts file from the spec",
    "links": "put both services on one network and use the service name",
    "external_links": "put both services on one network and use the service name",
    "expose": "nothing to do: containers on one network reach every port of each other",
    "sysctls": "netapply sets no sysctls inside containers",
    "extends": "not resolved when the file is read without docker compose",
}
# Keys netapply reads from a service; every other key is listed as ignored.
SERVICE_KEYS_READ = ("networks", "network_mode", "ports", "mac_address", "container_name",
                     "profiles")
ATTACHMENT_KEYS_READ = ("aliases", "ipv4_address", "ipv6_address", "mac_address",
                        "interface_name", "driver_opts", "priority", "gw_priority")

AnyPath = tuple[str | int, ...]


# --- netapply names for Compose names -------------------------------------------


def _fit(name: str, allowed: str, limit: int, prefix: str, taken: set[str]) -> str:
    """A name made to fit netapply's rule (lowercase, `allowed` characters,
    starting with a letter, at most `limit` long), not in `taken`."""
    text = re.sub(f"[^{allowed}]", "-", name.lower())
    if not re.match("[a-z]", text):
        text = prefix + text
    text = text[:limit]
    candidate, number = text, 2
    while candidate in taken:
        suffix = f"-{number}"
        candidate, number = text[: limit - len(suffix)] + suffix, number + 1
    taken.add(candidate)
    return candidate


def _names(originals: list[str], pattern: re.Pattern[str], allowed: str, limit: int,
           prefix: str) -> dict[str, str]:
    """original -> netapply name; names that fit keep themselves first."""
    taken = {name for name in originals if pattern.fullmatch(name)}
    mapped = {name: name for name in originals if name in taken}
    for name in sorted(originals):
        if name not in mapped:
            mapped[name] = _fit(name, allowed, limit, prefix, taken)
    return mapped


# --- the conversion ------------------------------------------------------------------


@dataclass
class _Network:
    """A network as imported: what containers and ports need to know of it."""

    name: str
    driver: str
    internal: bool
    block: _Block
    subnet: ipaddress.IPv4Network | None = None


def _label(path: AnyPath) -> str:
    """services.web.ports[0]"""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _bool(value: object) -> bool | None:
    """A boolean as Docker parses option values (Go's strconv.ParseBool)."""
    if isinstance(value, bool):
        return value
    text = str(value)
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def _family(text: str) -> int:
    try:
        return ipaddress.ip_network(text, strict=False).version
    except ValueError:
        return 6 if ":" in text else 4


class _Converter:
    """One Compose project -> the blocks of one netapply spec; problems of the
    Compose file's structure are collected (with positions where known)."""

    def __init__(self, data: dict[str, Any], where: dict[yamlsource.Path, Where], file: str,
                 project: str, normalised: bool, profiles: frozenset[str]):
        self.data = data
        self.where = where
        self.file = file
        self.project = project
        self.normalised = normalised
        self.profiles = profiles
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self.header: list[str] = []

    def fail(self, path: AnyPath, message: str) -> None:
        place = yamlsource.locate(self.where, tuple(str(p) for p in path))
        self.problems.append(Problem(place, message) if place else
                             Problem(None, f"{self.file}: {message}"))

    def mapping(self, path: AnyPath, value: object) -> dict[str, Any] | None:
        if value is None:
            return {}
        if isinstance(value, dict):
            return value
        self.fail(path, f"{_label(path)} must be a mapping (got {yamlsource.show(value)})")
        return None

    def text(self, path: AnyPath, value: object) -> str | None:
        if isinstance(value, str):
            return value
        self.fail(path, f"{_label(path)} must be text (got {yamlsource.show(value)})")
        return None

    def integer(self, path: AnyPath, value: object) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        self.fail(path, f"{_label(path)} must be a number (got {yamlsource.show(value)})")
        return None

    def boolean(self, path: AnyPath, value: object) -> bool | None:
        if isinstance(value, bool):
            return value
        self.fail(path, f"{_label(path)} must be true or false (got {yamlsource.show(value)})")
        return None

    # the whole file

    def convert(self) -> _Block:
        self._top_level()
        services = self._services()
        attachments = {name: self._attachment_list(name, raw) for name, raw in services.items()}
        used = {net for entries in attachments.values() for net, _, _ in entries}
        declared = self.mapping(("networks",), self.data.get("networks")) or {}
        names = _names(sorted(set(declared) | used), NETWORK_NAME, "a-z0-9_-", 31, "net-")
        networks: dict[str, _Network | None] = {}
        network_blocks = _Block()
        for original in sorted(set(declared) | used):
            if original not in used:
                network_blocks.note(f"compose: networks.{original} is used by no service "
                                    "(Compose does not create it): not imported")
                continue
            network = self._network(original, names[original], declared.get(original))
            if isinstance(network, str):
                network_blocks.note(network)
                networks[original] = None
            elif network is not None:
                network_blocks.set(network.name, network.block)
                networks[original] = network
        self._pick_subnets([n for n in networks.values() if n is not None])
        keys = _names(list(services), CONTAINER_NAME, "a-z0-9_.-", 63, "svc-")
        containers = _Block()
        for service, raw in services.items():
            self._container(containers, service, keys[service], raw, attachments[service],
                            networks)
        spec = _Block()
        project = netapply_project(self.project)
        if project != self.project:
            why = (f"compose: the Compose project is {self.project!r}; a netapply project "
                   f"matches ^[a-z][a-z0-9-]{{0,15}}$, so it is {project!r} here")
            self.header.append(why)
            self.notes.append(why.removeprefix("compose: "))
        for text in self.header:
            spec.note(text)
        spec.set("version", 1)
        spec.set("project", project)
        spec.set("networks", network_blocks)
        spec.set("containers", containers)
        return spec

    def _top_level(self) -> None:
        ignored = []
        for key in self.data:
            if key.startswith("x-") or key in ("version", "volumes", "configs", "secrets",
                                                "models"):
                ignored.append(key)
            elif key == "include":
                self.header.append("compose: include is not followed when the file is read "
                                   "without docker compose: the included files are not "
                                   "imported")
            elif key == "name":
                self.text(("name",), self.data[key])
            elif key not in TOP_LEVEL:
                self.fail((key,), f"{key!r} is not a top-level key of a Compose file (those "
                                  "are services, networks, volumes, configs, secrets, name, "
                                  "include, version and x- extensions)")
        if ignored:
            self.header.append(f"compose: top-level {', '.join(sorted(ignored))}: no netapply "
                               "equivalent (not networking)")

    def _services(self) -> dict[str, dict[str, Any]]:
        raw = self.mapping(("services",), self.data.get("services")) or {}
        services = {}
        for name in sorted(raw):
            service = raw[name]
            if not isinstance(service, dict):
                self.fail(("services", name), f"services.{name} must be a mapping "
                                              f"(got {yamlsource.show(service)})")
                continue
            if not self.normalised and not self._profile_active(name, service):
                continue
            services[name] = service
        return services

    def _profile_active(self, name: str, service: dict[str, Any]) -> bool:
        """Compose starts a service with profiles only when one of them is active."""
        profiles = service.get("profiles")
        if not profiles:
            return True
        if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
            self.fail(("services", name, "profiles"),
                      f"services.{name}.profiles must be a list of names")
            return True
        if "*" in self.profiles or self.profiles & set(profiles):
            return True
        self.header.append(f"compose: services.{name} has profiles {', '.join(profiles)}, "
                           "none of them active (COMPOSE_PROFILES): not imported")
        return False

    # networks

    def _attachment_list(self, service: str, raw: dict[str, Any]
                         ) -> list[tuple[str, dict[str, Any], AnyPath]]:
        """(Compose network, attachment options, path) in the order Compose
        connects them: priority (highest first), then name."""
        base: AnyPath = ("services", service, "networks")
        value = raw.get("networks")
        mode = raw.get("network_mode")
        if mode is not None:
            if value:
                self.fail(base, f"services.{service}: network_mode and networks cannot both "
                                "be set (Compose refuses it too)")
            return []
        if not value:  # none, or an empty list or mapping: Compose's default network
            return [(DEFAULT_NETWORK, {}, base)]
        entries: list[tuple[str, dict[str, Any], AnyPath]] = []
        if isinstance(value, list):
            for i, name in enumerate(value):
                if self.text((*base, i), name) is not None and name not in [e[0] for e in
                                                                             entries]:
                    entries.append((name, {}, (*base, i)))
        elif isinstance(value, dict):
            for name, options in value.items():
                checked = self.mapping((*base, name), options)
                if checked is not None:
                    entries.append((name, checked, (*base, name)))
        else:
            self.fail(base, f"{_label(base)} must be a list or a mapping of network names "
                            f"(got {yamlsource.show(value)})")
        declared = self.data.get("networks")
        for name, _, path in entries:
            if name != DEFAULT_NETWORK and not (isinstance(declared, dict) and name in declared):
                self.fail(path, f"services.{service}: network {name!r} is not defined in the "
                                "top-level networks")
        priorities = {}
        for name, options, path in entries:
            priority = options.get("priority", 0)
            priorities[name] = self.integer((*path, "priority"), priority) or 0
        return sorted(entries, key=lambda e: (-priorities[e[0]], e[0]))

    def _network(self, original: str, name: str, raw_value: object) -> _Network | str | None:
        """The network as imported; or why it is not (a comment); None after a problem."""
        base: AnyPath = ("networks", original)
        raw = self.mapping(base, raw_value)
        if raw is None:
            return None
        where = f"networks.{original}"
        if raw.get("external"):
            return (f"compose: {where} is external (made outside this Compose file); netapply "
                    "never adopts a network it does not own: not imported, and services are "
                    "not attached to it")
        driver = raw.get("driver") or "bridge"
        if driver not in SUPPORTED_DRIVERS:
            why = ("netapply's overlay is static VXLAN between the machines of a spec's hosts "
                   "(see docs/docker.md)") if driver == "overlay" else "netapply has no such driver"
            return (f"compose: {where} uses driver {_text(driver)!r}: {why}; not imported, and "
                    "services are not attached to it")
        options = self.mapping((*base, "driver_opts"), raw.get("driver_opts")) or {}
        if driver != "bridge" and "parent" not in options:
            return (f"compose: {where} is a {driver} network without a parent interface "
                    "(Docker then makes a dummy one); netapply needs driver_opts.parent: not "
                    "imported, and services are not attached to it")
        block = _Block()
        if name != original:
            block.note(f"compose: network {original!r} is {name!r} here (netapply network "
                       "names match ^[a-z][a-z0-9_-]{0,30}$)")
            self.notes.append(f"network {original!r} is imported as {name!r}")
        internal = bool(self.boolean((*base, "internal"), raw.get("internal", False)))
        network = _Network(name, driver, internal, block)
        if driver != "bridge":
            block.set("driver", driver)
        self._ipam(network, base, raw)
        self._driver_options(network, base, options)
        if internal:
            block.set("internal", True)
        labels = self._labels((*base, "labels"), raw.get("labels"))
        if labels:
            block.set("labels", labels)
        for key in sorted(raw):
            if key == "attachable":
                block.note(f"compose: {where}.attachable: not needed (any container of the "
                           "spec can attach to any network of it)")
            elif key == "name" and raw[key] != f"{self.project}_{original}":
                block.note(f"compose: {where}.name {_text(raw[key])!r}: Docker's name for "
                           "the network has no netapply equivalent (the bridge device is "
                           "named by interface)")
            elif key == "enable_ipv4" and raw[key] is False:
                block.note(f"compose: {where}.enable_ipv4 false: every netapply network has "
                           "IPv4")
            elif key not in ("external", "driver", "driver_opts", "internal", "labels",
                             "ipam", "enable_ipv6", "name", "attachable", "enable_ipv4"):
                block.note(f"compose: {where}.{key} has no netapply equivalent")
        return network

    def _ipam(self, network: _Network, base: AnyPath, raw: dict[str, Any]) -> None:
        where = _label(base)
        ipam_path = (*base, "ipam")
        ipam = self.mapping(ipam_path, raw.get("ipam")) or {}
        if ipam.get("driver") not in (None, "default"):
            network.block.note(f"compose: {where}.ipam.driver {_text(ipam['driver'])!r} has "
                               "no netapply equivalent (allocation is built in)")
        if ipam.get("options"):
            network.block.note(f"compose: {where}.ipam.options have no netapply equivalent")
        configs = ipam.get("config") or []
        if not isinstance(configs, list):
            self.fail((*ipam_path, "config"), f"{where}.ipam.config must be a list")
            configs = []
        ipv6_wanted = raw.get("enable_ipv6", False)
        if ipv6_wanted is not None:
            ipv6_wanted = self.boolean((*base, "enable_ipv6"), ipv6_wanted)
        seen = {4: False, 6: False}
        for i, entry in enumerate(configs):
            path = (*ipam_path, "config", i)
            config = self.mapping(path, entry)
            if config is None:
                continue
            subnet = config.get("subnet")
            here = f"{where}.ipam.config[{i}]"
            if subnet is None:
                network.block.note(f"compose: {here} has no subnet: not imported")
                continue
            if self.text((*path, "subnet"), subnet) is None:
                continue
            family = _family(subnet)
            if seen[family]:
                network.block.note(f"compose: {here} ({subnet}) is a second IPv{family} "
                                   "subnet; a netapply network has one of each: not imported")
                continue
            seen[family] = True
            if family == 4:
                network.block.set("subnet", subnet)
                for key in ("gateway", "ip_range"):
                    if key in config and self.text((*path, key), config[key]) is not None:
                        network.block.set(key, config[key])
                with contextlib.suppress(ValueError):  # the spec's validation says why
                    network.subnet = ipaddress.IPv4Network(subnet)
            elif not ipv6_wanted:
                network.block.note(f"compose: {here} ({subnet}) is an IPv6 subnet but "
                                   "enable_ipv6 is not true: not imported")
                continue
            else:
                ipv6 = {"subnet": subnet}
                if "gateway" in config and self.text((*path, "gateway"), config["gateway"]):
                    ipv6["gateway"] = config["gateway"]
                network.block.set("ipv6", ipv6)
                if "ip_range" in config:
                    network.block.note(f"compose: {here}.ip_range: netapply has no pool for "
                                       "automatic IPv6 addresses other than the subnet")
            for key in sorted(config):
                if key == "aux_addresses":
                    network.block.note(f"compose: {here}.aux_addresses: not supported; "
                                       "narrow ip_range to keep addresses free")
                elif key not in ("subnet", "gateway", "ip_range"):
                    network.block.note(f"compose: {here}.{key} has no netapply equivalent")
        if ipv6_wanted and not seen[6]:
            network.block.note(f"compose: {where}.enable_ipv6 without an IPv6 subnet in "
                               "ipam.config: netapply needs the subnet (Docker picks one); "
                               "add ipv6: {subnet: ...} to use IPv6")

    def _driver_options(self, network: _Network, base: AnyPath, options: dict[str, Any]
                        ) -> None:
        where = f"{_label(base)}.driver_opts"
        block = network.block
        bridge = network.driver == "bridge"
        for key in sorted(options):
            value = options[key]
            here = f"{where}.{key}"
            if key == DRIVER_MTU:
                mtu = int(value) if str(value).isdigit() else 0
                if 68 <= mtu <= 65535:
                    block.set("mtu", mtu)
                else:
                    block.note(f"compose: {here} {_text(value)!r} is not an MTU: not imported")
            elif bridge and key == BRIDGE_NAME and IFNAME.fullmatch(str(value)):
                block.set("interface", str(value))
            elif bridge and key in (BRIDGE_ICC, BRIDGE_MASQUERADE) and _bool(value) is not None:
                if key == BRIDGE_ICC:
                    block.set("icc", _bool(value))
                elif network.internal:
                    block.note(f"compose: {here}: an internal network has no masquerade "
                               "(Docker ignores it there too)")
                else:
                    block.set("masquerade", _bool(value))
            elif not bridge and key == "parent" and IFNAME.fullmatch(str(value)):
                block.set("parent", str(value))
            elif not bridge and key == LAN_MODE_OPTION[network.driver]:
                block.set("mode", str(value))
            elif key in (BRIDGE_NAME, BRIDGE_ICC, BRIDGE_MASQUERADE, "parent",
                         *LAN_MODE_OPTION.values()) and (key == "parent") != bridge:
                block.note(f"compose: {here} {_text(value)!r} is not a value netapply can "
                           "use: not imported")
            else:
                block.note(f"compose: {here} {_text(value)!r} has no netapply equivalent "
                           "(docs/docker.md lists the options netapply has)")

    def _labels(self, path: AnyPath, value: object) -> dict[str, str]:
        if value is None:
            return {}
        if isinstance(value, dict):
            return {str(k): _text(value[k]) if value[k] is not None else ""
                    for k in sorted(value)}
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            pairs = (item.partition("=") for item in sorted(value))
            return {k: v for k, _, v in pairs}
        self.fail(path, f"{_label(path)} must be a mapping or a list of key=value")
        return {}

    def _pick_subnets(self, networks: list[_Network]) -> None:
        """Networks without an IPv4 subnet get the first free /24 of SUBNET_POOL,
        in name order, so that the same file always gives the same spec."""
        taken = [n.subnet for n in networks if n.subnet is not None]
        for network in networks:
            if network.block.has("subnet"):
                continue
            subnet = next(s for s in SUBNET_POOL.subnets(new_prefix=SUBNET_PREFIX)
                          if not any(s.overlaps(t) for t in taken))
            taken.append(subnet)
            network.subnet = subnet
            why = (f"compose: no subnet in the Compose file (Docker picks one from its pools); "
                   f"netapply needs one: {subnet} is the first /{SUBNET_PREFIX} of "
                   f"{SUBNET_POOL} free in this file")
            at = 1 if network.block.has("driver") else 0
            network.block.items[at:at] = [_Comment(why), ("subnet", str(subnet))]
            self.notes.append(f"network {network.name!r} has no subnet in the Compose file: "
                              f"it gets {subnet}")

    # containers

    def _container(self, containers: _Block, service: str, key: str, raw: dict[str, Any],
                   entries: list[tuple[str, dict[str, Any], AnyPath]],
                   networks: dict[str, _Network | None]) -> None:
        base: AnyPath = ("services", service)
        where = f"services.{service}"
        block = _Block()
        mode = raw.get("network_mode")
        if mode is not None and self.text((*base, "network_mode"), mode) is None:
            return
        if isinstance(mode, str) and mode.startswith(("service:", "container:")):
            containers.note(f"compose: {where}.network_mode {mode}: it shares that "
                            "container's namespace, which netapply attaches with its own "
                            "entry; not imported on its own")
            return
        name = raw.get("container_name")
        if name is not None:
            name = self.text((*base, "container_name"), name)
        runtime_name = name or f"{self.project}-{service}-1"
        if key != service:
            block.note(f"compose: service {service!r} is container {key!r} here (netapply "
                       "container names match ^[a-z][a-z0-9_.-]{0,62}$); its service name "
                       "stays an alias on each network")
            self.notes.append(f"service {service!r} is imported as container {key!r}")
        if mode == "host":
            block.set("network_mode", "host")
            block.note(f"compose: {where} uses the machine's namespace: nothing to attach "
                       "(netapply refuses runtime with network_mode host)")
        else:
            block.set("runtime", "docker")
            block.set("runtime_name", runtime_name)
            if mode == "none":
                block.set("network_mode", "none")
            elif mode is not None:
                block.note(f"compose: {where}.network_mode {mode!r}: "
                           + ("Docker's default bridge (docker0) is not a netapply network"
                              if mode in ("bridge", "default") else "not supported")
                           + "; the container is imported without networks")
            else:
                aliases = [a for a in (service, name) if a and a != key]
                self._networks(block, base, raw, entries, networks, aliases)
        for dropped in ("ports", "mac_address"):
            if mode is not None and raw.get(dropped):
                block.note(f"compose: {where}.{dropped}: no {dropped.replace('_', ' ')} with "
                           f"network_mode {mode}")
        self._unsupported(block, where, raw)
        containers.set(key, block)

    def _networks(self, block: _Block, base: AnyPath, raw: dict[str, Any],
                  entries: list[tuple[str, dict[str, Any], AnyPath]],
                  networks: dict[str, _Network | None], aliases: list[str]) -> None:
        where = _label(base)
        attached: list[tuple[_Network, _Block, int]] = []
        for original, options, path in entries:
            network = networks.get(original)
            if network is None:
                block.note(f"compose: {where}.networks.{original}: that network is not "
                           "imported (see its comment)")
                continue
            attachment, priority = self._attachment(original, options, path, aliases)
            attached.append((network, attachment, priority))
        service_mac = raw.get("mac_address")
        if service_mac is not None and self.text((*base, "mac_address"),
                                                 service_mac) is not None:
            # Compose gives a service's mac_address to its first network.
            if attached and not any(isinstance(i, tuple) and i[0] == "mac_address"
                                    for i in attached[0][1].items):
                attached[0][1].set("mac_address", service_mac)
            else:
                block.note(f"compose: {where}.mac_address {service_mac}: no network to give "
                           "it to")
        if any(a.has_keys() for _, a, _ in attached):
            mapped = _Block()
            for network, attachment, _ in attached:
                values = _Block([i for i in attachment.items if not isinstance(i, _Comment)])
                mapped.set(network.name, values)
            block.set("networks", mapped)
        elif attached:
            block.set("networks", [network.name for network, _, _ in attached])
        for _, attachment, _ in attached:
            block.items.extend(attachment.comments())
        self._default_route(block, attached)
        self._ports(block, base, raw.get("ports"), [n for n, _, _ in attached])

    def _attachment(self, original: str, options: dict[str, Any], path: AnyPath,
                    aliases: list[str]) -> tuple[_Block, int]:
        """The attachment options, and the network's gw_priority."""
        here = f"{_label(path[:2])}.networks.{original}"
        attachment = _Block()
        for key in ("ipv4_address", "ipv6_address", "mac_address"):
            if key in options and self.text((*path, key), options[key]) is not None:
                attachment.set(key, options[key])
        interface = options.get("interface_name")
        driver_opts = self.mapping((*path, "driver_opts"), options.get("driver_opts")) or {}
        for key in sorted(driver_opts):
            if key == ENDPOINT_IFNAME and interface is None:
                interface = driver_opts[key]
            elif key == ENDPOINT_IFNAME:
                attachment.note(f"compose: {here}.driver_opts.{key}: interface_name is used")
            else:
                attachment.note(f"compose: {here}.driver_opts.{key} has no netapply "
                                "equivalent")
        if interface is not None:
            if IFNAME.fullmatch(str(interface)):
                attachment.set("interface", str(interface))
            else:
                attachment.note(f"compose: {here}.interface_name {_text(interface)!r} is not "
                                "an interface name (at most 15 letters, digits, '_', '.', '-')")
        given = options.get("aliases") or []
        if not isinstance(given, list):
            self.fail((*path, "aliases"), f"{here}.aliases must be a list of names")
            given = []
        names: list[str] = []
        for alias in [*given, *aliases]:
            if not isinstance(alias, str) or not DNSNAME.fullmatch(alias):
                attachment.note(f"compose: {here}.aliases: {_text(alias)!r} is not a DNS "
                                "name: not imported")
            elif alias not in names:
                names.append(alias)
        if names:
            attachment.set("aliases", names)
        for key in sorted(options):
            if key == "link_local_ips":
                attachment.note(f"compose: {here}.link_local_ips: not supported")
            elif key not in ATTACHMENT_KEYS_READ:
                attachment.note(f"compose: {here}.{key} has no netapply equivalent")
        priority = options.get("gw_priority", 0)
        return attachment, self.integer((*path, "gw_priority"), priority) or 0

    def _default_route(self, block: _Block, attached: list[tuple[_Network, _Block, int]]
                       ) -> None:
        """Docker routes by default through the network with the highest
        gw_priority; netapply, without default_route, through the first listed
        one that is not internal."""
        outside = [(network, priority) for network, _, priority in attached
                   if not network.internal]
        if not outside:
            return
        best = max(priority for _, priority in outside)
        chosen = next(network for network, priority in outside if priority == best)
        if chosen is not outside[0][0]:
            block.set("default_route", chosen.name)

    def _ports(self, block: _Block, service: AnyPath, value: object, attached: list[_Network]
               ) -> None:
        if value is None:
            return
        where, base = _label(service), (*service, "ports")
        if not isinstance(value, list):
            self.fail(base, f"{where}.ports must be a list")
            return
        publishing = next((n for n in attached if n.driver == "bridge" and not n.internal),
                          None)
        ports: list[str] = []
        for i, entry in enumerate(value):
            here = f"{where}.ports[{i}]"
            if isinstance(entry, str) and "$" in entry:
                block.note(f"compose: {where}.ports {entry!r}: a variable that was not "
                           "expanded; not imported")
                continue
            if isinstance(entry, str | int) and not isinstance(entry, bool):
                expanded = _short_port(str(entry))
                if isinstance(expanded, str):
                    block.note(f"compose: {here} {_text(entry)!r}: {expanded}")
                    continue
                long_forms: list[dict[str, Any]] = expanded
            elif isinstance(entry, dict):
                if "target" not in entry:
                    self.fail((*base, i), f"{here} has no target")
                    continue
                long_forms = [entry]
            else:
                self.fail((*base, i), f"{here} must be text like \"8080:80\" or a mapping "
                                      "with target and published")
                continue
            for form in long_forms:
                # Named by the port rather than by its index, which differs
                # where docker compose has expanded a range.
                port, why = _port(form)
                named = f"compose: {where}.ports {_port_text(form)!r}"
                if port is None:
                    block.note(f"{named}: {why}")
                elif publishing is None:
                    block.note(f"{named}: the service has no bridge network that is not "
                               "internal to publish it on")
                else:
                    ports.append(port)
                    if why:
                        block.note(f"{named}: {why}")
        if ports:
            block.set("ports", ports)

    def _unsupported(self, block: _Block, where: str, raw: dict[str, Any]) -> None:
        ignored = []
        for key in sorted(raw):
            if key in SERVICE_KEYS_READ or raw[key] is None:
                continue
            if key in SERVICE_KEY_REASONS:
                block.note(f"compose: {where}.{key} has no netapply equivalent: "
                           f"{SERVICE_KEY_REASONS[key]}")
            else:
                ignored.append(key)
        scale = raw.get("scale")
        deploy = raw.get("deploy")
        if scale is None and isinstance(deploy, dict):
            scale = deploy.get("replicas")
        if isinstance(scale, int) and scale > 1:
            block.note(f"compose: {where} runs {scale} replicas; only the first "
                       "(runtime_name above) is imported")
        if ignored:
            block.note(f"compose: {where}: {', '.join(ignored)}: no netapply equivalent "
                       "(not networking)")

