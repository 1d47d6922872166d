"""SIGKILL at any point of an apply: the next apply converges, nothing owned is
orphaned and nothing foreign is touched. SIGTERM, SIGHUP or SIGINT at any
point of an apply that can roll back: it is rolled back, whatever the phase.
Real applies (tests/killer.py) get the signal right after their k-th kernel
write, or in a later phase: the verification, the wait for confirm, the
rollback itself. `make test` samples k across the whole plan;
NETAPPLY_CRASH_ALL=1 (make test-long) sweeps every k with every signal."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from reconciler import engine
from reconciler.drivers.netlink import NetlinkKernel
from reconciler.resources import Key, Resource
from reconciler.state.observe import observe
from tests.kernelutil import private_namespace, require_sandbox
from tests.propkit import foreign_view
from tests.strategies import PROJECT, ForeignPlan, attach_namespace

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parent.parent
BEFORE = """\
version: 1
project: prop
networks:
  front: {subnet: 172.30.1.0/24, interface: br-front}
  back: {subnet: 172.30.2.0/24, ipv6: {subnet: "fd00:2::/64"}}
containers:
  web:
    networks: [front, back]
    ports: ["8080:80"]
  db: {networks: [back]}
  old: {networks: [front]}
"""
# Renames, a network dropped and one added, a container gone and one new,
# a moved port, an address pinned: deletes, parking, updates and creates.
AFTER = """\
version: 1
project: prop
networks:
  front: {subnet: 172.30.1.0/24, interface: br-web, icc: false}
  data: {subnet: 172.30.3.0/24}
containers:
  web:
    networks:
      data: {interface: eth0}
      front: {interface: eth1, ipv4_address: 172.30.1.50}
    ports: ["8081:80"]
  db: {networks: [data]}
  new: {networks: [front, data]}
"""


def netapply(*args: str, kill_after: int | None = None,
             when: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess; with kill_after or when (tests/killer.py), a
    signal at that point."""
    if kill_after:
        when = str(kill_after)
    prefix = ["-m", "tests.killer", when] if when else ["-m", "reconciler.cli"]
    return subprocess.run([sys.executable, *prefix, "--no-color", *args], capture_output=True,
                          text=True, cwd=REPO)


def owned() -> dict[Key, Resource]:
    """What the project owns now, as a rollback restores it (a fresh kernel
    handle: a rollback makes namespaces again, and a kept socket would still
    read the old one)."""
    kernel = NetlinkKernel()
    try:
        now = observe(kernel, PROJECT).resources
        return engine.rollback_target(now, now)
    finally:
        kernel.close()


def writes_of(spec: Path, start: Path | None) -> int:
    """How many kernel writes applying spec takes (from start applied, if given)."""
    with private_namespace():
        if start is not None:
            assert netapply("apply", "--auto-approve", str(start)).returncode == 0
        code = (
            "import sys\nfrom reconciler import engine, spec\n"
            "from reconciler.drivers.netlink import NetlinkKernel\n"
            "k = NetlinkKernel(); s = spec.load(sys.argv[1])\n"
            "engine.apply(k, s, engine.snapshot(k, s).plan); print(k.writes)\n"
        )
        out = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True,
                             text=True, cwd=REPO, check=True)
        return int(out.stdout)


def sweep_all() -> bool:
    """make test-long (or NETAPPLY_CRASH_ALL=1): every point, not a sample."""
    return bool(os.environ.get("NETAPPLY_CRASH_ALL")
                or os.environ.get("HYPOTHESIS_PROFILE") == "long")


def sample(total: int) -> list[int]:
    if sweep_all():
        return list(range(1, total + 1))
    points = {1, total, *(round(1 + i * (total - 1) / 7) for i in range(8))}
    return sorted(points)


