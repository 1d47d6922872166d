"""Saved plans: a plan together with the fingerprint of what it was computed from.

`netapply plan SPEC --out FILE` writes one; `netapply apply FILE` applies it
only while the world is still the one it was computed from, and otherwise
refuses with what differs (Terraform's saved plans, with the live kernel as
the state). The interactive `apply SPEC` uses the same fingerprint to check,
after its `yes` prompt, that nothing changed while the prompt waited.

A fingerprint is a mapping per group (spec files, runtime containers, the
project's objects, foreign objects the checks look at, namespace identities)
from an item to a value: a SHA-256 (spec files), a BLAKE2b digest of the
compared fields (the project's objects, as the planner compares them), or a
short text (everything else), so that a difference says what changed by
kind and key. Foreign objects are kept only where they can change the plan,
its checks or its notes (a link only under a name the project wants, a held
port only if the spec publishes that port...): another container that Docker
starts meanwhile does not make a plan stale. The recomputed plan is compared
with the saved one as well, which catches whatever else would make it differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from reconciler import lazy, outfile
from reconciler import spec as spec_mod
from reconciler.drivers.kernel import Kernel
from reconciler.errors import NetapplyError, SpecError
from reconciler.model import IPNetwork, Runtime, Spec
from reconciler.resources import fields_json, ns_label

if TYPE_CHECKING:
    from reconciler import engine, lock, machines, runtimes
else:  # `validate` asks whether its argument is a saved plan, and needs none of these
    engine, lock, machines, runtimes = (
        lazy.module(f"reconciler.{name}") for name in ("engine", "lock", "machines", "runtimes"))

FORMAT = 1  # of the saved plan file
MARKER = "netapply_saved_plan"  # its first key: how `apply FILE` tells it from a spec
MAX_PLAN_BYTES = 256 << 20  # a plan of 10,000 containers takes about 40 MiB
SHOWN = 20  # differences listed; the rest are counted

Item = tuple[str, ...]
_MARKER_RE = re.compile(rb'\s*\{\s*"' + MARKER.encode() + rb'"\s*:')


class PlanFileError(NetapplyError):
    """A saved plan that cannot be used here (corrupt, of another version,
    machine or host), or an --out that cannot be written. The operator makes
    the plan again, or fixes the path."""


class StalePlan(NetapplyError):
    """The spec or the kernel is no longer what a plan was computed from; it
    was not applied. The operator reviews a new plan."""

    def __init__(self, differences: list[str]):
        super().__init__("; ".join(differences))
        self.differences = differences


class Group(StrEnum):
    SPEC_FILES = "spec_files"
    RUNTIME = "runtime_containers"
    OBJECTS = "objects"
    FOREIGN = "foreign"
    NAMESPACES = "namespaces"
    MISSING_PATHS = "missing_paths"
    MISSING_KINDS = "missing_kinds"


# How an item of each group is named, and what its appearing, disappearing or
# changing means; groups whose values are digests show no values.
WORDS: dict[Group, tuple[str, str, str, str]] = {
    Group.SPEC_FILES: ("spec file {}", "is new", "is gone", "changed"),
    Group.RUNTIME: ("runtime container '{}'", "appeared", "disappeared", "changed"),
    Group.OBJECTS: ("kernel object {}", "appeared", "disappeared", "changed"),
    Group.FOREIGN: ("{} (not the project's)", "appeared", "disappeared", "changed"),
    Group.NAMESPACES: ("namespace {}", "appeared", "is gone", "is another namespace now"),
    Group.MISSING_PATHS: ("netns_path {}", "cannot be attached to now", "can be attached to now",
                          "changed"),
    Group.MISSING_KINDS: ("link kind {}", "is not supported now", "is supported now", "changed"),
}
DIGESTS = (Group.SPEC_FILES, Group.OBJECTS)


@dataclass(frozen=True)
class Fingerprint:
    """What a plan was computed from. `spec`: the spec's path (absolute);
    `host`: the machine of a spec with hosts (None: the whole spec)."""

    spec: str
    host: str | None
    groups: Mapping[Group, Mapping[Item, str]]

    @property
    def digest(self) -> str:
        """One SHA-256 (hex) of everything: equal fingerprints, equal digests."""
        return hashlib.sha256(_canonical(self._body()).encode()).hexdigest()

    def _body(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "host": self.host,
            "groups": {str(group): [{"key": list(item), "value": value}
                                    for item, value in sorted(items.items())]
                       for group, items in sorted(self.groups.items())},
        }

    def to_json(self) -> dict[str, Any]:
        """{"digest", "spec", "host", "groups": {group: [{"key": [...], "value"}]}}."""
        return {"digest": self.digest, **self._body()}

    @staticmethod
    def from_json(doc: Mapping[str, Any]) -> Fingerprint:
        """Inverse of to_json. Raises ValueError, KeyError or TypeError on
        anything else."""
        host = doc["host"]
        if not isinstance(doc["spec"], str) or not (host is None or isinstance(host, str)):
            raise TypeError("spec and host are strings")
        groups: dict[Group, dict[Item, str]] = {}
        for name, entries in doc["groups"].items():
            items = groups.setdefault(Group(name), {})
            for entry in entries:
                key, value = entry["key"], entry["value"]
                if not isinstance(value, str) or not all(isinstance(k, str) for k in key):
                    raise TypeError("keys and values are strings")
                items[tuple(key)] = value
        found = Fingerprint(doc["spec"], host, groups)
        if found.digest != doc["digest"]:
            raise ValueError("the fingerprint's digest does not match its items")
        return found


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _digest(value: Any) -> str:
    return hashlib.blake2b(_canonical(value).encode(), digest_size=16).hexdigest()


def fingerprint(spec_path: str, digests: Mapping[str, str], resolution: runtimes.Resolution,
                snap: engine.Snapshot, host: str | None) -> Fingerprint:
    """The fingerprint of a plan (pure but for making paths absolute).
    `digests`: spec file -> SHA-256 (spec.Sources.digests); `resolution`: the
    spec with its runtime containers resolved; `snap`: its observation and plan."""
    spec = resolution.spec
    observed = snap.observed
    groups: dict[Group, dict[Item, str]] = {
        Group.SPEC_FILES: spec_file_items(digests),
        Group.RUNTIME: _runtime_items(resolution),
        Group.OBJECTS: {tuple(key): _digest(fields_json(res))
                        for key, res in observed.resources.items()},
        Group.FOREIGN: _foreign_items(spec, snap),
        Group.NAMESPACES: {(ns_label(ref),): f"{dev}:{ino}"
                           for ref, (dev, ino) in observed.ns_ids.items()},
        Group.MISSING_PATHS: {(path,): why for path, why in observed.missing_paths.items()},
        Group.MISSING_KINDS: {(kind,): "" for kind in observed.missing_kinds},
    }
    return Fingerprint(_absolute(spec_path), host, groups)


def _absolute(path: str) -> str:
    """A path made absolute; a store's URL (an etcd key) as it is."""
    return path if "://" in path else os.path.abspath(path)


