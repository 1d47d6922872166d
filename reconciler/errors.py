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


PRIVILEGE_HINT = ("netapply needs CAP_NET_ADMIN and CAP_SYS_ADMIN (as root, or in a container "
                  "with --privileged or --cap-add NET_ADMIN --cap-add SYS_ADMIN); if it has "
                  "them, a security module (SELinux, AppArmor) or a seccomp profile refuses it")
IN_THE_WAY_HINT = ("netapply never follows a symbolic link where it writes as root, nor "
                   "replaces what is in its way: remove it (plan shows it), then apply again")
# What the operator can do about each errno the kernel gives netapply.
HINTS = {
    errno_mod.EEXIST: "something else made an object with that name after netapply looked; "
                      "run plan to see it, remove or rename it, then apply again",
    errno_mod.ENODEV: "an interface it needs is gone (deleted meanwhile, or a parent interface "
                      "that vanished); check `ip link`, then apply again: the plan shows what "
                      "is missing",
    errno_mod.ENOENT: "something it needs is gone (deleted meanwhile); apply again: the plan "
                      "shows what is missing",
    errno_mod.EBUSY: "the device is in use (a port of a bridge or bond, or held by another "
                     "tool); free it, then apply again",
    errno_mod.EPERM: PRIVILEGE_HINT,
    errno_mod.EACCES: PRIVILEGE_HINT,
    errno_mod.ENOSPC: "a limit is reached: when making a namespace, the kernel's "
                      "user.max_net_namespaces (sysctl); when writing a file, the disk is full; "
                      "raise the limit or free space, then apply again",
    errno_mod.ENOMEM: "the kernel is out of memory; free some, then apply again",
    errno_mod.EOPNOTSUPP: "the running kernel cannot do this (a missing module or option); "
                          "load the module, or change the spec",
    errno_mod.EROFS: "the file system is mounted read-only; remount it read-write",
    errno_mod.EMFILE: "this process may open too few files (ulimit -n) for the namespaces it "
                      "works in; raise the limit (`ulimit -n`, or LimitNOFILE= in a systemd "
                      "unit), then run again",
    errno_mod.ENFILE: "the machine has no file descriptor left (fs.file-max); close files or "
                      "raise the limit, then run again",
    errno_mod.ELOOP: IN_THE_WAY_HINT,
    errno_mod.ENOTDIR: IN_THE_WAY_HINT,
    errno_mod.EADDRINUSE: "the address or port is used by something else on this machine; "
                          "free it or change the spec",
}


class KernelError(NetapplyError):
    """The kernel refused an action. The operator must read the reason and act on the machine."""

    def __init__(self, what: str, err: int, detail: str = ""):
        self.what = what
        self.errno = err
        reason = os.strerror(err) if err else detail
        name = errno_mod.errorcode.get(err, "")
        super().__init__(f"{what}: {reason}" + (f" ({name})" if name else ""))

    @property
    def hint(self) -> str:
        """What to do, in words; "" where there is nothing general to say."""
        return HINTS.get(self.errno, "")


class ApplyError(NetapplyError):
    """An action failed mid-apply. The next apply converges from where it stopped."""

    def __init__(self, action_text: str, cause: NetapplyError, done: Sequence[str]):
        self.action_text = action_text
        self.cause = cause
        self.done = list(done)
        super().__init__(f"failed: {action_text}: {cause}")

    @property
    def hint(self) -> str:
        return self.cause.hint if isinstance(self.cause, KernelError) else ""


class UnreadError(NetapplyError):
    """A part of the kernel that may hold the project's objects could not be
    read (the nftables ruleset without a working `nft`, a namespace that could
    not be entered), so netapply cannot vouch for a plan, a listing or a clean
    destroy. The operator must make that part readable, then run it again."""

    def __init__(self, parts: Sequence[str], outcome: str):
        self.parts = list(parts)
        self.outcome = outcome
        listed = "\n".join(f"  {part}" for part in self.parts)
        super().__init__(f"netapply could not read part of the kernel, so {outcome}:\n{listed}")

    @property
    def hint(self) -> str:
        return ("make that part readable (for the nftables ruleset: install the nftables "
                "package, or repair the nft command), then run the command again")


class ConvergenceError(NetapplyError):
    """After apply the kernel still differs from the spec. A netapply bug or a concurrent writer."""


class InternalError(NetapplyError):
    """A bug in netapply. Please report it with the spec that triggered it."""