@pytest.mark.parametrize("transition", ["cold", "edit"])
def test_sigkill_at_any_write_then_apply_converges(tmp_path: Path, transition: str) -> None:
    require_sandbox()
    before, after = tmp_path / "before.yaml", tmp_path / "after.yaml"
    before.write_text(BEFORE)
    after.write_text(AFTER)
    start = before if transition == "edit" else None
    target = after if transition == "edit" else before
    total = writes_of(target, start)
    assert total > 20
    for k in sample(total):
        with private_namespace():
            kernel = NetlinkKernel()
            try:
                attach_namespace(kernel)
                ForeignPlan(True, True, True, True, True, True).make(kernel)
                untouched = foreign_view(kernel)
                if start is not None:
                    assert netapply("apply", "--auto-approve", str(start)).returncode == 0
                killed = netapply("apply", "--auto-approve", str(target), kill_after=k)
                assert killed.returncode == -9, (k, killed.stdout[-500:], killed.stderr[-500:])
                again = netapply("apply", "--auto-approve", str(target))
                assert again.returncode == 0, (k, again.stdout[-2000:], again.stderr[-2000:])
                plan = netapply("plan", "--detailed-exitcode", str(target))
                assert plan.returncode == 0, (k, plan.stdout[-2000:])
                assert foreign_view(kernel) == untouched, k
                assert netapply("destroy", "--auto-approve", str(target)).returncode == 0
                assert observe(kernel, PROJECT).resources.keys() <= {("sysctl",
                                                                     "net/ipv4/ip_forward")}, k
                assert foreign_view(kernel) == untouched, k
            finally:
                kernel.close()


INTERRUPTING = ("TERM", "HUP", "INT")


@contextmanager
def machine() -> Iterator[Callable[[], dict[str, Any]]]:
    """A fresh namespace with foreign objects of every kind; yields a reader
    of everything foreign, for before/after comparisons."""
    with private_namespace():
        kernel = NetlinkKernel()
        try:
            attach_namespace(kernel)
            ForeignPlan(True, True, True, True, True, True).make(kernel)
            yield lambda: foreign_view(kernel)
        finally:
            kernel.close()


def assert_rolled_back(run: subprocess.CompletedProcess[str], marker: str, why: str,
                       before: Path, owned_before: dict[Key, Resource]) -> None:
    """The run got its signal where asked, was rolled back (for `why`), and
    the kernel is the project's state before it, to the last field."""
    assert run.returncode == 1, (marker, run.stdout[-1500:], run.stderr[-1500:])
    assert marker in run.stderr, (marker, run.stderr[-1500:])
    assert f"Rolling back ({why}" in run.stderr, (marker, run.stderr[-1500:])
    assert "Rolled back: " in run.stderr, (marker, run.stderr[-1500:])
    assert "Traceback" not in run.stderr
    assert owned() == owned_before, marker
    assert netapply("plan", "--detailed-exitcode", str(before)).returncode == 0, marker
    assert not [f for f in os.listdir("/run/netapply") if ".confirm" in f], marker


