"""Drift of an automatic address is repaired (issue 15, part 8): netapply
records what it allocated in the attachment's mark (the veth host end's
alias), so an address someone puts on the link by hand is drift, not the
new sticky choice, and published ports keep pointing at the allocation."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.kernelutil import addresses, links, run_cli

pytestmark = pytest.mark.kernel

SPEC = """\
version: 1
project: ad
networks:
  n: {subnet: 10.77.1.0/24}
containers:
  a: {networks: [n]}
  web: {networks: [n], ports: ["8095:80"]}
"""


def in_web(*args: str) -> None:
    subprocess.run(["ip", "netns", "exec", "web", "ip", *args], check=True)


def dnat_targets() -> str:
    return subprocess.run(["nft", "list", "chain", "inet", "netapply-ad", "prerouting"],
                          capture_output=True, text=True, check=True).stdout


def test_a_hand_changed_automatic_address_is_drift(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = sandbox / "ad.yaml"
    spec.write_text(SPEC)
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, out + err
    assert addresses("web", "eth0") == ["10.77.1.3/24"]
    host_end = next(name for name, link in links().items()
                    if link.get("ifalias", "").endswith("/veth/web/n/host/10.77.1.3"))
    in_web("addr", "del", "10.77.1.3/24", "dev", "eth0")
    in_web("addr", "add", "10.77.1.99/24", "dev", "eth0")
    code, out, _ = run_cli(capsys, "plan", "--detailed-exitcode", str(spec))
    assert code == 2
    assert "create address 10.77.1.3/24 on eth0" in out
    assert "delete address 10.77.1.99/24 on eth0" in out
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, out + err
    assert addresses("web", "eth0") == ["10.77.1.3/24"]
    assert "10.77.1.3" in dnat_targets() and "10.77.1.99" not in dnat_targets()
    # A mark without the record (an older version's, or lost): the address on
    # the link is kept, as before, and the record is written again.
    subprocess.run(["ip", "link", "set", host_end, "alias", "netapply/ad/veth/web/n/host"],
                   check=True)
    code, out, _ = run_cli(capsys, "plan", str(spec))
    assert "create address" not in out and "delete address" not in out, out
    assert "(allocated  -> 10.77.1.3)" in out
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, out + err
    assert links()[host_end]["ifalias"].endswith("/host/10.77.1.3")
    assert addresses("web", "eth0") == ["10.77.1.3/24"]
    # Removing a container still renumbers no other.
    spec.write_text(SPEC.replace("  a: {networks: [n]}\n", ""))
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, out + err
    assert addresses("web", "eth0") == ["10.77.1.3/24"]
