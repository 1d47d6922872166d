"""What else is on the machine: networks already in use, other firewall managers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.kernelutil import kernel_snapshot, run_cli

pytestmark = pytest.mark.kernel

SPEC = """\
version: 1
project: shop
networks:
  front:
    subnet: 10.77.1.0/24
    interface: br-front
containers:
  web: {networks: [front]}
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def nft(*args: str) -> None:
    subprocess.run(["nft", *args], check=True)


@pytest.mark.parametrize(("setup", "what"), [
    ([["address", "10.77.0.5/16"]], "address 10.77.0.5/16 on lan0"),
    ([["address", "192.0.2.1/24"], ["route", "10.77.0.0/20", "192.0.2.254"]],
     "route 10.77.0.0/20 via 192.0.2.254 dev lan0"),
    # A VPN keeping its routes in a table of its own, looked up by a rule:
    # the host would route the network's traffic there (issue 15, part 4).
    ([["table", "10.64.0.0/10", "52"], ["rule", "5270", "52"]],
     "route 10.64.0.0/10 dev lan0 in table 52 (looked up by rule 5270)"),
])
def test_a_subnet_in_use_on_the_machine_is_refused_before_any_change(
    sandbox: Path, capsys: pytest.CaptureFixture[str], setup: list[list[str]], what: str
) -> None:
    ip("link", "add", "lan0", "type", "veth", "peer", "name", "lan0p")
    ip("link", "set", "lan0", "up")
    ip("link", "set", "lan0p", "up")
    for step in setup:
        if step[0] == "address":
            ip("addr", "add", step[1], "dev", "lan0")
        elif step[0] == "table":
            ip("route", "add", step[1], "dev", "lan0", "table", step[2])
        elif step[0] == "rule":
            ip("rule", "add", "pref", step[1], "lookup", step[2])
        else:
            ip("route", "add", step[1], "via", step[2], "dev", "lan0")
    spec = sandbox / "shop.yaml"
    spec.write_text(SPEC)
    before = kernel_snapshot()
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 1
    assert err.splitlines() == [
        f"error: {spec}:5:5: network 'front': subnet 10.77.1.0/24 overlaps {what}, which is "
        "already in use on this machine (a LAN, a VPN or another project)",
        "1 problem(s); nothing was changed.",
    ]
    assert kernel_snapshot() == before


def test_other_firewall_managers_are_named_in_the_plan(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What Docker (iptables-nft) leaves: its chains in table ip filter, FORWARD dropping.
    nft("add", "table", "ip", "filter")
    nft("add", "chain", "ip", "filter", "FORWARD",
        "{ type filter hook forward priority 0; policy drop; }")
    nft("add", "chain", "ip", "filter", "DOCKER-USER")
    nft("add", "table", "inet", "firewalld")
    spec = sandbox / "shop.yaml"
    spec.write_text(SPEC)
    code, out, err = run_cli(capsys, "plan", str(spec))
    assert code == 0, err
    assert out.splitlines()[:3] == [
        "note: Docker also filters traffic on this machine (nftables table ip filter); a drop "
        "there is final, whatever netapply accepts",
        "note: firewalld also filters traffic on this machine (nftables table inet firewalld); "
        "a drop there is final, whatever netapply accepts",
        # Docker's chain for users is there: the project's accept rules go in it.
        "note: chain ip filter FORWARD drops forwarded packets by default (Docker's policy); "
        "netapply lets the project's bridges through with its own accept rules in "
        "DOCKER-USER, the chain Docker keeps for users",
    ]
    assert out.splitlines()[3] == (
        "note: IPv4 forwarding is off on this machine and apply switches it on for good; from "
        "then on the machine also routes between its other interfaces unless a firewall drops "
        "that traffic (Docker sets its FORWARD policy to drop for this reason)"
    )
    code, out, _ = run_cli(capsys, "plan", "--output", "json", str(spec))
    assert len(json.loads(out)["notes"]) == 4
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
    code, out, _ = run_cli(capsys, "plan", str(spec))
    assert "IPv4 forwarding is off" not in out  # already on: nothing new to say


def test_the_plan_shows_firewall_rules_and_forwarding(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = sandbox / "shop.yaml"
    spec.write_text(SPEC)
    code, out, _ = run_cli(capsys, "plan", str(spec))
    assert code == 0
    lines = out.splitlines()
    start = lines.index(
        "    + create nftables table inet netapply-shop (3 rules)  (not in the kernel)"
    )
    assert lines[start + 1:start + 6] == [
        "        + rule forward: front: replies to its own connections",
        "        + rule forward: front: nothing else enters",
        "        + rule postrouting: front: masquerade traffic leaving it",
        "    ~ update in place sysctl net.ipv4.ip_forward = 1 (IPv4 forwarding, for network "
        "front)  (value 0 -> 1)",
        "    + create bridge br-front (network front)  (not in the kernel)",
    ]
    code, out, _ = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0
    spec.write_text(SPEC.replace("interface: br-front", "interface: br-front\n    icc: false"))
    code, out, _ = run_cli(capsys, "plan", str(spec))
    assert (
        "    ~ update in place nftables table inet netapply-shop (4 rules)  (rules: 1 added,"
        " 0 removed)\n        + rule forward: front: icc off, no routing between its"
        " containers\n"
    ) in out
    code, out, _ = run_cli(capsys, "destroy", "--auto-approve", str(spec))
    assert code == 0
    tables = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True,
                            check=True).stdout
    assert "netapply-shop" not in tables


def test_a_dormant_table_is_replaced(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dormant table filters nothing; nft 1.0.6 even prints broken JSON for it."""
    spec = sandbox / "shop.yaml"
    spec.write_text(SPEC)
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, err
    nft("add", "table", "inet", "netapply-shop", "{ flags dormant; }")
    nft("add", "table", "inet", "someone", "{ flags dormant; }")
    code, out, err = run_cli(capsys, "plan", "--detailed-exitcode", str(spec))
    assert code == 2, out + err
    assert "update in place nftables table inet netapply-shop (3 rules)  (rules: 0 added, " \
           "0 removed, chains differ)" in out
    code, out, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, out + err
    listed = subprocess.run(["nft", "list", "table", "inet", "netapply-shop"],
                            capture_output=True, text=True, check=True).stdout
    assert "dormant" not in listed
