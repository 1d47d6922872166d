"""The reconcile loop shared by the CLI (and later watch): load, observe, plan,
apply, verify. No output here: callers decide how to show things."""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import os
import resource
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

from reconciler import desired as desired_mod
from reconciler import disruption, firewall, machines, managers, planner
from reconciler.drivers.kernel import Kernel
from reconciler.errors import (
    ApplyError,
    ConvergenceError,
    MachineError,
    NetapplyError,
    PrivilegeError,
    Problem,
    SpecError,
    UnreadError,
)
from reconciler.executor import Progress, Result, execute, internal
from reconciler.model import IPAddress, Spec
from reconciler.planner import Plan
from reconciler.resources import (
    HOST_NS,
    Bridge,
    Firewall,
    HostsFile,
    HostsTable,
    Key,
    Kind,
    Leftover,
    LeftoverFile,
    Netns,
    Resource,
    Sysctl,
    Veth,
    Vxlan,
    is_shared,
    tables_dir,
)
from reconciler.state.observe import UNSEEN_NS, ObservedState, Reread, observe

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


def require_privileges() -> None:
    """One sentence instead of a cascade of EPERMs."""
    missing = [
        name
        for bit, name in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"))
        if not _has_capability(bit)
    ]
    if missing:
        raise PrivilegeError(
            f"netapply needs {' and '.join(missing)} to read and change network namespaces: "
            "run it as root (for example with sudo)"
        )


MIN_OPEN_FILES = 64  # the files, pipes and sockets of a run with one namespace at a time


def raise_open_files_limit() -> None:
    """netlink keeps a socket per namespace for a run (and watch one more per
    namespace to listen in), so a machine with hundreds of containers needs
    more descriptors than the usual soft limit of 1024: take the hard limit.
    Where even that is lower than the namespaces need, the driver closes the
    least recently used sockets as it goes (drivers/netlink.py).

    Raises MachineError, before anything is read or changed, when the limit
    (RLIMIT_NOFILE, getrlimit(2)) stays below MIN_OPEN_FILES."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < MIN_OPEN_FILES:
        raise MachineError([Problem(None, (
            f"this process may open only {soft} files (ulimit -n; hard limit {hard}), which is "
            f"too low: netapply needs at least {MIN_OPEN_FILES}; raise the limit (`ulimit -n "
            f"{MIN_OPEN_FILES * 16}` as root, or LimitNOFILE= in a systemd unit) and run again"
        ))])


def _has_capability(bit: int) -> bool:
    try:
        with open(f"/proc/{os.getpid()}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def local_addresses(kernel: Kernel) -> list[IPAddress]:
    """The addresses of the machine's own namespace."""
    return [ipaddress.ip_interface(a.cidr).ip for a in kernel.addresses(HOST_NS)]


def netns_paths(spec: Spec) -> list[str]:
    return sorted({c.netns_path for c in spec.containers.values() if c.netns_path})


def netns_names(spec: Spec) -> list[str]:
    """The named namespaces of the spec's containers."""
    return sorted({c.netns for c in spec.containers.values() if c.netns})


def hosts_blocks(spec: Spec) -> dict[str, tuple[str, str]]:
    """Container name -> (its engine's hosts file, its namespace) for the
    resolved runtime containers of the spec."""
    return {c.name: (c.hosts_path, c.netns_path) for c in spec.containers.values()
            if c.hosts_path and c.netns_path and c.running}


@dataclass(frozen=True)
class Snapshot:
    observed: ObservedState
    desired: dict[Key, Resource]
    plan: Plan
    notes: tuple[str, ...] = ()  # facts about the machine the user should know
    # What it was planned for: a later plan_from with this snapshot as `base`
    # plans again only what changed since, when the spec is the same object.
    spec: Spec | None = None
    host: str | None = None


