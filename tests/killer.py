"""Run netapply's command line and SIGKILL this process right after its k-th
kernel write (python -m tests.killer K ARGS...): a crash at a chosen point,
with no cleanup code running, as a power cut or the OOM killer would do.
The points are between kernel calls: a single call (one netlink message, a
file written and renamed into place) is atomic to the kernel or the file
system, except making a namespace, which is marked before it is visible.
`python -m tests.killer inside:POINT ARGS...` dies inside a write instead
(kill_inside), where an interrupted run leaves files behind."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from reconciler import cli
from reconciler.drivers import files, netlink
from reconciler.drivers.netlink import NetlinkKernel
from tests.propkit import WRITES


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
    kill_after = int(sys.argv[1])

    def counted(write: Callable[..., Any]) -> Callable[..., Any]:
        # Counted as the kernel counts its writes (`writes`), which is what the
        # test sweeps: a call that writes more than once is killed after it.
        @functools.wraps(write)
        def run(kernel: NetlinkKernel, *args: Any, **kwargs: Any) -> Any:
            result = write(kernel, *args, **kwargs)
            if kernel.writes >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return run

    for name in WRITES:
        setattr(NetlinkKernel, name, counted(getattr(NetlinkKernel, name)))
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
