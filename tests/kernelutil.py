"""Helpers for kernel tests: read the kernel independently with `ip -j`, run the CLI."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli, engine
from reconciler.desired import host_ifname
from reconciler.drivers.kernel import TMP_SUFFIX
from reconciler.drivers.netlink import NetlinkKernel
from reconciler.model import Spec
from reconciler.state.cache import ObservedCache
from reconciler.state.observe import ObservedState

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _single_threaded(call: Callable[[], int], what: str) -> None:
    """unshare/setns of a mount namespace need a single-threaded process: a thread
    that netapply joined a moment ago may still be exiting in the kernel."""
    deadline = time.monotonic() + 2
    while call() != 0:
        if ctypes.get_errno() != errno.EINVAL or time.monotonic() > deadline:
            _check(-1, what)
        time.sleep(0.001)


def require_sandbox() -> None:
    """Kernel tests run only as root, inside the namespace scripts/sandbox made
    (it records the namespace it started from)."""
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    outer = os.environ.get("NETAPPLY_OUTER_NETNS")
    if not outer or os.readlink("/proc/self/ns/net") == outer:
        pytest.fail("kernel tests must run under scripts/sandbox (make test does)")


@contextmanager
def private_namespace() -> Iterator[None]:
    """Enter a fresh network + mount namespace (tmpfs on /run/netns and
    /etc/netns) for the body, then return to the previous ones. Everything made
    inside is gone once nothing refers to it any more."""
    cwd = os.getcwd()
    own_net = os.open("/proc/self/ns/net", os.O_RDONLY)
    own_mnt = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    try:
        _single_threaded(lambda: _libc.unshare(CLONE_NEWNET | CLONE_NEWNS), "unshare")
        _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        for path in (b"/run/netns", b"/etc/netns", b"/run/netapply"):
            _check(_libc.mount(b"tmpfs", path, b"tmpfs", 0, b"mode=0755"), "mount tmpfs")
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        yield
    finally:
        _check(_libc.setns(own_net, CLONE_NEWNET), "return to the network namespace")
        _single_threaded(lambda: _libc.setns(own_mnt, CLONE_NEWNS), "return to the mount namespace")
        os.close(own_net)
        os.close(own_mnt)
        os.chdir(cwd)


def ip_json(ns: str | None, *args: str) -> Any:
    cmd = ["ip", "-j"] + (["-n", ns] if ns else []) + list(args)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out or "[]")


def until_started(cache: ObservedCache, within: float = 5.0) -> None:
    """Until a kernel listener that just started has marked everything (what
    its start does), taking that mark: what is marked next is the test's."""
    deadline = time.monotonic() + within
    while cache.take()[0] is None:
        assert time.monotonic() < deadline, "the listener did not start"
        time.sleep(0.01)


def links(ns: str | None = None) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in ip_json(ns, "-d", "link", "show")}


def addresses(ns: str | None, ifname: str, family: str = "inet") -> list[str]:
    found = []
    for link in ip_json(ns, "addr", "show", "dev", ifname):
        for a in link.get("addr_info", []):
            if a["family"] == family and a.get("scope") != "link":
                found.append(f"{a['local']}/{a['prefixlen']}")
    return sorted(found)


def netns_list() -> list[str]:
    """Named namespaces: the entries of /run/netns with a namespace mounted on
    them. Read here, not with `ip netns list`, which opens each entry and would
    block on a FIFO a test put there."""
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return []
    nsfs = os.stat("/proc/self/ns/net").st_dev
    found = []
    for name in names:
        st = os.lstat(os.path.join("/run/netns", name))
        if stat.S_ISREG(st.st_mode) and st.st_dev == nsfs:
            found.append(name)
    return sorted(found)


def _without_timers(value: Any) -> Any:
    """Bridge timers tick by themselves; they are not state anyone changed."""
    if isinstance(value, dict):
        return {k: _without_timers(v) for k, v in value.items() if not k.endswith("_timer")}
    if isinstance(value, list):
        return [_without_timers(v) for v in value]
    return value


