"""Changed MACs and moved addresses are reachable at once (issue 15, part 3):
netapply announces them (gratuitous ARP, unsolicited neighbour advertisement),
so neither the host nor a peer keeps sending to the old MAC until its
neighbour entry goes stale (25 to 50 s)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.kernelutil import run_cli

pytestmark = pytest.mark.kernel

SPEC = """\
version: 1
project: nb
networks:
  n: {{subnet: 172.31.53.0/24, ipv6: {{subnet: "fd00:53::/64"}}}}
containers:
{containers}
"""


def apply(capsys: pytest.CaptureFixture[str], path: Path, containers: str) -> None:
    path.write_text(SPEC.format(containers=containers))
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(path))
    assert code == 0, out + err


def ping(ns: str | None, address: str) -> bool:
    """One echo, one second to answer."""
    cmd = ["ping", "-c", "1", "-W", "1", address]
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def test_a_changed_mac_is_reachable_at_once_from_host_and_peer(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sandbox / "nb.yaml"
    apply(capsys, path, "  a: {networks: {n: {ipv4_address: 172.31.53.10, "
                        "ipv6_address: 'fd00:53::10'}}}\n  b: {networks: [n]}\n")
    for address in ("172.31.53.10", "fd00:53::10"):
        assert ping(None, address) and ping("b", address)  # both learn a's MAC
    apply(capsys, path, "  a: {networks: {n: {ipv4_address: 172.31.53.10, "
                        "ipv6_address: 'fd00:53::10', mac_address: '02:52:1a:16:9f:75'}}}\n"
                        "  b: {networks: [n]}\n")
    for address in ("172.31.53.10", "fd00:53::10"):
        assert ping(None, address), f"the host still sends {address} to the old MAC"
        assert ping("b", address), f"the peer still sends {address} to the old MAC"


def test_an_address_given_to_another_container_is_reachable_at_once(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sandbox / "nb.yaml"
    apply(capsys, path, "  a: {networks: {n: {ipv4_address: 172.31.53.20, "
                        "mac_address: '02:52:00:00:00:20'}}}\n  b: {networks: [n]}\n"
                        "  c: {networks: [n]}\n")
    assert ping(None, "172.31.53.20") and ping("b", "172.31.53.20")
    # a goes, and its address goes to c (with c's own, default MAC).
    apply(capsys, path, "  b: {networks: [n]}\n"
                        "  c: {networks: {n: {ipv4_address: 172.31.53.20}}}\n")
    assert ping(None, "172.31.53.20"), "the host still sends to a's MAC"
    assert ping("b", "172.31.53.20"), "the peer still sends to a's MAC"
