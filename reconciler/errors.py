"""One error tree for everything a user can see.

Every message is "context: cause" and names the object. The docstring of each
class says who must act on it.
"""

from __future__ import annotations

import errno as errno_mod
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Where:
    """A position in a spec file (1-based line and column)."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, with where it was written."""

    where: Where | None
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class NetapplyError(Exception):
    """Root of every error netapply reports to a user."""


class SpecError(NetapplyError):
    """The spec is invalid. The user must fix the files named in each problem."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = sorted(
            problems, key=lambda p: (p.where is None, p.where or Where("", 0, 0), p.message)
        )
        super().__init__("\n".join(str(p) for p in self.problems))


class MachineError(SpecError):
    """The spec is valid but this machine cannot carry it out (a kernel driver or
    the nft command is missing, a parent interface does not exist, a subnet is
    already in use here). The operator must change the machine, or the spec."""


class PrivilegeError(NetapplyError):
    """The process lacks a capability. The user must run it as root (or with CAP_NET_ADMIN)."""


class KernelError(NetapplyError):
    """The kernel refused an action. The operator must read the reason and act on the machine."""

    def __init__(self, what: str, err: int, detail: str = ""):
        self.what = what
        self.errno = err
        reason = os.strerror(err) if err else detail
        name = errno_mod.errorcode.get(err, "")
        super().__init__(f"{what}: {reason}" + (f" ({name})" if name else ""))


class ApplyError(NetapplyError):
    """An action failed mid-apply. The next apply converges from where it stopped."""

    def __init__(self, action_text: str, cause: NetapplyError, done: Sequence[str]):
        self.action_text = action_text
        self.cause = cause
        self.done = list(done)
        super().__init__(f"failed: {action_text}: {cause}")


class ConvergenceError(NetapplyError):
    """After apply the kernel still differs from the spec. A netapply bug or a concurrent writer."""


class InternalError(NetapplyError):
    """A bug in netapply. Please report it with the spec that triggered it."""