def spec_file_items(digests: Mapping[str, str]) -> dict[Item, str]:
    """(absolute path or key URL,) -> SHA-256 of each spec file."""
    return {(_absolute(f),): d for f, d in digests.items()}


def _runtime_items(resolution: runtimes.Resolution) -> dict[Item, str]:
    """A restarted container has another id or main process, so another namespace."""
    items: dict[Item, str] = {}
    for c in resolution.spec.containers.values():
        if c.runtime is None:
            continue
        found = resolution.running.get(c.name)
        items[(c.name,)] = ("not attached" if found is None else
                            f"{found.runtime} container {found.name} ({found.short_id}), "
                            f"pid {found.pid}")
    return items


def _foreign_items(spec: Spec, snap: engine.Snapshot) -> dict[Item, str]:
    """The objects netapply does not own that the plan's checks and notes look at."""
    foreign = snap.observed.foreign
    wanted = {name for res in snap.desired.values()
              for name in (getattr(res, "ifname", None), getattr(res, "host_ifname", None))
              if name}
    subnets = [net for n in spec.networks.values() for net in (n.subnet, n.ipv6_subnet) if net]
    host_addresses = {h.address for h in spec.hosts.values()}
    underlay = {ifname for address, ifname in foreign.host_addresses
                if address in host_addresses}
    parents = {n.parent for n in spec.networks.values() if n.parent} | underlay
    published = {(p.protocol, p.published) for c in spec.containers.values() for p in c.ports}
    found: dict[Item, list[str]] = {}

    def add(what: str, name: str, value: str = "") -> None:
        found.setdefault((what, name), []).append(value)

    for ns, ifname in foreign.links:
        if ifname in wanted:
            add("link", f"{ifname} in {ns_label(ns)}")
    for name in foreign.netns:
        add("netns", name)
    for name in foreign.hosts:
        add("hosts file of netns", name)
    for ns, dst in foreign.routes:
        add("route", f"{dst} in {ns_label(ns)}")
    for network, what in foreign.host_nets:
        if any(_overlap(network, subnet) for subnet in subnets):
            add("host network", str(network), what)
    for family, table in foreign.nft_tables:
        add("nftables table", f"{family} {table}")
    for chain in foreign.nft_chains:
        add("nftables chain", f"{chain.family} {chain.table} {chain.name}",
            f"hook {chain.hook}, policy {chain.policy}")
    if foreign.nft_error:
        add("nftables ruleset", "unread", foreign.nft_error)
    for name, mtu, enslaved in foreign.host_links:
        if name in parents:
            add("host link", name, f"mtu {mtu}" + (", a bridge or bond port" if enslaved else ""))
    for address, ifname in foreign.host_addresses:
        if address in host_addresses:
            add("host address", str(address), f"on {ifname}")
    for name, vni, port in foreign.vxlans:
        add("vxlan device", name, f"vni {vni}, port {port}")
    for held in foreign.held_ports:
        if (held.protocol, held.port) in published:
            on = "*" if held.address is None else str(held.address)
            add("held port", f"{held.port}/{held.protocol} on {on}", held.holder)
    for path, what in foreign.files:
        add("file", path, what)
    return {item: "; ".join(sorted(values)) for item, values in found.items()}


