"""Fixtures. Every test that touches the kernel gets its own private network and
mount namespace (with tmpfs on /run/netns and /etc/netns), entered in-process
for the test and left afterwards; the test suite itself also runs under
scripts/sandbox, so nothing can reach the machine's own namespace."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)
REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kernel: needs root and a private namespace (sandbox)")


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _in_sandbox() -> bool:
    """True when this process runs in a network namespace that scripts/sandbox
    made (it records the namespace it started from)."""
    outer = os.environ.get("NETAPPLY_OUTER_NETNS")
    return bool(outer) and os.readlink("/proc/self/ns/net") != outer


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    """A fresh network + mount namespace for one test. Yields a scratch dir."""
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    if not _in_sandbox():
        pytest.fail("kernel tests must run under scripts/sandbox (make test does)")
    cwd = os.getcwd()
    own_net = os.open("/proc/self/ns/net", os.O_RDONLY)
    own_mnt = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    try:
        _check(_libc.unshare(CLONE_NEWNET | CLONE_NEWNS), "unshare")
        _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        for path in (b"/run/netns", b"/etc/netns"):
            _check(_libc.mount(b"tmpfs", path, b"tmpfs", 0, b"mode=0755"), "mount tmpfs")
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        yield tmp_path
    finally:
        _check(_libc.setns(own_net, CLONE_NEWNET), "return to the network namespace")
        _check(_libc.setns(own_mnt, CLONE_NEWNS), "return to the mount namespace")
        os.close(own_net)
        os.close(own_mnt)
        os.chdir(cwd)


@pytest.fixture
def have_ping() -> None:
    if shutil.which("ping") is None:
        pytest.fail("ping is missing: make deps installs iputils-ping")
