"""Carry out a plan, step by step, through the kernel interface."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from reconciler.drivers import ops
from reconciler.drivers.kernel import Kernel
from reconciler.errors import ApplyError, InternalError, KernelError, NetapplyError
from reconciler.planner import Action, Change, Plan
from reconciler.resources import ns_label

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
    for action, change in plan.steps():
        text = describe(action, change, owners)
        try:
            if action == Action.DELETE:
                assert change.before is not None
                ops.delete(kernel, change.before)
            elif action == Action.CREATE:
                assert change.after is not None
                ops.create(kernel, project, change.after)
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