def _overlap(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)


def differences(saved: Fingerprint, now: Fingerprint) -> list[str]:
    """What differs between two fingerprints, a sentence each (pure): a spec
    file changed, a kernel object appeared, disappeared or changed, by kind
    and key. [] when they are equal."""
    found: list[str] = []
    if saved.spec != now.spec:
        found.append(f"the spec is {now.spec}, not {saved.spec}")
    if saved.host != now.host:
        found.append(f"this machine is {_host(now.host)}; the plan was made for "
                     f"{_host(saved.host)}")
    for group in Group:
        found += group_differences(group, saved.groups.get(group, {}), now.groups.get(group, {}))
    return found


def group_differences(group: Group, before: Mapping[Item, str],
                      after: Mapping[Item, str]) -> list[str]:
    """What appeared, disappeared or changed in one group (pure)."""
    found = []
    name, appeared, disappeared, changed = WORDS[group]
    for item in sorted(before.keys() | after.keys()):
        label = name.format(" ".join(item))
        if item not in before:
            found.append(f"{label} {appeared}" + _value(group, after[item]))
        elif item not in after:
            found.append(f"{label} {disappeared}" + _value(group, before[item]))
        elif before[item] != after[item]:
            found.append(f"{label} {changed}" + ("" if group in DIGESTS else
                                                 f" (was {before[item] or 'present'}, "
                                                 f"now {after[item] or 'present'})"))
    return found


def _host(host: str | None) -> str:
    return f"host '{host}'" if host is not None else "the whole spec (no hosts)"


def _value(group: Group, value: str) -> str:
    return f" ({value})" if value and group not in DIGESTS else ""