def kernel_snapshot() -> dict[str, Any]:
    """Everything an apply could change, as `ip` reports it, for before/after checks."""
    snap: dict[str, Any] = {"netns": netns_list()}
    for ns in [None, *snap["netns"]]:
        snap[f"link:{ns}"] = _without_timers(ip_json(ns, "-d", "link", "show"))
        snap[f"addr:{ns}"] = ip_json(ns, "addr", "show")
        snap[f"route:{ns}"] = ip_json(ns, "route", "show", "table", "all")
        snap[f"neigh:{ns}"] = ip_json(ns, "neigh", "show", "nud", "permanent")
    # Without the entries the bridge learns from traffic (no state): they come
    # and go with packets (an expectation's probe), as the neighbours above
    # are the permanent ones only.
    snap["fdb"] = [e for e in json.loads(subprocess.run(
        ["bridge", "-j", "fdb", "show"], check=True, capture_output=True, text=True
    ).stdout or "[]") if e.get("state")]
    snap["nft"] = json.loads(subprocess.run(
        ["nft", "-j", "list", "ruleset"], check=True, capture_output=True, text=True
    ).stdout)
    snap["ip_forward"] = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    etc = Path("/etc/netns")
    snap["files"] = sorted(
        (str(p), p.read_text()) for p in etc.rglob("*") if p.is_file()
    )
    return snap


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["--no-color", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def in_ns(ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True)


REPO = Path(__file__).resolve().parent.parent
HOLD = """\
import sys, time
from reconciler.lock import project_lock
with project_lock(sys.argv[1], 5, sys.argv[2]):
    print("held", flush=True)
    time.sleep(60)
"""


@contextmanager
def lock_held(project: str, directory: str) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the project's lock; it is killed (SIGKILL) at the end."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, project, directory],
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        yield child
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def assert_same_kernel(now: dict[str, Any], before: dict[str, Any]) -> None:
    """Equal snapshots; on a difference, what each side has that the other has not."""
    for key in sorted(set(now) | set(before)):
        a, b = now.get(key), before.get(key)
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            only_now = [x for x in a if x not in b]
            only_before = [x for x in b if x not in a]
            raise AssertionError(f"{key}: now has {only_now}; before had {only_before}")
        raise AssertionError(f"{key}: now {a!r}; before {b!r}")


def run_quiet(*cmd: str) -> None:
    """Run a change from outside whose target may be gone already (an earlier
    change deleted it): failing is fine."""
    subprocess.run(cmd, capture_output=True)


def fresh_observation(spec: Spec) -> ObservedState:
    """What a new run would observe: new sockets, nothing kept from before."""
    kernel = NetlinkKernel()
    try:
        return engine.observe_project(kernel, spec)
    finally:
        kernel.close()


@dataclass(frozen=True)
class Endpoint:
    """A container's first attachment (eth0), where outside changes aim."""

    project: str
    container: str  # also its netns name
    network: str
    cidr: str  # its address on eth0, with the prefix length
    bridge: str  # the network's bridge device


# Changes from outside to what a project owns, or beside it (foreign objects),
# by what each does; outside_change() makes them.
OWNED_CHANGES = ("veth", "address", "route", "table", "netns", "mtu", "bridge mtu",
                 "bridge down", "hosts file", "hosts table", "hosts leftover")
FOREIGN_CHANGES = ("foreign address", "foreign route", "foreign link", "host link",
                   "foreign table", "netns again", "foreign netns", "foreign hosts")
OUTSIDE_CHANGES = OWNED_CHANGES + FOREIGN_CHANGES


def outside_change(what: str, end: Endpoint) -> None:
    """Make one of OUTSIDE_CHANGES with `ip`, `nft` and file writes, as someone
    else on the machine would. Its target may be gone already: then it does
    nothing. "netns again" deletes the container's namespace and makes a new
    one (foreign) under its name; "hosts table" edits the project's table
    through the container's hosts link."""
    ns, foreign = end.container, f"x-{end.container}"
    hosts = Path("/etc/netns") / ns / "hosts"
    if what == "veth":
        run_quiet("ip", "link", "del", host_ifname(end.project, ns, end.network))
    elif what == "address":
        run_quiet("ip", "-n", ns, "addr", "del", end.cidr, "dev", "eth0")
    elif what == "route":
        run_quiet("ip", "-n", ns, "route", "del", "default")
    elif what == "table":
        run_quiet("nft", "flush", "ruleset")
    elif what == "netns":
        run_quiet("ip", "netns", "del", ns)
    elif what == "mtu":
        run_quiet("ip", "-n", ns, "link", "set", "eth0", "mtu", "1400")
    elif what == "bridge mtu":
        run_quiet("ip", "link", "set", end.bridge, "mtu", "1280")
    elif what == "bridge down":
        run_quiet("ip", "link", "set", end.bridge, "down")
    elif what == "hosts file":
        if hosts.parent.is_dir():
            hosts.unlink(missing_ok=True)
            hosts.write_text("127.0.0.1 localhost\n")
    elif what == "hosts table":
        if hosts.is_file():  # through the link: the project's table
            with hosts.open("a") as f:
                f.write("10.1.2.3 edited\n")
    elif what == "hosts leftover":  # what an interrupted write of the hosts file leaves
        if hosts.parent.is_dir():
            hosts.with_name("hosts" + TMP_SUFFIX).write_text("half")
    elif what == "foreign address":
        run_quiet("ip", "-n", ns, "addr", "add", "10.77.0.1/32", "dev", "eth0")
    elif what == "foreign route":
        run_quiet("ip", "-n", ns, "route", "add", "10.98.0.0/16", "dev", "eth0")
    elif what == "foreign link":
        run_quiet("ip", "-n", ns, "link", "add", "x0", "type", "veth", "peer", "name", "x1")
    elif what == "host link":
        run_quiet("ip", "link", "add", foreign, "type", "veth", "peer", "name", f"{foreign}p")
    elif what == "foreign table":
        run_quiet("nft", "add", "table", "inet", foreign)
    elif what == "netns again":
        run_quiet("ip", "netns", "del", ns)
        run_quiet("ip", "netns", "add", ns)
    elif what == "foreign netns":
        run_quiet("ip", "netns", "add", foreign)
    elif what == "foreign hosts":
        (Path("/etc/netns") / foreign).mkdir(exist_ok=True)
        (Path("/etc/netns") / foreign / "hosts").write_text("127.0.0.1 localhost\n")
    else:
        raise ValueError(f"unknown outside change {what!r}")
