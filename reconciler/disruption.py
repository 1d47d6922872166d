"""What a plan interrupts, and for whom (pure: no I/O).

Each planned change is read for what the executor really does with it
(drivers/ops.py), so that the plan says which running containers lose
something while it is applied, and nothing more:

- creates disrupt nobody: a new link, address or route takes nothing away;
- in-place updates that the kernel makes without a link flap disrupt nobody
  unless they take something away: an ownership mark (`allocated`), a host
  end's or a bridge's name (kernels since 6.2 rename links that are up), a
  container's MAC (announced to its neighbours at once), a hosts file;
- a deleted or replaced attachment disrupts its container, a changed
  address or route the container whose connections use it, a change of a
  bridge (MTU, MAC, down) every container attached to it;
- the firewall table is written in one transaction: only rules that take
  something away disrupt (a drop added, an accept or a masquerade removed,
  a published port removed or leading elsewhere: ops.py forgets the flows
  of a port whose DNAT rule changed, and a flow forgotten in mid-stream is
  picked up again by the rule as it is now);
- a change that is only the consequence of its parent's (an address made
  again after its link is replaced) says nothing of its own: the parent does.

"Containers of the project on this machine" are those with something in the
kernel now (a namespace, a link, a hosts block); a container still to be
created is new, neither disrupted nor untouched.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler import ports
from reconciler.planner import Action, Change, Plan
from reconciler.resources import (
    Address,
    Bridge,
    Firewall,
    HostsBlock,
    HostsFile,
    Key,
    Kind,
    Netns,
    Route,
    State,
    Sublink,
    Veth,
    Vxlan,
    diff_fields,
)

ENDPOINT_KINDS = (Kind.VETH, Kind.SUBLINK)
DEFAULTS = ("0.0.0.0/0", "::/0")
SHOWN_NAMES = 8  # containers named in the summary line before "and N more"


@dataclass(frozen=True)
class Disruption:
    """One thing a change interrupts: `containers` (sorted names) lose `what`;
    `network` is the network concerned, if one is; `whole_network` when
    they are every container of that network on this machine."""

    containers: tuple[str, ...]
    what: str
    network: str | None = None
    whole_network: bool = False

    def line(self) -> str:
        """`web: loses frontend while ...`, or `all containers of frontend
        (web, api): bridge MTU change 1500 -> 9000`."""
        who = ", ".join(self.containers)
        if self.whole_network:
            who = f"all containers of {self.network} ({who})"
        return f"{who}: {self.what}"

    def to_json(self) -> list[dict[str, str]]:
        """One {container, network (when there is one), what} per container."""
        net = {"network": self.network} if self.network is not None else {}
        return [{"container": c, **net, "what": self.what} for c in self.containers]


@dataclass(frozen=True)
class Assessment:
    """The disruption of a whole plan: per change key, what it interrupts;
    and the project's containers on this machine, sorted, split into those
    the plan disrupts and those it leaves untouched (`new`: still to be
    created, so neither). `untouched` and `new` look at every container,
    and are worked out when first asked for (watch mode never asks)."""

    by_change: Mapping[Key, tuple[Disruption, ...]]
    disrupted: tuple[str, ...]
    # () -> (untouched, new), from both states: called once, when first asked.
    rest: Callable[[], tuple[tuple[str, ...], tuple[str, ...]]] = field(
        default=lambda: ((), ()), compare=False, repr=False)

    @functools.cached_property
    def _rest(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return self.rest()

    @property
    def untouched(self) -> tuple[str, ...]:
        return self._rest[0]

    @property
    def new(self) -> tuple[str, ...]:
        return self._rest[1]

    def of(self, key: Key) -> tuple[Disruption, ...]:
        return self.by_change.get(key, ())

    def change_json(self, key: Key) -> list[dict[str, str]]:
        return [entry for d in self.of(key) for entry in d.to_json()]

    def summary_json(self) -> dict[str, list[str]]:
        return {"disrupted": list(self.disrupted), "untouched": list(self.untouched),
                "new": list(self.new)}

    def summary_text(self) -> str:
        """`2 containers disrupted (api, web), 5 untouched.`, or `This plan
        disrupts no running container.`"""
        if not self.disrupted:
            return "This plan disrupts no running container."
        n = len(self.disrupted)
        shown = ", ".join(self.disrupted[:SHOWN_NAMES])
        if n > SHOWN_NAMES:
            shown += f" and {n - SHOWN_NAMES} more"
        return (f"{n} container{'s' if n != 1 else ''} disrupted ({shown}), "
                f"{len(self.untouched)} untouched.")


def assess(plan: Plan, desired: State, observed: State,
           names: Mapping[str, str] | None = None) -> Assessment:
    """What each change of `plan` (made from `desired` and `observed`)
    interrupts, and the summary. `names`: namespace reference -> container
    name, from the spec (a container with no link is known by its namespace
    only); missing ones are named after their links, else the namespace.
    The work is in proportion to the plan, but for what a rule needs of a
    whole state (a network's members, published ports' owners), and for
    the untouched and new containers when they are asked for."""
    world = _World(plan, desired, observed, names or {})
    by_change: dict[Key, tuple[Disruption, ...]] = {}
    for change in plan.changes:
        found = tuple(d for d in _of_change(change, world) if d.containers)
        if found:
            by_change[change.key] = found
    hit = {c for found in by_change.values() for d in found for c in d.containers}

    def rest() -> tuple[tuple[str, ...], tuple[str, ...]]:
        existing = world.containers(observed)
        return (tuple(sorted(existing - hit)),
                tuple(sorted(world.containers(desired) - existing - hit)))

    return Assessment(by_change, disrupted=tuple(sorted(hit)), rest=rest)


class _World:
    """Lookups over both states that the per-change rules share, each worked
    out when a rule first needs it."""

    def __init__(self, plan: Plan, desired: State, observed: State,
                 names: Mapping[str, str]) -> None:
        self.desired, self.observed = desired, observed
        self.actions = {c.key: c.action for c in plan.changes}
        self.spec_names = names
        # Addresses the plan adds, by link: what a deleted address gives way to.
        self.added: dict[Key, list[str]] = {}
        for change in plan.changes:
            res = change.after
            if change.action == Action.CREATE and isinstance(res, Address):
                self.added.setdefault(res.link, []).append(res.cidr.split("/")[0])

    @functools.cached_property
    def names(self) -> dict[str, str]:
        names: dict[str, str] = {}
        for state in (self.desired, self.observed):
            for res in state.values():
                if isinstance(res, Veth | Sublink):
                    names.setdefault(res.ns, res.container)
        names.update(self.spec_names)
        return names

    @functools.cached_property
    def members(self) -> dict[str, set[str]]:
        """Containers attached to each network now, whose attachment stays."""
        members: dict[str, set[str]] = {}
        for key, res in self.observed.items():
            if isinstance(res, Veth | Sublink) and key in self.desired \
                    and self.actions.get(key) not in (Action.DELETE, Action.REPLACE):
                members.setdefault(res.network, set()).add(res.container)
        return members

    def container_of_ns(self, ns: str) -> str:
        return self.spec_names.get(ns) or self.names.get(ns, ns)

    def containers(self, state: State) -> set[str]:
        """The containers that have something in `state`."""
        found = set()
        for res in state.values():
            if isinstance(res, Veth | Sublink | HostsBlock):
                found.add(res.container)
            elif isinstance(res, Netns):
                found.add(self.container_of_ns(res.name))
            elif isinstance(res, HostsFile):
                found.add(self.container_of_ns(res.netns))
        return found

    def network_wide(self, network: str, what: str) -> Disruption:
        return Disruption(tuple(sorted(self.members.get(network, ()))), what, network,
                          whole_network=True)

    def gone(self, key: Key) -> bool:
        return self.actions.get(key) in (Action.DELETE, Action.REPLACE)

    def addresses(self, state: State) -> dict[str, tuple[str, str]]:
        """A container's address (without prefix) -> (container, network)."""
        return {res.cidr.split("/")[0]: (res.link[1], res.link[2])
                for res in state.values()
                if isinstance(res, Address) and res.link[0] in ENDPOINT_KINDS}