def plan_json(snap: engine.Snapshot, project: str, fp: Fingerprint) -> dict[str, Any]:
    """The JSON plan (`plan --output json`): the plan, its notes, its fingerprint."""
    return {**snap.plan.to_json(project), "notes": list(snap.notes), "fingerprint": fp.to_json()}


def plan_differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """How the changes planned now differ from those of the saved JSON plan
    (pure). Notes are not compared: they are said of the same fingerprinted
    inputs, and other parts of the CLI add their own to the JSON plan."""
    old = [_canonical(c) for c in saved.get("changes", [])]
    new = [_canonical(c) for c in now.get("changes", [])]
    found = []
    if old != new:
        gone, added = set(old) - set(new), set(new) - set(old)
        found += [f"saved change no longer planned: {_change_title(c)}" for c in old if c in gone]
        found += [f"change not in the saved plan: {_change_title(c)}" for c in new if c in added]
        if not found:
            found.append("the planned changes are in another order")
    return found


def _change_title(text: str) -> str:
    change = json.loads(text)
    return f"{change['action']} {' '.join(str(k) for k in change['key'])}"


def shown(found: list[str]) -> list[str]:
    """At most SHOWN differences, and how many more there are."""
    more = len(found) - SHOWN
    return found[:SHOWN] + ([f"... and {more} more"] if more > 0 else [])


# The file


@dataclass(frozen=True)
class SavedPlan:
    path: str
    version: str  # of the netapply that made it
    machine: str  # the node name (uname -n) of the machine it was made on
    requested_host: str | None  # --host as given to `plan`
    engines: Mapping[Runtime, str]  # the engine URLs the runtime containers were found at
    plan: Mapping[str, Any]  # the JSON plan (plan_json)
    fingerprint: Fingerprint

    @property
    def project(self) -> str:
        return str(self.plan["project"])


def dumps(plan: Mapping[str, Any], version: str, requested_host: str | None,
          engines: Mapping[Runtime, str], machine: str | None = None) -> str:
    """The saved plan file: JSON with MARKER as first key and a checksum of the rest."""
    doc: dict[str, Any] = {
        MARKER: FORMAT,
        "netapply_version": version,
        "machine": machine if machine is not None else os.uname().nodename,
        "requested_host": requested_host,
        "engines": {str(rt): url for rt, url in sorted(engines.items())},
        "plan": plan,
    }
    doc["checksum"] = _checksum(doc)
    return json.dumps(doc, indent=1) + "\n"


