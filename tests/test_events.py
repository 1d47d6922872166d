"""Pieces of watch mode that need no kernel: the notification thread's
recovery and relevance rules, and the open-files limit."""

from __future__ import annotations

import resource
import subprocess
import sys
import threading

from reconciler.drivers import rtnl
from reconciler.drivers.events import HOST, KernelEvents
from reconciler.drivers.kernel import NUD_NOARP, NUD_PERMANENT


def test_a_failing_listener_says_so_asks_for_a_reconcile_and_listens_again() -> None:
    errors: list[str] = []
    notes: list[str] = []
    calls: list[int] = []
    again = threading.Event()
    events = KernelEvents("p", "netapply-p", notes.append, errors.append)

    def listen() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(24, "Too many open files")
        again.set()
        events._stopping.wait()

    events._listen = listen  # type: ignore[method-assign]
    events.start()
    assert again.wait(5)
    events.stop()
    assert errors == ["kernel notifications failed (OSError: [Errno 24] Too many open files); "
                      "listening again"]
    assert notes == ["kernel notifications restarted"]
    assert not events.alive()


def _neigh(family: int, index: int, state: int) -> tuple[bytes, int]:
    body = rtnl.NDMSG.pack(family, index, state, 0, 0)
    return rtnl.HEADER.pack(rtnl.HEADER.size + len(body), rtnl.RTM_NEWNEIGH, 0, 0, 0) + body, \
        rtnl.RTM_NEWNEIGH


def test_only_the_projects_kind_of_neighbour_entries_count() -> None:
    events = KernelEvents("p", "netapply-p", lambda _: None, lambda _: None)
    events._owned_host_links = {7}
    relevant = events._route_relevant
    assert relevant(HOST, *_neigh(rtnl.AF_BRIDGE, 7, NUD_NOARP))  # a static fdb entry
    assert relevant(HOST, *_neigh(2, 7, NUD_PERMANENT))  # a permanent neighbour
    assert not relevant(HOST, *_neigh(2, 7, NUD_NOARP))  # the kernel's own
    assert not relevant(HOST, *_neigh(rtnl.AF_BRIDGE, 7, 0x02))  # learned from traffic
    assert not relevant(HOST, *_neigh(2, 8, NUD_PERMANENT))  # not on an owned link
    assert not relevant("web", *_neigh(2, 3, NUD_PERMANENT))  # none in containers


def test_the_open_files_limit_is_raised_to_the_hard_limit() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    code = (
        "import resource\n"
        "from reconciler import engine\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "engine.raise_open_files_limit()\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert int(out) == hard