def _of_change(change: Change, world: _World) -> Iterator[Disruption]:
    if change.action == Action.CREATE or _follows_parent(change, world):
        return
    before, after = change.before, change.after
    assert before is not None
    if isinstance(before, Firewall):
        yield from _firewall(before, after if isinstance(after, Firewall) else None, world)
    elif isinstance(before, Netns):
        yield from _netns(change, before, world)
    elif isinstance(before, Bridge):
        yield from _bridge(change, before, world)
    elif isinstance(before, Veth | Sublink):
        yield from _endpoint(change, before, world)
    elif isinstance(before, Vxlan):
        yield from _vxlan(change, before, world)
    elif isinstance(before, Address):
        yield from _address(change, before, world)
    elif isinstance(before, Route):
        yield from _route(change, before, world)
    # Everything else takes nothing a running container uses: hosts tables,
    # files and blocks (names only), machine-wide settings (only ever set),
    # DOCKER-USER (its rules leave with their network, in one transaction),
    # overlay forwarding and neighbour entries (of containers on other
    # machines), leftovers of interrupted runs.


def _follows_parent(change: Change, world: _World) -> bool:
    """A replace that only follows its parent's removal (the kernel took it
    along): the parent's change says what is lost."""
    res = change.before
    return change.action == Action.REPLACE and res is not None and any(
        dep.cascade and world.gone(dep.key) for dep in res.deps)


