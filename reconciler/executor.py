"""Carry out a plan, step by step, through the kernel interface."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from reconciler.drivers import ops
from reconciler.drivers.kernel import Kernel
from reconciler.errors import ApplyError, KernelError, NetapplyError
from reconciler.planner import Action, Change, Plan

Progress = Callable[[Action, Change], None]


def describe(action: Action, change: Change) -> str:
    text = f"{action} {change.title()}"
    if change.action == Action.REPLACE:
        text += " (replace)"
    return text


@dataclass
class Result:
    done: list[str] = field(default_factory=list)


def execute(kernel: Kernel, project: str, plan: Plan, progress: Progress | None = None) -> Result:
    """Run every step in order; on the first kernel error stop and raise
    ApplyError naming the failed step and what was already done. Whatever was
    done stays done: the next apply plans from the kernel as it is."""
    result = Result()
    for action, change in plan.steps():
        text = describe(action, change)
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
        result.done.append(text)
        if progress is not None:
            progress(action, change)
    return result