def _checksum(doc: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(_canonical(doc).encode()).hexdigest()


def is_saved_plan(head: bytes) -> bool:
    """Whether a file beginning with `head` is a saved plan (by content, not name)."""
    return bool(_MARKER_RE.match(head))


def loads(raw: bytes, path: str, version: str) -> SavedPlan:
    """Parse a saved plan file. Raises PlanFileError: corrupt (not JSON, checksum
    or fingerprint wrong, fields missing) or made by another netapply `version`."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("it is not a JSON object")
        checksum = doc.pop("checksum")
        if checksum != _checksum(doc):
            raise ValueError("its checksum does not match its content")
        if doc[MARKER] != FORMAT:
            raise PlanFileError(f"{path}: a saved plan of format {doc[MARKER]}, which this "
                                f"netapply ({version}) does not read; make the plan again")
        if doc["netapply_version"] != version:
            raise PlanFileError(f"{path}: the plan was made by netapply "
                                f"{doc['netapply_version']}, this is netapply {version}; make "
                                "the plan again with this version")
        plan = doc["plan"]
        if not isinstance(plan["changes"], list) or not isinstance(plan["project"], str):
            raise TypeError("the plan has no changes or project")
        requested = doc["requested_host"]
        return SavedPlan(path, version, str(doc["machine"]),
                         None if requested is None else str(requested),
                         {Runtime(rt): str(url) for rt, url in doc["engines"].items()},
                         plan, Fingerprint.from_json(plan["fingerprint"]))
    except PlanFileError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        cause = str(e) if isinstance(e, ValueError) and not isinstance(
            e, json.JSONDecodeError) else f"{type(e).__name__}: {e}"
        raise PlanFileError(f"{path}: the saved plan is corrupt ({cause}); make the plan "
                            "again") from None


def read(path: str, version: str) -> SavedPlan | None:
    """The saved plan at path, or None when path is no saved plan (a spec file
    or directory, or nothing: the spec loader says what is wrong with it).
    Raises PlanFileError as loads() does, or when it is too large."""
    raw = _read(path, MAX_PLAN_BYTES + 1)
    if raw is None:
        return None
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanFileError(f"{path}: a saved plan larger than {MAX_PLAN_BYTES >> 20} MiB, "
                            "more than any plan takes; it is not read")
    return loads(raw, path, version)


def is_saved_plan_file(path: str) -> bool:
    """Whether path is a saved plan, by its first bytes (not its name)."""
    return _read(path, 0) is not None


def _read(path: str, limit: int) -> bytes | None:
    """The first bytes of a regular file that begins as a saved plan, and up to
    `limit` more; None for anything else. A FIFO is not waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    with open(fd, "rb") as f:
        head = f.read(256)
        if not is_saved_plan(head):
            return None
        return head + f.read(limit)


def check_here(saved: SavedPlan, requested_host: str | None, machine: str | None = None) -> None:
    """Raises PlanFileError for a plan made on another machine, or for another
    --host than the one asked for."""
    here = machine if machine is not None else os.uname().nodename
    if saved.machine != here:
        raise PlanFileError(f"{saved.path}: the plan was made on machine '{saved.machine}', "
                            f"this is '{here}'; a plan is applied where it was made")
    if requested_host is not None and requested_host != saved.fingerprint.host:
        raise PlanFileError(f"{saved.path}: the plan was made for "
                            f"{_host(saved.fingerprint.host)}, not --host {requested_host}")


def write(path: str, text: str) -> None:
    """The plan file at path, 0600 (it names the machine's objects), written
    whole and never through a link (outfile.write_whole). Raises
    PlanFileError, leaving nothing behind."""
    try:
        outfile.write_whole(path, text.encode(), "the plan", mode=0o600)
    except NetapplyError as e:
        raise PlanFileError(str(e)) from None


# The world now


@dataclass(frozen=True)
class World:
    """The spec, resolved, observed and planned again, with its fingerprint."""

    spec: Spec
    host: str | None
    resolution: runtimes.Resolution
    snap: engine.Snapshot
    fingerprint: Fingerprint


def observe(kernel: Kernel, expected: Fingerprint, requested_host: str | None,
            urls: Mapping[Runtime, str | None], destroy: bool = False) -> World:
    """Read the spec at expected.spec again, select the machine's host,
    resolve its runtime containers, observe and plan. Raises StalePlan when
    its files are not the ones `expected` names, or when the spec no longer
    fits the machine (a SpecError or MachineError now); other errors as
    engine.snapshot."""
    try:
        sources = spec_mod.read(expected.spec)
    except SpecError as e:
        raise StalePlan([str(p) for p in e.problems]) from None
    found = group_differences(Group.SPEC_FILES, expected.groups.get(Group.SPEC_FILES, {}),
                              spec_file_items(sources.digests))
    if found:
        raise StalePlan(found)
    try:
        spec = spec_mod.build(sources)
        host = machines.select(spec, requested_host, engine.local_addresses(kernel)).host
        resolver = runtimes.Resolver(urls, lock.runtimes_cache_path(spec.project))
        try:
            resolution = resolver.resolve(spec, host)
        finally:
            resolver.close()
        snap = engine.snapshot(kernel, resolution.spec, destroy, host)
    except SpecError as e:  # MachineError too: the kernel now collides with the spec
        raise StalePlan([f"the spec no longer fits this machine: {p}" for p in e.problems]
                        ) from None
    except machines.HostError as e:
        raise StalePlan([f"this machine is no host of the spec now: {e}"]) from None
    snap = replace(snap, notes=(*resolution.notes, *snap.notes))
    return World(resolution.spec, host, resolution, snap,
                 fingerprint(expected.spec, sources.digests, resolution, snap, host))
