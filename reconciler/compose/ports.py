"""Compose's port syntaxes (short text, with ranges, and long mappings) ->
netapply's short syntax, one port per entry, or why a port is not imported."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from reconciler.compose.yamltext import _text

PORT_KEYS_READ = ("target", "published", "protocol", "host_ip", "mode")


def _port_text(form: dict[str, Any]) -> str:
    """A long-syntax port in the short syntax, whatever it holds: for comments."""
    host_ip = _text(form.get("host_ip") or "")
    text = (f"[{host_ip}]:" if ":" in host_ip else f"{host_ip}:") if host_ip else ""
    published = _text(form.get("published") or "")
    text += f"{published}:" if published or host_ip else ""
    protocol = _text(form.get("protocol") or "tcp").lower()
    return text + _text(form.get("target")) + ("" if protocol == "tcp" else f"/{protocol}")


SHORT_PORT_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def _short_port(text: str) -> list[dict[str, Any]] | str:
    """Compose's short syntax ([host_ip:][published:]target[/protocol], ports
    or ranges) -> the long forms `docker compose config` writes, one per
    port (as docker/go-connections' ParsePortSpec), or why it is not one."""
    parts = text.split(":")
    target = parts[-1]
    host_ip = ":".join(parts[:-2]) if len(parts) > 2 else ""
    published = parts[-2] if len(parts) > 1 else ""
    target, _, protocol = target.partition("/")
    protocol = protocol.split("/")[0] or "tcp"
    if host_ip.startswith("[") and host_ip.endswith("]"):
        host_ip = host_ip[1:-1]
    if host_ip:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            return f"{host_ip!r} is not an IP address"
    targets = SHORT_PORT_RANGE.fullmatch(target)
    if targets is None:
        return "not a port mapping Compose understands"
    first, last = int(targets[1]), int(targets[2] or targets[1])
    pub_first = pub_last = 0
    if published:
        published_range = SHORT_PORT_RANGE.fullmatch(published)
        if published_range is None:
            return "not a port mapping Compose understands"
        pub_first = int(published_range[1])
        pub_last = int(published_range[2] or published_range[1])
        if last - first != pub_last - pub_first and last != first:
            return "the published and target ranges differ in length"
    forms = []
    for offset in range(last - first + 1):
        form: dict[str, Any] = {"target": first + offset, "protocol": protocol.lower()}
        if host_ip:
            form["host_ip"] = host_ip
        if published:
            form["published"] = (f"{pub_first}-{pub_last}" if first == last and
                                 pub_first != pub_last else str(pub_first + offset))
        forms.append(form)
    return forms


def _port(form: dict[str, Any]) -> tuple[str | None, str]:
    """A long-syntax port -> netapply's short syntax, with a remark on what was
    left out; or (None, why it is not imported)."""
    target, published = form.get("target"), form.get("published")
    protocol = str(form.get("protocol") or "tcp").lower()
    host_ip = form.get("host_ip") or ""
    if published is None or str(published) == "":
        return None, ("no published port: Docker picks a random host port; netapply needs "
                      "a fixed one")
    if not str(published).isdigit() or not 1 <= int(published) <= 65535:
        return None, (f"published {_text(published)!r} is not one port (a range lets Docker "
                      "pick; netapply needs a fixed port)")
    if not isinstance(target, int) and not str(target).isdigit():
        return None, f"target {_text(target)!r} is not one port"
    if protocol not in ("tcp", "udp"):
        return None, f"protocol {protocol} is not supported (tcp and udp are)"
    if host_ip and ":" in str(host_ip):
        return None, "host_ip is IPv6: netapply publishes ports on IPv4 host addresses only"
    text = f"{host_ip}:" if host_ip else ""
    text += f"{int(str(published))}:{int(str(target))}" + ("/udp" if protocol == "udp" else "")
    left_out = sorted(k for k in form if k not in PORT_KEYS_READ)
    if form.get("mode") not in (None, "ingress"):
        left_out.insert(0, f"mode {form['mode']}")
    why = f"{', '.join(left_out)} not imported (no netapply equivalent)" if left_out else ""
    return text, why