def _netns(change: Change, before: Netns, world: _World) -> Iterator[Disruption]:
    who = (world.container_of_ns(before.name),)
    if change.action == Action.DELETE:
        yield Disruption(who, f"its namespace {before.name} is deleted, with everything in it")
    elif isinstance(change.after, Netns) and before.lo_up and not change.after.lo_up:
        yield Disruption(who, "its loopback goes down")


def _bridge(change: Change, before: Bridge, world: _World) -> Iterator[Disruption]:
    net = before.network
    if change.action in (Action.DELETE, Action.REPLACE):
        yield world.network_wide(net, f"loses {net}: its bridge {before.ifname} is deleted")
        return
    assert isinstance(change.after, Bridge)
    for name, old, new in diff_fields(before, change.after):
        if name == "mtu":
            yield world.network_wide(net, f"bridge MTU change {old} -> {new}")
        elif name == "mac":
            yield world.network_wide(net, f"gateway MAC changes {old} -> {new} (traffic through "
                                          "the gateway stalls until they resolve it again)")
        elif name == "up" and old and not new:
            yield world.network_wide(net, f"bridge {before.ifname} goes down")


def _link_word(res: Veth | Sublink) -> str:
    return "veth" if isinstance(res, Veth) else f"{res.driver} link"


def _endpoint(change: Change, before: Veth | Sublink, world: _World) -> Iterator[Disruption]:
    who, net, word = (before.container,), before.network, _link_word(before)
    if change.action == Action.DELETE:
        yield Disruption(who, f"loses {net}: its {word} {before.ifname} is deleted", net)
        return
    if change.action == Action.REPLACE:
        if isinstance(before, Veth) and (before.ns == "?" or not before.host_ifname):
            return  # half a pair carries nothing now: the replace repairs it
        yield Disruption(who, f"loses {net} while its {word} is replaced", net)
        return
    after = change.after
    assert isinstance(after, Veth | Sublink)
    for name, old, new in diff_fields(before, after):
        if name == "ifname":
            yield Disruption(who, f"interface {old} on {net} is renamed {new}", net)
        elif name == "mtu":
            yield Disruption(who, f"MTU of {after.ifname} on {net} changes {old} -> {new}", net)
        elif name == "host_mtu" and before.mtu == after.mtu:
            yield Disruption(who, f"MTU of the host end of its veth on {net} changes "
                                  f"{old} -> {new}", net)
        elif name in ("up", "host_up") and old and not new:
            end = "host end of its veth" if name == "host_up" else after.ifname
            yield Disruption(who, f"{end} on {net} goes down", net)
        elif name == "master":
            yield Disruption(who, f"its veth on {net} moves to the bridge of {new}", net)
        elif name == "isolated" and new:
            yield Disruption(who, f"cut off from the other containers of {net} (icc: false)",
                             net)
        elif name == "hairpin" and not new:
            yield Disruption(who, "no longer reaches its published ports on "
                                  f"{net} through a host address", net)


