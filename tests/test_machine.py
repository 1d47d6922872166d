"""What else is on the machine: networks already in use, other firewall managers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.kernelutil import kernel_snapshot, netns_list, run_cli

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


# What nft prints when it cannot talk to the kernel, for a command that fails.
FAILING_NFT = "#!/bin/sh\necho 'netlink: Error: cannot open socket' >&2\nexit 1\n"


@contextmanager
def nft_replaced(sandbox: Path, script: str | None) -> Iterator[None]:
    """This test's mount namespace sees a script (or, None, a file that is no
    program: nft not installed) where nft is; the real one comes back after."""
    found = shutil.which("nft")
    assert found is not None, "make deps installs nftables"
    real = os.path.realpath(found)
    fake = sandbox / "fake-nft"
    fake.write_text(script or "")
    fake.chmod(0o755 if script else 0o644)
    subprocess.run(["mount", "--bind", str(fake), real], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", real], check=True)


def project_tables() -> list[str]:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if "netapply-" in line]


@pytest.mark.parametrize(("script", "cause"), [
    (FAILING_NFT, "netlink: Error: cannot open socket"),
    (None, "the nft command is not installed (Debian package nftables)"),
], ids=["nft fails", "no nft"])
def test_a_ruleset_that_cannot_be_read_is_named_and_never_claimed_clean(
    sandbox: Path, capsys: pytest.CaptureFixture[str], script: str | None, cause: str
) -> None:
    spec = sandbox / "shop.yaml"
    spec.write_text(SPEC)
    code, _, err = run_cli(capsys, "apply", "--auto-approve", str(spec))
    assert code == 0, err
    part = ("  the nftables ruleset, which holds table inet netapply-shop (list the nftables "
            f"ruleset: {cause})")
    hint = ("What to do: make that part readable (for the nftables ruleset: install the "
            "nftables package, or repair the nft command), then run the command again.")
    before = kernel_snapshot()
    with nft_replaced(sandbox, script):
        code, out, err = run_cli(capsys, "plan", str(spec))
        assert (code, out) == (1, "")
        assert err.splitlines() == [
            "error: netapply could not read part of the kernel, so nothing is planned: what "
            "the project owns there is unknown:", part, hint]
        code, out, err = run_cli(capsys, "show", str(spec))
        assert code == 1
        assert "netns web" in out  # what could be read is shown
        assert err.splitlines() == [
            "error: netapply could not read part of the kernel, so what is shown may miss "
            "what the project owns there:", part, hint]
        code, out, err = run_cli(capsys, "show", "--output", "json", str(spec))
        assert code == 1
        assert json.loads(out)["unread"] == [part.strip()]
    assert kernel_snapshot() == before
    with nft_replaced(sandbox, script):
        code, out, err = run_cli(capsys, "destroy", "--auto-approve", str(spec))
        assert code == 1
        assert "Destroy complete" not in out
        assert f"note: netapply could not read {part.strip()}; destroy removes everything " \
               "else, then fails" in out
        assert err.splitlines() == [
            "error: netapply could not read part of the kernel, so destroy removed what it "
            "could read (5 step(s)), but the project may still own objects there:", part, hint]
        assert netns_list() == []  # the rest is gone
        code, out, err = run_cli(capsys, "destroy", "--auto-approve", str(spec))
        assert code == 1
        assert "destroy removed what it could read (0 step(s))" in err
    assert project_tables() == ["table inet netapply-shop"]
    code, out, err = run_cli(capsys, "destroy", "--auto-approve", str(spec))
    assert code == 0, err
    assert "Destroy complete: 1 step(s); nothing owned by project 'shop' is left." in out
    assert project_tables() == []


LAN = """\
version: 1
project: shop
networks:
  lan: {driver: macvlan, parent: lan0, subnet: 192.168.50.0/24}
containers:
  web: {networks: [lan]}
"""


def test_without_nft_a_spec_without_bridges_plans_unless_a_table_may_hold_its_rules(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """nft is only needed for the firewall: where the kernel's list of tables
    (read without nft) has none the project could own, nothing is missed."""
    ip("link", "add", "lan0", "type", "veth", "peer", "name", "lan0p")
    spec = sandbox / "lan.yaml"
    spec.write_text(LAN)
    with nft_replaced(sandbox, None):
        code, out, err = run_cli(capsys, "plan", "--detailed-exitcode", str(spec))
        assert code == 2, err
        assert out.splitlines()[0] == (
            "note: netapply could not list the nftables ruleset: the nft command is not "
            "installed (Debian package nftables); the kernel has no nftables table that could "
            "hold the project's objects, so none is missed")
    # Docker's table, where the project's rules in DOCKER-USER would be.
    nft("add", "table", "ip", "filter")
    with nft_replaced(sandbox, None):
        code, out, err = run_cli(capsys, "plan", str(spec))
        assert code == 1
        assert "the nftables ruleset, which holds table ip filter (list" in err
