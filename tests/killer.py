"""Run netapply's command line and SIGKILL this process right after its k-th
kernel write (python -m tests.killer K ARGS...): a crash at a chosen point,
with no cleanup code running, as a power cut or the OOM killer would do."""

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
    done = 0

    def counted(write: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(write)
        def run(*args: Any, **kwargs: Any) -> Any:
            nonlocal done
            result = write(*args, **kwargs)
            done += 1
            if done >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return run

    for name in WRITES:
        setattr(NetlinkKernel, name, counted(getattr(NetlinkKernel, name)))
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