def _vxlan(change: Change, before: Vxlan, world: _World) -> Iterator[Disruption]:
    net = before.network
    if change.action in (Action.DELETE, Action.REPLACE):
        verb = "is replaced" if change.action == Action.REPLACE else "is deleted"
        yield world.network_wide(net, f"no traffic to other machines while VXLAN device "
                                      f"{before.ifname} {verb}")
        return
    assert isinstance(change.after, Vxlan)
    for name, old, new in diff_fields(before, change.after):
        if name == "mtu":
            yield world.network_wide(net, f"VXLAN MTU change {old} -> {new}")
        elif name == "up" and old and not new:
            yield world.network_wide(net, f"VXLAN device {before.ifname} goes down")
        elif name == "master":
            yield world.network_wide(net, f"VXLAN device moves to the bridge of {new}")
        elif name == "isolated" and new:
            yield world.network_wide(net, "cut off from its containers on other machines "
                                          "(icc: false)")


def _address(change: Change, before: Address, world: _World) -> Iterator[Disruption]:
    """Addresses are keyed by themselves: a changed address is a delete of the
    old one (which disrupts) and a create of the new (which does not)."""
    if change.action != Action.DELETE:
        return
    old = before.cidr.split("/")[0]
    family = ":" in old
    new = next((ip for ip in world.added.get(before.link, ()) if (":" in ip) == family), None)
    kind, net = before.link[0], before.link[-1]
    if kind in ENDPOINT_KINDS:
        who = (before.link[1],)
        if new is not None:
            yield Disruption(who, f"address on {net} changes {old} -> {new} "
                                  "(open connections break)", net)
        else:
            yield Disruption(who, f"address {old} on {net} is removed "
                                  "(open connections break)", net)
    elif kind == Kind.BRIDGE:
        change_text = f"changes {old} -> {new}" if new is not None else f"{old} is removed"
        yield world.network_wide(net, f"gateway of {net} {change_text} (traffic through the "
                                      "gateway stops until their routes follow)")


def _route(change: Change, before: Route, world: _World) -> Iterator[Disruption]:
    if before.link[0] not in ENDPOINT_KINDS:
        return
    who, net = (before.link[1],), before.link[-1]
    name = "default route" if before.dst in DEFAULTS else f"route {before.dst}"
    family = " (IPv6)" if ":" in before.dst and before.dst in DEFAULTS else ""
    if change.action == Action.DELETE:
        yield Disruption(who, f"{name}{family} via {before.via} on {net} is removed", net)
        return
    after = change.after
    assert isinstance(after, Route)
    yield Disruption(who, f"{name}{family} changes: via {before.via} on {net} -> via "
                          f"{after.via} on {after.link[-1]}", net)


# ---- the firewall -------------------------------------------------------------------


def _firewall(before: Firewall, after: Firewall | None, world: _World
              ) -> Iterator[Disruption]:
    yield from _ports(before, after, world)
    yield from _filtering(before, after, world)


def _published(table: Firewall | None) -> dict[tuple[str, str, int], tuple[str, int]]:
    """(protocol, host address or "", published port) -> (target address,
    target port), from the table's DNAT rules."""
    out: dict[tuple[str, str, int], tuple[str, int]] = {}
    for rule in table.rules if table is not None else ():
        expr = json.loads(rule.expr)
        found = ports.dnat_port(expr)
        target = next((e["dnat"] for e in expr if isinstance(e, dict) and "dnat" in e), None)
        if found is None or not isinstance(target, dict):
            continue
        protocol, address, port = found
        out[(protocol, str(address or ""), port)] = (str(target.get("addr")),
                                                     int(target.get("port") or port))
    return out


