"""Overlay networks between machines, with real packets: three machines
(scripts/lab: each a network + mount namespace with eth0 on an underlay bridge)
inside this test's sandbox, netapply run on each with --host."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.model import default_mac

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parent.parent
SPEC = """\
version: 1
project: mesh
hosts:
  a: {address: 192.0.2.11}
  b: {address: 192.0.2.12}
  c: {address: 192.0.2.13}
networks:
  blue: {driver: overlay, vni: 100, subnet: 10.200.0.0/24}
  green: {driver: overlay, vni: 200, subnet: 10.201.0.0/24, gateway: 10.201.0.1}
  front: {subnet: 172.30.1.0/24}
containers:
  web: {host: a, networks: [blue, front]}
  solo: {host: a, networks: [front]}
  eve: {host: a, networks: [green]}
  db: {host: b, networks: {blue: {aliases: [database]}}}
  spy: {host: b, networks: [green]}
"""


class Lab:
    """Machines of scripts/lab, and netapply run on them."""

    def __init__(self, state: Path):
        self.env = {**os.environ, "LAB_DIR": str(state)}

    def lab(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(REPO / "scripts" / "lab"), *args], capture_output=True,
                              text=True, env=self.env, cwd=REPO)

    def up(self, name: str, address: str) -> None:
        result = self.lab("up", name, address)
        assert result.returncode == 0, result.stderr

    def run(self, machine: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return self.lab("run", machine, *cmd)

    def netapply(self, machine: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(machine, sys.executable, "-m", "reconciler.cli", "--no-color", *args)

    def apply(self, machine: str, spec: Path) -> str:
        result = self.netapply(machine, "apply", "--auto-approve", "--host", machine, str(spec))
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def converged(self, machine: str, spec: Path) -> bool:
        result = self.netapply(machine, "plan", "--detailed-exitcode", "--host", machine,
                               str(spec))
        assert result.returncode in (0, 2), result.stderr
        return result.returncode == 0

    def ping(self, machine: str, ns: str, target: str) -> bool:
        return self.run(machine, "ip", "netns", "exec", ns, "ping", "-c1", "-W1",
                        target).returncode == 0

    def address(self, machine: str, ns: str, ifname: str = "eth0") -> str:
        out = self.run(machine, "ip", "-j", "-n", ns, "-4", "addr", "show", "dev", ifname)
        return str(json.loads(out.stdout)[0]["addr_info"][0]["local"])

    def fdb(self, machine: str) -> list[dict[str, str]]:
        out = self.run(machine, "bridge", "-j", "fdb", "show")
        return [e for e in json.loads(out.stdout or "[]") if "dst" in e]


def test_containers_on_three_machines_reach_each_other_over_overlays(
    sandbox: Path, have_ping: None
) -> None:
    lab = Lab(sandbox / "lab")
    spec = sandbox / "mesh.yaml"
    spec.write_text(SPEC)
    try:
        for name, address in (("a", "192.0.2.11/24"), ("b", "192.0.2.12/24"),
                              ("c", "192.0.2.13/24")):
            lab.up(name, address)
        assert "This machine is host 'a' (--host a)." in lab.apply("a", spec)
        lab.apply("b", spec)
        lab.apply("c", spec)  # no container of c yet: nothing to make
        db_ip = lab.address("b", "db")

        # Across machines, by address and by name (and alias), both ways.
        assert lab.ping("a", "web", db_ip)
        assert lab.ping("a", "web", "db")
        assert lab.ping("a", "web", "database")
        assert lab.ping("b", "db", "web")
        assert lab.ping("a", "eve", "spy")  # the second overlay works too
        assert lab.ping("a", "web", "solo")  # web is on bridge network front too
        # green's gateway is on its bridge on every machine with members.
        assert lab.ping("a", "eve", "10.201.0.1") and lab.ping("b", "spy", "10.201.0.1")
        assert lab.address("a", "eve") != lab.address("b", "spy")

        # Isolation: another vni does not reach blue, even with an address in
        # blue's subnet; a bridge network of the same machine does not either.
        assert not lab.ping("a", "eve", db_ip)
        assert lab.run("a", "ip", "-n", "eve", "addr", "add", "10.200.0.250/24",
                       "dev", "eth0").returncode == 0
        assert not lab.ping("a", "eve", db_ip)
        assert not lab.ping("a", "solo", db_ip)
        assert not lab.ping("a", "solo", lab.address("b", "spy"))

        # db moves from b to c; every machine re-applies; its address stays.
        spec.write_text(SPEC.replace("  db: {host: b", "  db: {host: c"))
        for machine in ("b", "c", "a"):
            lab.apply(machine, spec)
        assert lab.address("c", "db") == db_ip
        assert lab.run("b", "ip", "netns", "pids", "db").returncode != 0  # gone from b
        assert lab.ping("a", "web", "db")
        assert lab.ping("c", "db", "web")
        db_mac = str(default_mac(ipaddress.IPv4Address(db_ip)))
        assert {e["dst"] for e in lab.fdb("a") if e["mac"] == db_mac} == {"192.0.2.13"}

        # Re-applied everywhere, nothing is left to do (eve's hand-made address
        # was removed by a's apply).
        assert all(lab.converged(machine, spec) for machine in ("a", "b", "c"))
    finally:
        lab.lab("down")


def test_the_overlay_example_walkthrough_runs(sandbox: Path, have_ping: None) -> None:
    """examples/overlay/mesh.yaml, through every step of its README
    (scripts/demo-overlay.sh, which fails on any step that does not work)."""
    result = subprocess.run(
        [str(REPO / "scripts" / "demo-overlay.sh")], capture_output=True, text=True,
        env={**os.environ, "LAB_DIR": str(sandbox / "lab")}, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "(no answer: agent is on overlay ops, db on app)" in result.stdout
    assert result.stdout.count("No changes.") >= 3