def test_a_signal_at_any_write_rolls_the_apply_back(tmp_path: Path) -> None:
    """SIGTERM (systemctl stop), SIGHUP (the operator's session gone) or
    SIGINT (Ctrl-C) after the k-th write of an apply with
    --rollback-on-failure: it stops between two steps and restores the state
    before it."""
    require_sandbox()
    before, after = tmp_path / "before.yaml", tmp_path / "after.yaml"
    before.write_text(BEFORE)
    after.write_text(AFTER)
    total = writes_of(after, before)
    # make test: the first and last write and two between, each signal in
    # turn; make test-long: every write with every signal.
    cases = ([(k, sig) for k in range(1, total + 1) for sig in INTERRUPTING] if sweep_all()
             else [(k, INTERRUPTING[i % 3]) for i, k in enumerate(
                 sorted({1, total // 3, 2 * total // 3, total}))])
    for k, sig in cases:
        with machine() as foreign:
            untouched = foreign()
            assert netapply("apply", "--auto-approve", str(before)).returncode == 0
            owned_before = owned()
            run = netapply("apply", "--auto-approve", "--rollback-on-failure", str(after),
                           when=f"{sig}@write:{k}")
            assert_rolled_back(run, f"killer: SIG{sig} at write:{k}",
                               f"interrupted by SIG{sig}", before, owned_before)
            assert f"error: interrupted by SIG{sig}" in run.stderr
            assert "Already done (" in run.stderr, k  # the steps it had done, named
            assert foreign() == untouched, k


# Later phases: (when, apply options, why the rollback). The verification is
# the second observation of a run; the rollback (here after a confirm timeout)
# makes the third and fourth, and writes in between.
LATER = {
    "verification, SIGTERM": ("TERM@observe:2", ["--rollback-on-failure"],
                              "interrupted by SIGTERM"),
    "verification, SIGHUP": ("HUP@observe:2", ["--rollback-on-failure"],
                             "interrupted by SIGHUP"),
    "verification, SIGINT": ("INT@observe:2", ["--confirm-timeout", "60"],
                             "interrupted by SIGINT"),
    "confirm wait, SIGHUP": ("HUP@confirm:0", ["--confirm-timeout", "60"],
                             "interrupted by SIGHUP before it was confirmed"),
    # A rollback ignores these signals until it is done.
    "rollback's read, SIGHUP": ("HUP@observe:3", ["--confirm-timeout", "0.1"],
                                "not confirmed within 0.1 s"),
    "rollback's writes, SIGTERM": ("TERM@rollback-write:6", ["--confirm-timeout", "0.1"],
                                   "not confirmed within 0.1 s"),
    "rollback's verification, SIGINT": ("INT@observe:4", ["--confirm-timeout", "0.1"],
                                        "not confirmed within 0.1 s"),
}


@pytest.mark.parametrize("case", list(LATER))
def test_a_signal_in_every_later_phase_rolls_the_apply_back(tmp_path: Path, case: str) -> None:
    require_sandbox()
    when, options, why = LATER[case]
    before, after = tmp_path / "before.yaml", tmp_path / "after.yaml"
    before.write_text(BEFORE)
    after.write_text(AFTER)
    with machine() as foreign:
        untouched = foreign()
        assert netapply("apply", "--auto-approve", str(before)).returncode == 0
        owned_before = owned()
        run = netapply("apply", "--auto-approve", *options, str(after), when=when)
        sig, _, phase = when.partition("@")
        assert_rolled_back(run, f"killer: SIG{sig} at {phase}", why, before, owned_before)
        assert "Apply complete" in run.stdout or "verification" in case
        assert foreign() == untouched


# SIGKILL in the phases after the actions: no rollback can run; the next apply
# continues forward.
KILLED = {
    "verification": ("KILL@observe:2", ["--rollback-on-failure"]),
    "confirm wait": ("KILL@confirm:0", ["--confirm-timeout", "60"]),
    "rollback's writes": ("KILL@rollback-write:3", ["--confirm-timeout", "0.1"]),
    "rollback's verification": ("KILL@observe:4", ["--confirm-timeout", "0.1"]),
}


@pytest.mark.parametrize("case", list(KILLED))
def test_sigkill_in_every_later_phase_then_apply_converges(tmp_path: Path, case: str) -> None:
    require_sandbox()
    when, options = KILLED[case]
    before, after = tmp_path / "before.yaml", tmp_path / "after.yaml"
    before.write_text(BEFORE)
    after.write_text(AFTER)
    with machine() as foreign:
        untouched = foreign()
        assert netapply("apply", "--auto-approve", str(before)).returncode == 0
        killed = netapply("apply", "--auto-approve", *options, str(after), when=when)
        assert killed.returncode == -9, (killed.stdout[-500:], killed.stderr[-500:])
        assert f"killer: SIGKILL at {when.partition('@')[2]}" in killed.stderr
        # A pending file the killed apply left is not taken for a waiting apply.
        confirm = netapply("confirm", str(after))
        assert confirm.returncode == 1 and "no apply of project 'prop' is waiting" in (
            confirm.stderr)
        again = netapply("apply", "--auto-approve", str(after))
        assert again.returncode == 0, (again.stdout[-2000:], again.stderr[-2000:])
        assert netapply("plan", "--detailed-exitcode", str(after)).returncode == 0
        assert foreign() == untouched