@contextmanager
def no_gc_pauses() -> Iterator[None]:
    """Building states makes many small acyclic objects; the cyclic garbage
    collector would scan them again and again (40% of planning time at 10,000
    containers). Reference counting frees them all the same."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def plan_from(
    spec: Spec, observed: ObservedState, destroy: bool = False, host: str | None = None,
    base: Snapshot | None = None,
) -> Snapshot:
    """Desired state and plan from an observation (no I/O). `host`: which of
    the spec's hosts this machine is. UnreadError when a part of the kernel
    that may hold the project's objects could not be read, unless destroying
    (destroy removes the rest, then fails: see apply).

    `base`: an earlier snapshot on this machine (watch mode's last
    reconcile, or the plan an apply verifies). Where what changed since
    allows (scoped: objects of containers' namespaces, hosts tables, the
    firewall), only that is planned, and the desired state is taken from
    base for the same spec; the plan is the one a whole plan makes
    (tests/test_scoped_plan.py checks that)."""
    if not destroy:
        require_read(observed, "nothing is planned: what the project owns there is unknown")
    with no_gc_pauses():
        scope = None if destroy or base is None else scoped(spec, observed, host, base)
        if scope is None:
            wanted = {} if destroy else desired_mod.build(spec, observed, host)
            plan = planner.plan(wanted, observed.resources)
        else:
            wanted, keys = scope
            plan = planner.plan({k: wanted[k] for k in keys if k in wanted},
                                {k: observed.resources[k] for k in keys
                                 if k in observed.resources})
        plan = replace(plan, disruption=disruption.assess(
            plan, wanted, observed.resources, container_names(machines.share(spec, host))),
            observed=observed)
        return Snapshot(observed, wanted, plan, tuple(_notes(spec, wanted, observed)),
                        spec, host)


def _notes(spec: Spec, wanted: dict[Key, Resource], observed: ObservedState) -> list[str]:
    filtering = any(isinstance(r, Firewall) for r in wanted.values())
    notes = managers.notes(observed.foreign, filtering)
    notes.extend(_unread_notes(observed))
    forwarding = (Kind.SYSCTL, firewall.IP_FORWARD)
    have = observed.resources.get(forwarding)
    note = managers.forwarding_note(
        have.value if isinstance(have, Sysctl) else None, forwarding in wanted
    )
    if note is not None:
        notes.append(note)
    notes.extend(desired_mod.overlay_renumbering(spec, wanted, observed))
    notes.extend(desired_mod.late_port_holders(observed))
    return notes


# What a plan can be narrowed to (scoped): a change of an object of these
# kinds can change the plan only for objects of its namespace (a link takes its
# addresses and routes with it, a namespace its links) ...
LOCAL_KINDS = frozenset({Kind.NETNS, Kind.VETH, Kind.SUBLINK, Kind.ADDRESS, Kind.ROUTE,
                         Kind.HOSTS, Kind.LEFTOVER})
# ... and of these, only for itself: nothing is removed with it.
SELF_KINDS = frozenset({Kind.HOSTS_TABLE, Kind.HOSTS_BLOCK, Kind.FIREWALL, Kind.DOCKER_USER,
                        Kind.SYSCTL, Kind.LEFTOVER_FILE})


def _scopable(res: Resource | None) -> bool:
    return res is None or res.kind in SELF_KINDS or (
        res.kind in LOCAL_KINDS and res.ns not in (HOST_NS, UNSEEN_NS))


def changed_keys(before: Mapping[Key, Resource], after: Mapping[Key, Resource]) -> set[Key]:
    """Keys whose resource differs between two states (or is in one only).
    Parts an observation kept are the very same objects: compared by identity first."""
    changed = set(before.keys() ^ after.keys())
    for key, res in after.items():
        old = before.get(key)
        if old is not None and old is not res and old != res:
            changed.add(key)
    return changed


def _allocation_input(
    key: Key, before: ObservedState, after: ObservedState, wanted: Mapping[Key, Resource]
) -> bool:
    """Whether what desired.allocate keeps for an attachment may differ: its
    link's allocation record, or an address on a link that has none. A
    record that became the one `wanted` (built from `before`) holds is no
    change: allocating again from the addresses it allocated gives them
    again (explicit ones win, kept ones stay, and the ones it chose are now
    kept), so the desired state would be the same."""
    old, new = before.resources.get(key), after.resources.get(key)
    if key[0] in (Kind.VETH, Kind.SUBLINK):
        record = getattr(new, "allocated", None)
        return getattr(old, "allocated", None) != record and (
            record is None or record != getattr(wanted.get(key), "allocated", None))
    if key[0] == Kind.ADDRESS:
        link = key[1:4]
        return not (getattr(before.resources.get(link), "allocated", "")
                    and getattr(after.resources.get(link), "allocated", ""))
    return False


def scoped(
    spec: Spec, observed: ObservedState, host: str | None, base: Snapshot
) -> tuple[dict[Key, Resource], set[Key]] | None:
    """The desired state and the keys to plan when what changed since `base`
    (in the kernel, in the desired state, and base's own plan) is objects of
    containers' namespaces, hosts tables and blocks, the firewall and
    sysctls; None when anything else did (a bridge, a VXLAN device, the
    host's routes), and the whole state is planned.

    Why that is the whole plan: the planner decides each key from its
    desired and observed object and from whether a parent it goes with is
    removed (planner.plan). Outside the keys planned, the kernel and the
    desired state are what they were in base, whose plan had no change
    there. Every change of base's plan is planned again; every object of a
    namespace concerned is planned, so a link replaced takes its addresses
    and routes with it, as in a whole plan. What the desired state reads of
    the kernel besides the project's objects (foreign names, held ports,
    namespace identities, missing paths and link kinds) must be as it was.
    The desired state is taken from base for the same spec object unless an
    allocation input (desired.allocate) changed; built again otherwise."""
    if base.spec is None or base.host != host:
        return None
    old, new = base.observed, observed
    if (old.foreign != new.foreign or old.missing_paths != new.missing_paths
            or old.ns_ids != new.ns_ids or old.missing_kinds != new.missing_kinds
            or old.unread != new.unread):
        return None
    touched = changed_keys(old.resources, new.resources)
    touched.update(c.key for c in (*base.plan.changes, *base.plan.parked))
    wanted = base.desired
    if base.spec is not spec or any(_allocation_input(k, old, new, base.desired)
                                    for k in touched):
        wanted = desired_mod.build(spec, observed, host)
        touched |= changed_keys(base.desired, wanted)
    around: list[Resource] = []
    for key in touched:
        for res in (old.resources.get(key), new.resources.get(key), base.desired.get(key),
                    wanted.get(key)):
            if not _scopable(res):
                return None
            if res is not None and res.kind in LOCAL_KINDS:
                around.append(res)
    namespaces = {res.ns for res in around}
    keys = touched | {k for state in (wanted, new.resources) for k, res in state.items()
                      if res.ns in namespaces}
    return wanted, keys


def container_names(spec: Spec) -> dict[str, str]:
    """Namespace reference (name or path) -> the container living there."""
    return {c.ns: c.name for c in spec.containers.values() if c.ns is not None}


def require_read(observed: ObservedState, outcome: str) -> None:
    """UnreadError, saying `outcome`, when observed has parts that could not be
    read and may hold the project's objects."""
    if observed.unread:
        raise UnreadError(observed.unread, outcome)


def destroyed(observed: ObservedState, steps: int) -> None:
    """After a destroy of `steps` steps, observed (read afterwards) says
    nothing is left, or UnreadError names what could not be read."""
    require_read(observed, f"destroy removed what it could read ({steps} step(s)), but "
                           "the project may still own objects there")


def _unread_notes(observed: ObservedState) -> list[str]:
    if observed.unread:  # only a destroy gets here
        return [f"netapply could not read {part}; destroy removes everything else, then "
                "fails" for part in observed.unread]
    if observed.foreign.nft_error:
        return [f"netapply could not {observed.foreign.nft_error}; the kernel has no nftables "
                "table that could hold the project's objects, so none is missed"]
    return []


def observe_project(
    kernel: Kernel, spec: Spec, host: str | None = None,
    previous: ObservedState | None = None, reread: Reread | None = None,
) -> ObservedState:
    """What the spec's project owns in the kernel, and the foreign names around it.
    With `previous` and `reread`, only the parts reread names are read again
    (state.observe.observe)."""
    share = machines.share(spec, host)
    with no_gc_pauses():
        observed = observe(
            kernel, spec.project, netns_paths(share), desired_mod.used_link_kinds(share),
            hosts_blocks(share), netns_names(share), previous, reread,
        )
    # Every command refuses these, destroy and show too: a path to the host's
    # namespace or a second name of one would be read as a container's.
    problems = desired_mod.namespace_problems(share, observed)
    if problems:
        raise SpecError(problems)
    return observed


def snapshot(
    kernel: Kernel, spec: Spec, destroy: bool = False, host: str | None = None,
    previous: ObservedState | None = None, reread: Reread | None = None,
    base: Snapshot | None = None,
) -> Snapshot:
    """Observe and plan. With destroy, the desired state is empty. `previous`
    and `reread`: read again only what reread names (observe_project);
    `base`: plan again only what changed since that snapshot (plan_from)."""
    return plan_from(spec, observe_project(kernel, spec, host, previous, reread), destroy, host,
                     base)


def written(plan: Plan) -> Reread:
    """The parts of the kernel a plan writes to: the host namespace if any of
    its objects is there (of a veth's host end: the host namespace but for
    its links, of which that end and its bridge), the namespaces of the
    others (before and after a change), /run/netns when it makes or deletes
    a namespace, the /etc/netns entries of hosts files and leftovers, and
    the project's tables. The
    firewall is always read again (and always verified)."""
    namespaces: set[str] = set()
    files: set[str] = set()
    links: set[int | str] = set()
    host = netns_dir = tables = False
    for change in (*plan.changes, *plan.parked):
        for res in (change.before, change.after):
            if res is None:
                continue
            if isinstance(res, HostsTable):
                tables = True
            elif isinstance(res, HostsFile):
                files.add(res.netns)
            elif isinstance(res, LeftoverFile):
                place, _, rest = res.path.removeprefix("/").partition("/")
                if rest.startswith("netns/"):  # /run/netns/<name>, /etc/netns/<name>[/...]
                    name = rest.removeprefix("netns/").split("/", 1)[0]
                    files.add(name)
                    netns_dir = netns_dir or place == "run"
                    tables = tables or name.startswith(tables_dir(""))
                else:
                    host = True
            elif res.ns == HOST_NS:
                host = True
            elif res.ns != UNSEEN_NS:
                namespaces.add(res.ns)
            if isinstance(res, Netns):
                netns_dir = True
            if isinstance(res, Veth):
                # Its host end, and the bridge it is a port of (a port can change
                # a bridge's MTU), are read again; the host's other links are not.
                links.update(name for name in (res.host_ifname, res.master_ifname) if name)
    return Reread(host=host, host_links=frozenset(links) if links else None, nft=True,
                  netns_dir=netns_dir, namespaces=frozenset(namespaces),
                  files=frozenset(files), tables=tables)


# The step an ApplyError names when the verification after the plan fails.
VERIFY = "verify the kernel after the apply"


def apply(
    kernel: Kernel, spec: Spec, plan: Plan, destroy: bool = False,
    progress: Progress | None = None, host: str | None = None, verify_all: bool = False,
    base: Snapshot | None = None,
) -> Result:
    """Execute the plan and verify it (apply_verified), returning what was done."""
    return apply_verified(kernel, spec, plan, destroy, progress, host, verify_all, base)[0]


def apply_verified(
    kernel: Kernel, spec: Spec, plan: Plan, destroy: bool = False,
    progress: Progress | None = None, host: str | None = None, verify_all: bool = False,
    base: Snapshot | None = None,
) -> tuple[Result, Snapshot]:
    """Execute the plan, then re-observe: a non-empty plan afterwards is an error
    that shows what still differs.

    What is verified: the objects the plan wrote and the firewall, read again
    with everything else of the namespaces they are in (written); the rest of
    the kernel is taken as the plan saw it, which the desired state is built
    from again. With verify_all, or a plan that does not carry the observation
    it was made from (plan.observed), everything is read again and compared.
    `base`: the snapshot the plan is of; the desired state is taken from it
    where what changed allows (plan_from).

    Once the plan has started, every failure is an ApplyError whose `done`
    lists the steps done, so callers report it as a failed apply (and roll
    it back where they can): a step that failed (executor.execute), and the
    verification (action VERIFY), whether it finds differences (cause
    ConvergenceError), cannot build the desired state again because the
    machine changed meanwhile (SpecError/MachineError: an address that now
    overlaps), meets a kernel error or a bug (InternalError), or is
    interrupted (Ctrl-C). An exception `progress` raises goes through."""
    result = execute(kernel, spec.project, plan, progress, spec.ns_owners())
    try:
        after = verify(kernel, spec, plan, destroy, host, verify_all, base)
    except KeyboardInterrupt:
        raise ApplyError(VERIFY, NetapplyError("interrupted by the user"), result.done) from None
    except Exception as e:
        raise ApplyError(VERIFY, internal(e), result.done) from e
    if destroy:
        destroyed(after.observed, len(result.done))
    return result, after


def verify(
    kernel: Kernel, spec: Spec, plan: Plan, destroy: bool = False, host: str | None = None,
    verify_all: bool = False, base: Snapshot | None = None,
) -> Snapshot:
    """Read the kernel again after `plan` was executed, and raise
    ConvergenceError when what it wrote (or, with verify_all, anything) still
    differs from the spec. The snapshot returned is of the kernel now; its
    plan is empty, or covers only what the plan did not write."""
    if verify_all or plan.observed is None:
        after = snapshot(kernel, spec, destroy=destroy, host=host)
        _verify(after.plan, "the kernel did not converge after apply")
        return after
    after = snapshot(kernel, spec, destroy, host, plan.observed, written(plan),
                     base if base is not None and base.plan is plan else None)
    keys = {c.key for c in plan.changes} | {
        key for key in after.desired.keys() | after.observed.resources.keys()
        if key[0] in (Kind.FIREWALL, Kind.DOCKER_USER)}
    left = planner.plan({k: after.desired[k] for k in keys if k in after.desired},
                        {k: after.observed.resources[k] for k in keys
                         if k in after.observed.resources})
    _verify(left, "the kernel did not converge after apply")
    return after


def _restorable(res: Resource) -> bool:
    """Whether a rollback can make res again as it was. Not: the machine-wide
    settings netapply never reverts (IPv4 forwarding), leftovers of interrupted
    applies, veth pairs that were already broken (a missing end cannot be made
    as it was), hosts files of an older format, VXLAN devices with flags
    netapply does not set."""
    if is_shared(res) or isinstance(res, Leftover | LeftoverFile):
        return False
    if isinstance(res, Veth):
        return res.ns != UNSEEN_NS and bool(res.host_ifname)
    if isinstance(res, HostsFile):
        return bool(res.link)
    if isinstance(res, Vxlan):
        return not res.learning and res.proxy
    return True


def rollback_target(before: dict[Key, Resource], now: dict[Key, Resource]) -> dict[Key, Resource]:
    """The project's objects as they were before an apply; what cannot be made
    again as it was stays as it is now."""
    target: dict[Key, Resource] = {}
    for key, res in before.items():
        have = now.get(key)
        if isinstance(res, Bridge) and isinstance(have, Bridge):
            res = replace(res, rp_loose=res.rp_loose or have.rp_loose)  # never reverted
        if _restorable(res):
            target[key] = res
        elif key in now:
            target[key] = now[key]
    return target


def rollback(
    kernel: Kernel, spec: Spec, before: ObservedState, host: str | None = None,
    progress: Progress | None = None,
) -> Result:
    """Make the project's objects what they were (before: the observation the
    apply planned from), then verify that they are."""
    now = observe_project(kernel, spec, host).resources
    plan = planner.plan(rollback_target(before.resources, now), now)
    result = execute(kernel, spec.project, plan, progress, spec.ns_owners())
    after = observe_project(kernel, spec, host).resources
    left = planner.plan(rollback_target(before.resources, after), after)
    _verify(left, "the rollback did not restore the state before the apply")
    return result


def _verify(left: Plan, failure: str) -> None:
    """A plan that should be empty after changing the kernel: if it is not,
    the error shows what still differs."""
    if not left.empty:
        lines = [f"  {c.action} {c.title()}: {c.reason}" for c in left.changes]
        raise ConvergenceError(f"{failure}; still different:\n" + "\n".join(lines))
