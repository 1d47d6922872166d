"""Run netapply's command line and send it a real signal at a chosen phase of
its run (a test hook; nothing in reconciler/ knows of it):

    python -m tests.killer K ARGS...            SIGKILL right after the K-th kernel write
    python -m tests.killer SIG@PHASE:N ARGS...  SIG (KILL, TERM, HUP, INT, STOP) at PHASE

PHASE is one of:
- write:N           right after the N-th kernel write of the run (the apply's
                    actions, then those of a rollback);
- rollback-write:N  right after the N-th kernel write of a rollback;
- observe:N         as the N-th observation of the project starts: 1 is the
                    plan's, 2 the verification after the apply, 3 and 4 a
                    rollback's (what is there now, then its verification);
- complete:0        right after "Apply complete" (or "Destroy complete") is printed;
- confirm:0         as the apply starts waiting for `netapply confirm`.

SIGKILL is a crash at that point, with no cleanup code running, as a power
cut or the OOM killer would do. The others are what a user, systemd or a
hung-up terminal sends; STOP pauses the run there (a test then breaks its
output and continues it with SIGCONT). The signal is sent once, by the process
to itself, so its handler runs before the run goes on: the phase is exact.
Before sending, "killer: SIG at PHASE:N" is written to stderr, so a test can
tell that the phase was reached.

The points are between kernel calls: a single call (one netlink message, a
file written and renamed into place) is atomic to the kernel or the file
system, except making a namespace, which is marked before it is visible.
`python -m tests.killer inside:POINT ARGS...` dies inside a write instead
(kill_inside), where an interrupted run leaves files behind."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from reconciler import cli, engine, lock
from reconciler.drivers import files, netlink
from reconciler.drivers.netlink import NetlinkKernel
from tests.propkit import WRITES

PHASES = ("write", "rollback-write", "observe", "complete", "confirm")


def parse(when: str) -> tuple[signal.Signals, str, int]:
    if when.isdigit():
        return signal.SIGKILL, "write", int(when)
    name, _, point = when.partition("@")
    phase, _, count = point.partition(":")
    if phase not in PHASES:
        raise SystemExit(f"killer: unknown phase {phase!r} (one of {', '.join(PHASES)})")
    return signal.Signals[f"SIG{name}"], phase, int(count or 0)


def kill_inside(point: str) -> None:
    """Die in the middle of a write instead of after it: `mount`, right
    before the bind mount that makes a new namespace visible (its file made,
    nothing mounted on it); `rename`, right before a hosts file or table,
    written beside its place, is renamed into it."""
    if point == "mount":
        real = netlink._libc

        class Libc:
            def __getattr__(self, name: str) -> Any:
                if name != "mount":
                    return getattr(real, name)

                def mount(source: Any, target: Any, fstype: Any, flags: int, data: Any) -> int:
                    if flags == netlink.MS_BIND:  # the namespace's own mount
                        os.kill(os.getpid(), signal.SIGKILL)
                    return int(real.mount(source, target, fstype, flags, data))
                return mount

        netlink._libc = Libc()  # type: ignore[assignment]
    elif point == "rename":
        def rename(dir_fd: int, src: str, dst: str) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        files.rename = rename  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown kill point {point}")


def main() -> int:
    if sys.argv[1].startswith("inside:"):
        kill_inside(sys.argv[1].removeprefix("inside:"))
        return cli.main(sys.argv[2:])
    signum, phase, count = parse(sys.argv[1])
    fired = False
    rollback_base: list[int] = []  # kernel.writes when the rollback began
    observations = 0

    def fire() -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        if sys.stderr is not None:  # (with fd 2 closed, fd 2 may be any file now)
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(f"killer: {signum.name} at {phase}:{count}\n")
                sys.stderr.flush()
        os.kill(os.getpid(), signum)

    def counted(write: Callable[..., Any]) -> Callable[..., Any]:
        # Counted as the kernel counts its writes (`writes`), which is what the
        # tests sweep: a call that writes more than once is signalled after it.
        @functools.wraps(write)
        def run(kernel: NetlinkKernel, *args: Any, **kwargs: Any) -> Any:
            result = write(kernel, *args, **kwargs)
            base = {"write": 0, "rollback-write": rollback_base[0] if rollback_base else None}
            start = base.get(phase)
            if start is not None and kernel.writes - start >= count:
                fire()
            return result
        return run

    for name in WRITES:
        setattr(NetlinkKernel, name, counted(getattr(NetlinkKernel, name)))

    real_rollback, real_observe = engine.rollback, engine.observe_project
    real_publish = lock.publish_pending

    def rollback(kernel: Any, *args: Any, **kwargs: Any) -> Any:
        rollback_base.append(kernel.writes)
        return real_rollback(kernel, *args, **kwargs)

    def observe_project(*args: Any, **kwargs: Any) -> Any:
        nonlocal observations
        observations += 1
        if phase == "observe" and observations == count:
            fire()
        return real_observe(*args, **kwargs)

    def publish_pending(*args: Any, **kwargs: Any) -> Any:
        result = real_publish(*args, **kwargs)
        if phase == "confirm":
            fire()
        return result

    real_complete = cli.Cli._complete

    def complete(*args: Any, **kwargs: Any) -> None:
        real_complete(*args, **kwargs)
        if phase == "complete":
            fire()

    cli.Cli._complete = complete  # type: ignore[method-assign]
    engine.rollback = rollback
    engine.observe_project = observe_project
    lock.publish_pending = publish_pending
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
