"""Which machine of a multi-machine spec this is, and its share of the spec (pure).

A spec with `hosts` names the machine each container runs on. Every machine
applies only its own share: its containers, and the networks they attach to
(bridge, macvlan and ipvlan networks are local to each machine, made where a
container uses them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from reconciler.errors import NetapplyError
from reconciler.model import Container, IPAddress, Spec


class HostError(NetapplyError):
    """This machine cannot be matched to one of the spec's hosts. The operator
    must pass --host NAME, or fix the hosts' addresses."""


@dataclass(frozen=True)
class Selection:
    host: str | None  # None: the spec has no hosts, everything is this machine's
    why: str = ""  # how the host was chosen, for the user


def select(spec: Spec, requested: str | None, local: Iterable[IPAddress]) -> Selection:
    """The host this machine is: the one asked for, or the only host whose
    address is an address of this machine."""
    if not spec.hosts:
        if requested is not None:
            raise HostError(f"--host {requested}: the spec of project '{spec.project}' has no "
                            "hosts section; it is applied whole on every machine")
        return Selection(None)
    names = ", ".join(sorted(spec.hosts))
    if requested is not None:
        if requested not in spec.hosts:
            raise HostError(f"--host {requested}: no such host in the spec (hosts: {names})")
        return Selection(requested, f"--host {requested}")
    mine = set(local)
    matches = sorted(h.name for h in spec.hosts.values() if h.address in mine)
    if not matches:
        raise HostError(f"none of the hosts' addresses is an address of this machine "
                        f"(hosts: {names}); pass --host NAME")
    if len(matches) > 1:
        raise HostError(f"several hosts' addresses are addresses of this machine "
                        f"({', '.join(matches)}); pass --host NAME")
    chosen = spec.hosts[matches[0]]
    return Selection(chosen.name, f"{chosen.address} is an address of this machine")


def runs_here(container: Container, host: str | None) -> bool:
    """Whether the container is on this machine (`host`; None: a spec without
    hosts, all of which is this machine's)."""
    return host is None or container.host in (host, None)


def share(spec: Spec, host: str | None) -> Spec:
    """The part of the spec one machine applies: its containers and the
    networks they attach to. Without hosts, the whole spec."""
    if host is None:
        return spec
    containers = {n: c for n, c in spec.containers.items() if runs_here(c, host)}
    used = {a.network for c in containers.values() for a in c.attachments}
    networks = {n: net for n, net in spec.networks.items() if n in used}
    return replace(spec, containers=containers, networks=networks)
