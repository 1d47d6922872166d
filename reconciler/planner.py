"""The planner: a pure function from (desired, observed) to an ordered plan.

No I/O here and no kernel imports: both states are plain immutable values of
the same shape (reconciler.resources), so planning is comparing.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from reconciler.resources import (
    HOST_NS,
    Bridge,
    DockerUser,
    Firewall,
    Key,
    Kind,
    Resource,
    State,
    Sublink,
    Veth,
    Vxlan,
    diff_fields,
    fields_json,
    is_shared,
    parking_ifname,
)

if TYPE_CHECKING:
    from reconciler.disruption import Assessment
    from reconciler.state.observe import ObservedState

# Creation order by kind. Every dependency points from an earlier kind to a later
# one (namespace -> link, bridge -> port, link -> address -> route), so sorting by
# this rank is a topological order; deletes run in the reverse. The firewall
# comes first so that isolation holds before any link exists, and forwarding is
# switched on only once the firewall is in place; on removal the table goes last.
KIND_ORDER = (
    Kind.FIREWALL, Kind.DOCKER_USER, Kind.SYSCTL, Kind.NETNS, Kind.BRIDGE, Kind.VETH,
    Kind.SUBLINK, Kind.VXLAN, Kind.FDB, Kind.NEIGH, Kind.ADDRESS, Kind.ROUTE, Kind.HOSTS_TABLE,
    Kind.HOSTS, Kind.HOSTS_BLOCK, Kind.LEFTOVER, Kind.LEFTOVER_FILE,
)
RANK = {kind: i for i, kind in enumerate(KIND_ORDER)}

# Fields the kernel cannot change in place, with the reason shown in the plan.
SUBLINK_FIXED = "a macvlan/ipvlan link keeps its namespace, parent and mode"
REPLACE_FIELDS: dict[Kind, dict[str, str]] = {
    Kind.VETH: {"ns": "a veth end cannot change namespace in place"},
    Kind.SUBLINK: {name: SUBLINK_FIXED for name in ("ns", "driver", "parent", "mode")},
    Kind.VXLAN: {name: "a vxlan device keeps its vni, address, port and flags"
                 for name in ("vni", "local", "port", "learning", "proxy")},
}


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"


@dataclass(frozen=True)
class Change:
    action: Action
    key: Key
    before: Resource | None
    after: Resource | None
    reason: str

    @property
    def resource(self) -> Resource:
        found = self.after if self.after is not None else self.before
        assert found is not None
        return found

    @property
    def ns(self) -> str:
        return self.resource.ns

    def title(self) -> str:
        return self.resource.title()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action": str(self.action),
            "kind": str(self.key[0]),
            "key": list(self.key),
            "ns": self.ns,
            "reason": self.reason,
            "before": None if self.before is None else fields_json(self.before),
            "after": None if self.after is None else fields_json(self.after),
        }
        if self.key[0] in (Kind.FIREWALL, Kind.DOCKER_USER):
            # The rule-level view, for pipelines that review firewall changes.
            changes = rule_changes(self.before, self.after)
            out["rules_added"] = [text for sign, text in changes if sign == "+"]
            out["rules_removed"] = [text for sign, text in changes if sign == "-"]
        if self.action == Action.UPDATE and hasattr(self.resource, "content"):
            lines = content_changes(self.before, self.after)
            out["lines_added"] = [text for sign, text in lines if sign == "+"]
            out["lines_removed"] = [text for sign, text in lines if sign == "-"]
        return out


@dataclass(frozen=True)
class Plan:
    """Changes, deletes first. `steps()` gives the execution order: every delete
    (and the delete half of every replace) in reverse dependency order; then
    owned links whose name another link wants move to a parking name; then
    creates, updates and the create half of replaces in dependency order."""

    changes: tuple[Change, ...]
    parked: tuple[Change, ...] = ()  # UPDATE to a parking name, before the real update
    # What the changes interrupt, for whom (disruption.assess): for display and
    # JSON only, so it takes no part in comparing plans.
    disruption: Assessment | None = field(default=None, compare=False)
    # The observation the plan was made from (engine.plan_from), so that the
    # verification after applying it reads again only what it wrote.
    observed: ObservedState | None = field(default=None, compare=False, repr=False)

    @property
    def empty(self) -> bool:
        return not self.changes

    def counts(self) -> dict[str, int]:
        counts = {str(a): 0 for a in Action}
        for change in self.changes:
            counts[str(change.action)] += 1
        return counts

    def steps(self) -> Iterator[tuple[Action, Change]]:
        """(CREATE|UPDATE|DELETE, change) in the order an executor performs them."""
        removals = [c for c in self.changes if c.action in (Action.DELETE, Action.REPLACE)]
        for change in sorted(removals, key=lambda c: _order(c.key), reverse=True):
            yield Action.DELETE, change
        parked = {p.key: p for p in self.parked}
        for park in self.parked:
            yield Action.UPDATE, park
        for change in self.changes:
            if change.action == Action.REPLACE:
                yield Action.CREATE, change
            elif change.action == Action.UPDATE and change.key in parked:
                yield Action.UPDATE, dataclasses.replace(change, before=parked[change.key].after)
            elif change.action != Action.DELETE:
                yield change.action, change

    def to_json(self, project: str) -> dict[str, Any]:
        changes = [c.to_json() for c in self.changes]
        out: dict[str, Any] = {
            "format_version": 1,
            "project": project,
            "summary": self.counts(),
            "changes": changes,
        }
        if self.disruption is not None:
            for doc, change in zip(changes, self.changes, strict=True):
                doc["disrupts"] = self.disruption.change_json(change.key)
            out["disruption"] = self.disruption.summary_json()
        return out


def _order(key: Key) -> tuple[int, Key]:
    return (RANK[Kind(key[0])], key)


UP_FIELDS = frozenset({"up", "host_up", "lo_up"})


def _fmt(value: object, name: str = "") -> str:
    if value is None:
        return "none"
    if isinstance(value, bool) and name in UP_FIELDS:
        return "up" if value else "down"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return "/".join(value)
    return str(value)


def rule_changes(before: Resource | None, after: Resource | None) -> list[tuple[str, str]]:
    """("+" or "-", rule text) for each firewall rule added or removed, in rule
    order: the rule-level view of a table that is replaced as a whole."""
    old = before.rules if isinstance(before, Firewall | DockerUser) else ()
    new = after.rules if isinstance(after, Firewall | DockerUser) else ()
    gone, added = set(old) - set(new), set(new) - set(old)
    return [("-", r.text()) for r in old if r in gone] + [("+", r.text()) for r in new
                                                          if r in added]


def content_changes(before: Resource | None, after: Resource | None) -> list[tuple[str, str]]:
    """("+" or "-", line) for each line of a file's content (a hosts table or
    block) removed or added, in file order (difflib's matching): a changed
    table is shown as its changed lines."""
    old = str(getattr(before, "content", "") or "").splitlines()
    new = str(getattr(after, "content", "") or "").splitlines()
    out: list[tuple[str, str]] = []
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            out += [("-", line) for line in old[i1:i2]] + [("+", line) for line in new[j1:j2]]
    return out


def _update_reason(before: Resource, after: Resource) -> str:
    if isinstance(before, Firewall | DockerUser) and isinstance(after, Firewall | DockerUser):
        changes = rule_changes(before, after)
        added = sum(1 for sign, _ in changes if sign == "+")
        parts = [f"rules: {added} added, {len(changes) - added} removed"]
        if isinstance(before, Firewall) and isinstance(after, Firewall) \
                and before.chains != after.chains:
            parts.append("chains differ")
        return ", ".join(parts)
    parts = []
    for name, old, new in diff_fields(before, after):
        if name == "content":
            changes = content_changes(before, after)
            added = sum(1 for sign, _ in changes if sign == "+")
            parts.append(f"lines: {added} added, {len(changes) - added} removed")
        else:
            parts.append(f"{name} {_fmt(old, name)} -> {_fmt(new, name)}")
    return ", ".join(parts)


def _replace_reason(before: Resource, after: Resource) -> str | None:
    if isinstance(before, Veth) and before.ns == "?":
        return "container end of the veth pair is missing"
    if isinstance(before, Veth) and not before.host_ifname:
        return "host end of the veth pair is missing"
    rules = REPLACE_FIELDS.get(before.kind, {})
    for name, old, new in diff_fields(before, after):
        if name in rules:
            return f"{rules[name]} ({_fmt(old, name)} -> {_fmt(new, name)})"
    return None


def plan(desired: State, observed: State) -> Plan:
    """Compare desired with observed and order the differences.

    A resource whose kernel parent is deleted or replaced is gone with it: a
    stale one is left out of the plan (the kernel removes it), a wanted one is
    replaced so that it is made again after its parent.
    """
    actions: dict[Key, tuple[Action, str]] = {}
    elided: set[Key] = set()  # stale, and removed by the kernel with a parent
    for key in sorted(desired.keys() | observed.keys(), key=_order):
        want, have = desired.get(key), observed.get(key)
        if have is None:
            assert want is not None
            actions[key] = (Action.CREATE, "not in the kernel")
            continue
        gone_with = _cascaded_by(have, actions, elided, observed)
        if want is None and is_shared(have):
            continue  # a machine-wide setting: set while wanted, never reverted
        if want is None:
            if gone_with is None:
                actions[key] = (Action.DELETE, "not in spec")
            else:
                elided.add(key)
        elif gone_with is not None:
            actions[key] = (Action.REPLACE, f"removed with {gone_with}")
        elif have == want:
            continue
        elif (why := _replace_reason(have, want)) is not None:
            actions[key] = (Action.REPLACE, why)
        else:
            actions[key] = (Action.UPDATE, _update_reason(have, want))
    changes = [
        Change(action, key, observed.get(key), desired.get(key), reason)
        for key, (action, reason) in actions.items()
    ]
    deletes = [c for c in changes if c.action == Action.DELETE]
    others = [c for c in changes if c.action != Action.DELETE]
    deletes.reverse()
    return Plan(tuple(deletes + others), _parking(others, desired))


def _link_names(res: Resource) -> list[tuple[str, str, str]]:
    """(namespace, interface name, field) of each link end the resource names."""
    if isinstance(res, Bridge | Vxlan):
        return [(HOST_NS, res.ifname, "ifname")]
    if isinstance(res, Veth):
        return [(res.ns, res.ifname, "ifname"), (HOST_NS, res.host_ifname, "host_ifname")]
    if isinstance(res, Sublink):
        return [(res.ns, res.ifname, "ifname")]
    return []


def _parking(changes: list[Change], desired: State) -> tuple[Change, ...]:
    """Renames whose current name another desired link takes (attachments that
    swap eth0 and eth1, a network put first in a list) go through a parking
    name first, so that no step needs a name that is still taken."""
    wanted = {(ns, name): key for key, res in desired.items() for ns, name, _ in _link_names(res)}
    parked = []
    for change in changes:
        if change.action != Action.UPDATE or change.before is None or change.after is None:
            continue
        moves = {
            field: parking_ifname(change.key, field)
            for ns, name, field in _link_names(change.before)
            if getattr(change.after, field) != name and wanted.get((ns, name), change.key)
            != change.key
        }
        if moves:
            parked_res = dataclasses.replace(change.before, **moves)  # type: ignore[arg-type]
            parked.append(Change(Action.UPDATE, change.key, change.before, parked_res,
                                 "its name is wanted by another link: park it first"))
    return tuple(parked)


def _cascaded_by(
    have: Resource, actions: dict[Key, tuple[Action, str]], elided: set[Key], observed: State
) -> str | None:
    """The title of a parent whose removal takes `have` with it, if any.

    Parents always sort before children, so their fate is already decided.
    """
    for dep in have.deps:
        if not dep.cascade or dep.key not in observed:
            continue
        parent_action = actions.get(dep.key)
        parent_gone = parent_action is not None and parent_action[0] in (
            Action.DELETE,
            Action.REPLACE,
        )
        if parent_gone or dep.key in elided:
            return observed[dep.key].title()
    return None