def _ports(before: Firewall, after: Firewall | None, world: _World) -> Iterator[Disruption]:
    """A published port removed or leading elsewhere breaks the flows in
    progress through it (ops.py forgets them); one published anew breaks nothing."""
    old, new = _published(before), _published(after)
    owners_before, owners_after = world.addresses(world.observed), world.addresses(world.desired)
    for key in sorted(old):
        protocol, host_ip, published = key
        label = f"published {host_ip + ':' if host_ip else ''}{published}/{protocol}"
        was, now = old[key], new.get(key)
        owner = owners_before.get(was[0])
        if owner is None or was == now:
            continue
        container, net = owner
        if now is None:
            what = f"{label} is removed (its open connections break)"
        elif (moved := owners_after.get(now[0])) is not None and moved[0] != container:
            what = f"{label} moves from {container} to {moved[0]}"
        elif now[0] != was[0]:
            what = f"{label} now leads to {now[0]} (its open connections break)"
        else:
            what = (f"{label} now leads to port {now[1]} instead of {was[1]} "
                    "(its open connections break)")
        yield Disruption((container,), what, net)


def _filtering(before: Firewall, after: Firewall | None, world: _World
               ) -> Iterator[Disruption]:
    """Rules of a network that stays, compared by their comment (a renamed
    bridge or a new subnet changes a rule's expressions, not what it is for):
    a drop added, or an accept or masquerade removed, takes something away
    from the network's containers. Where a network's chain both gains and
    loses rules of one verdict, one rule took over from another (leaving
    `internal` swaps its drops for "nothing else enters"): that takes nothing.
    Rules of published ports are _ports'."""
    old, new = _filter_rules(before.rules), _filter_rules(after.rules if after else ())
    groups: dict[tuple[str, str, str], tuple[list[str], list[str]]] = {}
    for rules, other, side in ((new, old, 0), (old, new, 1)):
        for (chain, comment), verdict in rules.items():
            if (chain, comment) not in other:
                net, _, tail = comment.partition(": ")
                groups.setdefault((net, chain, verdict), ([], []))[side].append(tail)
    for (net, _chain, verdict), (added, removed) in sorted(groups.items()):
        bridge = (Kind.BRIDGE, net)
        if bridge not in world.observed or world.gone(bridge):
            continue  # a new network has no flows; a deleted one says so itself
        if verdict == "drop" and not removed:
            lost = [f"firewall rule added: {tail}" for tail in added]
        elif verdict != "drop" and not added:
            lost = [f"firewall rule removed: {tail}" for tail in removed]
        else:
            continue
        for what in lost:
            yield world.network_wide(net, what)


def _filter_rules(rules: Iterable[Any]) -> dict[tuple[str, str], str]:
    """(chain, comment) -> verdict of the commented rules that filter or
    masquerade a network's traffic (not those of published ports)."""
    out = {}
    for rule in rules:
        expr = json.loads(rule.expr)
        if not rule.comment or ": " not in rule.comment or _of_ports(expr):
            continue
        last = expr[-1] if expr and isinstance(expr[-1], dict) else {}
        verdict = next((v for v in ("accept", "drop", "masquerade") if v in last), None)
        if verdict is not None:
            out[(rule.chain, rule.comment)] = verdict
    return out


def _of_ports(expr: list[Any]) -> bool:
    """Whether a rule exists for published ports: it translates them, accepts
    or masquerades what was translated, or guards the 127.0.0.1 path."""
    for e in expr:
        if not isinstance(e, dict):
            continue
        if "dnat" in e or "redirect" in e:
            return True
        match = e.get("match")
        if isinstance(match, dict):
            left, right = match.get("left"), match.get("right")
            if isinstance(left, dict) and "ct" in left and right == "dnat":
                return True
            if isinstance(right, dict) and right.get("prefix", {}).get("addr") == "127.0.0.0":
                return True
    return False
