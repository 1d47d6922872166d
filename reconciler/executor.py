"""Carry out a plan, step by step, through the kernel interface."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from reconciler.drivers import ops
from reconciler.drivers.kernel import Kernel
from reconciler.errors import ApplyError, InternalError, KernelError, NetapplyError
from reconciler.planner import Action, Change, Plan
from reconciler.resources import Address, Resource, Sublink, Veth, ns_label

Progress = Callable[[Action, Change], None]


def describe(action: Action, change: Change, owners: Mapping[str, str] | None = None) -> str:
    """One step as progress and error lines show it: "web: create route
    default via 172.30.1.1 ...", prefixed by the containers of the step's
    namespace (`owners`, Spec.ns_owners) or "host"; a namespace of no
    container (one being deleted) is named as it is."""
    text = f"{action} {change.title()}"
    if change.action == Action.REPLACE:
        text += " (replace)"
    if owners is None:
        return text
    return f"{owners.get(change.ns) or ns_label(change.ns)}: {text}"


def internal(e: Exception) -> NetapplyError:
    """An exception met while changing the kernel, as a NetapplyError: as it
    is when it is one, else an InternalError (a bug in netapply) naming it."""
    if isinstance(e, NetapplyError):
        return e
    return InternalError(f"internal error ({type(e).__name__}: {e}): a bug in netapply, "
                         "please report it with the spec")


def _ip(res: Resource) -> str:
    """The address of an Address resource without its prefix length, else ""."""
    return res.cidr.split("/")[0] if isinstance(res, Address) else ""


def moved_addresses(plan: Plan) -> set[str]:
    """The addresses this plan takes from one link and gives to another (or
    to the same link made anew, or to a link whose MAC changes): neighbours
    hold them at the old MAC, so their creation is announced. An address new to the machine
    is not: a gratuitous ARP is flooded to every port of the bridge and
    processed in every namespace, which made announcing every address the
    largest cost of a cold apply (quadratic in the containers on a
    network). An address whose last holder went in an earlier apply is
    relearnt by the kernel's own neighbour probing (RFC 4861 NUD, ARP
    alike) within seconds."""
    moved: set[str] = set()
    for c in plan.changes:
        before, after = c.before, c.after
        if c.action in (Action.DELETE, Action.REPLACE) and before is not None:
            # An address goes with it, or with its link (the link's record).
            moved.add(_ip(before))
            if isinstance(before, Veth | Sublink):
                moved.update(before.allocated.split(","))
        if c.action == Action.UPDATE and isinstance(before, Veth | Sublink) \
                and isinstance(after, Veth | Sublink) and before.mac != after.mac:
            moved.update(after.allocated.split(","))  # added after the MAC changed
    moved.discard("")
    return moved


@dataclass
class Result:
    done: list[str] = field(default_factory=list)


def execute(kernel: Kernel, project: str, plan: Plan, progress: Progress | None = None,
            owners: Mapping[str, str] | None = None) -> Result:
    """Run every step in order; on the first failure stop and raise
    ApplyError naming the failed step and what was already done. A failure
    is the kernel's refusal (KernelError), Ctrl-C, or a bug in netapply
    (InternalError as the cause): every way a step can end but success.
    Whatever was done stays done: the next apply plans from the kernel as it
    is. An exception `progress` raises (a request to stop between two steps)
    goes through unchanged."""
    result = Result()
    moved = moved_addresses(plan)
    for action, change in plan.steps():
        text = describe(action, change, owners)
        try:
            if action == Action.DELETE:
                assert change.before is not None
                ops.delete(kernel, change.before)
            elif action == Action.CREATE:
                assert change.after is not None
                ops.create(kernel, project, change.after,
                           announce=_ip(change.after) in moved)
            else:
                assert change.before is not None and change.after is not None
                ops.update(kernel, project, change.before, change.after)
        except KernelError as e:
            raise ApplyError(text, e, result.done) from None
        except KeyboardInterrupt:
            # Report what is done; the step itself may or may not have happened.
            interrupted = NetapplyError("interrupted by the user")
            raise ApplyError(text, interrupted, result.done) from None
        except Exception as e:  # a bug: still a failed step, with what was done
            raise ApplyError(text, internal(e), result.done) from e
        result.done.append(text)
        if progress is not None:
            progress(action, change)
    return result
