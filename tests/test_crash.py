"""SIGKILL at any point of an apply: the next apply converges, nothing owned is
orphaned and nothing foreign is touched. Real applies (tests/killer.py) are
killed right after their k-th kernel write. `make test` samples k across the
whole plan; NETAPPLY_CRASH_ALL=1 (make test-long) sweeps every k."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.drivers.netlink import NetlinkKernel
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


def netapply(*args: str, kill_after: int | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["-m", "tests.killer", str(kill_after)] if kill_after else ["-m", "reconciler.cli"]
    return subprocess.run([sys.executable, *prefix, "--no-color", *args], capture_output=True,
                          text=True, cwd=REPO)


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


def sample(total: int) -> list[int]:
    if os.environ.get("NETAPPLY_CRASH_ALL") or os.environ.get("HYPOTHESIS_PROFILE") == "long":
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
