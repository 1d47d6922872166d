"""Run netapply's command line and SIGKILL this process right after its k-th
kernel write (python -m tests.killer K ARGS...): a crash at a chosen point,
with no cleanup code running, as a power cut or the OOM killer would do.
The points are between kernel calls: a single call (one netlink message, a
file written and renamed into place) is atomic to the kernel or the file
system, except making a namespace, which is marked before it is visible."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from reconciler import cli
from reconciler.drivers.netlink import NetlinkKernel
from tests.propkit import WRITES


def main() -> int:
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
